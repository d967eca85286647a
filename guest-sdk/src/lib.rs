//! Write redstage participants as plain Rust types.
//!
//! A participant is the business logic of one step of a transaction,
//! compiled to a WebAssembly component. The host calls it twice per step:
//!
//! 1. [`Participant::declare`] with the parsed input: what will it read, what
//!    may it write, adjust or append to? An [`Access`] of keys, or parts of
//!    keys (a hash field, a set member, a sorted-set range). The host locks
//!    and reads exactly those, at that granularity.
//! 2. [`Participant::execute`] with the same input and a [`Snapshot`] of what
//!    it declared: the writes to apply if the whole transaction commits, and
//!    the output for the client, as an [`Outcome`]. Or an [`Abort`]: a
//!    business "no" (`insufficient_stock`) that aborts the whole transaction.
//!
//! The input is JSON; the SDK parses it into [`Participant::Input`] and turns
//! a parse failure into a `bad_input` abort that says what was expected.
//! Values are bytes; [`Snapshot::get_i64`] and [`Outcome::set_i64`] store
//! integers as decimal strings, and the `*_json` methods use serde.
//!
//! Keys hold Redis's types: strings, hashes, sets, sorted sets, streams and
//! lists. Reads and writes are named after the Redis commands that do the
//! same ([`Snapshot::hget`], [`Snapshot::smembers`], [`Snapshot::zrange`];
//! [`Outcome::hset`], [`Outcome::sadd`], [`Outcome::zincrby`],
//! [`Outcome::xadd`]), and declarations after what they declare
//! ([`Access::write_set_member`], [`Access::adjust_hash_field`],
//! [`Access::append_stream`]); see [`Access`] for the whole list and the
//! rules the host checks.
//!
//! ```
//! use redstage_guest::{Abort, Access, Outcome, Participant, Positive, Snapshot, checked_add};
//! use serde::Deserialize;
//!
//! /// `{"counter": "visits", "by": 2}` adds 2 to the counter `visits`.
//! #[derive(Deserialize)]
//! struct Bump {
//!     counter: String,
//!     by: Positive,
//! }
//!
//! struct Counter;
//!
//! impl Participant for Counter {
//!     type Input = Bump;
//!
//!     fn declare(bump: &Bump) -> Result<Access, Abort> {
//!         Ok(Access::new().write(format!("count:{}", bump.counter)))
//!     }
//!
//!     fn execute(bump: &Bump, snapshot: &Snapshot) -> Result<Outcome, Abort> {
//!         let key = format!("count:{}", bump.counter);
//!         let count = checked_add(snapshot.get_i64(&key)?, bump.by.get())?;
//!         Outcome::new().set_i64(key, count).output_json(&count)
//!     }
//! }
//!
//! redstage_guest::export!(Counter);
//!
//! // Native tests need neither wasm nor Redis:
//! let out = redstage_guest::testing::run::<Counter>(
//!     r#"{"counter": "visits", "by": 2}"#,
//!     &[("count:visits", "40")],
//! )?;
//! assert_eq!(out.writes["count:visits"].as_deref(), Some("42"));
//! # Ok::<(), Abort>(())
//! ```
//!
//! # Building
//!
//! The participant's crate depends on this crate (and serde) only and has
//! `crate-type = ["cdylib", "rlib"]` (the rlib is for native tests):
//!
//! ```toml
//! [dependencies]
//! redstage-guest = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `cargo build --target wasm32-unknown-unknown --release`, with
//! `wasm-component-ld` as that target's linker (a `.cargo/config.toml`
//! with `[target.wasm32-unknown-unknown] linker = "wasm-component-ld"`;
//! rustup installs the linker with the toolchain), produces a component
//! whose only import is the contract's `console`: one core instance, the
//! cheapest for the host to start for each step. `redstage new` writes such
//! a crate. Builds for `wasm32-wasip2`, or with `cargo component build`,
//! work too; they import parts of WASI, which the host links to stubs.
//!
//! Print with [`println!`] and [`eprintln!`] (see [`console`]): the host
//! keeps the output with the step, logs it and shows it in `redstage call`.
//! A panic's message reaches the step's error the same way.
//!
//! The default feature `allocator` makes the component's global allocator
//! one that starts from an arena inside the module's memory, so that a step
//! does not grow memory; turn it off to bring your own.
//!
//! # Purity
//!
//! The host links nothing ambient: no files, clocks, randomness or
//! environment. Participants must be deterministic, because the host may run
//! a step again after a conflict and must get the same answer. In practice:
//! keep to `BTreeMap`/`BTreeSet` rather than `HashMap`/`HashSet`, whose
//! default hasher asks WASI for a random seed (a trap inside the host), and do
//! not read the time. [`testing::run`] calls each function twice to catch the
//! obvious cases.

mod abort;
mod access;
#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
mod alloc;
mod component;
pub mod console;
mod outcome;
mod positive;
mod snapshot;
pub mod testing;

pub use abort::{Abort, checked_add, checked_sub};
pub use access::{Access, Declaration, Kind, Mode, Target};
pub use outcome::{Adjustment, Bounded, Bounds, Op, Outcome, Write};
pub use positive::Positive;
pub use snapshot::{SCORE_INTEGER_MAX, Snapshot, Value, integer, score_integer};

/// The business logic of one kind of transaction step.
///
/// Both functions are pure: they see only their arguments. They take no
/// `self` because nothing survives between calls; the host may use a fresh
/// instance for each.
pub trait Participant {
    /// The step's input, parsed from JSON. Parse failures become `bad_input`.
    /// Parsed once per instance: `execute` gets what `declare` parsed.
    type Input: serde::de::DeserializeOwned + 'static;

    /// The keys this input reads and may write. Called before any value is
    /// read, so it depends on the input alone.
    fn declare(input: &Self::Input) -> Result<Access, Abort>;

    /// Runs the step against the values of the declared keys.
    fn execute(input: &Self::Input, snapshot: &Snapshot) -> Result<Outcome, Abort>;
}

/// Exports a [`Participant`] as the component's `declare` and `execute`.
///
/// Invoke it once, at the root of the participant's crate:
/// `redstage_guest::export!(MyParticipant);`. Only `wasm32` builds get the
/// exported functions: they mean nothing natively, and their fixed symbol
/// names would clash if a native test linked two participants together.
#[macro_export]
macro_rules! export {
    ($participant:ty $(,)?) => {
        // On every target, so that a native `cargo check` reports a type that
        // is not a participant where the macro is invoked.
        const _: () = $crate::__private::assert_participant::<$participant>();

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            // The generated exporter takes an identifier, not a generic type.
            type RedstageComponent = $crate::__private::Component<$participant>;
            $crate::__private::bindings::__export_participant!(
                RedstageComponent with_types_in $crate::__private::bindings
            );
        };
    };
}

/// What `export!` expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::component::{Component, bindings};

    pub const fn assert_participant<P: crate::Participant>() {}
}
