//! Finishing one transaction now (`POST /v1/transactions/{id}/resolve`,
//! `redstage recover ID`), and the report recovery gives of what it did to
//! each transaction, whoever asked.
//!
//! Resolving uses recovery's own steps (see `recovery`), never others: the
//! decision is read from the transaction's primary; a transaction without
//! one is fenced first (`aborted` written with `SET NX` where its commit
//! point would write, so that it can no longer commit), whether or not its
//! lease has ended; then a committed transaction is rolled forward on every
//! store its record lists, and an aborted one's locks are released. A
//! read-only transaction decides nothing and cannot be fenced: its shared
//! locks are left alone while its lease runs (breaking them could let a
//! writer in between its reads), and released after.
//!
//! ```text
//!  found                            resolve does                 report
//!  -------------------------------  ---------------------------  ----------------------
//!  locks, committed record          apply every store, finalize  rolled_forward / finalized
//!  locks, aborted record            release every store          rolled_back
//!  locks, no record                 fence, then release          rolled_back, made
//!  read-only locks, lease over      release                      released
//!  read-only locks, lease running   nothing                      left
//!  no lock, unfinished record       apply every store, finalize  rolled_forward / finalized
//!  no lock, finished record         nothing                      (no stores)
//!  nothing                          nothing                      404
//! ```
//!
//! A fence carries who wrote it and why (`abort.code = "recovered"`), so
//! that a lookup tells a transaction rolled back by recovery from one its
//! own participants aborted.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use futures::future::join_all;
use serde::Serialize;

use super::types::{AbortInfo, Record, Status};
use super::{Coordinator, is_txn_id};
use crate::store::inspect::Indexed;
use crate::store::{IndexEntry, Store, StoreError};

pub use super::RECOVERED;

/// What resolving a transaction did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Resolution {
    pub id: String,
    /// The store holding its decision; absent for a read-only transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The decision acted on; absent for a read-only transaction, which
    /// decides nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Status>,
    /// Whether the decision was made here (the transaction had none: it was
    /// fenced, `aborted` with code `recovered`) rather than found.
    pub made: bool,
    /// What was done on each store holding its locks or named by its
    /// record; empty when nothing was left to do.
    pub stores: Vec<StoreAction>,
    /// Who resolved it.
    pub by: String,
    /// Nothing was done: this is what would be.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// What was done on one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoreAction {
    pub store: String,
    pub action: Action,
    /// With `failed`: why. Recovery tries again later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A committed transaction's writes applied here, its locks released.
    RolledForward,
    /// Its record, on its primary, shrunk to its final form: every store
    /// has applied.
    Finalized,
    /// An aborted (or fenced) transaction's locks released here.
    RolledBack,
    /// A read-only transaction's shared locks released, its lease over.
    Released,
    /// A read-only transaction's shared locks left: its lease runs.
    Left,
    /// Could not be done now (a store did not answer): see `error`.
    Failed,
}

impl Action {
    /// The name the report gives it.
    pub fn name(self) -> &'static str {
        match self {
            Action::RolledForward => "rolled_forward",
            Action::Finalized => "finalized",
            Action::RolledBack => "rolled_back",
            Action::Released => "released",
            Action::Left => "left",
            Action::Failed => "failed",
        }
    }
}

/// Who fences a transaction that has no decision, and why; carried by the
/// `aborted` record as its abort (see [`RECOVERED`]).
#[derive(Debug, Clone)]
pub(super) struct Fence {
    record: Record,
}

impl Fence {
    /// A fence by `by`, of a transaction whose lease ends at `deadline_ms`
    /// (by `store`'s clock, `now_ms` there now), if known.
    pub fn new(by: &str, lease: Option<(&str, i64, i64)>) -> Fence {
        let why = match lease {
            Some((store, deadline_ms, now_ms)) if deadline_ms <= now_ms => format!(
                "its lease on store `{store}` ended at {} with no decision written",
                rfc3339(deadline_ms)
            ),
            Some((store, deadline_ms, _)) => format!(
                "it had no decision written; its lease on store `{store}` was to end at {}",
                rfc3339(deadline_ms)
            ),
            None => "its lease ended with no decision written".to_owned(),
        };
        let abort = AbortInfo {
            step: None,
            participant: None,
            code: RECOVERED.into(),
            message: format!("rolled back by {by}: {why}"),
            limit: None,
        };
        Fence {
            record: Record::Aborted { abort: Some(abort) },
        }
    }

    /// The record the fence writes.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Whether `record` is this fence's own (written by it, not found).
    pub fn wrote(&self, record: &Record) -> bool {
        *record == self.record
    }
}

/// What resolving one lock index entry did (see `recovery`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EntryResolved {
    /// Read-only: its shared locks released.
    Released,
    /// Aborted (`made`: fenced just now): its locks here released.
    RolledBack { made: bool },
    /// Committed: rolled forward on these stores, record finalized.
    RolledForward {
        stores: Vec<String>,
        primary: String,
    },
}

/// This process, as recovery names it in fences and logs: `host NAME (pid
/// N)`.
pub fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "unknown".to_owned());
        format!("host {name} (pid {})", std::process::id())
    })
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

impl Resolution {
    pub(super) fn new(id: &str, by: &str, dry_run: bool) -> Resolution {
        Resolution {
            id: id.to_owned(),
            primary: None,
            decision: None,
            made: false,
            stores: Vec::new(),
            by: by.to_owned(),
            dry_run,
        }
    }

    /// Records `action` on `store` (a later action on a store it already
    /// lists replaces the earlier one unless that one failed).
    pub(super) fn did(&mut self, store: &str, result: Result<Action, String>) {
        let (action, error) = match result {
            Ok(action) => (action, None),
            Err(e) => (Action::Failed, Some(e)),
        };
        match self.stores.iter_mut().find(|s| s.store == store) {
            Some(s) if s.action == Action::Failed => {}
            Some(s) => {
                s.action = action;
                s.error = error;
            }
            None => self.stores.push(StoreAction {
                store: store.to_owned(),
                action,
                error,
            }),
        }
        self.stores.sort_by(|a, b| a.store.cmp(&b.store));
    }

    /// What recovery did with one lock index entry of this transaction on
    /// `store`.
    pub(super) fn entry(&mut self, store: &str, primary: &str, resolved: &EntryResolved) {
        if !primary.is_empty() {
            self.primary = Some(primary.to_owned());
        }
        match resolved {
            EntryResolved::Released => self.did(store, Ok(Action::Released)),
            EntryResolved::RolledBack { made } => {
                self.decision = Some(Status::Aborted);
                self.made |= made;
                self.did(store, Ok(Action::RolledBack));
            }
            EntryResolved::RolledForward { stores, primary } => {
                self.decision = Some(Status::Committed);
                for s in stores {
                    self.did(s, Ok(Action::RolledForward));
                }
                self.did(primary, Ok(Action::Finalized));
            }
        }
    }

    /// Takes in what a later resolution of the same transaction did: its
    /// actions replace this one's on the same stores.
    pub fn merge(&mut self, later: Resolution) {
        self.primary = later.primary.or(self.primary.take());
        self.decision = later.decision.or(self.decision);
        self.made |= later.made;
        for action in later.stores {
            self.stores.retain(|s| s.store != action.store);
            self.stores.push(action);
        }
        self.stores.sort_by(|a, b| a.store.cmp(&b.store));
    }

    /// Whether it failed on some store.
    pub fn failed(&self) -> bool {
        self.stores.iter().any(|s| s.action == Action::Failed)
    }

    /// One log line, at info when this resolution changed an outcome's fate
    /// (made the decision, or finished a committed transaction), at debug
    /// when it only cleaned up after a decision someone else made and
    /// logged.
    pub(super) fn log(&self) {
        let stores: Vec<String> = self
            .stores
            .iter()
            .map(|s| format!("{}:{}", s.store, s.action.name()))
            .collect();
        let decision = self.decision.map_or("none", |d| match d {
            Status::Committed => "committed",
            Status::Aborted => "aborted",
        });
        let notable = self.made || self.decision == Some(Status::Committed) || self.failed();
        if notable {
            tracing::info!(parent: None, txn = %self.id, %decision, made = self.made, stores = %stores.join(","), by = %self.by, "recovery resolved a transaction");
        } else {
            tracing::debug!(parent: None, txn = %self.id, %decision, made = self.made, stores = %stores.join(","), by = %self.by, "recovery resolved a transaction");
        }
    }
}

impl Coordinator {
    /// Finishes transaction `id` now by the protocol's rules (see the
    /// module essay), as `by`; with `dry_run`, says what it would do and
    /// does nothing. `None` when nothing is known of it (no lock, no
    /// record, or not a transaction id).
    pub async fn resolve(
        &self,
        id: &str,
        by: &str,
        dry_run: bool,
    ) -> Result<Option<Resolution>, StoreError> {
        if !is_txn_id(id) {
            return Ok(None);
        }
        let found = join_all(
            self.stores
                .values()
                .map(|s| async move { s.entries_of(id).await.map(|es| (s, es)) }),
        )
        .await;
        let mut entries: Vec<(&Store, IndexEntry, i64)> = Vec::new();
        for found in found {
            let (store, indexed) = found?;
            for Indexed { entry, deadline_ms } in indexed {
                let entry = entry.map_err(|member| StoreError::Protocol {
                    store: store.name().to_owned(),
                    message: format!("unreadable lock index entry {member:?}"),
                })?;
                entries.push((store, entry, deadline_ms));
            }
        }
        let mut resolution = Resolution::new(id, by, dry_run);
        let Some((_, first, _)) = entries.first() else {
            return self.resolve_unlocked(resolution).await;
        };
        if first.primary.is_empty() {
            self.release_read_only(&mut resolution, &entries).await?;
            resolution.log();
            return Ok(Some(resolution));
        }
        let primary = first.primary.clone();
        resolution.primary = Some(primary.clone());
        let record = match self.decision(id, &primary, None).await? {
            Some(record) => record,
            None => {
                let (store, _, deadline) = &entries[0];
                let now = store.now_ms().await?;
                let fence = Fence::new(by, Some((store.name(), *deadline, now)));
                resolution.made = true;
                if dry_run {
                    fence.record().clone()
                } else {
                    let record = self.decision(id, &primary, Some(&fence)).await?;
                    let record = record.expect("a fenced transaction has a decision");
                    resolution.made = fence.wrote(&record);
                    record
                }
            }
        };
        match record {
            Record::Committed { stores } => {
                resolution.decision = Some(Status::Committed);
                let marker = entries
                    .iter()
                    .find(|(s, _, _)| s.name() == primary)
                    .map(|(_, e, _)| e.encode());
                for (store, entry, _) in &entries {
                    if !stores.contains_key(store.name()) && store.name() != primary {
                        let e = super::recovery::inconsistent(store, &entry.txn);
                        resolution.did(store.name(), Err(e.to_string()));
                    }
                }
                self.forward(&mut resolution, &primary, &stores, marker)
                    .await;
            }
            Record::Aborted { .. } => {
                resolution.decision = Some(Status::Aborted);
                for (store, entry, _) in &entries {
                    let done = match dry_run {
                        true => Ok(()),
                        false => self.release_entry(store, entry).await,
                    };
                    if done.is_ok() && !dry_run {
                        self.metrics.recovered(false);
                    }
                    let done = done.map(|()| Action::RolledBack).map_err(|e| e.to_string());
                    resolution.did(store.name(), done);
                }
            }
        }
        resolution.log();
        Ok(Some(resolution))
    }

    /// Rolls a committed transaction forward on every store its record
    /// lists (`stores`) and finalizes its record on `primary`.
    async fn forward(
        &self,
        resolution: &mut Resolution,
        primary: &str,
        stores: &BTreeMap<String, super::types::StoreWork>,
        marker: Option<String>,
    ) {
        let done = match resolution.dry_run {
            true => Ok(()),
            false => {
                self.roll_forward(&resolution.id, primary, stores, marker)
                    .await
            }
        };
        let failed = done.as_ref().err().map(ToString::to_string);
        for store in stores.keys().map(String::as_str).chain([primary]) {
            let action = match store == primary {
                true => Action::Finalized,
                false => Action::RolledForward,
            };
            let result = match &failed {
                None => Ok(action),
                Some(e) => Err(e.clone()),
            };
            if !resolution.dry_run && failed.is_none() && store != primary {
                self.metrics.recovered(true);
            }
            resolution.did(store, result);
        }
    }

    /// A transaction with no lock left: finishes its record if it is still
    /// unfinished (a committed one whose stores may not all have applied).
    async fn resolve_unlocked(
        &self,
        mut resolution: Resolution,
    ) -> Result<Option<Resolution>, StoreError> {
        let Some((primary, record)) = self.find_record(&resolution.id).await? else {
            return Ok(None);
        };
        resolution.primary = Some(primary.clone());
        match record {
            Record::Committed { stores } => {
                resolution.decision = Some(Status::Committed);
                if !stores.is_empty() {
                    self.forward(&mut resolution, &primary, &stores, None).await;
                    resolution.log();
                }
            }
            Record::Aborted { .. } => resolution.decision = Some(Status::Aborted),
        }
        Ok(Some(resolution))
    }

    /// The record of `txn` that stands (see `Coordinator::lookup`), with
    /// the store holding it.
    pub(super) async fn find_record(
        &self,
        txn: &str,
    ) -> Result<Option<(String, Record)>, StoreError> {
        let records = join_all(self.stores.values().map(|s| s.record(txn))).await;
        let mut found = Vec::new();
        for (store, record) in self.stores.values().zip(records) {
            if let Some(bytes) = record? {
                let record = super::decode_record(store.name(), txn, &bytes)?;
                found.push((store.name().to_owned(), record));
            }
        }
        Ok(found.into_iter().max_by_key(|(_, r)| r.finality()))
    }

    /// A read-only transaction's shared locks: released where their lease
    /// is over, left where it runs.
    async fn release_read_only(
        &self,
        resolution: &mut Resolution,
        entries: &[(&Store, IndexEntry, i64)],
    ) -> Result<(), StoreError> {
        for (store, entry, deadline) in entries {
            if *deadline > store.now_ms().await? {
                resolution.did(store.name(), Ok(Action::Left));
                continue;
            }
            let done = match resolution.dry_run {
                true => Ok(()),
                false => self.release_entry(store, entry).await,
            };
            let done = done.map(|()| Action::Released).map_err(|e| e.to_string());
            resolution.did(store.name(), done);
        }
        Ok(())
    }

    /// Releases every key of `entry` on `store` and drops the entry.
    pub(super) async fn release_entry(
        &self,
        store: &Store,
        entry: &IndexEntry,
    ) -> Result<(), StoreError> {
        let keys = super::recovery::released(&entry.keys);
        self.release_keys(store, &entry.txn, &entry.encode(), &keys)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_732_700_000_123), "2024-11-27T09:33:20.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_fence_says_who_and_why_and_knows_its_own_record() {
        let fence = Fence::new("a test", Some(("orders", 1_000, 2_000)));
        let Record::Aborted { abort: Some(abort) } = fence.record() else {
            panic!("a fence aborts");
        };
        assert_eq!(abort.code, RECOVERED);
        assert!(
            abort.message.contains("rolled back by a test")
                && abort.message.contains("ended at 1970-01-01T00:00:01.000Z"),
            "{}",
            abort.message
        );
        assert!(fence.wrote(&fence.record().clone()));
        assert!(!fence.wrote(&Record::Aborted { abort: None }));
        let live = Fence::new("a test", Some(("orders", 3_000, 2_000)));
        assert!(format!("{:?}", live.record()).contains("was to end at"));
    }
}
