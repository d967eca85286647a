//! Write redstage participants as plain Rust types.
//!
//! A participant is the business logic of one step of a transaction,
//! compiled to a WebAssembly component. The host calls it twice per step:
//!
//! 1. [`Participant::declare`] with the parsed input: which keys will it read,
//!    and which may it write? The host locks and reads exactly those.
//! 2. [`Participant::execute`] with the same input and a [`Snapshot`] of those
//!    keys: the writes to apply if the whole transaction commits, and the
//!    output for the client, as an [`Outcome`]. Or an [`Abort`]: a business
//!    "no" (`insufficient_stock`) that aborts the whole transaction.
//!
//! The input is JSON; the SDK parses it into [`Participant::Input`] and turns
//! a parse failure into a `bad_input` abort that says what was expected.
//! Values are bytes; [`Snapshot::get_i64`] and [`Outcome::set_i64`] store
//! integers as decimal strings, and the `*_json` methods use serde.
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
//! `crate-type = ["cdylib", "rlib"]` (the rlib is for native tests). Either
//! command produces a component:
//!
//! - `cargo build --target wasm32-wasip2 --release`
//! - `cargo component build --release`
//!
//! Rust's standard library on WASI reaches for stderr and the environment
//! when a panic is reported, so those components import a few `wasi:cli` and
//! `wasi:io` interfaces, for that alone.
//! `cargo component build --release --target wasm32-unknown-unknown` gives a
//! component that imports nothing at all.
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
mod component;
mod outcome;
mod positive;
mod snapshot;
pub mod testing;

pub use abort::{Abort, checked_add, checked_sub};
pub use access::Access;
pub use outcome::{Adjustment, Bounds, Outcome};
pub use positive::Positive;
pub use snapshot::{Snapshot, integer};

/// The business logic of one kind of transaction step.
///
/// Both functions are pure: they see only their arguments. They take no
/// `self` because nothing survives between calls; the host may use a fresh
/// instance for each.
pub trait Participant {
    /// The step's input, parsed from JSON. Parse failures become `bad_input`.
    type Input: serde::de::DeserializeOwned;

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
