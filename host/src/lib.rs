//! redstage: atomic, serializable transactions across several Redis stores,
//! where each participant's business logic is a sandboxed WebAssembly
//! component that declares the keys it touches.
//!
//! # Layout
//!
//! Data flows one way: `api` -> `txn` -> (`runtime`, `store`).
//!
//! - [`config`]: the TOML file: stores, log store, participants, limits.
//! - [`runtime`]: the wasmtime engine, compiled components, per-step
//!   instances, call limits, the denied imports.
//! - [`participants`]: the participants, their stores, key prefixes and
//!   versions; deploys and the deploy folder.
//! - [`store`]: Redis connections, the key layout, the Lua scripts.
//! - [`txn`]: the coordinator: declare, read, execute, prepare, decide,
//!   commit or roll back, and recovery of expired locks.
//! - [`api`]: HTTP/JSON over the coordinator.
//! - [`metrics`]: counters and histograms for `GET /metrics`.
//! - [`cli`]: the `redstage` command.
//! - `embedded` (feature `embedded`, not in the default build): local
//!   `redis-server` processes for the demo, the tests and the bench.

pub mod api;
pub mod cli;
pub mod config;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod metrics;
pub mod participants;
pub mod runtime;
pub mod store;
pub mod txn;

/// Lower-case hex of `bytes` (digests in keys, file names and listings).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This host's clock, in milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
