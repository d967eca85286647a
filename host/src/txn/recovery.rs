//! Recovery: getting locks out of the way, and finishing transactions whose
//! coordinator is gone.
//!
//! A lock names its transaction and the store holding its decision (the
//! lock's `primary`, fixed when it was taken). Whoever meets a lock reads
//! that decision at once; nobody waits for a lease to find out that a
//! transaction already decided:
//!
//! ```text
//!  decision of the holder   action, by whoever meets one of its locks
//!  ----------------------   ---------------------------------------------------
//!  committed {stores}       apply its writes for this store (carried in the
//!                           record), release: roll forward
//!  aborted                  release the lock: roll back
//!  none, lease running      wait for the release (see `wake`), at most until
//!                           the lease ends
//!  none, lease over         SET aborted NX on its primary, then act on
//!                           whichever decision stands
//!  (read-only holder)       wait while its lease runs, then break the lock
//! ```
//!
//! Writing `aborted` with NX fences a stalled coordinator: its commit point
//! refuses to write `committed` over a standing record, so it rolls back
//! when it wakes up. Every step is idempotent, so two hosts resolving the
//! same lock at once is harmless.
//!
//! Nothing waits for a reader to come by: [`Coordinator::sweep`] walks each
//! store's lock index (`rs:locks`, kept by the same scripts as the locks) for
//! entries whose lease ran out: it rolls back the undecided, rolls forward
//! the committed on every store, and finalizes records that were left
//! unfinished. An entry that cannot be resolved now (a store is down, the
//! record names a store this host does not know) goes to the back of the
//! line, so that it cannot starve the others. `serve` sweeps every
//! `txn.sweep_interval_ms`; `redstage recover` sweeps until nothing is left.
//!
//! A record never expires while a lock may point at it: the commit point
//! writes it without a TTL whenever another store is left to apply, and it
//! gets one (`txn.answered_retention_s` once answered, else
//! `txn.record_retention_s`) only when every store has applied. Hosts that
//! share stores must give them the same names: a lock's `primary` is a
//! store name.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::Serialize;

use super::attempt::Blocked;
use super::resolve::{EntryResolved, Fence, Resolution, host};
use super::types::{Record, StoreWork, WorkKey};
use super::{Coordinator, faults};
use crate::store::inspect::Indexed;
use crate::store::{Finalize, Holder, IndexEntry, KeyWork, Kind, Mode, Store, StoreError, Target};

/// Index entries one sweep resolves per store, at most.
pub const SWEEP_BATCH: usize = 256;

/// How long an entry that could not be resolved waits before the sweep
/// tries it again (the others go first meanwhile).
const SWEEP_RETRY: Duration = Duration::from_secs(5);

/// How long an entry that cannot be read at all waits before the sweep
/// looks at it again.
const SWEEP_UNREADABLE: Duration = Duration::from_secs(3600);

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Each transaction the sweep finished (or finished on some store),
    /// with what it did where.
    pub transactions: Vec<Resolution>,
    /// How many transactions: `transactions.len()`.
    pub resolved: usize,
    /// Index entries that could not be resolved now (a store was down),
    /// and stores whose lock index could not be read.
    pub failed: usize,
    /// Index entries still there after the sweep, on every store: under a
    /// live lease, or expired but not resolvable now; `unknown` when some
    /// store's index could not be counted.
    pub remaining: Count,
}

/// A count that may not be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Known(usize),
    /// Some store's lock index could not be read.
    Unknown,
}

impl Default for Count {
    fn default() -> Count {
        Count::Known(0)
    }
}

impl Count {
    /// Whether nothing is known to remain.
    pub fn is_none_left(self) -> bool {
        self == Count::Known(0)
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Count::Known(n) => s.serialize_u64(*n as u64),
            Count::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Known(n) => write!(f, "{n}"),
            Count::Unknown => f.write_str("unknown"),
        }
    }
}

impl Coordinator {
    /// Gets the lock that blocked an attempt out of the way: finishes its
    /// transaction if it is decided (or its lease is over), else waits for
    /// its release, at most until its lease ends and at most `patience`.
    pub(super) async fn unblock(
        &self,
        blocked: &Blocked,
        patience: Duration,
    ) -> Result<(), StoreError> {
        let store = self.store(&blocked.store);
        if !self.fresh(blocked.seen) {
            // Too old to fence on (see `fresh`): the next attempt meets the
            // lock again, or not.
            return Ok(());
        }
        // At least the decision's read, then the release or the wait.
        self.metrics.round_trip();
        self.metrics.round_trip();
        if self
            .resolve_lock(
                store,
                &blocked.key,
                blocked.part.as_deref(),
                &blocked.holder,
            )
            .await?
        {
            return Ok(());
        }
        let lease_left = Duration::from_millis(blocked.holder.remaining_ms.max(0) as u64 + 1);
        self.waker
            .wait(store, &blocked.key, lease_left.min(patience))
            .await;
        Ok(())
    }

    /// Finishes `holder`'s transaction on `key` (its part `part`, or the
    /// key whole) of `store` as far as its decision allows. False when it is
    /// undecided and its lease runs: the lock is rightfully held.
    async fn resolve_lock(
        &self,
        store: &Store,
        key: &str,
        part: Option<&str>,
        holder: &Holder,
    ) -> Result<bool, StoreError> {
        let target = [(part.map(str::to_owned), Mode::Exclusive)];
        let release = [KeyWork {
            key,
            kind: Kind::String,
            targets: &target,
            reads: &[],
            ops: &[],
        }];
        if holder.primary.is_empty() {
            // A read-only transaction's shared lock: nothing to decide.
            if !holder.expired() {
                return Ok(false);
            }
            store.apply(&holder.txn, None, &release).await?;
            return Ok(true);
        }
        // The lease ended `-remaining_ms` ago by the store's clock: say when
        // by this host's, which is near enough for a reader of the record.
        let fence = holder.expired().then(|| {
            let now = crate::now_ms() as i64;
            let by = format!("{}, on meeting its lock on `{key}`", host());
            Fence::new(&by, Some((store.name(), now + holder.remaining_ms, now)))
        });
        let decision = self
            .decision(&holder.txn, &holder.primary, fence.as_ref())
            .await?;
        match decision {
            None => Ok(false),
            Some(Record::Committed { stores }) => {
                let Some(work) = stores.get(store.name()) else {
                    return Err(inconsistent(store, &holder.txn));
                };
                apply_work(store, &holder.txn, &holder.primary, work).await?;
                self.metrics.recovered(true);
                // The sweep finishes and logs it once every store applied.
                tracing::debug!(
                    parent: None,
                    txn = holder.txn,
                    store = store.name(),
                    key,
                    "rolled a committed transaction forward on sight"
                );
                Ok(true)
            }
            Some(record @ Record::Aborted { .. }) => {
                store.apply(&holder.txn, None, &release).await?;
                self.metrics.recovered(false);
                if let Some(fence) = fence.filter(|f| f.wrote(&record)) {
                    let Record::Aborted { abort: Some(abort) } = fence.record() else {
                        unreachable!("a fence is an abort with its reason")
                    };
                    tracing::info!(
                        parent: None,
                        txn = holder.txn,
                        store = store.name(),
                        key,
                        why = %abort.message,
                        "rolled back a transaction whose lease ended undecided"
                    );
                }
                Ok(true)
            }
        }
    }

    /// The decision of `txn`, read from `primary`; with `fence`, a
    /// transaction without one gets the fence's `aborted` first.
    pub(super) async fn decision(
        &self,
        txn: &str,
        primary: &str,
        fence: Option<&Fence>,
    ) -> Result<Option<Record>, StoreError> {
        let Some(log) = self.stores.get(primary) else {
            return Err(StoreError::Protocol {
                store: primary.to_owned(),
                message: format!(
                    "transaction {txn} keeps its decision on store `{primary}`, which this host's \
                     config does not name: hosts sharing stores must give them the same names"
                ),
            });
        };
        let bytes = match fence {
            Some(fence) => {
                let record = fence.record().encode();
                log.decide(txn, &record, self.config.record_retention())
                    .await?
            }
            None => match log.record(txn).await? {
                Some(bytes) => bytes,
                None => return Ok(None),
            },
        };
        Record::decode(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Protocol {
                store: primary.to_owned(),
                message: format!("unreadable record of {txn}: {e}"),
            })
    }

    /// Whether what was read at `seen` (a lock, an index entry) is recent
    /// enough to fence its transaction on: within half a lease. A committed
    /// record is kept at least two leases after it is finalized (see
    /// [`crate::config::TxnConfig::finalized_retention`]), and a fence is
    /// one store call (at most half a lease) after this check: so a fence
    /// that follows a read of a lock or a marker made just before the
    /// transaction was finalized still finds its record, even if its host
    /// stalls a lease more in between, and never writes `aborted` for a
    /// transaction that committed.
    fn fresh(&self, seen: Instant) -> bool {
        seen.elapsed() < self.config.lease() / 2
    }

    /// Applies a committed transaction on every store its record lists,
    /// then finalizes the record: kept `record_retention_s`, since its
    /// client may never have heard of the outcome. `marker` is the record's
    /// marker in the primary's lock index, when known; otherwise the sweep
    /// removes it once it meets it.
    pub(super) async fn roll_forward(
        &self,
        txn: &str,
        primary: &str,
        stores: &BTreeMap<String, StoreWork>,
        marker: Option<String>,
    ) -> Result<(), StoreError> {
        let applied = join_all(stores.iter().map(|(name, work)| async move {
            let store = self.stores.get(name.as_str()).ok_or_else(|| StoreError::Protocol {
                store: name.clone(),
                message: format!(
                    "the record of {txn} names store `{name}`, which this host's config does not"
                ),
            })?;
            apply_work(store, txn, primary, work).await
        }))
        .await;
        for r in applied {
            r?;
        }
        let finalize = Finalize {
            txn: txn.to_owned(),
            ttl: self.config.record_retention(),
            marker,
            compact: false,
        };
        self.store(primary)
            .finalize(&Record::compact_committed().encode(), &[finalize])
            .await
    }

    /// Resolves up to [`SWEEP_BATCH`] expired index entries per store, and
    /// logs one line per transaction it resolved.
    pub async fn sweep(&self) -> SweepReport {
        self.sweep_as(&format!("the recovery sweep of {}", host()))
            .await
    }

    /// [`Coordinator::sweep`], naming `by` as who resolved what it resolves.
    pub async fn sweep_as(&self, by: &str) -> SweepReport {
        let mut report = SweepReport::default();
        let mut resolved: BTreeMap<String, Resolution> = BTreeMap::new();
        // Transactions rolled forward in this pass: on every store and
        // slot at once, so their other entries (a cluster store has one per
        // slot, read in the same batch) are already gone.
        let mut finished: HashSet<String> = HashSet::new();
        let mut remaining = Some(0);
        for store in self.stores.values() {
            let seen = Instant::now();
            let expired = match store.expired(SWEEP_BATCH).await {
                Ok(expired) => expired,
                Err(e) => {
                    tracing::warn!(store = store.name(), error = %e, "the recovery sweep could not read the lock index");
                    report.failed += 1;
                    remaining = None;
                    continue;
                }
            };
            for Indexed { entry, deadline_ms } in expired {
                faults::point("sweep-entry").await;
                if !self.fresh(seen) {
                    // The rest of the batch is read again next time.
                    break;
                }
                let (member, delay, result) = match entry {
                    Ok(entry) if finished.contains(&entry.txn) => continue,
                    Ok(entry) => {
                        let fence = Fence::new(by, Some((store.name(), deadline_ms, deadline_ms)));
                        let result = self.resolve_entry(store, &entry, &fence).await;
                        let resolution = resolved
                            .entry(entry.txn.clone())
                            .or_insert_with(|| Resolution::new(&entry.txn, by, false));
                        match &result {
                            Ok(done) => {
                                if let EntryResolved::RolledForward { .. } = done {
                                    finished.insert(entry.txn.clone());
                                }
                                resolution.entry(store.name(), &entry.primary, done);
                            }
                            Err(e) => resolution.did(store.name(), Err(e.to_string())),
                        }
                        (entry.encode(), SWEEP_RETRY, result.map(drop))
                    }
                    Err(member) => {
                        let e = StoreError::Protocol {
                            store: store.name().to_owned(),
                            message: format!("unreadable lock index entry {member:?}"),
                        };
                        (member, SWEEP_UNREADABLE, Err(e))
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(store = store.name(), entry = member, error = %e, "the recovery sweep could not resolve an entry; trying the others first");
                    report.failed += 1;
                    if let Err(e) = store.rescore(&member, delay).await {
                        tracing::warn!(store = store.name(), error = %e, "could not put an entry back in line");
                    }
                }
            }
            match store.lock_counts().await {
                Ok((held, _)) => remaining = remaining.map(|n| n + held as usize),
                Err(e) => {
                    tracing::warn!(store = store.name(), error = %e, "the recovery sweep could not count the locks left");
                    report.failed += 1;
                    remaining = None;
                }
            }
        }
        report.remaining = remaining.map_or(Count::Unknown, Count::Known);
        report.transactions = resolved.into_values().collect();
        report.resolved = report.transactions.len();
        for resolution in &report.transactions {
            resolution.log();
        }
        report
    }

    /// What a sweep would do now, done nothing: each transaction with an
    /// expired lock index entry, resolved in a dry run (see
    /// [`Coordinator::resolve`]).
    pub async fn sweep_plan(&self, by: &str) -> Result<Vec<Resolution>, StoreError> {
        let mut txns = std::collections::BTreeSet::new();
        for store in self.stores.values() {
            let expired = store.expired(SWEEP_BATCH).await?;
            txns.extend(
                expired
                    .into_iter()
                    .filter_map(|i| i.entry.ok())
                    .map(|e| e.txn),
            );
        }
        let mut plan = Vec::new();
        for txn in txns {
            plan.extend(self.resolve(&txn, by, true).await?);
        }
        Ok(plan)
    }

    /// Finishes the transaction of an expired index entry of `store`,
    /// fencing it with `fence` if it has no decision.
    async fn resolve_entry(
        &self,
        store: &Store,
        entry: &IndexEntry,
        fence: &Fence,
    ) -> Result<EntryResolved, StoreError> {
        let member = entry.encode();
        if entry.primary.is_empty() {
            let keys = released(&entry.keys);
            self.release_keys(store, &entry.txn, &member, &keys).await?;
            return Ok(EntryResolved::Released);
        }
        let resolved = match self
            .decision(&entry.txn, &entry.primary, Some(fence))
            .await?
        {
            // On the primary, a committed transaction's entry is the
            // record's marker: its keys there were applied at the commit
            // point; the other stores may not have been.
            Some(Record::Committed { stores }) => {
                let marker = (store.name() == entry.primary).then_some(member);
                if marker.is_none() && !stores.contains_key(store.name()) {
                    return Err(inconsistent(store, &entry.txn));
                }
                self.roll_forward(&entry.txn, &entry.primary, &stores, marker)
                    .await?;
                EntryResolved::RolledForward {
                    stores: stores.into_keys().collect(),
                    primary: entry.primary.clone(),
                }
            }
            Some(record @ Record::Aborted { .. }) => {
                let keys = released(&entry.keys);
                self.release_keys(store, &entry.txn, &member, &keys).await?;
                EntryResolved::RolledBack {
                    made: fence.wrote(&record),
                }
            }
            None => unreachable!("a fenced transaction has a decision"),
        };
        let forward = matches!(resolved, EntryResolved::RolledForward { .. });
        self.metrics.recovered(forward);
        Ok(resolved)
    }

    pub(super) async fn release_keys(
        &self,
        store: &Store,
        txn: &str,
        member: &str,
        keys: &[WorkKey],
    ) -> Result<(), StoreError> {
        let releases: Vec<KeyWork> = keys.iter().map(WorkKey::work).collect();
        store.apply(txn, Some(member), &releases).await.map(drop)
    }
}

/// Applies what `txn`'s record carries for `store` and releases its locks
/// there. Its keys and targets are the ones its index entry there lists,
/// in the same order, so the entry can be named exactly.
async fn apply_work(
    store: &Store,
    txn: &str,
    primary: &str,
    work: &StoreWork,
) -> Result<(), StoreError> {
    let keys: Vec<KeyWork> = work.keys.iter().map(WorkKey::work).collect();
    let entry = IndexEntry {
        txn: txn.to_owned(),
        primary: primary.to_owned(),
        keys: work
            .keys
            .iter()
            .flat_map(|k| {
                k.targets.iter().map(|(part, _)| Target {
                    key: k.key.clone(),
                    part: part.clone(),
                })
            })
            .collect(),
    };
    store
        .apply(txn, Some(&entry.encode()), &keys)
        .await
        .map(drop)
}

/// The targets of an index entry, key by key, with nothing to change: what
/// releases them. (The mode is the scripts' to find: they release whatever
/// lock the transaction holds.)
pub(super) fn released(targets: &[Target]) -> Vec<WorkKey> {
    let mut keys: Vec<WorkKey> = Vec::new();
    for t in targets {
        let target = (t.part.clone(), Mode::Exclusive);
        match keys.last_mut() {
            Some(k) if k.key == t.key => k.targets.push(target),
            _ => keys.push(WorkKey {
                key: t.key.clone(),
                kind: Kind::String,
                targets: vec![target],
                ops: Vec::new(),
            }),
        }
    }
    keys
}

/// A lock of a committed transaction on a store its record does not list:
/// its writes are unknown here, so nothing is touched.
pub(super) fn inconsistent(store: &Store, txn: &str) -> StoreError {
    StoreError::Protocol {
        store: store.name().to_owned(),
        message: format!(
            "transaction {txn} is committed and still holds a lock here, but its record \
             lists no writes for this store; left untouched"
        ),
    }
}
