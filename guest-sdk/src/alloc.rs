//! The allocator of a participant component (feature `allocator`, on by
//! default): dlmalloc, whose first region is an arena inside the module's
//! initial memory rather than memory it grows.
//!
//! The standard library's allocator on wasm asks for its first region with
//! `memory.grow`, so every fresh instance grows its memory on its first
//! allocation, and growing costs the host system calls (the new pages of the
//! instance's slot are made accessible, and made inaccessible again when the
//! slot is reused). A step that allocates less than [`ARENA_BYTES`] never
//! grows here; one that needs more grows as before. An instance that grew
//! is also one the host will not reuse (see `reuse_steps`).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;

use dlmalloc::{Allocator, Dlmalloc};

/// The arena: zeroed memory of the module itself (`.bss`), counted in its
/// initial memory. Pages the step never touches cost nothing.
const ARENA_BYTES: usize = 256 << 10;

/// WebAssembly's page size.
const PAGE_BYTES: usize = 64 << 10;

#[repr(C, align(65536))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// Participants run single-threaded: nothing is shared across threads.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Where dlmalloc gets its regions: the arena once, then `memory.grow`.
struct System {
    arena_taken: UnsafeCell<bool>,
}

unsafe impl Send for System {}

unsafe impl Allocator for System {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        // SAFETY: single-threaded; dlmalloc calls this under `&mut self`.
        let taken = unsafe { &mut *self.arena_taken.get() };
        if !*taken && size <= ARENA_BYTES {
            *taken = true;
            return (ARENA.0.get().cast(), ARENA_BYTES, 0);
        }
        let pages = size.div_ceil(PAGE_BYTES);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (std::ptr::null_mut(), 0, 0);
        }
        ((previous * PAGE_BYTES) as *mut u8, pages * PAGE_BYTES, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        std::ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        PAGE_BYTES
    }
}

/// The global allocator of the component.
pub struct Global(UnsafeCell<Dlmalloc<System>>);

// Participants run single-threaded.
unsafe impl Sync for Global {}

#[global_allocator]
static GLOBAL: Global = Global(UnsafeCell::new(Dlmalloc::new_with_allocator(System {
    arena_taken: UnsafeCell::new(false),
})));

unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
