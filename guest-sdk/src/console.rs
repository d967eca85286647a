//! Printing from a participant: [`print!`](crate::print),
//! [`println!`](crate::println), [`eprint!`](crate::eprint) and
//! [`eprintln!`](crate::eprintln).
//!
//! In a component they write through the contract's `console` import: the
//! host keeps the first `limits.guest_output_bytes_max` bytes of each step's
//! output, logs them with the step (stdout at debug level, stderr at warn)
//! and shows them in `redstage call`. Natively (in `cargo test`) they are
//! the standard library's macros, so the test harness captures them as
//! usual.
//!
//! The standard library's own `println!` also reaches the host when the
//! component is built for `wasm32-wasip2` (through WASI's stdout), but goes
//! nowhere in the default `wasm32-unknown-unknown` build, which imports
//! nothing from WASI: use these macros.

use std::fmt;

/// One of a step's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Bytes the `console` import carries per call (see `wit/console.wit`).
#[cfg(target_arch = "wasm32")]
const CHUNK_BYTES: usize = 64;

/// Appends `bytes` to `stream`.
#[cfg(target_arch = "wasm32")]
pub fn write(stream: Stream, bytes: &[u8]) {
    use crate::component::bindings::redstage::participant::console as wit;
    let stream = match stream {
        Stream::Stdout => wit::Channel::Stdout,
        Stream::Stderr => wit::Channel::Stderr,
    };
    for piece in bytes.chunks(CHUNK_BYTES) {
        let mut padded = [0u8; CHUNK_BYTES];
        padded[..piece.len()].copy_from_slice(piece);
        let word = |i: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&padded[i * 8..i * 8 + 8]);
            u64::from_le_bytes(le)
        };
        let chunk = wit::Chunk {
            len: piece.len() as u8,
            w0: word(0),
            w1: word(1),
            w2: word(2),
            w3: word(3),
            w4: word(4),
            w5: word(5),
            w6: word(6),
            w7: word(7),
        };
        wit::write(stream, chunk);
    }
}

/// Appends `bytes` to `stream`: the process's own, natively.
#[cfg(not(target_arch = "wasm32"))]
pub fn write(stream: Stream, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    match stream {
        Stream::Stdout => std::print!("{text}"),
        Stream::Stderr => std::eprint!("{text}"),
    }
}

/// What the macros call; not a stable API.
#[doc(hidden)]
pub fn print_args(stream: Stream, args: fmt::Arguments<'_>, newline: bool) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        // The standard macros, so that libtest's capture sees the output.
        match (stream, newline) {
            (Stream::Stdout, false) => std::print!("{args}"),
            (Stream::Stdout, true) => std::println!("{args}"),
            (Stream::Stderr, false) => std::eprint!("{args}"),
            (Stream::Stderr, true) => std::eprintln!("{args}"),
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut text = match args.as_str() {
            Some(s) => String::from(s),
            None => args.to_string(),
        };
        if newline {
            text.push('\n');
        }
        write(stream, text.as_bytes());
    }
}

/// Installs, once per instance, the panic hook that sends a panic's
/// message and location to stderr, so that the host can put them in the
/// step's error. (A `wasm32-unknown-unknown` build has nowhere else to
/// report a panic: it would trap on `unreachable` and say no more.)
#[cfg(target_arch = "wasm32")]
pub(crate) fn report_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            write(Stream::Stderr, format!("{info}\n").as_bytes());
        }));
    });
}

/// Prints to the step's stdout (see [`console`](crate::console)).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::print_args($crate::console::Stream::Stdout, format_args!($($arg)*), false)
    };
}

/// Prints a line to the step's stdout (see [`console`](crate::console)).
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::print_args($crate::console::Stream::Stdout, format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::console::print_args($crate::console::Stream::Stdout, format_args!($($arg)*), true)
    };
}

/// Prints to the step's stderr (see [`console`](crate::console)).
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::console::print_args($crate::console::Stream::Stderr, format_args!($($arg)*), false)
    };
}

/// Prints a line to the step's stderr (see [`console`](crate::console)).
#[macro_export]
macro_rules! eprintln {
    () => {
        $crate::console::print_args($crate::console::Stream::Stderr, format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::console::print_args($crate::console::Stream::Stderr, format_args!($($arg)*), true)
    };
}
