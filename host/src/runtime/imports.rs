//! What a participant's imports are linked to: nothing that reaches the world.
//!
//! A Rust guest built with `std` imports parts of WASI (`wasi:cli`,
//! `wasi:io`, `wasi:clocks`, `wasi:filesystem`, ...) whether or not its code
//! uses them, and its standard library calls a few of them when it reports
//! a panic. So every import is linked, by name, to one of:
//!
//! ```text
//!  wasi:cli/environment     empty: no variables, no arguments, no cwd
//!  wasi:filesystem/preopens no directories, so no file can be opened
//!  wasi:cli/terminal-*      no terminal
//!  wasi:cli/stdin           a stream whose every method is denied
//!  wasi:cli/stdout, stderr  output streams kept with the step (see
//!  + wasi:io/streams, poll  `output`): logged, shown by `redstage call`, and
//!                           the end of stderr put in a trap's message; the
//!                           pollable is always ready
//!  redstage:participant/    the same streams, for components that import
//!    console                nothing from WASI (the SDK's default build)
//!  anything else            a function that traps with DeniedImport, naming
//!                           itself: clocks, randomness, sockets, files, exit
//! ```
//!
//! A denied function is linked with dynamic types, and wasmtime converts its
//! arguments into host values before the function can refuse: a string or a
//! list there would let a participant make the host allocate many times its
//! own memory. Such a function is accepted only as a method (its first
//! argument a resource handle, which the call fails on first: the only
//! denied handles a participant can hold are stdin and the output stream's
//! pollables, whose methods take no strings or lists); otherwise the
//! component is rejected at load, with an error naming the import.

use wasmtime::StoreContextMut;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{
    Component, ComponentType, Lift, Linker, LinkerInstance, Lower, Resource, ResourceType, WasmList,
};

use super::component::StepState;
use super::output::{PANIC_BYTES_MAX, Stream};

/// What `check-write` grants per write: the output stream never blocks.
const CONSOLE_WRITE_BYTES: u64 = 4096;

/// The error a call to a denied import traps with.
#[derive(Debug, thiserror::Error)]
#[error(
    "called `{0}`, which is denied: participants get no files, sockets, clocks, randomness or environment"
)]
pub struct DeniedImport(pub String);

/// The output stream behind stdout (rep 1) and stderr (rep 2).
struct Console;

/// The resource reps of stdout and stderr.
const STDOUT_REP: u32 = 1;
const STDERR_REP: u32 = 2;

/// `redstage:participant/console`'s `channel`.
#[derive(ComponentType, Lift, Clone, Copy)]
#[allow(dead_code, reason = "made by `Lift` from the guest's value")]
#[component(enum)]
#[repr(u8)]
enum ConsoleStream {
    #[component(name = "stdout")]
    Stdout,
    #[component(name = "stderr")]
    Stderr,
}

/// `redstage:participant/console`'s `chunk`: up to 64 bytes by value.
#[derive(ComponentType, Lift, Clone, Copy)]
#[component(record)]
struct Chunk {
    len: u8,
    w0: u64,
    w1: u64,
    w2: u64,
    w3: u64,
    w4: u64,
    w5: u64,
    w6: u64,
    w7: u64,
}

impl Chunk {
    fn bytes(&self) -> ([u8; 64], usize) {
        let mut bytes = [0u8; 64];
        let words = [
            self.w0, self.w1, self.w2, self.w3, self.w4, self.w5, self.w6, self.w7,
        ];
        for (i, word) in words.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        (bytes, usize::from(self.len).min(64))
    }
}

/// Every other imported resource (files, sockets, terminals, I/O errors,
/// stdin, pollables): a participant holds one only where a stub above hands
/// it out, and nothing it can do with one reaches anything.
struct Denied;

/// `wasi:io/streams`' `stream-error`, for the stream signatures; never
/// returned.
#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<Denied>),
    #[component(name = "closed")]
    Closed,
}

/// What defining one import in the linker came to.
type Linked = wasmtime::Result<()>;

/// Defines every import of `component` in `linker`; `Err` names an import
/// that cannot be linked safely.
pub(super) fn link(linker: &mut Linker<StepState>, component: &Component) -> Result<(), String> {
    let engine = linker.engine().clone();
    let ty = component.component_type();
    for (name, item) in ty.imports(&engine) {
        let linked = match item.ty {
            ComponentItem::ComponentInstance(instance) => {
                let mut interface = linker.instance(name).map_err(|e| e.to_string())?;
                instance
                    .exports(&engine)
                    .try_for_each(|(export, item)| link_item(&mut interface, name, export, item.ty))
            }
            item => link_item(&mut linker.root(), "", name, item),
        };
        linked?;
    }
    Ok(())
}

fn link_item(
    interface: &mut LinkerInstance<'_, StepState>,
    interface_name: &str,
    name: &str,
    item: ComponentItem,
) -> Result<(), String> {
    let import = match interface_name {
        "" => name.to_owned(),
        i => format!("{i}#{name}"),
    };
    let linked = match item {
        ComponentItem::ComponentFunc(func) => link_func(
            interface,
            unversioned(interface_name),
            name,
            &func,
            import.clone(),
        )?,
        ComponentItem::Resource(_) => {
            // By name alone: an interface that uses another's resource
            // (`wasi:cli/stdout` uses `wasi:io/streams`' `output-stream`)
            // imports it under the same name, and both must be one type.
            let ty = match name {
                "output-stream" => ResourceType::host::<Console>(),
                _ => ResourceType::host::<Denied>(),
            };
            interface.resource(name, ty, |_, _| Ok(()))
        }
        ComponentItem::Type(_) => Ok(()),
        ComponentItem::CoreFunc(_)
        | ComponentItem::Module(_)
        | ComponentItem::Component(_)
        | ComponentItem::ComponentInstance(_) => {
            return Err(format!(
                "imports `{import}`, which is not a function or resource: nothing can be linked to it"
            ));
        }
    };
    linked.map_err(|e| format!("cannot link the import `{import}`: {e}"))
}

/// `wasi:io/streams` of `wasi:io/streams@0.2.3`: the stubs are written
/// against WASI 0.2. Any other version keeps its version, matches no stub,
/// and is denied like any other import. The contract's own `console` is the
/// same in every version that has it.
fn unversioned(interface: &str) -> &str {
    match interface.split_once('@') {
        Some((name, version)) if version.starts_with("0.2.") => name,
        Some((name @ CONSOLE, _)) => name,
        _ => interface,
    }
}

/// The contract's interface for printed output.
const CONSOLE: &str = "redstage:participant/console";

/// Defines one imported function: its stub, or a denial. `Err` when it may
/// not be imported at all.
fn link_func(
    interface: &mut LinkerInstance<'_, StepState>,
    interface_name: &str,
    name: &str,
    func: &ComponentFunc,
    import: String,
) -> Result<Linked, String> {
    type Store<'a> = StoreContextMut<'a, StepState>;
    type Handle = (Resource<Console>,);
    let done = || Ok((Ok::<(), StreamError>(()),));
    Ok(match (interface_name, name) {
        ("wasi:cli/environment", "get-environment") => {
            interface.func_wrap(name, |_, ()| Ok((Vec::<(String, String)>::new(),)))
        }
        ("wasi:cli/environment", "get-arguments") => {
            interface.func_wrap(name, |_, ()| Ok((Vec::<String>::new(),)))
        }
        ("wasi:cli/environment", "initial-cwd") => {
            interface.func_wrap(name, |_, ()| Ok((None::<String>,)))
        }
        ("wasi:filesystem/preopens", "get-directories") => interface.func_wrap(name, |_, ()| {
            Ok((Vec::<(Resource<Denied>, String)>::new(),))
        }),
        (i, f) if i.starts_with("wasi:cli/terminal-") && f.starts_with("get-terminal-") => {
            interface.func_wrap(name, |_, ()| Ok((None::<Resource<Denied>>,)))
        }
        ("wasi:cli/stdin", "get-stdin") => {
            interface.func_wrap(name, |_, ()| Ok((Resource::<Denied>::new_own(0),)))
        }
        ("wasi:cli/stdout", "get-stdout") => interface.func_wrap(name, |_, ()| {
            Ok((Resource::<Console>::new_own(STDOUT_REP),))
        }),
        ("wasi:cli/stderr", "get-stderr") => interface.func_wrap(name, |_, ()| {
            Ok((Resource::<Console>::new_own(STDERR_REP),))
        }),
        (CONSOLE, "write") => interface.func_wrap(
            name,
            |mut store: Store<'_>, (stream, chunk): (ConsoleStream, Chunk)| {
                let stream = match stream {
                    ConsoleStream::Stdout => Stream::Stdout,
                    ConsoleStream::Stderr => Stream::Stderr,
                };
                let (bytes, len) = chunk.bytes();
                store.data_mut().print(stream, &bytes[..len]);
                Ok(())
            },
        ),
        ("wasi:io/streams", "[method]output-stream.check-write") => interface
            .func_wrap(name, |_, _: Handle| {
                Ok((Ok::<u64, StreamError>(CONSOLE_WRITE_BYTES),))
            }),
        (
            "wasi:io/streams",
            "[method]output-stream.write" | "[method]output-stream.blocking-write-and-flush",
        ) => interface.func_wrap(
            name,
            move |mut store: Store<'_>, (stream, bytes): (Resource<Console>, WasmList<u8>)| {
                keep(&mut store, stream.rep(), &bytes);
                done()
            },
        ),
        (
            "wasi:io/streams",
            "[method]output-stream.flush" | "[method]output-stream.blocking-flush",
        ) => interface.func_wrap(name, move |_, _: Handle| done()),
        // A writer that waits for room (wasi-libc does) gets a pollable
        // that is always ready.
        ("wasi:io/streams", "[method]output-stream.subscribe") => {
            interface.func_wrap(name, |_, _: Handle| Ok((Resource::<Denied>::new_own(0),)))
        }
        ("wasi:io/poll", "[method]pollable.ready") => {
            interface.func_wrap(name, |_, _: (Resource<Denied>,)| Ok((true,)))
        }
        ("wasi:io/poll", "[method]pollable.block") => {
            interface.func_wrap(name, |_, _: (Resource<Denied>,)| Ok(()))
        }
        // Denied like the rest, but typed: the list is never copied.
        ("wasi:io/poll", "poll") => interface.func_wrap(
            name,
            move |_, _: (WasmList<Resource<Denied>>,)| -> wasmtime::Result<(Vec<u32>,)> {
                Err(wasmtime::Error::new(DeniedImport(import.clone())))
            },
        ),
        _ => {
            if !safe_to_deny(func) {
                return Err(format!(
                    "imports `{import}`, which takes strings or lists and is not a method: \
                     a participant may not import it"
                ));
            }
            interface.func_new(name, move |_, _, _, _| {
                Err(wasmtime::Error::new(DeniedImport(import.clone())))
            })
        }
    })
}

/// Appends `bytes` to the step's stdout or stderr (see `output`). Only what
/// is kept is copied out of the guest's memory.
fn keep(store: &mut StoreContextMut<'_, StepState>, rep: u32, bytes: &WasmList<u8>) {
    let stream = match rep {
        STDERR_REP => Stream::Stderr,
        _ => Stream::Stdout,
    };
    let room = store.data().print_room(stream);
    let all = bytes.as_le_slice(&*store);
    let head = all[..all.len().min(room)].to_vec();
    let tail = match stream {
        Stream::Stderr => all[all.len().saturating_sub(PANIC_BYTES_MAX)..].to_vec(),
        Stream::Stdout => Vec::new(),
    };
    let total = all.len();
    store.data_mut().print_parts(stream, &head, &tail, total);
}

/// Whether a call to `func` fails before its arguments cost the host more
/// than a few bytes each: it is a method, or its arguments are of fixed size.
fn safe_to_deny(func: &ComponentFunc) -> bool {
    let mut params = func.params().map(|(_, ty)| ty).peekable();
    if let Some(Type::Own(_) | Type::Borrow(_)) = params.peek() {
        return true;
    }
    params.all(|ty| fixed_size(&ty))
}

fn fixed_size(ty: &Type) -> bool {
    let maybe = |ty: Option<Type>| ty.as_ref().is_none_or(fixed_size);
    match ty {
        Type::String
        | Type::List(_)
        | Type::Map(_)
        | Type::FixedLengthList(_)
        | Type::Future(_)
        | Type::Stream(_)
        | Type::ErrorContext => false,
        Type::Record(r) => r.fields().all(|f| fixed_size(&f.ty)),
        Type::Tuple(t) => t.types().all(|ty| fixed_size(&ty)),
        Type::Variant(v) => v.cases().all(|c| maybe(c.ty)),
        Type::Option(o) => fixed_size(&o.ty()),
        Type::Result(r) => maybe(r.ok()) && maybe(r.err()),
        _ => true,
    }
}
