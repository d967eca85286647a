//! The WebAssembly runtime: one wasmtime engine, participant components
//! compiled once, and a fresh, bounded instance for every step.
//!
//! # Isolation
//!
//! A participant is a pure function; the host gives it nothing to reach the
//! world with. Every import it declares (a Rust guest built with `std`
//! imports `wasi:cli`, `wasi:io` and more even if it never calls them) is
//! linked to a function that traps when called, naming the import (see
//! `imports`): no files, sockets, clocks, randomness or environment. The
//! exceptions give nothing away: an empty environment, no preopened
//! directories, and a stdout/stderr whose first bytes are kept so that a
//! panic's trap carries the panic's message. A component whose imports
//! cannot be linked that way, or that is not a component of the
//! `participant` world, is refused at load, saying why. Keys it names are
//! relative; the coordinator adds the participant's prefix.
//!
//! # Lifecycle
//!
//! ```text
//!  bytes --Runtime::load--> Component (compiled, linked, type-checked once)
//!                              |
//!                 Component::instantiate  (per step: a fresh wasmtime Store,
//!                              |           never shared between transactions)
//!                              v
//!                           Instance --declare--> access set
//!                                    --execute--> writes + output | abort
//! ```
//!
//! # Limits
//!
//! Every call runs under [`CallLimits`] (the global `[limits]`, with a
//! participant's [`LimitOverrides`] applied): linear memory, table growth
//! and instance counts go through a resource limiter, wall time through
//! epoch interruption. Calls run as async fibers that yield to tokio (with
//! `tokio::task::yield_now`, so the runtime polls its I/O in between) at
//! every epoch tick, so a participant that loops never holds a tokio worker
//! for longer than [`EPOCH_TICK`]. What a call takes and returns is bounded
//! too (input, keys, writes, output), before the coordinator looks at it. A
//! broken limit becomes [`CallError::Limit`] naming the limit; a trap
//! becomes [`CallError::Trap`], saying what happened: the panic's message,
//! the denied import, or the kind of trap (a stack overflow, say).

mod cache;
mod component;
mod imports;
mod limits;

pub use cache::{CacheStats, CompileCache};
pub use component::{Component, Instance};
pub use imports::CONSOLE_BYTES_MAX;
pub use limits::{CallLimits, Limit, LimitOverrides};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the epoch advances: the granularity of wall-time limits, and
/// the longest a participant runs before yielding its tokio worker.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// The generated bindings of the `participant` world (wit/participant.wit).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "participant",
        exports: { default: async },
    });
}

pub use bindings::redstage::participant::types::Abort as GuestAbort;
pub use bindings::redstage::participant::types::{AccessSet, Entry, Outcome, Write};

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a component that exports the `participant` world: a core module,
    /// another world, a truncated or random file.
    #[error("not a valid participant component: {0}")]
    Invalid(String),
}

/// What went wrong in a call into a participant (other than a business
/// abort, which is a normal result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The participant trapped: a panic, an unreachable, a call to a denied
    /// import.
    #[error("trapped: {0}")]
    Trap(String),
    /// The participant broke one of its limits.
    #[error("{} limit exceeded: the bound is {bound}", limit.name())]
    Limit { limit: Limit, bound: String },
}

/// The wasmtime engine and the thread that drives its epoch.
#[derive(Clone)]
pub struct Runtime {
    engine: wasmtime::Engine,
    /// Compiled code on disk; without it every load compiles.
    cache: Option<Arc<CompileCache>>,
    /// Stops the epoch thread when the last clone of the runtime is dropped.
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new() -> Result<Runtime, LoadError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Plain fibers: participants are synchronous functions; the
        // concurrent (component-model-async) call path buys nothing here.
        config.concurrency_support(false);
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| LoadError::Invalid(e.to_string()))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(Runtime {
            engine,
            cache: None,
            _ticker: ticker,
        })
    }

    /// A runtime that keeps compiled components in `cache` (see
    /// [`CompileCache`]).
    pub fn with_cache(cache: CompileCache) -> Result<Runtime, LoadError> {
        Ok(Runtime {
            cache: Some(Arc::new(cache)),
            ..Runtime::new()?
        })
    }

    /// The compile cache, if this runtime has one.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.cache.as_deref()
    }

    /// Compiles (or finds in the cache) and links a participant component,
    /// checking that it exports the `participant` world.
    pub fn load(&self, bytes: &[u8], limits: CallLimits) -> Result<Component, LoadError> {
        component::check_header(bytes)?;
        let compiled = match &self.cache {
            Some(cache) => cache.load(&self.engine, bytes),
            None => wasmtime::component::Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        Component::link(&compiled, limits)
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a thread of its own.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("redstage-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
