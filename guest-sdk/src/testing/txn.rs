//! Transactions of several steps on a [`Store`], as the host runs them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use super::data::{self, Data, Entry, Keys};
use super::rules::{self, Fail, Limits};
use super::store::Store;
use crate::snapshot::{SCORE_INTEGER_MAX, integer, score_integer};
use crate::{
    Abort, Access, Bounded, Kind, Mode, Op, Outcome, Participant, Snapshot, Target, component,
};

/// The two calls of one participant type.
type Declare = fn(&[u8]) -> Result<Access, Abort>;
type Execute = fn(&[u8], &Snapshot) -> Result<Outcome, Abort>;

/// One step to run.
pub(super) struct Step {
    name: &'static str,
    prefix: String,
    input: Vec<u8>,
    declare: Declare,
    execute: Execute,
}

impl Step {
    /// A step of `P` on `input_json`, its keys under `prefix`.
    pub(super) fn of<P: Participant>(prefix: &str, input_json: &str) -> Step {
        Step {
            name: std::any::type_name::<P>(),
            prefix: prefix.to_owned(),
            input: input_json.as_bytes().to_vec(),
            declare: component::declare::<P>,
            execute: component::execute::<P>,
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// What one step declared and returned.
pub(super) struct Done {
    pub(super) access: Access,
    pub(super) outcome: Outcome,
}

/// Steps of one or more participants, run in order against one [`Store`]
/// by [`Transaction::run`] as the host runs them:
///
/// 1. `declare` of every step, before any value is read, each checked as
///    the host checks it (limits, an empty key, the contract's rules for
///    declarations: see [`Limits`] and the table of codes in
///    [`testing`](super)); an abort there aborts the transaction;
/// 2. `execute` of each step in order, on a snapshot of exactly what it
///    declared in read or write mode, as the transaction sees it: the store
///    plus the writes of the steps before it (one entry per declared part:
///    a string, a field, a member, a whole hash or set or sorted set, a
///    range), after checking that each key it declared holds the kind it
///    declared (`wrong_type`);
/// 3. its writes checked (limits, what Redis could not apply, that a
///    declaration covers each: `undeclared_write`) and applied in order,
///    bounded ones with their bounds checked against the value so far; an
///    abort, or a bounded write out of bounds, aborts the transaction;
/// 4. all writes applied to the store only if every step succeeded.
///
/// Each step's keys are under its prefix ([`Transaction::step_in`]), as a
/// participant's are under the one its manifest gives it. A participant
/// that answers the same call differently panics: the host cannot detect
/// that, and relies on participants being deterministic.
pub struct Transaction<'s> {
    store: &'s mut Store,
    steps: Vec<Step>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.steps.iter().map(|s| s.name).collect();
        f.debug_struct("Transaction")
            .field("steps", &names)
            .finish()
    }
}

/// Why a [`Transaction`] aborted: the step, its abort (the participant's
/// own, or one of the host's codes), and which limit it broke, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAbort {
    /// The index of the step that aborted.
    pub step: usize,
    pub abort: Abort,
    /// With `limit_exceeded`: the limit's name (`read_items`, `keys`, ...).
    pub limit: Option<&'static str>,
}

impl<'s> Transaction<'s> {
    pub(super) fn new(store: &'s mut Store) -> Transaction<'s> {
        Transaction {
            store,
            steps: Vec::new(),
        }
    }

    /// A step of `P` whose keys are the store's keys as they are.
    pub fn step<P: Participant>(self, input_json: &str) -> Self {
        self.step_in::<P>("", input_json)
    }

    /// A step of `P` whose keys live under `prefix` in the store.
    pub fn step_in<P: Participant>(mut self, prefix: &str, input_json: &str) -> Self {
        self.steps.push(Step::of::<P>(prefix, input_json));
        self
    }

    /// Runs the steps; on success, applies their writes to the store and
    /// returns each step's output (JSON, or a string when it is not JSON,
    /// `null` when there is none). On an abort the store is unchanged.
    pub fn run(self) -> Result<Vec<serde_json::Value>, TxnAbort> {
        let (keys, done) = run_steps(&self.store.keys, &self.store.limits, &self.steps)?;
        self.store.keys = keys;
        Ok(done
            .iter()
            .map(|d| super::output_json(d.outcome.output_bytes()))
            .collect())
    }
}

/// Runs `steps` on `keys`: what the keys become if they all succeed, and
/// what each declared and returned.
pub(super) fn run_steps(
    keys: &Keys,
    limits: &Limits,
    steps: &[Step],
) -> Result<(Keys, Vec<Done>), TxnAbort> {
    let failed = |step: usize| {
        move |fail: Fail| TxnAbort {
            step,
            abort: fail.abort,
            limit: fail.limit,
        }
    };
    let declared = steps
        .iter()
        .enumerate()
        .map(|(i, step)| declare(step, limits).map_err(failed(i)))
        .collect::<Result<Vec<Access>, TxnAbort>>()?;
    let read: Read = steps
        .iter()
        .zip(&declared)
        .flat_map(|(step, access)| {
            access
                .accesses()
                .filter(|d| matches!(d.mode, Mode::Read | Mode::Write))
                .map(|d| (step.full(&d.key), d.target))
        })
        .collect();
    let mut view = keys.clone();
    let mut done = Vec::with_capacity(steps.len());
    for (i, (step, access)) in steps.iter().zip(declared).enumerate() {
        let outcome = execute(step, &access, &view, limits).map_err(failed(i))?;
        for w in outcome.ops() {
            let write = Applied {
                step,
                access: &access,
                read: &read,
            };
            write.apply(&mut view, &w.key, &w.op).map_err(failed(i))?;
        }
        done.push(Done { access, outcome });
    }
    Ok((view, done))
}

/// `declare` of `step`, and the host's checks of what it returned.
pub(super) fn declare(step: &Step, limits: &Limits) -> Result<Access, Fail> {
    let bound = format!("{} bytes of input", limits.input_bytes_max);
    let long = step.input.len() > limits.input_bytes_max;
    rules::limit(step.name, "input", long, bound)?;
    let access = match twice("declare()", || (step.declare)(&step.input)) {
        Ok(access) => access,
        Err(abort) => return Err(own_abort(step, abort, limits)),
    };
    rules::check_access(step.name, &access, limits)?;
    Ok(access)
}

/// A participant's own abort, or what the host makes of one it may not
/// use.
fn own_abort(step: &Step, abort: Abort, limits: &Limits) -> Fail {
    match rules::check_abort(step.name, &abort, limits) {
        Ok(()) => abort.into(),
        Err(fail) => fail,
    }
}

/// `execute` of `step` on a snapshot of what it declared as `view` holds
/// it, and the host's checks of what it returned.
fn execute(step: &Step, access: &Access, view: &Keys, limits: &Limits) -> Result<Outcome, Fail> {
    for d in access.accesses() {
        let Some(found) = view.get(&step.full(&d.key)).map(|e| e.data.kind()) else {
            continue;
        };
        if found != d.kind {
            return Err(Fail::new(
                "wrong_type",
                format!(
                    "`{}` holds a {}, declared as a {}",
                    d.key,
                    found.name(),
                    d.kind.name()
                ),
            ));
        }
    }
    let mut entries = Vec::new();
    for d in access.accesses() {
        if !matches!(d.mode, Mode::Read | Mode::Write) {
            continue;
        }
        let (value, items) = data::read(view, &step.full(&d.key), d.kind, &d.target);
        let bound = format!("{} items per read", limits.read_items_max);
        let many = items > limits.read_items_max;
        rules::limit(step.name, "read_items", many, bound)?;
        entries.push((d.key, d.kind, d.target, value));
    }
    let snapshot = Snapshot::from_entries(entries);
    let outcome = match twice("execute()", || (step.execute)(&step.input, &snapshot)) {
        Ok(outcome) => outcome,
        Err(abort) => return Err(own_abort(step, abort, limits)),
    };
    rules::check_outcome(step.name, &outcome, limits)?;
    Ok(outcome)
}

/// The parts of keys some step of a transaction reads (declares in read or
/// write mode), by full key. The host knows their values, so it adds
/// bounded deltas to them itself, as 64-bit integers; to any other part
/// Redis adds them under escrow, exact within 2^53 either side of 0.
type Read = BTreeSet<(String, Target)>;

/// One step's writes, as the host applies them.
struct Applied<'a> {
    step: &'a Step,
    access: &'a Access,
    read: &'a Read,
}

impl Applied<'_> {
    /// Applies `op` on `key` (relative to the step's prefix) to `view`,
    /// after checking that Redis could apply it and that a declaration
    /// covers it.
    fn apply(&self, view: &mut Keys, key: &str, op: &Op) -> Result<(), Fail> {
        rules::bad_write(key, op)?;
        if !rules::covers(self.access, key, op) {
            return Err(Fail::new(
                "undeclared_write",
                format!(
                    "participant `{}` wrote `{key}`, which it did not declare for writing: {}",
                    self.step.name,
                    rules::needs(op)
                ),
            ));
        }
        let full = self.step.full(key);
        match op {
            Op::Set { value, ttl_ms } => {
                let kept = view.get(&full).and_then(|e| e.ttl_ms);
                let entry = Entry {
                    data: Data::String(value.clone()),
                    ttl_ms: ttl_ms.or(kept),
                };
                view.insert(full, entry);
            }
            Op::Delete => {
                view.remove(&full);
            }
            Op::Adjust(by) => {
                let current = match view.get(&full).map(|e| &e.data) {
                    Some(Data::String(value)) => Some(value.as_slice()),
                    _ => None,
                };
                let what = || format!("`{key}`");
                let current = decimal(current, what)?;
                let escrow = self.escrow(&full, Target::Whole, what);
                let value = bump(current, by, i64::MIN..=i64::MAX, escrow)?;
                // The key's TTL stays, as `INCRBY` keeps it.
                *data::slot(view, &full, Kind::String) =
                    Data::String(value.to_string().into_bytes());
            }
            Op::Hset { field, value } => {
                hash(view, &full).insert(field.clone(), value.clone());
            }
            Op::Hdel { field } => {
                hash(view, &full).remove(field);
                data::drop_if_gone(view, &full);
            }
            Op::Hincrby { field, by } => {
                // A failure discards the whole view: a hash created here for
                // nothing goes with it.
                let hash = hash(view, &full);
                let what = || format!("field `{field}` of `{key}`");
                let current = decimal(hash.get(field).map(Vec::as_slice), what)?;
                let escrow = self.escrow(&full, Target::Field(field.clone()), what);
                let value = bump(current, by, i64::MIN..=i64::MAX, escrow)?;
                hash.insert(field.clone(), value.to_string().into_bytes());
            }
            Op::Sadd { member } | Op::Srem { member } => {
                let Data::Set(set) = data::slot(view, &full, Kind::Set) else {
                    unreachable!("slot() checked the type")
                };
                match op {
                    Op::Sadd { .. } => set.insert(member.clone()),
                    _ => set.remove(member),
                };
                data::drop_if_gone(view, &full);
            }
            Op::Zadd { .. } | Op::Zrem { .. } | Op::Zincrby { .. } => {
                self.zset_op(view, &full, key, op)?;
            }
            Op::Xadd { fields, maxlen } => data::xadd(view, &full, fields.clone(), *maxlen),
            Op::Rpush { values } => data::push(view, &full, values, true),
            Op::Lpush { values } => data::push(view, &full, values, false),
            Op::Expire { ttl_ms } => {
                if let Some(entry) = view.get_mut(&full) {
                    entry.ttl_ms = Some(*ttl_ms);
                }
            }
        }
        Ok(())
    }

    /// `what` names `part` of `full` if Redis adjusts it under escrow (no
    /// step of the transaction reads it); `None` if the host adds to it.
    fn escrow(&self, full: &str, part: Target, what: impl FnOnce() -> String) -> Option<String> {
        let read = |target: Target| self.read.contains(&(full.to_owned(), target));
        (!read(Target::Whole) && !read(part)).then(what)
    }

    /// `zadd`, `zrem` or `zincrby` of the sorted set `full` (`key` in the
    /// participant's terms).
    fn zset_op(&self, view: &mut Keys, full: &str, key: &str, op: &Op) -> Result<(), Fail> {
        let Data::Zset(zset) = data::slot(view, full, Kind::Zset) else {
            unreachable!("slot() checked the type")
        };
        let result = match op {
            Op::Zadd { member, score } => {
                zset.insert(member.clone(), *score);
                Ok(())
            }
            Op::Zrem { member } => {
                zset.remove(member);
                Ok(())
            }
            Op::Zincrby { member, by } => {
                let current = zset.get(member).copied().unwrap_or(0.0);
                let what = || format!("member `{member}` of `{key}`");
                let escrow = self.escrow(full, Target::Member(member.clone()), what);
                let range = -SCORE_INTEGER_MAX..=SCORE_INTEGER_MAX;
                match score_integer(current) {
                    Some(current) => bump(current, by, range, escrow).map(|score| {
                        zset.insert(member.clone(), score as f64);
                    }),
                    None => Err(Fail::new(
                        "not_an_integer",
                        format!(
                            "the score of `{member}` in `{key}` is {current}, not an integer \
                             within 2^53 either side of 0: it cannot be adjusted"
                        ),
                    )),
                }
            }
            _ => unreachable!("only sorted-set ops come here"),
        };
        data::drop_if_gone(view, full);
        result
    }
}

/// The hash `full` for a write, created if missing.
fn hash<'v>(view: &'v mut Keys, full: &str) -> &'v mut BTreeMap<String, Vec<u8>> {
    match data::slot(view, full, Kind::Hash) {
        Data::Hash(hash) => hash,
        _ => unreachable!("slot() checked the type"),
    }
}

/// An adjusted value as the host reads it: missing is 0, anything but a
/// decimal integer (`what` names it) is `not_an_integer`.
fn decimal(value: Option<&[u8]>, what: impl FnOnce() -> String) -> Result<i64, Fail> {
    let Some(bytes) = value else {
        return Ok(0);
    };
    integer(bytes).ok_or_else(|| {
        Fail::new(
            "not_an_integer",
            format!(
                "{} holds a value that is not a decimal integer: it cannot be adjusted",
                what()
            ),
        )
    })
}

/// `current` plus the bounded delta. Under escrow (`escrow` names the
/// part), a sum past 2^53 either side of 0 is the host's `overflow`; then
/// a sum that leaves `range` (what the value can hold) or the bounds is the
/// write's own abort.
fn bump(
    current: i64,
    by: &Bounded,
    range: RangeInclusive<i64>,
    escrow: Option<String>,
) -> Result<i64, Fail> {
    let sum = current.checked_add(by.delta);
    if let Some(what) = escrow {
        let exact = -SCORE_INTEGER_MAX..=SCORE_INTEGER_MAX;
        if !sum.is_some_and(|v| exact.contains(&v)) {
            return Err(Fail::new(
                "overflow",
                format!("adjusting {what} would take it past +-2^53, where adjustments are exact"),
            ));
        }
    }
    sum.filter(|v| range.contains(v) && by.bounds.contain(*v))
        .ok_or_else(|| by.abort.clone().into())
}

/// Calls `f` twice and requires the same answer: the host may call a
/// participant again and relies on it being deterministic. Compared as
/// printed, so that a NaN score is the same as itself and `-0.0` is not
/// `0.0`.
fn twice<T: std::fmt::Debug>(what: &str, f: impl Fn() -> Result<T, Abort>) -> Result<T, Abort> {
    let first = f();
    let (once, again) = (format!("{first:?}"), format!("{:?}", f()));
    assert!(
        once == again,
        "{what} answered differently for the same input: participants must be deterministic\n\
         first:  {once}\nsecond: {again}"
    );
    first
}
