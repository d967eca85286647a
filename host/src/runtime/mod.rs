//! The WebAssembly runtime: one wasmtime engine, participant components
//! compiled once, and a fresh, bounded instance for every step.
//!
//! # Isolation
//!
//! A participant is a pure function; the host gives it nothing to reach the
//! world with. Every import it declares (a Rust guest built for
//! `wasm32-wasip2` imports `wasi:cli`, `wasi:io` and more even if it never
//! calls them) is linked to a function that traps when called, naming the
//! import (see `imports`): no files, sockets, clocks, randomness or
//! environment. The exceptions give nothing away: an empty environment, no
//! preopened directories, and stdout/stderr (WASI's, or the contract's own
//! `console`), kept with the step, logged, and the end of stderr put in a
//! trap's message so that it carries a panic's (see `output`). A component
//! whose imports cannot be linked that way, or that is not a component of
//! the `participant` world, is refused at load, saying why. Keys it names
//! are relative; the coordinator adds the participant's prefix.
//!
//! The SDK builds participants for `wasm32-unknown-unknown`: a component
//! that imports nothing but `console`, one core instance, instead of the
//! three or four (the WASI adapter, a shim and a fixup module) of a WASI
//! build; instantiating it is that much cheaper.
//!
//! # Lifecycle
//!
//! ```text
//!  bytes --Runtime::load--> Component (compiled, linked, type-checked once)
//!                              |
//!                 Component::instantiate  (per step: a fresh wasmtime Store,
//!                              |           never shared between transactions;
//!                              |           or, with reuse_steps, one that served
//!                              |           earlier steps cleanly: see `reuse`)
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
mod output;
mod reuse;
mod upgrade;

pub use cache::CompileCache;
pub use component::{CallResult, Component, Instance};
pub use limits::{CallLimits, Limit, LimitOverrides};
pub use output::{GuestOutput, PANIC_BYTES_MAX};
pub use reuse::{REUSE_AUDIT_DEFAULT, ReuseCounts, ReusePolicy};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the epoch advances: the granularity of wall-time limits, and
/// the longest a participant runs before yielding its tokio worker.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// `ParticipantPre::instantiate_async` without its second type check.
///
/// The generated `instantiate_async` type-checks `declare` and `execute`
/// on every instance it makes (`get_typed_func`: each record's and
/// variant's field names compared as strings), about a fifth of what
/// instantiating costs. `ParticipantPre::new` has already checked both
/// against the component's type when it was linked, and every instance of
/// one component has that type; the calls themselves never check again
/// (the generated `call_*` use `TypedFunc::new_unchecked`). Written inside
/// each bindings module, where the generated structs' fields are visible.
macro_rules! instantiate_checked_once {
    () => {
        impl<T: Send + 'static> ParticipantPre<T> {
            pub async fn instantiate_checked_once(
                &self,
                mut store: impl wasmtime::AsContextMut<Data = T>,
            ) -> wasmtime::Result<Participant> {
                let mut store = store.as_context_mut();
                let instance = self.instance_pre.instantiate_async(&mut store).await?;
                let mut export = |index| {
                    instance
                        .get_func(&mut store, index)
                        .ok_or_else(|| wasmtime::format_err!("an export checked at load is gone"))
                };
                Ok(Participant {
                    declare: export(&self.indices.declare)?,
                    execute: export(&self.indices.execute)?,
                })
            }
        }
    };
}

/// The generated bindings of the `participant` world, contract 0.3.0
/// (wit/participant.wit). Its types are the host's: the answers of 0.2.x
/// and 0.1.0 components are converted into them (see `component`). Its
/// imports are linked by `imports`, whatever version a component names.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "participant",
        exports: { default: async },
        // Audits compare a reused instance's answers with a fresh one's.
        additional_derives: [PartialEq],
    });
    instantiate_checked_once!();
}

/// Contract 0.2.x (wit/v0.2/participant.wit): strings only, with
/// adjustments; such components load and run unchanged.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2",
        world: "participant",
        exports: { default: async },
    });
    instantiate_checked_once!();
}

/// Contract 0.1.0 (wit/v0.1/participant.wit), which components built before
/// adjustments export; they load and run unchanged.
pub mod legacy {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "participant",
        exports: { default: async },
    });
    instantiate_checked_once!();
}

/// The contract's types, as the host uses them: accesses, snapshot
/// entries, writes.
pub use bindings::redstage::participant::types as guest;
pub use guest::Abort as GuestAbort;
pub use guest::{AccessSet, Entry, Outcome};

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
    /// The participant aborted with a code it may not use (see
    /// [`RESERVED_ABORT_CODES`] and [`valid_abort_code`]); the message says
    /// which, escaped and cut to the code's byte bound.
    #[error("bad abort code: {0}")]
    BadAbortCode(String),
}

/// The codes only the host answers with, so that a client can tell the
/// host's aborts from a participant's. (`not_an_integer` and `overflow`
/// are shared on purpose: they mean the same arithmetic failure whether the
/// host or the participant's own checked arithmetic finds it.)
pub const RESERVED_ABORT_CODES: &[&str] = &[
    "conflict",
    "superseded",
    "trap",
    "limit_exceeded",
    "undeclared_write",
    "bad_key",
    "bad_access",
    "bad_abort_code",
    "wrong_type",
    "recovered",
];

/// A participant's abort code is a non-empty run of ASCII letters, digits
/// and `_ - . :`, so that it can be a metrics label and a log field as it
/// is. (Its length is bounded by `limits.abort_code_bytes_max`.)
pub fn valid_abort_code(code: &str) -> bool {
    !code.is_empty()
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// The wasmtime engine and the thread that drives its epoch.
#[derive(Clone)]
pub struct Runtime {
    engine: wasmtime::Engine,
    settings: RuntimeSettings,
    /// One permit per instance slot of the pool, reserved by transactions
    /// (see [`Runtime::reserve`]).
    slots: Arc<tokio::sync::Semaphore>,
    /// Compiled code on disk; without it every load compiles.
    cache: Option<Arc<CompileCache>>,
    /// The pool slots beyond `instance_pool` that idle instances of
    /// participants with `reuse_steps` may hold (see `reuse`).
    reuse_slots: Arc<reuse::ReuseSlots>,
    /// Stops the epoch thread when the last clone of the runtime is dropped.
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// How the runtime's instance pool is sized (`[runtime]` in the config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Participant instances alive at once, across all transactions: each
    /// transaction reserves one per step, and waits while they are taken.
    /// Each slot reserves address space for its memories up front.
    pub instance_pool: u32,
    /// The largest linear memory any participant may be granted: the size
    /// of a memory slot of the pool. Every `memory_bytes_max` must fit.
    pub memory_slot_bytes: usize,
    /// The largest table any participant may be granted, in elements.
    /// Every `table_elements_max` must fit.
    pub table_slot_elements: usize,
    /// Pool slots, beyond `instance_pool`, for instances kept between
    /// steps by participants with `reuse_steps` (and the fresh instances
    /// their audited steps also run on). Bounds the memory idle instances
    /// hold; when all are taken, instances are dropped as without reuse.
    pub reuse_instances_max: u32,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            instance_pool: 1000,
            memory_slot_bytes: CallLimits::default().memory_bytes_max,
            table_slot_elements: CallLimits::default().table_elements_max,
            reuse_instances_max: 64,
        }
    }
}

/// Pool slots per component instance: what the Rust components built by
/// either toolchain use (3 or 4 core instances, 1 memory, 2 tables), with
/// room to spare. A component that needs more is refused at load (wasmtime
/// checks a component against the pool when it is compiled or loaded).
const CORE_INSTANCES_PER_SLOT: u32 = 16;
const MEMORIES_PER_SLOT: u32 = 2;
const TABLES_PER_SLOT: u32 = 4;

/// Freed slots decommitted together (see `decommit_batch_size`).
const DECOMMIT_BATCH: usize = 64;

impl Runtime {
    /// A runtime with the default [`RuntimeSettings`] and no compile cache.
    pub fn new() -> Result<Runtime, LoadError> {
        Runtime::with(RuntimeSettings::default(), None)
    }

    /// A runtime whose instances come from a pool sized by `settings`,
    /// keeping compiled components in `cache` if given (see
    /// [`CompileCache`]).
    ///
    /// Pooling is what makes a fresh instance per step cheap: memories,
    /// tables and fiber stacks are reserved once and reused, instead of
    /// mapped and unmapped for every step (which costs system calls, page
    /// faults and TLB shootdowns across threads).
    pub fn with(
        settings: RuntimeSettings,
        cache: Option<CompileCache>,
    ) -> Result<Runtime, LoadError> {
        let slots = settings.instance_pool.max(1);
        let pooled = slots + settings.reuse_instances_max;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_component_instances(pooled)
            .total_core_instances(pooled * CORE_INSTANCES_PER_SLOT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
            .total_memories(pooled * MEMORIES_PER_SLOT)
            .max_memories_per_component(MEMORIES_PER_SLOT)
            .total_tables(pooled * TABLES_PER_SLOT)
            .max_tables_per_component(TABLES_PER_SLOT)
            .total_stacks(pooled)
            .max_memory_size(settings.memory_slot_bytes)
            .table_elements(settings.table_slot_elements)
            // Give freed slots back to the kernel in batches: one system
            // call (and one TLB shootdown) per batch, not per step.
            .decommit_batch_size(DECOMMIT_BATCH)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Plain fibers: participants are synchronous functions; the
        // concurrent (component-model-async) call path buys nothing here.
        config.concurrency_support(false);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        // Reserve what a slot may grow to, not the 4 GiB that would let
        // wasmtime drop bounds checks: thousands of slots stay affordable.
        config.memory_reservation(settings.memory_slot_bytes as u64);
        config.memory_reservation_for_growth(0);
        config.cache(cache.as_ref().map(CompileCache::wasmtime));
        let engine = wasmtime::Engine::new(&config)
            .map_err(|e| LoadError::Invalid(format!("cannot start the engine: {e:#}")))?;
        let ticker = Arc::new(EpochTicker::start(engine.clone()));
        Ok(Runtime {
            engine,
            slots: Arc::new(tokio::sync::Semaphore::new(slots as usize)),
            reuse_slots: reuse::ReuseSlots::new(settings.reuse_instances_max as usize),
            settings,
            cache: cache.map(Arc::new),
            _ticker: ticker,
        })
    }

    /// Reserves `steps` instance slots, waiting while the pool is full. A
    /// transaction reserves one per step before it instantiates anything
    /// and holds them to its end: it never has more instances alive than
    /// steps, and reserving all at once (the semaphore is fair) means no
    /// two transactions can each hold part of what the other waits for.
    /// `steps` must not exceed the pool (the config checks
    /// `txn.steps_max` against it).
    /// `None` when they are not free within `wait`.
    pub async fn reserve(
        &self,
        steps: usize,
        wait: Duration,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let steps = u32::try_from(steps).expect("steps are bounded by txn.steps_max");
        let permit = self.slots.clone().acquire_many_owned(steps);
        let permit = tokio::time::timeout(wait, permit).await.ok()?;
        Some(permit.expect("the slot semaphore is never closed"))
    }

    /// Instance slots not reserved right now (of
    /// `runtime.instance_pool`), for `/metrics`.
    pub fn slots_free(&self) -> usize {
        self.slots.available_permits()
    }

    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    /// Whether `limits` fit the pool's slots; else why not.
    pub fn check_limits(&self, limits: &CallLimits) -> Result<(), String> {
        if limits.memory_bytes_max > self.settings.memory_slot_bytes {
            return Err(format!(
                "memory_bytes_max {} exceeds runtime.memory_slot_bytes {}",
                limits.memory_bytes_max, self.settings.memory_slot_bytes
            ));
        }
        if limits.table_elements_max > self.settings.table_slot_elements {
            return Err(format!(
                "table_elements_max {} exceeds runtime.table_slot_elements {}",
                limits.table_elements_max, self.settings.table_slot_elements
            ));
        }
        Ok(())
    }

    /// The engine every component of this runtime is compiled for, with
    /// its pool (the benchmark times wasmtime alone on it).
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// The compile cache, if this runtime has one.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.cache.as_deref()
    }

    /// Compiles (or finds in the cache) and links a participant component,
    /// checking that it exports the `participant` world.
    pub fn load(&self, bytes: &[u8], limits: CallLimits) -> Result<Component, LoadError> {
        self.check_limits(&limits).map_err(LoadError::Invalid)?;
        component::check_header(bytes)?;
        let compiled = match &self.cache {
            Some(cache) => cache.load(&self.engine, bytes),
            None => wasmtime::component::Component::new(&self.engine, bytes),
        }
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        Component::link(&compiled, limits, self.reuse_slots.clone())
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
