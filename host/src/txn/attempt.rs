//! One attempt of a transaction, phase by phase (see the module essay).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::Instrument;

use super::access::{self, View};
use super::background::Owed;
use super::idempotency::{self, ClaimToken};
use super::plan::{KeyPlan, Part, Plan};
use super::types::{
    AbortInfo, Record, Status, StepOutput, StoreWork, TxnResponse, WorkKey, output_json,
};
use super::{Coordinator, Step, TxnError, faults};
use crate::metrics::Phase;
use crate::runtime::{Limit, guest};
use crate::store::{
    self, Base64, Bounded, ClaimedOutcome, CommitPoint, Committed, Holder, KeyWork, Kind, Locked,
    Mode, Op, Refusal, StoreError,
};

/// How an attempt ended.
pub(super) enum Outcome {
    Committed {
        outputs: Vec<StepOutput>,
        after: After,
    },
    Aborted(AbortInfo),
    /// A lock of another transaction was in the way; nothing is held.
    Blocked(Blocked),
    /// Recovery decided `aborted` for this attempt (its lease ran out
    /// before its commit point), or its reads took too long to count;
    /// nothing is held. Run again.
    Fenced(String),
}

/// What a committed attempt leaves to do once it answered.
pub(super) enum After {
    /// Nothing: a read-only transaction released its locks before it
    /// answered (or took none).
    Nothing,
    /// Apply the other stores, then finalize the record on the primary.
    Apply {
        primary: String,
        stores: Vec<Owed>,
        marker: Option<String>,
    },
}

/// Why round trip 1 stopped an attempt; nothing is held.
enum Stop {
    Blocked(Blocked),
    /// Part `.0` refused to reserve an adjustment.
    Refused(usize, Refusal),
    Failed(StoreError),
}

/// The lock that stopped an attempt.
#[derive(Debug, Clone)]
pub(super) struct Blocked {
    pub store: String,
    pub key: String,
    /// The field or member locked, or none for the key whole.
    pub part: Option<String>,
    pub holder: Holder,
    /// When the lock was seen: recovery fences only on what is fresh.
    pub seen: Instant,
}

/// The changes of all steps, in order, by (store, key); the bounded deltas
/// of a target held in adjust mode merged into one `Adjust` op.
type Writes = BTreeMap<(String, String), Vec<Op>>;

/// For each adjusted target, by (store, key, part), the abort of each of
/// its adjustments, in order: what to answer when one cannot be made.
type Aborts = HashMap<(String, String, Option<String>), Vec<AbortInfo>>;

/// A part's keys as the scripts take them, with `writes`' changes.
fn works<'a>(part: &'a Part, writes: &'a Writes) -> Vec<KeyWork<'a>> {
    part.keys
        .iter()
        .map(|k| {
            let ops = writes
                .get(&(part.store.clone(), k.key.clone()))
                .map_or(&[][..], Vec::as_slice);
            k.work(ops)
        })
        .collect()
}

/// A part's keys with nothing to read or change: what releases them.
fn released(part: &Part) -> Vec<KeyWork<'_>> {
    part.keys.iter().map(|k| k.work(&[])).collect()
}

/// A part's keys with `writes`' changes, owned: for the record, and for the
/// apply after the answer.
fn work_keys(part: &Part, writes: &Writes) -> Vec<WorkKey> {
    part.keys
        .iter()
        .map(|k| WorkKey {
            key: k.key.clone(),
            kind: k.kind,
            targets: k.targets.clone(),
            ops: writes
                .get(&(part.store.clone(), k.key.clone()))
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

impl Coordinator {
    pub(super) async fn attempt(
        &self,
        id: &str,
        attempt: u32,
        steps: &mut [Step],
        plan: &Plan,
        claim: Option<&ClaimToken>,
    ) -> Result<Outcome, TxnError> {
        let primary = plan.primary_name();
        // A blind transaction needs no value: its steps run first, and
        // round trip 1 reserves what they adjust. Unless its primary did not
        // answer last time: then it locks there first, so that a store
        // that is down fails it before its commit point.
        let blind = plan.blind && self.store(primary).answering();
        let entries: Vec<Option<String>> = plan
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (p.locks() && plan.reads(i, blind)).then(|| p.entry(id, primary).encode())
            })
            .collect();
        let mut executed = None;
        if blind {
            let executing = Instant::now();
            let done = execute(steps, plan, View::default()).await;
            self.metrics.phase(Phase::Execute, executing.elapsed());
            match done {
                Ok(done) => executed = Some(done),
                Err(abort) => return Ok(Outcome::Aborted(abort)),
            }
        }
        let reserve = executed.as_ref().map(|(_, writes, _)| writes);
        let view = match self.lock(id, steps, plan, &entries, reserve).await {
            Ok(view) => view,
            Err(Stop::Blocked(blocked)) => return Ok(Outcome::Blocked(blocked)),
            Err(Stop::Refused(part, refusal)) => {
                let none = Aborts::new();
                let aborts = executed.as_ref().map_or(&none, |(_, _, a)| a);
                return refused(id, steps, &plan.parts[part], refusal, aborts);
            }
            Err(Stop::Failed(e)) => return Err(e.into()),
        };
        // From here on the transaction holds locks: they are kept alive
        // while it runs, however long its steps take.
        let rest = async {
            let executed = match executed {
                Some(done) => Ok(done),
                None => {
                    let executing = Instant::now();
                    let done = execute(steps, plan, view).await;
                    self.metrics.phase(Phase::Execute, executing.elapsed());
                    done
                }
            };
            let (outputs, writes, aborts) = match executed {
                Ok(done) => done,
                Err(abort) => {
                    self.release(id, plan, &entries).await;
                    return Ok(Outcome::Aborted(abort));
                }
            };
            let Some(primary) = plan.primary else {
                return self.read_only(id, plan, &entries, outputs).await;
            };
            if !blind
                && let Some(refused) = self
                    .reserve(id, steps, plan, primary, &writes, &aborts)
                    .await
            {
                self.release(id, plan, &entries).await;
                return refused;
            }
            faults::point("after-prepare").await;
            let response = TxnResponse {
                id: id.to_owned(),
                status: Status::Committed,
                attempts: attempt,
                steps: outputs,
                abort: None,
            };
            let outcome = claim.map(|c| c.done_record(&response));
            self.metrics.round_trip();
            let committing = Instant::now();
            let decided = self
                .commit_point(
                    id,
                    plan,
                    primary,
                    &entries,
                    &writes,
                    claim.zip(outcome.as_deref()),
                )
                .await;
            self.metrics.phase(Phase::Commit, committing.elapsed());
            let decided = decided.map_err(|e| TxnError::OutcomeUnknown {
                id: id.to_owned(),
                message: e.to_string(),
            })?;
            let outputs = response.steps;
            match decided {
                Committed::Ok => {
                    faults::point("after-decide").await;
                    faults::point("commit-partial").await;
                    let after = self.remaining(id, plan, primary, &entries, writes);
                    Ok(Outcome::Committed { outputs, after })
                }
                Committed::Superseded => {
                    self.release(id, plan, &entries).await;
                    Ok(Outcome::Aborted(idempotency::superseded()))
                }
                Committed::Refused(refusal) => {
                    self.release(id, plan, &entries).await;
                    refused(id, steps, &plan.parts[primary], refusal, &aborts)
                }
                Committed::Conflict {
                    index,
                    target,
                    holder,
                } => {
                    let seen = Instant::now();
                    self.release(id, plan, &entries).await;
                    Ok(Outcome::Blocked(blocked(
                        &plan.parts[primary],
                        index,
                        target,
                        holder,
                        seen,
                    )))
                }
                Committed::Stopped(e) => {
                    self.release(id, plan, &entries).await;
                    Err(e.into())
                }
                Committed::Decided(_) | Committed::Lost => {
                    self.release(id, plan, &entries).await;
                    Ok(Outcome::Fenced(format!(
                        "transaction {id} was aborted by recovery before it could decide"
                    )))
                }
            }
        };
        self.leased(id, plan, &entries, rest).await
    }

    /// Runs `work`, keeping the leases of the locks in `entries` alive
    /// meanwhile: every third of a lease, each store with locks of the
    /// attempt extends them (see [`crate::store::Store::renew`]). So a
    /// transaction is never taken for dead by recovery while its host runs
    /// it, however long its steps take within their limits; a host that dies
    /// stops renewing, and its leases end as before. Renewing shares the
    /// task with `work`, which yields at least every epoch tick.
    async fn leased<T>(
        &self,
        id: &str,
        plan: &Plan,
        entries: &[Option<String>],
        work: impl Future<Output = T>,
    ) -> T {
        if entries.iter().all(Option::is_none) {
            return work.await;
        }
        let lease = self.config.lease();
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                self.renew(id, plan, entries, lease).await;
            }
        };
        tokio::select! {
            done = work => done,
            never = renew => never,
        }
    }

    /// Extends the attempt's leases on every store where it holds locks.
    async fn renew(&self, id: &str, plan: &Plan, entries: &[Option<String>], lease: Duration) {
        let primary = plan.primary_name();
        join_all(plan.parts.iter().zip(entries).filter_map(|(part, entry)| {
            entry.as_ref()?;
            Some(async move {
                let entry = part.entry(id, primary);
                let keys = released(part);
                match self.store(&part.store).renew(id, lease, &entry, &keys).await {
                    Ok(0) => {}
                    Ok(lost) => tracing::debug!(txn = id, store = part.store, lost, "locks taken by recovery; the commit point will say so"),
                    Err(e) => tracing::warn!(txn = id, store = part.store, error = %e, "could not renew leases"),
                }
            })
        }))
        .await;
    }

    /// Reserves the adjustments on every store but the primary (whose own
    /// are checked by the commit point), all such stores in parallel, so
    /// that their bounds hold whatever else commits. `Some` when one
    /// cannot be made: what to answer, once the locks are released.
    async fn reserve(
        &self,
        id: &str,
        steps: &[Step],
        plan: &Plan,
        primary: usize,
        writes: &Writes,
        aborts: &Aborts,
    ) -> Option<Result<Outcome, TxnError>> {
        let adjusts = |k: &KeyPlan| k.targets.iter().any(|(_, m)| *m == Mode::Adjust);
        let parts: Vec<(usize, &Part)> = plan
            .parts
            .iter()
            .enumerate()
            .filter(|(i, part)| *i != primary && part.keys.iter().any(adjusts))
            .collect();
        if parts.is_empty() {
            return None;
        }
        self.metrics.round_trip();
        let reserving = Instant::now();
        let replies = join_all(parts.iter().map(|(i, part)| async move {
            let keys = works(part, writes);
            (*i, self.store(&part.store).reserve(id, &keys).await)
        }))
        .await;
        self.metrics.phase(Phase::Reserve, reserving.elapsed());
        for (i, reply) in replies {
            match reply {
                Ok(None) => {}
                Ok(Some(refusal)) => {
                    return Some(refused(id, steps, &plan.parts[i], refusal, aborts));
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
        None
    }

    /// Round trip 1: reads and locks every store's keys (see
    /// [`Plan::reads`]), all stores in parallel, reserving the adjustments
    /// in `reserve` as it goes (a blind transaction's, already run). On a
    /// conflict, a refusal or a store failure, releases what was locked and
    /// says which (a store failure first: nothing was applied, the request
    /// may be sent again).
    async fn lock(
        &self,
        id: &str,
        steps: &[Step],
        plan: &Plan,
        entries: &[Option<String>],
        reserve: Option<&Writes>,
    ) -> Result<View, Stop> {
        let started = Instant::now();
        let lease = self.config.lease();
        let primary = plan.primary_name();
        let blind = reserve.is_some();
        let parts: Vec<usize> = (0..plan.parts.len())
            .filter(|&i| plan.reads(i, blind))
            .collect();
        if parts.is_empty() {
            return Ok(View::default());
        }
        // The script bounds every read of a whole collection by the largest
        // bound of any step's; each step is held to its own when it gets
        // its snapshot.
        let read_items_max = steps
            .iter()
            .map(|s| s.participant.component.limits().read_items_max)
            .max()
            .unwrap_or_default();
        self.metrics.round_trip();
        let first = parts.first().copied();
        let none = Writes::new();
        let replies = join_all(parts.into_iter().map(|i| {
            let none = &none;
            async move {
                let part = &plan.parts[i];
                if Some(i) != first {
                    faults::hold("prepare-partial").await;
                }
                let keys = works(part, reserve.unwrap_or(none));
                let entry = part.entry(id, primary);
                let reply = self
                    .store(&part.store)
                    .lock(id, lease, &entry, &keys, blind, read_items_max)
                    .await;
                if Some(i) == first {
                    faults::point("prepare-partial").await;
                }
                (i, reply)
            }
        }))
        .await;
        self.metrics.phase(Phase::Lock, started.elapsed());
        let seen = Instant::now();
        let mut view = View::default();
        let mut failure: Option<Stop> = None;
        let mut held = vec![false; plan.parts.len()];
        for (i, reply) in replies {
            let part = &plan.parts[i];
            match reply {
                Ok(Locked::Values(values)) => {
                    held[i] = true;
                    for (key, found) in part.keys.iter().zip(values) {
                        view.insert(&part.store, &key.key, &key.reads, found);
                    }
                }
                Ok(Locked::Conflict {
                    index,
                    target,
                    holder,
                }) => {
                    if failure.is_none() {
                        failure = Some(Stop::Blocked(blocked(part, index, target, holder, seen)));
                    }
                }
                Ok(Locked::Refused(refusal)) => {
                    if failure.is_none() {
                        failure = Some(Stop::Refused(i, refusal));
                    }
                }
                Err(e) => {
                    // It may have locked before failing (a reply lost, too
                    // few replicas): release there too.
                    held[i] = true;
                    failure = Some(Stop::Failed(e));
                }
            }
        }
        let Some(failure) = failure else {
            return Ok(view);
        };
        let locked: Vec<Option<String>> = entries
            .iter()
            .zip(&held)
            .map(|(e, h)| e.clone().filter(|_| *h))
            .collect();
        self.release(id, plan, &locked).await;
        Err(failure)
    }

    /// A read-only transaction: one store read atomically needs nothing
    /// more. Across stores, its shared locks are released before the
    /// answer, each store saying how many of them it still held: if every
    /// one was, they were all held at once from the last store's read to
    /// the first release, and the snapshot is that instant's. A lock that
    /// recovery broke meanwhile (its lease ran out, by any clock) is missing
    /// from the count: a writer may have come in between, so the
    /// transaction runs again rather than answer a fractured read.
    async fn read_only(
        &self,
        id: &str,
        plan: &Plan,
        entries: &[Option<String>],
        outputs: Vec<StepOutput>,
    ) -> Result<Outcome, TxnError> {
        let committed = Outcome::Committed {
            outputs,
            after: After::Nothing,
        };
        if entries.iter().all(Option::is_none) {
            return Ok(committed);
        }
        self.metrics.round_trip();
        let released = join_all(plan.parts.iter().zip(entries).filter_map(|(part, entry)| {
            let entry = entry.as_deref()?;
            Some(async move {
                let keys = released(part);
                let targets: usize = keys.iter().map(|k| k.targets.len()).sum();
                let held = self
                    .store(&part.store)
                    .apply(id, Some(entry), &keys)
                    .await?;
                Ok::<bool, StoreError>(held == targets)
            })
        }))
        .await;
        let mut whole = true;
        for held in released {
            whole &= held?;
        }
        Ok(match whole {
            true => committed,
            false => Outcome::Fenced(format!(
                "a shared lock of {id} was broken before the reads were done: read again"
            )),
        })
    }

    /// The commit point on the primary store: the decision record (with
    /// the other stores' writes while they are unapplied), the primary's
    /// own writes, and the idempotency outcome, in one script. Keys of a
    /// primary with no entry in `entries` are not locked (a blind attempt).
    async fn commit_point(
        &self,
        id: &str,
        plan: &Plan,
        primary: usize,
        entries: &[Option<String>],
        writes: &Writes,
        claim: Option<(&ClaimToken, &[u8])>,
    ) -> Result<Committed, StoreError> {
        let part = &plan.parts[primary];
        let others: BTreeMap<String, StoreWork> = plan
            .parts
            .iter()
            .zip(entries)
            .enumerate()
            .filter(|(i, (_, entry))| *i != primary && entry.is_some())
            .map(|(_, (p, _))| {
                let keys = work_keys(p, writes);
                (p.store.clone(), StoreWork { keys })
            })
            .collect();
        let record = Record::Committed { stores: others }.encode();
        let single = !plan.spans(entries);
        let added = plan
            .marker(id, entries)
            .and_then(|(marker, add)| add.then_some(marker));
        let keys = works(part, writes);
        let point = CommitPoint {
            txn: id,
            record: &record,
            // One store: the record is the answer's receipt, shortened once
            // the answer is out. Several: it stays until they have applied.
            record_ttl: single.then(|| self.config.record_retention()),
            keys: &keys,
            marker: added.as_deref(),
            lease: self.config.lease(),
            free: entries[primary].is_none(),
            claim: claim.map(|(c, outcome)| ClaimedOutcome {
                key: &c.key,
                owner: &c.owner,
                outcome,
                retention: self.config.record_retention(),
            }),
        };
        self.store(&part.store).commit(&point).await
    }

    /// What a committed writer still has to do once it answered.
    fn remaining(
        &self,
        id: &str,
        plan: &Plan,
        primary: usize,
        entries: &[Option<String>],
        writes: Writes,
    ) -> After {
        let stores = plan
            .parts
            .iter()
            .zip(entries)
            .enumerate()
            .filter(|(i, _)| *i != primary)
            .filter_map(|(_, (part, entry))| {
                Some(Owed {
                    store: self.store(&part.store).clone(),
                    entry: entry.clone()?,
                    keys: work_keys(part, &writes),
                })
            })
            .collect::<Vec<_>>();
        After::Apply {
            primary: plan.parts[primary].store.clone(),
            stores,
            marker: plan.marker(id, entries).map(|(marker, _)| marker),
        }
    }

    /// Releases this attempt's locks on every store where it holds an
    /// index entry. A store that fails keeps them until their lease ends;
    /// then whoever meets them rolls them back.
    pub(super) async fn release(&self, id: &str, plan: &Plan, entries: &[Option<String>]) {
        self.metrics.round_trip();
        join_all(plan.parts.iter().zip(entries).filter_map(|(part, entry)| {
            let entry = entry.as_deref()?;
            Some(async move {
                let keys = released(part);
                if let Err(e) = self.store(&part.store).apply(id, Some(entry), &keys).await {
                    tracing::warn!(txn = id, store = part.store, error = %e, "release incomplete; the locks end with their lease");
                }
            })
        }))
        .await;
    }
}

/// The lock of target `target` of key `index` of `part`, which another
/// transaction holds.
fn blocked(part: &Part, index: usize, target: usize, holder: Holder, seen: Instant) -> Blocked {
    let key = &part.keys[index];
    Blocked {
        store: part.store.clone(),
        key: key.key.clone(),
        part: key.targets.get(target).and_then(|(p, _)| p.clone()),
        holder,
        seen,
    }
}

/// What an attempt answers when a key of `part` cannot be locked, read or
/// adjusted as declared.
fn refused(
    id: &str,
    steps: &[Step],
    part: &Part,
    refusal: Refusal,
    aborts: &Aborts,
) -> Result<Outcome, TxnError> {
    let key = &part.keys[refusal.index()];
    let target_part = |target: usize| key.targets.get(target).and_then(|(p, _)| p.clone());
    let abort_of =
        |target: usize| aborts.get(&(part.store.clone(), key.key.clone(), target_part(target)));
    Ok(match refusal {
        Refusal::Bound { target, step, .. } => {
            let abort = abort_of(target).and_then(|a| a.get(step)).cloned();
            Outcome::Aborted(abort.expect("a refused adjustment was made by some step"))
        }
        Refusal::NotInteger { target, .. } | Refusal::Range { target, .. } => {
            let first = abort_of(target).and_then(|a| a.first());
            let what = match target_part(target) {
                Some(p) => format!("`{}` of `{}`", p, key.key),
                None => format!("`{}`", key.key),
            };
            let (code, message) = match refusal {
                Refusal::NotInteger { .. } => (
                    NOT_AN_INTEGER,
                    format!(
                        "{what} holds a value that is not an integer (as INCRBY takes it): it cannot be adjusted"
                    ),
                ),
                _ => (
                    OVERFLOW,
                    format!(
                        "adjusting {what} would take it past +-2^53, where adjustments are exact"
                    ),
                ),
            };
            Outcome::Aborted(AbortInfo {
                code: code.into(),
                message,
                limit: None,
                ..first
                    .cloned()
                    .expect("an adjusted target was adjusted by some step")
            })
        }
        Refusal::Lost { .. } => Outcome::Fenced(format!(
            "transaction {id} was aborted by recovery before it could decide"
        )),
        Refusal::WrongType { found, .. } => {
            Outcome::Aborted(wrong_type(steps, &part.store, key, &found))
        }
        Refusal::TooMany { count, .. } => {
            let step = declaring(steps, &part.store, &key.key);
            let limit = Limit::ReadItems;
            Outcome::Aborted(AbortInfo {
                limit: Some(limit.name().to_owned()),
                ..step.abort(
                    "limit_exceeded",
                    format!(
                        "participant `{}` read `{}` whole, which holds {count} items: past its \
                         {} limit ({})",
                        step.participant.name,
                        step.participant.relative(&key.key),
                        limit.name(),
                        limit.bound(step.participant.component.limits())
                    ),
                )
            })
        }
    })
}

/// The first step that declared `key` of `store`.
fn declaring<'s>(steps: &'s [Step], store: &str, key: &str) -> &'s Step {
    steps
        .iter()
        .find(|s| s.participant.store == store && s.declared.iter().any(|d| d.key == key))
        .expect("a key of the plan was declared by some step")
}

/// The abort of a transaction one of whose keys holds a value of another
/// Redis type (`found`) than its first declaring step expects.
fn wrong_type(steps: &[Step], store: &str, key: &KeyPlan, found: &str) -> AbortInfo {
    let step = declaring(steps, store, &key.key);
    step.abort(
        WRONG_TYPE,
        format!(
            "`{}` (Redis key `{}` on store `{store}`) holds a {found}, not the {} the step \
             declared; nothing was applied",
            step.participant.relative(&key.key),
            key.key,
            key.kind.name()
        ),
    )
}

/// The abort code of a key that holds another Redis type than declared.
pub const WRONG_TYPE: &str = "wrong_type";

/// The abort code of an adjustment of a key whose value is not an integer.
pub const NOT_AN_INTEGER: &str = "not_an_integer";

/// The abort code of an adjustment past the range it is exact in.
pub const OVERFLOW: &str = "overflow";

/// Runs the steps in order on the snapshot read, each seeing the writes of
/// the ones before it. Returns the outputs and the changes to every key.
async fn execute(
    steps: &mut [Step],
    plan: &Plan,
    mut view: View,
) -> Result<(Vec<StepOutput>, Writes, Aborts), AbortInfo> {
    let mut writes = Writes::new();
    let mut aborts = Aborts::new();
    let mut outputs = Vec::with_capacity(steps.len());
    for step in steps.iter_mut() {
        let mut instance = match step.instance.take() {
            Some(instance) => instance,
            None => step
                .participant
                .instantiate(step.index)
                .await
                .map_err(|e| step.call_failed(e))?,
        };
        let snapshot = snapshot(step, &view)?;
        let p = step.participant.clone();
        let started = Instant::now();
        let span = tracing::debug_span!(
            "call",
            participant = %p.name,
            phase = "execute"
        );
        let executed = instance
            .execute(&step.input, &snapshot)
            .instrument(span)
            .await;
        p.calls.execute.record(started.elapsed());
        let outcome = match executed {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(abort)) => return Err(step.guest_abort(abort)),
            Err(e) => return Err(step.call_failed(e)),
        };
        for write in outcome.writes {
            let Some(key) = p
                .key(&write.key)
                .filter(|k| access::covers(&step.declared, k, &write.op))
            else {
                return Err(undeclared(step, &write.key, &write.op));
            };
            let at = (p.store.clone(), key);
            let (op, bounded) = access::op_of(write.op);
            let Some((delta, abort)) = bounded else {
                view.apply(&at.0, &at.1, &op);
                writes.entry(at).or_default().push(op);
                continue;
            };
            let abort = step.guest_abort(abort);
            let part = op.part().map(str::to_owned);
            let key_plan = plan
                .part(&at.0)
                .and_then(|part| part.key(&at.1))
                .expect("a declared key is in the plan");
            if key_plan.mode(part.as_deref()) == Some(Mode::Exclusive) {
                let op = adjusted(key_plan.kind, &view, &at, part, delta, abort)?;
                view.apply(&at.0, &at.1, &op);
                writes.entry(at).or_default().push(op);
                continue;
            }
            let ops = writes.entry(at.clone()).or_default();
            let merged = ops.iter_mut().find_map(|o| match o {
                Op::Adjust { part: p, steps } if *p == part => Some(steps),
                _ => None,
            });
            match merged {
                Some(steps) => steps.push(delta),
                None => ops.push(Op::Adjust {
                    part: part.clone(),
                    steps: vec![delta],
                }),
            }
            aborts.entry((at.0, at.1, part)).or_default().push(abort);
        }
        outputs.push(StepOutput {
            participant: p.name.clone(),
            output: output_json(&outcome.output),
        });
    }
    Ok((outputs, writes, aborts))
}

/// A step's snapshot: the value of each access it declared in read or
/// write mode, as it stands after the steps before it, within the step's
/// own bound on the items of one read.
fn snapshot(step: &Step, view: &View) -> Result<Vec<guest::Entry>, AbortInfo> {
    let p = &step.participant;
    let max = p.component.limits().read_items_max;
    let mut entries = Vec::with_capacity(step.declared.len());
    for d in &step.declared {
        let Some(read) = d.read() else { continue };
        let found = view
            .get(&p.store, &d.key, &read)
            .expect("round trip 1 read what the steps declared");
        if access::items(found) > max {
            let limit = Limit::ReadItems;
            return Err(AbortInfo {
                limit: Some(limit.name().to_owned()),
                ..step.abort(
                    "limit_exceeded",
                    format!(
                        "participant `{}` read `{}` whole, which holds {} items: past its {} \
                         limit ({})",
                        p.name,
                        p.relative(&d.key),
                        access::items(found),
                        limit.name(),
                        limit.bound(p.component.limits())
                    ),
                )
            });
        }
        entries.push(access::entry(p.relative(&d.key), d, found));
    }
    Ok(entries)
}

fn undeclared(step: &Step, key: &str, op: &guest::Op) -> AbortInfo {
    step.abort(
        "undeclared_write",
        format!(
            "participant `{}` made {} on {key:?}, which it did not declare for that",
            step.participant.name,
            op_name(op)
        ),
    )
}

/// An op's name, as the contract gives it.
fn op_name(op: &guest::Op) -> &'static str {
    use guest::Op as O;
    match op {
        O::Set(_) => "set",
        O::Delete => "delete",
        O::Adjust(_) => "adjust",
        O::Hset(_) => "hset",
        O::Hdel(_) => "hdel",
        O::Hincrby(_) => "hincrby",
        O::Sadd(_) => "sadd",
        O::Srem(_) => "srem",
        O::Zadd(_) => "zadd",
        O::Zrem(_) => "zrem",
        O::Zincrby(_) => "zincrby",
        O::Xadd(_) => "xadd",
        O::Rpush(_) => "rpush",
        O::Lpush(_) => "lpush",
        O::Expire(_) => "expire",
    }
}

/// A bounded delta to a target held exclusively (some step reads it): the
/// value is known, so the host applies and checks it here, and the change
/// is a plain write of the new value.
fn adjusted(
    kind: Kind,
    view: &View,
    (store, key): &(String, String),
    part: Option<String>,
    delta: Bounded,
    abort: AbortInfo,
) -> Result<Op, AbortInfo> {
    let raw = view
        .value(store, key, part.as_deref())
        .expect("the plan reads what an exclusive adjustment adds to");
    let not_integer = || AbortInfo {
        code: NOT_AN_INTEGER.into(),
        message: format!(
            "`{key}`{} holds a value that is not an integer (as INCRBY takes it): it cannot be \
             adjusted",
            part.as_deref()
                .map(|p| format!(" `{p}`"))
                .unwrap_or_default()
        ),
        ..abort.clone()
    };
    let current = match &raw {
        None => 0,
        Some(bytes) => store::integer(bytes).ok_or_else(not_integer)?,
    };
    let value = current
        .checked_add(delta.delta)
        .ok_or_else(|| abort.clone())?;
    if delta.lower.is_some_and(|l| value < l) || delta.upper.is_some_and(|u| value > u) {
        return Err(abort);
    }
    let bytes = value.to_string().into_bytes();
    Ok(match (kind, part) {
        (Kind::Hash, Some(f)) => Op::HSet(f, Base64(bytes)),
        (Kind::Zset, Some(m)) => Op::ZAdd(m, value as f64),
        _ => Op::Set {
            value: Base64(bytes),
            ttl_ms: None,
        },
    })
}
