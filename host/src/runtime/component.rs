//! A compiled participant component and its per-step instances.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::Linker;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

use super::bindings::{Participant, ParticipantPre};
use super::imports::{self, DeniedImport};
use super::output::{Console, GuestOutput, Stream};
use super::reuse::{Reuse, ReuseCounts, ReusePolicy, ReuseSlots, Slot};
use super::{
    AccessSet, CallError, CallLimits, Entry, GuestAbort, Limit, LoadError, Outcome,
    RESERVED_ABORT_CODES, valid_abort_code,
};
use super::{guest, legacy, upgrade, v2};

/// What a call into a participant comes to: its answer, its business
/// abort, or the failure of the step.
pub type CallResult<T> = Result<Result<T, GuestAbort>, CallError>;

/// A participant component, compiled and linked once; cheap to instantiate.
pub struct Component {
    pre: Pre,
    limits: CallLimits,
    /// The names of what it imports.
    imports: Vec<String>,
    /// The contract version it was built against.
    contract: &'static str,
    /// Its idle instances, if reuse is on (see `reuse`); shared with its
    /// live instances, which come back to it when dropped.
    reuse: Arc<Reuse>,
    /// The runtime's slots for idle instances, for [`Component::with_reuse`].
    slots: Arc<ReuseSlots>,
}

/// A linked component, of the contract version it exports.
#[derive(Clone)]
enum Pre {
    Current(ParticipantPre<StepState>),
    V2(v2::ParticipantPre<StepState>),
    Legacy(legacy::ParticipantPre<StepState>),
}

impl Pre {
    fn engine(&self) -> &wasmtime::Engine {
        match self {
            Pre::Current(pre) => pre.engine(),
            Pre::V2(pre) => pre.engine(),
            Pre::Legacy(pre) => pre.engine(),
        }
    }
}

/// An instance's exports, of the contract version it exports.
enum Bindings {
    Current(Participant),
    V2(v2::Participant),
    Legacy(legacy::Participant),
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("limits", &self.limits)
            .field("contract", &self.contract)
            .field("reuse", &self.reuse.policy)
            .finish()
    }
}

/// The interface a component of contract 0.2.1 or later may import.
const CONSOLE_IMPORT: &str = "redstage:participant/console@";

impl Component {
    /// Links a compiled component, checking that it exports the
    /// `participant` world.
    pub(super) fn link(
        component: &wasmtime::component::Component,
        limits: CallLimits,
        slots: Arc<ReuseSlots>,
    ) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid(format!("{e:#}"));
        let mut linker = Linker::new(component.engine());
        // Nothing ambient: see `imports`.
        imports::link(&mut linker, component).map_err(LoadError::Invalid)?;
        let pre = linker.instantiate_pre(component).map_err(invalid)?;
        let pre = match ParticipantPre::new(pre.clone()) {
            Ok(current) => Pre::Current(current),
            Err(e) => match v2::ParticipantPre::new(pre.clone()) {
                Ok(v2) => Pre::V2(v2),
                Err(_) => Pre::Legacy(legacy::ParticipantPre::new(pre).map_err(|_| {
                    LoadError::Invalid(format!(
                        "does not export the `redstage:participant/participant` world \
                         (`declare` and `execute`) of contract 0.3, 0.2 or 0.1.0: {e:#}"
                    ))
                })?),
            },
        };
        let imports: Vec<String> = component
            .component_type()
            .imports(component.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        let console = imports.iter().any(|name| name.starts_with(CONSOLE_IMPORT));
        let contract = match (&pre, console) {
            (Pre::Legacy(_), _) => "0.1.0",
            (Pre::V2(_), false) => "0.2.0",
            (Pre::V2(_), true) => "0.2.1",
            (Pre::Current(_), _) => "0.3.0",
        };
        let reuse = Arc::new(Reuse::new(
            String::new(),
            ReusePolicy::default(),
            slots.clone(),
        ));
        Ok(Component {
            pre,
            limits,
            imports,
            contract,
            reuse,
            slots,
        })
    }

    /// The contract version the component was built against: `0.3.0`,
    /// `0.2.1` (imports `console`), `0.2.0` or `0.1.0`.
    pub fn contract(&self) -> &'static str {
        self.contract
    }

    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// The names of the component's imports: `redstage:participant/console`
    /// (and the contract's types) for an SDK build; WASI's interfaces too
    /// for a `wasm32-wasip2` or `cargo component` build.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// This component (sharing its compiled code) as participant `name`'s,
    /// whose instances serve up to `policy.steps` steps each (see `reuse`).
    /// `name` is what logs of its steps and a mismatch's warning call it.
    pub fn with_reuse(&self, name: &str, policy: ReusePolicy) -> Component {
        Component {
            pre: self.pre.clone(),
            limits: self.limits.clone(),
            imports: self.imports.clone(),
            contract: self.contract,
            reuse: Arc::new(Reuse::new(name.to_owned(), policy, self.slots.clone())),
            slots: self.slots.clone(),
        }
    }

    pub fn reuse_policy(&self) -> ReusePolicy {
        self.reuse.policy
    }

    /// How reuse went so far.
    pub fn reuse_counts(&self) -> ReuseCounts {
        self.reuse.counts()
    }

    /// Instances waiting to be reused.
    pub fn idle_instances(&self) -> usize {
        self.reuse.idle()
    }

    /// A new version replaces this one: its idle instances are dropped, and
    /// none is kept from now on.
    pub fn retire(&self) {
        self.reuse.retire();
    }

    /// An instance for one step of one transaction: a fresh one in a fresh
    /// store, or, when the participant's `reuse_steps` allows, one that
    /// served earlier steps cleanly (see `reuse`).
    pub async fn instantiate(&self) -> Result<Instance, CallError> {
        if let Some((mut live, audit)) = self.reuse.take() {
            live.start_step();
            let shadow = match audit {
                true => self.fresh().await.ok(),
                false => None,
            };
            return Ok(Instance::new(live, shadow, self.reuse.clone(), true));
        }
        let live = self.fresh().await?;
        Ok(Instance::new(live, None, self.reuse.clone(), false))
    }

    /// A fresh instance in a fresh store.
    async fn fresh(&self) -> Result<Live, CallError> {
        let state = StepState {
            limits: self.limits.clone(),
            hit: None,
            deadline: Instant::now() + self.limits.call_time(),
            memory_bytes: 0,
            instantiated: false,
            grew: false,
            console: Console::default(),
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
                .instantiate_checked_once(&mut store)
                .await
                .map(Bindings::Current),
            Pre::V2(pre) => pre
                .instantiate_checked_once(&mut store)
                .await
                .map(Bindings::V2),
            Pre::Legacy(pre) => pre
                .instantiate_checked_once(&mut store)
                .await
                .map(Bindings::Legacy),
        };
        let bindings = settle(&store, bindings)?;
        store.data_mut().instantiated = true;
        Ok(Live {
            store,
            bindings,
            served: 1,
            slot: None,
        })
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
/// participant printed.
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
    /// Whether instantiation is over: memory granted later is growth.
    instantiated: bool,
    /// Whether memory grew after instantiation: such an instance is not
    /// reused (its slot would stay larger, and the participant may leak).
    grew: bool,
    /// What the participant printed (see `output`).
    console: Console,
}

impl StepState {
    /// Bytes `stream` may still keep this step.
    pub(super) fn print_room(&self, stream: Stream) -> usize {
        self.console
            .room(stream, self.limits.guest_output_bytes_max)
    }

    /// See [`Console::write_parts`].
    pub(super) fn print_parts(&mut self, stream: Stream, head: &[u8], tail: &[u8], total: usize) {
        self.console.write_parts(stream, head, tail, total);
    }

    /// Appends what fits of `bytes` to `stream`.
    pub(super) fn print(&mut self, stream: Stream, bytes: &[u8]) {
        let max = self.limits.guest_output_bytes_max;
        self.console.write(stream, bytes, max);
    }
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
        self.grew |= self.instantiated;
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

/// A live instance in its store: what calls run on.
pub(super) struct Live {
    store: Store<StepState>,
    bindings: Bindings,
    /// Steps this instance was handed out for.
    pub(super) served: u32,
    /// The reuse slot it holds once it has been idle (see `reuse`).
    pub(super) slot: Option<Slot>,
}

impl Live {
    /// Whether memory grew after instantiation.
    pub(super) fn grew(&self) -> bool {
        self.store.data().grew
    }

    /// Handed out for one more step: a new output bound.
    fn start_step(&mut self) {
        self.served += 1;
        self.store.data_mut().console.reset();
    }

    async fn declare(&mut self, input: &[u8]) -> CallResult<AccessSet> {
        self.check(Limit::Input, input.len() > self.limits().input_bytes_max)?;
        self.start_call();
        let result = match &self.bindings {
            Bindings::Current(b) => b.call_declare(&mut self.store, input).await,
            Bindings::V2(b) => b
                .call_declare(&mut self.store, input)
                .await
                .map(|r| r.map(upgrade::v2_access).map_err(upgrade::v2_abort)),
            Bindings::Legacy(b) => b
                .call_declare(&mut self.store, input)
                .await
                .map(|r| r.map(upgrade::v1_access).map_err(upgrade::v1_abort)),
        };
        let access = match settle(&self.store, result)? {
            Ok(access) => access,
            Err(abort) => return Ok(Err(self.checked_abort(abort)?)),
        };
        let limits = self.limits();
        self.check(Limit::Keys, access.accesses.len() > limits.keys_max)?;
        let too_long = access
            .accesses
            .iter()
            .any(|a| a.key.len() > limits.key_bytes_max);
        self.check(Limit::KeyBytes, too_long)?;
        let too_long = access.accesses.iter().any(|a| match &a.target {
            guest::Target::Field(m) | guest::Target::Member(m) => m.len() > limits.member_bytes_max,
            _ => false,
        });
        self.check(Limit::MemberBytes, too_long)?;
        Ok(Ok(access))
    }

    async fn execute(&mut self, input: &[u8], snapshot: &[Entry]) -> CallResult<Outcome> {
        self.start_call();
        let result = match &self.bindings {
            Bindings::Current(b) => b.call_execute(&mut self.store, input, snapshot).await,
            Bindings::V2(b) => {
                let snapshot = upgrade::v2_snapshot(snapshot);
                b.call_execute(&mut self.store, input, &snapshot)
                    .await
                    .map(|r| r.map(upgrade::v2_outcome).map_err(upgrade::v2_abort))
            }
            Bindings::Legacy(b) => {
                let snapshot = upgrade::v1_snapshot(snapshot);
                b.call_execute(&mut self.store, input, &snapshot)
                    .await
                    .map(|r| r.map(upgrade::v1_outcome).map_err(upgrade::v1_abort))
            }
        };
        let outcome = match settle(&self.store, result)? {
            Ok(outcome) => outcome,
            Err(abort) => return Ok(Err(self.checked_abort(abort)?)),
        };
        self.check_outcome(&outcome)?;
        Ok(Ok(outcome))
    }

    /// What an execution returned, against the output and write limits.
    fn check_outcome(&self, outcome: &Outcome) -> Result<(), CallError> {
        use guest::Op;
        let limits = self.limits();
        self.check(
            Limit::Output,
            outcome.output.len() > limits.output_bytes_max,
        )?;
        let pushed = |op: &Op| match op {
            Op::Rpush(values) | Op::Lpush(values) => values.len().max(1),
            _ => 1,
        };
        let writes: usize = outcome.writes.iter().map(|w| pushed(&w.op)).sum();
        self.check(Limit::Writes, writes > limits.writes_max)?;
        let value_max = limits.value_bytes_max;
        let too_big = outcome.writes.iter().any(|w| match &w.op {
            Op::Set((v, _)) | Op::Hset((_, v)) => v.len() > value_max,
            Op::Xadd(entry) => {
                entry
                    .fields
                    .iter()
                    .map(|(f, v)| f.len() + v.len())
                    .sum::<usize>()
                    > value_max
            }
            Op::Rpush(values) | Op::Lpush(values) => values.iter().any(|v| v.len() > value_max),
            _ => false,
        });
        self.check(Limit::ValueBytes, too_big)?;
        let member_max = limits.member_bytes_max;
        let too_long = outcome.writes.iter().any(|w| match &w.op {
            Op::Hset((m, _))
            | Op::Hdel(m)
            | Op::Hincrby((m, _))
            | Op::Sadd(m)
            | Op::Srem(m)
            | Op::Zadd((m, _))
            | Op::Zrem(m)
            | Op::Zincrby((m, _)) => m.len() > member_max,
            _ => false,
        });
        self.check(Limit::MemberBytes, too_long)?;
        for write in &outcome.writes {
            if let Op::Adjust(b) | Op::Hincrby((_, b)) | Op::Zincrby((_, b)) = &write.op {
                self.check_abort(&b.abort)?;
            }
        }
        Ok(())
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
            return Err(limit_error(self.limits(), limit));
        }
        Ok(())
    }
}

fn limit_error(limits: &CallLimits, limit: Limit) -> CallError {
    CallError::Limit {
        limit,
        bound: limit.bound(limits),
    }
}

/// Turns a wasmtime error into the limit that caused it, or a trap.
fn settle<T>(store: &Store<StepState>, result: wasmtime::Result<T>) -> Result<T, CallError> {
    result.map_err(|e| {
        let state = store.data();
        match state.hit.or_else(|| count_limit(&e)) {
            Some(limit) => limit_error(&state.limits, limit),
            None => {
                tracing::debug!(error = ?e, "participant trapped");
                CallError::Trap(describe_trap(&e, state.console.tail()))
            }
        }
    })
}

/// One instance of a participant, for one step: a fresh one, or a reused
/// one (with a fresh shadow when the step is audited). Dropping it gives it
/// back to its component, which keeps it for another step if it may serve
/// one.
pub struct Instance {
    /// `Some` until dropped.
    live: Option<Live>,
    /// The fresh instance an audited step also runs on.
    shadow: Option<Live>,
    reuse: Arc<Reuse>,
    reused: bool,
    /// No abort, trap or broken limit so far: it may be reused.
    clean: bool,
    /// The step it serves in its transaction, once told: its output is
    /// logged with it.
    step: Option<usize>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("reused", &self.reused)
            .field("audited", &self.shadow.is_some())
            .finish_non_exhaustive()
    }
}

impl Instance {
    fn new(live: Live, shadow: Option<Live>, reuse: Arc<Reuse>, reused: bool) -> Instance {
        Instance {
            live: Some(live),
            shadow,
            reuse,
            reused,
            clean: true,
            step: None,
        }
    }

    /// Serves step `step` of a transaction: what it prints is logged after
    /// each call, with the participant and the step (see `output`).
    pub fn for_step(&mut self, step: usize) {
        self.step = Some(step);
    }

    /// Whether it served earlier steps.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// What the participant printed since the last take (what was not
    /// logged: an instance told its step logs and drops its output after
    /// each call).
    pub fn take_output(&mut self) -> GuestOutput {
        self.live_mut().store.data_mut().console.take()
    }

    fn live_mut(&mut self) -> &mut Live {
        self.live
            .as_mut()
            .expect("an instance is live until dropped")
    }

    /// The keys this input will touch, checked against the key limits.
    pub async fn declare(&mut self, input: &[u8]) -> CallResult<AccessSet> {
        let mut result = self.live_mut().declare(input).await;
        if let Some(shadow) = &mut self.shadow {
            let fresh = shadow.declare(input).await;
            result = self.audit("declare", result, fresh);
        }
        self.called("declare", &result);
        result
    }

    /// Runs the step on `snapshot`, checking what comes back against the
    /// output and write limits.
    pub async fn execute(&mut self, input: &[u8], snapshot: &[Entry]) -> CallResult<Outcome> {
        let mut result = self.live_mut().execute(input, snapshot).await;
        if let Some(shadow) = &mut self.shadow {
            let fresh = shadow.execute(input, snapshot).await;
            result = self.audit("execute", result, fresh);
        }
        self.called("execute", &result);
        result
    }

    /// The answer of an audited call: the fresh one, counting a mismatch
    /// when the reused instance answered otherwise.
    fn audit<T: PartialEq>(
        &mut self,
        call: &str,
        reused: CallResult<T>,
        fresh: CallResult<T>,
    ) -> CallResult<T> {
        if reused != fresh {
            self.reuse.mismatch(call);
            self.clean = false;
        }
        fresh
    }

    /// After a call: not reusable after anything but an answer; what it
    /// printed logged, if it serves a transaction's step.
    fn called<T>(&mut self, call: &str, result: &CallResult<T>) {
        self.clean &= matches!(result, Ok(Ok(_)));
        if let Some(step) = self.step {
            let output = self.take_output();
            if !output.is_empty() {
                output.log(&self.reuse.name, step, call);
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        drop(self.shadow.take());
        if let Some(live) = self.live.take() {
            self.reuse.give_back(live, self.clean);
        }
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
fn describe_trap(e: &wasmtime::Error, stderr: &[u8]) -> String {
    if let Some(denied) = e.downcast_ref::<DeniedImport>() {
        return denied.to_string();
    }
    let stderr = String::from_utf8_lossy(stderr);
    if let Some((_, panic)) = stderr.rsplit_once("panicked at ") {
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
