//! A compiled participant component and its per-step instances.

use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

use super::bindings::{Participant, ParticipantPre};
use super::{
    AccessSet, CallError, CallLimits, Entry, GuestAbort, Limit, LoadError, Outcome, Write,
};

/// A participant component, compiled and linked once; cheap to instantiate.
pub struct Component {
    pre: ParticipantPre<StepState>,
    limits: CallLimits,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Component {
    pub(super) fn new(
        engine: &wasmtime::Engine,
        bytes: &[u8],
        limits: CallLimits,
    ) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid(format!("{e:#}"));
        let component = wasmtime::component::Component::new(engine, bytes).map_err(invalid)?;
        let mut linker = Linker::new(engine);
        // Nothing ambient: whatever the component imports traps when called.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(invalid)?;
        let pre = linker.instantiate_pre(&component).map_err(invalid)?;
        // Type-checks the exports against the participant world.
        let pre = ParticipantPre::new(pre).map_err(invalid)?;
        Ok(Component { pre, limits })
    }

    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// A fresh instance in a fresh store, for one step of one transaction.
    pub async fn instantiate(&self) -> Result<Instance, CallError> {
        let state = StepState {
            limits: self.limits.clone(),
            hit: None,
            deadline: Instant::now() + self.limits.call_time(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| s);
        store.epoch_deadline_callback(|mut ctx| {
            if Instant::now() >= ctx.data().deadline {
                ctx.data_mut().hit = Some(Limit::Time);
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        let bindings = self.pre.instantiate_async(&mut store).await;
        let mut instance = Instance {
            store,
            bindings: None,
        };
        instance.bindings = Some(instance.settle(bindings)?);
        Ok(instance)
    }
}

/// What a store carries: the limits, and which one was hit.
struct StepState {
    limits: CallLimits,
    /// Set by the limiter or the epoch callback, so that the trap that
    /// follows is reported as the limit it is.
    hit: Option<Limit>,
    /// When the current call runs out of time.
    deadline: Instant,
}

impl ResourceLimiter for StepState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes_max {
            self.hit = Some(Limit::Memory);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements_max {
            self.hit = Some(Limit::Table);
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A participant component nests a handful of core instances; more
        // is a component trying to multiply itself.
        64
    }
}

/// One instance of a participant, living for one step.
pub struct Instance {
    store: Store<StepState>,
    bindings: Option<Participant>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl Instance {
    /// The keys this input will touch, checked against the key limits.
    pub async fn declare(
        &mut self,
        input: &[u8],
    ) -> Result<Result<AccessSet, GuestAbort>, CallError> {
        self.check(Limit::Input, input.len() > self.limits().input_bytes_max)?;
        self.start_call();
        let bindings = self.bindings.take().expect("instance has bindings");
        let result = bindings.call_declare(&mut self.store, input).await;
        self.bindings = Some(bindings);
        let access = match self.settle(result)? {
            Ok(access) => access,
            Err(abort) => return Ok(Err(abort)),
        };
        let limits = self.limits();
        let too_many = access.reads.len() + access.writes.len() > limits.keys_max;
        self.check(Limit::Keys, too_many)?;
        let too_long = access
            .reads
            .iter()
            .chain(&access.writes)
            .any(|k| k.len() > limits.key_bytes_max);
        self.check(Limit::KeyBytes, too_long)?;
        Ok(Ok(access))
    }

    /// Runs the step on `snapshot`, checking what comes back against the
    /// output and write limits.
    pub async fn execute(
        &mut self,
        input: &[u8],
        snapshot: &[Entry],
    ) -> Result<Result<Outcome, GuestAbort>, CallError> {
        self.start_call();
        let bindings = self.bindings.take().expect("instance has bindings");
        let result = bindings
            .call_execute(&mut self.store, input, snapshot)
            .await;
        self.bindings = Some(bindings);
        let outcome = match self.settle(result)? {
            Ok(outcome) => outcome,
            Err(abort) => return Ok(Err(abort)),
        };
        let limits = self.limits();
        self.check(
            Limit::Output,
            outcome.output.len() > limits.output_bytes_max,
        )?;
        self.check(Limit::Writes, outcome.writes.len() > limits.writes_max)?;
        let too_big = outcome.writes.iter().any(|w| match w {
            Write::Set((_, v)) => v.len() > limits.value_bytes_max,
            Write::Delete(_) => false,
        });
        self.check(Limit::ValueBytes, too_big)?;
        Ok(Ok(outcome))
    }

    fn limits(&self) -> &CallLimits {
        &self.store.data().limits
    }

    fn start_call(&mut self) {
        let state = self.store.data_mut();
        state.deadline = Instant::now() + state.limits.call_time();
        state.hit = None;
        self.store.set_epoch_deadline(1);
    }

    fn check(&self, limit: Limit, broken: bool) -> Result<(), CallError> {
        if broken {
            return Err(self.limit_error(limit));
        }
        Ok(())
    }

    fn limit_error(&self, limit: Limit) -> CallError {
        CallError::Limit {
            limit,
            bound: limit.bound(self.limits()),
        }
    }

    /// Turns a wasmtime error into the limit that caused it, or a trap.
    fn settle<T>(&self, result: wasmtime::Result<T>) -> Result<T, CallError> {
        result.map_err(|e| match self.store.data().hit {
            Some(limit) => self.limit_error(limit),
            None => CallError::Trap(format!("{e:#}")),
        })
    }
}
