//! Test participant: the counter, version 1 (see `counter.rs`).

/// This build's version.
const VERSION: i64 = 1;

include!("../../counter-v1/src/counter.rs");
