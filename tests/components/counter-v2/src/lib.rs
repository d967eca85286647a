//! Test participant: the counter, version 2 (see `counter.rs`).

/// This build's version.
const VERSION: i64 = 2;

include!("../../counter-v1/src/counter.rs");
