//! A compiled participant component and its per-step instances.

use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

use super::bindings::{Participant, ParticipantPre};
use super::imports::{self, DeniedImport};
use super::legacy;
use super::{
    AccessSet, CallError, CallLimits, Entry, GuestAbort, Limit, LoadError, Outcome,
    RESERVED_ABORT_CODES, Write, valid_abort_code,
};

/// A participant component, compiled and linked once; cheap to instantiate.
pub struct Component {
    pre: Pre,
    limits: CallLimits,
}

/// A linked component, of the contract version it exports.
enum Pre {
    Current(ParticipantPre<StepState>),
    Legacy(legacy::ParticipantPre<StepState>),
}

impl Pre {
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::Current(pre) => pre.engine(),
            Pre::Legacy(pre) => pre.engine(),
        }
    }
}

/// An instance's exports, of the contract version it exports.
enum Bindings {
    Current(Participant),
    Legacy(legacy::Participant),
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Component {
    /// Links a compiled component, checking that it exports the
    /// `participant` world.
    pub(super) fn link(
        component: &wasmtime::component::Component,
        limits: CallLimits,
    ) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid(format!("{e:#}"));
        let mut linker = Linker::new(component.engine());
        // Nothing ambient: see `imports`.
        imports::link(&mut linker, component).map_err(LoadError::Invalid)?;
        let pre = linker.instantiate_pre(component).map_err(invalid)?;
        let pre = match ParticipantPre::new(pre.clone()) {
            Ok(current) => Pre::Current(current),
            Err(e) => Pre::Legacy(legacy::ParticipantPre::new(pre).map_err(|_| {
                LoadError::Invalid(format!(
                    "does not export the `redstage:participant/participant` world \
                     (`declare` and `execute`) of contract 0.2.0 or 0.1.0: {e:#}"
                ))
            })?),
        };
        Ok(Component { pre, limits })
    }

    /// The contract version the component exports: `0.2.0` or `0.1.0`.
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Pre::Current(_) => "0.2.0",
            Pre::Legacy(_) => "0.1.0",
        }
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
            memory_bytes: 0,
            console: Vec::new(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| s);
        store.epoch_deadline_callback(|mut ctx| {
            if Instant::now() >= ctx.data().deadline {
                ctx.data_mut().hit = Some(Limit::Time);
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Tokio's own yield, not a plain wake-up: it lets the
                // runtime poll its timers and sockets before the guest runs
                // on, so a busy participant cannot starve I/O on its worker.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store.set_epoch_deadline(1);
        let bindings = match &self.pre {
            Pre::Current(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Current),
            Pre::Legacy(pre) => pre
                .instantiate_async(&mut store)
                .await
                .map(Bindings::Legacy),
        };
        let mut instance = Instance {
            store,
            bindings: None,
        };
        instance.bindings = Some(instance.settle(bindings)?);
        Ok(instance)
    }
}

/// Rejects, before wasmtime parses them, the files that are not components
/// at all, with a message that says what they are instead.
pub(super) fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    // `\0asm`, then a 16-bit version and a 16-bit layer: 0 for a core
    // module, 1 for a component.
    let layer = bytes.get(6..8);
    if !bytes.starts_with(b"\0asm") || layer.is_none() {
        return Err(LoadError::Invalid(
            "this is not WebAssembly: the file does not start with the `\\0asm` header".into(),
        ));
    }
    if layer == Some(&[0, 0]) {
        return Err(LoadError::Invalid(
            "this is a core WebAssembly module, not a component: build the participant with \
             `cargo component build` or for the `wasm32-wasip2` target"
                .into(),
        ));
    }
    Ok(())
}

/// What a store carries: the limits, which one was hit, and what the
/// participant wrote to its console.
pub(super) struct StepState {
    limits: CallLimits,
    /// Set by the limiter or the epoch callback, so that the trap that
    /// follows is reported as the limit it is.
    hit: Option<Limit>,
    /// When the current call runs out of time.
    deadline: Instant,
    /// Linear memory of every memory of the instance together, as granted
    /// (growth that then fails still counts: the bound errs on the safe side).
    memory_bytes: usize,
    /// The first bytes written to stdout and stderr (see `imports`): a
    /// panic's message, for the trap that follows it.
    pub(super) console: Vec<u8>,
}

impl ResourceLimiter for StepState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.limits.memory_bytes_max {
            self.hit = Some(Limit::Memory);
            return Ok(false);
        }
        self.memory_bytes = total;
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

    // A participant component nests a handful of core instances, each with
    // a memory and a table or two; more is a component multiplying itself.
    fn instances(&self) -> usize {
        self.limits.instances_max
    }

    fn memories(&self) -> usize {
        self.limits.instances_max
    }

    fn tables(&self) -> usize {
        self.limits.instances_max
    }
}

/// One instance of a participant, living for one step.
pub struct Instance {
    store: Store<StepState>,
    bindings: Option<Bindings>,
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
        let result = match &bindings {
            Bindings::Current(b) => b.call_declare(&mut self.store, input).await,
            Bindings::Legacy(b) => b
                .call_declare(&mut self.store, input)
                .await
                .map(|r| r.map(upgrade_access).map_err(upgrade_abort)),
        };
        self.bindings = Some(bindings);
        let access = match self.settle(result)? {
            Ok(access) => access,
            Err(abort) => return Ok(Err(self.checked_abort(abort)?)),
        };
        let limits = self.limits();
        let declared = access.reads.len() + access.writes.len() + access.adjusts.len();
        self.check(Limit::Keys, declared > limits.keys_max)?;
        let too_long = access
            .reads
            .iter()
            .chain(&access.writes)
            .chain(&access.adjusts)
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
        let result = match &bindings {
            Bindings::Current(b) => b.call_execute(&mut self.store, input, snapshot).await,
            Bindings::Legacy(b) => {
                let snapshot: Vec<legacy::redstage::participant::types::Entry> = snapshot
                    .iter()
                    .map(|e| legacy::redstage::participant::types::Entry {
                        key: e.key.clone(),
                        value: e.value.clone(),
                    })
                    .collect();
                b.call_execute(&mut self.store, input, &snapshot)
                    .await
                    .map(|r| r.map(upgrade_outcome).map_err(upgrade_abort))
            }
        };
        self.bindings = Some(bindings);
        let outcome = match self.settle(result)? {
            Ok(outcome) => outcome,
            Err(abort) => return Ok(Err(self.checked_abort(abort)?)),
        };
        let limits = self.limits();
        self.check(
            Limit::Output,
            outcome.output.len() > limits.output_bytes_max,
        )?;
        self.check(Limit::Writes, outcome.writes.len() > limits.writes_max)?;
        let too_big = outcome.writes.iter().any(|w| match w {
            Write::Set((_, v)) => v.len() > limits.value_bytes_max,
            Write::Delete(_) | Write::Adjust(_) => false,
        });
        self.check(Limit::ValueBytes, too_big)?;
        for write in &outcome.writes {
            if let Write::Adjust(a) = write {
                self.check_abort(&a.abort)?;
            }
        }
        Ok(Ok(outcome))
    }

    /// `abort`, if it keeps to the contract for a participant's own abort:
    /// a code and a message within their bounds, and a code of the allowed
    /// characters that is not one of the host's.
    fn checked_abort(&self, abort: GuestAbort) -> Result<GuestAbort, CallError> {
        self.check_abort(&abort)?;
        Ok(abort)
    }

    fn check_abort(&self, abort: &GuestAbort) -> Result<(), CallError> {
        let limits = self.limits();
        self.check(
            Limit::AbortCodeBytes,
            abort.code.len() > limits.abort_code_bytes_max,
        )?;
        self.check(
            Limit::AbortMessageBytes,
            abort.message.len() > limits.abort_message_bytes_max,
        )?;
        if RESERVED_ABORT_CODES.contains(&abort.code.as_str()) {
            return Err(CallError::BadAbortCode(format!(
                "`{}` is one of the host's own codes",
                abort.code
            )));
        }
        if !valid_abort_code(&abort.code) {
            return Err(CallError::BadAbortCode(format!(
                "{:?} is not a non-empty run of ASCII letters, digits and `_-.:`",
                abort.code
            )));
        }
        Ok(())
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
        result.map_err(|e| {
            let state = self.store.data();
            match state.hit.or_else(|| count_limit(&e)) {
                Some(limit) => self.limit_error(limit),
                None => {
                    tracing::debug!(error = ?e, "participant trapped");
                    CallError::Trap(describe_trap(&e, &state.console))
                }
            }
        })
    }
}

/// A 0.1.0 access set, in 0.2.0's terms: nothing adjusted.
fn upgrade_access(a: legacy::redstage::participant::types::AccessSet) -> AccessSet {
    AccessSet {
        reads: a.reads,
        writes: a.writes,
        adjusts: Vec::new(),
    }
}

fn upgrade_abort(a: legacy::redstage::participant::types::Abort) -> GuestAbort {
    GuestAbort {
        code: a.code,
        message: a.message,
    }
}

fn upgrade_outcome(o: legacy::redstage::participant::types::Outcome) -> Outcome {
    use legacy::redstage::participant::types::Write as Old;
    let writes = o
        .writes
        .into_iter()
        .map(|w| match w {
            Old::Set(set) => Write::Set(set),
            Old::Delete(key) => Write::Delete(key),
        })
        .collect();
    Outcome {
        writes,
        output: o.output,
    }
}

/// Wasmtime checks the count of instances, memories and tables against the
/// limiter without telling it; its error is the only sign.
fn count_limit(e: &wasmtime::Error) -> Option<Limit> {
    let message = e.root_cause().to_string();
    (message.starts_with("resource limit exceeded") && message.contains("count too high"))
        .then_some(Limit::Instances)
}

/// What a trap means, in a sentence: the participant's own panic message
/// when its standard library reported one, the import it was denied, or
/// the kind of trap.
fn describe_trap(e: &wasmtime::Error, console: &[u8]) -> String {
    if let Some(denied) = e.downcast_ref::<DeniedImport>() {
        return denied.to_string();
    }
    let console = String::from_utf8_lossy(console);
    if let Some((_, panic)) = console.split_once("panicked at ") {
        // `src/lib.rs:9:5:\nboom\nnote: run with `RUST_BACKTRACE=1` ...`
        let panic = panic.split("\nnote: ").next().unwrap_or_default();
        return format!("panicked at {}", panic.trim_end().replace(":\n", ": "));
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "stack overflow: recursion too deep for the call stack".into()
        }
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "aborted: reached an `unreachable` instruction".into()
        }
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trap_after_a_panic_report_says_what_panicked() {
        let trap = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        let console = b"\nthread '<unnamed>' panicked at src/lib.rs:9:5:\nboom\n\
            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            describe_trap(&trap, console),
            "panicked at src/lib.rs:9:5: boom"
        );
        assert_eq!(
            describe_trap(&trap, b""),
            "aborted: reached an `unreachable` instruction"
        );
        let denied = wasmtime::Error::new(DeniedImport("wasi:random/random#get-random-u64".into()));
        assert!(describe_trap(&denied, console).starts_with("called `wasi:random/random"));
    }

    #[test]
    fn headers_tell_files_that_are_no_component() {
        let message = |bytes: &[u8]| match check_header(bytes) {
            Err(LoadError::Invalid(m)) => m,
            Ok(()) => "ok".into(),
        };
        assert!(message(b"").contains("not WebAssembly"));
        assert!(message(b"\0asm\x01").contains("not WebAssembly"));
        assert!(message(b"\x7fELF\x02\x01\x01\0").contains("not WebAssembly"));
        assert!(message(b"\0asm\x01\0\0\0").contains("core WebAssembly module"));
        assert_eq!(message(b"\0asm\x0d\0\x01\0"), "ok");
    }
}
