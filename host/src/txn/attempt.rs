//! One attempt of a transaction, phase by phase (see the module essay).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::Instrument;

use super::background::Owed;
use super::idempotency::{self, ClaimToken};
use super::plan::{Part, Plan};
use super::types::{
    AbortInfo, Base64, KeyWrite, Record, Status, StepOutput, StoreWork, TxnResponse, output_json,
};
use super::{Coordinator, Step, TxnError, faults};
use crate::metrics::Phase;
use crate::runtime::{Adjustment, Entry, Write as GuestWrite};
use crate::store::{
    self, Bounded, ClaimedOutcome, CommitPoint, Committed, Holder, Locked, Mode, Refusal, Release,
    StoreError, Write,
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
    pub holder: Holder,
}

/// The values read, by (store, key).
type View = HashMap<(String, String), Option<Vec<u8>>>;

/// The writes of all steps, last one per key wins, by (store, key).
type Writes = BTreeMap<(String, String), Write>;

/// A store's adjusted keys, each with its adjustments in order.
type Adjusted<'a> = Vec<(&'a str, &'a [Bounded])>;

/// For each adjusted key, in order, the abort of each of its adjustments:
/// what to answer when one cannot be made.
type Aborts = HashMap<(String, String), Vec<AbortInfo>>;

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
            let done = execute(steps, plan, View::new()).await;
            self.metrics.phase(Phase::Execute, executing.elapsed());
            match done {
                Ok(done) => executed = Some(done),
                Err(abort) => return Ok(Outcome::Aborted(abort)),
            }
        }
        let reserve = executed.as_ref().map(|(_, writes, _)| writes);
        let view = match self.lock(id, plan, &entries, reserve).await {
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
                Committed::Conflict { index, holder } => {
                    self.release(id, plan, &entries).await;
                    Ok(Outcome::Blocked(Blocked {
                        store: plan.parts[primary].store.clone(),
                        key: plan.parts[primary].keys[index].0.clone(),
                        holder,
                    }))
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
                match self.store(&part.store).renew(id, lease, &entry).await {
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
        let parts: Vec<(&Part, Adjusted)> = plan
            .parts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != primary)
            .map(|(_, part)| {
                let mut adjusted = adjustments(part, writes);
                adjusted.retain(|(_, steps)| !steps.is_empty());
                (part, adjusted)
            })
            .filter(|(_, adjusted)| !adjusted.is_empty())
            .collect();
        if parts.is_empty() {
            return None;
        }
        self.metrics.round_trip();
        let reserving = Instant::now();
        let replies = join_all(parts.iter().map(|(part, adjusted)| async move {
            (
                part,
                adjusted,
                self.store(&part.store).reserve(id, adjusted).await,
            )
        }))
        .await;
        self.metrics.phase(Phase::Reserve, reserving.elapsed());
        for (part, adjusted, reply) in replies {
            match reply {
                Ok(None) => {}
                Ok(Some(refusal)) => {
                    // Indexes count the adjusted keys only: map them back.
                    let key = |index: usize| adjusted[index].0;
                    let index = |k: &str| part.keys.iter().position(|(p, _)| p == k).unwrap_or(0);
                    let refusal = refusal.reindex(|i| index(key(i)));
                    return Some(refused(id, steps, part, refusal, aborts));
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
            return Ok(View::new());
        }
        self.metrics.round_trip();
        let first = parts.first().copied();
        let replies = join_all(parts.into_iter().map(|i| async move {
            let part = &plan.parts[i];
            if Some(i) != first {
                faults::hold("prepare-partial").await;
            }
            let keys: Vec<(&str, Mode)> = part.keys.iter().map(|(k, m)| (k.as_str(), *m)).collect();
            let reserving: Vec<&[Bounded]> = match reserve {
                None => Vec::new(),
                Some(writes) => adjustments(part, writes)
                    .into_iter()
                    .map(|(_, s)| s)
                    .collect(),
            };
            let entry = part.entry(id, primary);
            let reply = self
                .store(&part.store)
                .lock_reserving(id, lease, &entry, &keys, &reserving)
                .await;
            if Some(i) == first {
                faults::point("prepare-partial").await;
            }
            (i, reply)
        }))
        .await;
        self.metrics.phase(Phase::Lock, started.elapsed());
        let mut view = View::new();
        let mut failure: Option<Stop> = None;
        let mut held = vec![false; plan.parts.len()];
        for (i, reply) in replies {
            let part = &plan.parts[i];
            match reply {
                Ok(Locked::Values(values)) => {
                    held[i] = true;
                    for ((key, _), value) in part.keys.iter().zip(values) {
                        view.insert((part.store.clone(), key.clone()), value);
                    }
                }
                Ok(Locked::Conflict { index, holder }) => {
                    if failure.is_none() {
                        failure = Some(Stop::Blocked(Blocked {
                            store: part.store.clone(),
                            key: part.keys[index].0.clone(),
                            holder,
                        }));
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
                let keys: Vec<Release> =
                    part.keys.iter().map(|(k, _)| (k.as_str(), None)).collect();
                let held = self
                    .store(&part.store)
                    .apply(id, Some(entry), &keys)
                    .await?;
                Ok::<bool, StoreError>(held == keys.len())
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
            .map(|(_, (p, _))| (p.store.clone(), store_work(p, writes)))
            .collect();
        let record = Record::Committed { stores: others }.encode();
        let single = !plan.spans(entries);
        let added = plan
            .marker(id, entries)
            .and_then(|(marker, add)| add.then_some(marker));
        let keys = releases(part, writes);
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
        let mut writes = writes;
        let stores = plan
            .parts
            .iter()
            .zip(entries)
            .enumerate()
            .filter(|(i, _)| *i != primary)
            .filter_map(|(_, (part, entry))| {
                let keys = part
                    .keys
                    .iter()
                    .map(|(k, _)| {
                        let write = writes.remove(&(part.store.clone(), k.clone()));
                        (k.clone(), write)
                    })
                    .collect();
                Some(Owed {
                    store: self.store(&part.store).clone(),
                    entry: entry.clone()?,
                    keys,
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
                let keys: Vec<Release> = part.keys.iter().map(|(k, _)| (k.as_str(), None)).collect();
                if let Err(e) = self.store(&part.store).apply(id, Some(entry), &keys).await {
                    tracing::warn!(txn = id, store = part.store, error = %e, "release incomplete; the locks end with their lease");
                }
            })
        }))
        .await;
    }
}

/// A part's keys, each with its adjustments (none for a key not adjusted).
fn adjustments<'a>(part: &'a Part, writes: &'a Writes) -> Adjusted<'a> {
    part.keys
        .iter()
        .map(|(k, _)| {
            let steps = match writes.get(&(part.store.clone(), k.clone())) {
                Some(Write::Adjust(steps)) => steps.as_slice(),
                _ => &[],
            };
            (k.as_str(), steps)
        })
        .collect()
}

/// A part's keys with their writes, for a script.
fn releases<'a>(part: &'a Part, writes: &'a Writes) -> Vec<Release<'a>> {
    part.keys
        .iter()
        .map(|(k, _)| (k.as_str(), writes.get(&(part.store.clone(), k.clone()))))
        .collect()
}

/// A part's keys with their writes, for the record.
fn store_work(part: &Part, writes: &Writes) -> StoreWork {
    StoreWork {
        keys: part.keys.iter().map(|(k, _)| k.clone()).collect(),
        writes: part
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, (k, _))| {
                let write = writes.get(&(part.store.clone(), k.clone()))?;
                Some((
                    i,
                    match write {
                        Write::Set(v) => KeyWrite::Set(Base64(v.clone())),
                        Write::Delete => KeyWrite::Delete,
                        Write::Adjust(steps) => KeyWrite::Adjust(Write::total(steps)),
                    },
                ))
            })
            .collect(),
    }
}

/// What an attempt answers when a key of `part` cannot be locked or
/// adjusted as declared.
fn refused(
    id: &str,
    steps: &[Step],
    part: &Part,
    refusal: Refusal,
    aborts: &Aborts,
) -> Result<Outcome, TxnError> {
    let abort_of = |index: usize| aborts.get(&(part.store.clone(), part.keys[index].0.clone()));
    Ok(match refusal {
        Refusal::Bound { index, step } => {
            let abort = abort_of(index).and_then(|a| a.get(step)).cloned();
            Outcome::Aborted(abort.expect("a refused adjustment was made by some step"))
        }
        Refusal::NotInteger { index } | Refusal::Range { index } => {
            let first = abort_of(index).and_then(|a| a.first());
            let key = &part.keys[index].0;
            let (code, message) = match refusal {
                Refusal::NotInteger { .. } => (
                    NOT_AN_INTEGER,
                    format!(
                        "`{key}` holds a value that is not a decimal integer: it cannot be adjusted"
                    ),
                ),
                _ => (
                    OVERFLOW,
                    format!(
                        "adjusting `{key}` would take it past +-2^53, where adjustments are exact"
                    ),
                ),
            };
            Outcome::Aborted(AbortInfo {
                code: code.into(),
                message,
                limit: None,
                ..first
                    .cloned()
                    .expect("an adjusted key was adjusted by some step")
            })
        }
        Refusal::Lost { .. } => Outcome::Fenced(format!(
            "transaction {id} was aborted by recovery before it could decide"
        )),
        Refusal::WrongType { index, found } => {
            Outcome::Aborted(wrong_type(steps, &part.store, &part.keys[index].0, &found))
        }
    })
}

/// The abort of a transaction one of whose keys holds a value of another
/// Redis type (`found`) than the string its first declaring step expects.
fn wrong_type(steps: &[Step], store: &str, key: &str, found: &str) -> AbortInfo {
    let declared = |s: &&Step| {
        s.participant.store == store
            && (s.keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok()
                || s.adjusts.binary_search_by(|k| k.as_str().cmp(key)).is_ok())
    };
    let step = steps
        .iter()
        .find(declared)
        .expect("a key refused was declared by some step");
    step.abort(
        WRONG_TYPE,
        format!(
            "`{}` (Redis key `{key}` on store `{store}`) holds a {found}, not the string the step \
             declared; nothing was applied",
            step.participant.relative(key)
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
/// the ones before it. Returns the outputs and the last write to each key.
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
                .instantiate()
                .await
                .map_err(|e| step.call_failed(e))?,
        };
        let p = &step.participant;
        let snapshot: Vec<Entry> = step
            .keys
            .iter()
            .map(|k| Entry {
                key: p.relative(k).to_owned(),
                value: view[&(p.store.clone(), k.clone())].clone(),
            })
            .collect();
        let started = Instant::now();
        let span = tracing::debug_span!(
            "call",
            participant = %step.participant.name,
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
            let (relative, write) = match write {
                GuestWrite::Set((k, v)) => (k, Write::Set(v)),
                GuestWrite::Delete(k) => (k, Write::Delete),
                GuestWrite::Adjust(adjustment) => {
                    let abort = step.guest_abort(adjustment.abort.clone());
                    adjust(
                        step,
                        plan,
                        &mut view,
                        &mut writes,
                        &mut aborts,
                        adjustment,
                        abort,
                    )?;
                    continue;
                }
            };
            let key = p.key(&relative);
            if step.writes.binary_search(&key).is_err() {
                return Err(undeclared(step, &relative));
            }
            let value = match &write {
                Write::Set(v) => Some(v.clone()),
                _ => None,
            };
            view.insert((p.store.clone(), key.clone()), value);
            writes.insert((p.store.clone(), key), write);
        }
        outputs.push(StepOutput {
            participant: p.name.clone(),
            output: output_json(&outcome.output),
        });
    }
    Ok((outputs, writes, aborts))
}

fn undeclared(step: &Step, relative: &str) -> AbortInfo {
    step.abort(
        "undeclared_write",
        format!(
            "participant `{}` wrote {relative:?}, which it did not declare for writing",
            step.participant.name
        ),
    )
}

/// One step's adjustment. On a key the transaction holds in adjust mode it
/// joins the key's adjustments, to be reserved (or checked by the commit
/// point) against what is in flight; on a key it holds exclusively (some
/// step reads it), the value is known: it is applied and checked here.
fn adjust(
    step: &Step,
    plan: &Plan,
    view: &mut View,
    writes: &mut Writes,
    aborts: &mut Aborts,
    adjustment: Adjustment,
    abort: AbortInfo,
) -> Result<(), AbortInfo> {
    let p = &step.participant;
    let key = p.key(&adjustment.key);
    let declared =
        step.adjusts.binary_search(&key).is_ok() || step.writes.binary_search(&key).is_ok();
    if !declared {
        return Err(undeclared(step, &adjustment.key));
    }
    let at = (p.store.clone(), key);
    let bounded = Bounded {
        delta: adjustment.delta,
        lower: adjustment.lower,
        upper: adjustment.upper,
    };
    if plan.mode(&at.0, &at.1) != Some(Mode::Exclusive) {
        let steps = match writes
            .entry(at.clone())
            .or_insert(Write::Adjust(Vec::new()))
        {
            Write::Adjust(steps) => steps,
            _ => unreachable!("a key written by a step is held exclusively"),
        };
        steps.push(bounded);
        aborts.entry(at).or_default().push(abort);
        return Ok(());
    }
    let current = match view.get(&at).cloned().flatten() {
        None => 0,
        Some(bytes) => store::integer(&bytes).ok_or_else(|| AbortInfo {
            code: NOT_AN_INTEGER.into(),
            message: format!(
                "`{}` holds a value that is not a decimal integer: it cannot be adjusted",
                at.1
            ),
            ..abort.clone()
        })?,
    };
    let value = current
        .checked_add(bounded.delta)
        .ok_or_else(|| abort.clone())?;
    if bounded.lower.is_some_and(|l| value < l) || bounded.upper.is_some_and(|u| value > u) {
        return Err(abort);
    }
    let bytes = value.to_string().into_bytes();
    view.insert(at.clone(), Some(bytes.clone()));
    writes.insert(at, Write::Set(bytes));
    Ok(())
}
