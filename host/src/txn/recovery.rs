//! Recovery: finishing transactions whose coordinator is gone.
//!
//! A lock whose lease has run out (by the clock of the store holding it)
//! belongs to a coordinator that crashed, stalled or lost its store. Whoever
//! meets it finishes its transaction from the decision record:
//!
//! ```text
//!  record of the holder     action
//!  ----------------------   -------------------------------------------------
//!  committed {stores}       commit(holder) on every listed key: roll forward
//!  aborted                  rollback(holder) on the key met
//!  none                     SET aborted NX, then act on whichever record stands
//! ```
//!
//! Writing `aborted` with NX fences the stalled coordinator: its own
//! `committed` write (also NX) can no longer win, so it rolls back when it
//! wakes up. Every step is idempotent, so two hosts resolving the same lock
//! at once is harmless.
//!
//! Nothing waits for a reader to come by: [`Coordinator::sweep`] walks each
//! store's lock index (`rs:locks`, kept by the prepare, commit and rollback
//! scripts in the same step as the locks themselves) for leases that ran
//! out and resolves them. `serve` sweeps every `txn.sweep_interval_ms`;
//! `redstage recover` sweeps until nothing is left.
//!
//! Decision records and idempotency outcomes carry a TTL of
//! `txn.record_retention_s`, so Redis itself keeps the log bounded. The
//! retention must exceed by far the time any lock can stay unresolved (a
//! lock that outlived its record would be taken for undecided).

use futures::future::join_all;
use serde::Serialize;

use super::Coordinator;
use super::types::Record;
use crate::store::StoreError;

impl Coordinator {
    /// Finishes the transaction `holder`, whose expired lock was met on `key`.
    pub async fn resolve(&self, store: &str, key: &str, holder: &str) -> Result<(), StoreError> {
        let log = self.log();
        let standing = match log.record(holder).await? {
            Some(record) => record,
            None => {
                let aborted = Record::Aborted { abort: None };
                log.decide(holder, &aborted.encode(), self.config.record_retention())
                    .await?
            }
        };
        let record = Record::decode(&standing).map_err(|e| StoreError::Protocol {
            store: log.name().to_owned(),
            message: format!("unreadable record of {holder}: {e}"),
        })?;
        match record {
            Record::Committed { stores } => {
                let results = join_all(stores.iter().filter_map(|(name, keys)| {
                    let Some(store) = self.stores.get(name) else {
                        tracing::warn!(txn = holder, store = name, "record names an unknown store");
                        return None;
                    };
                    Some(store.commit(holder, keys))
                }))
                .await;
                for r in results {
                    r?;
                }
                tracing::info!(
                    txn = holder,
                    "rolled forward an expired committed transaction"
                );
            }
            Record::Aborted { .. } => {
                self.store(store).rollback(holder, &[key]).await?;
                tracing::info!(txn = holder, key, "rolled back an expired lock");
            }
        }
        self.metrics
            .recovered_locks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// [`Coordinator::resolve`] for callers that will retry anyway.
    pub(super) async fn resolve_logged(&self, store: &str, key: &str, holder: &str) {
        if let Err(e) = self.resolve(store, key, holder).await {
            tracing::warn!(txn = holder, key, error = %e, "could not resolve an expired lock");
        }
    }
}

/// Expired locks one sweep resolves per store, at most.
pub const SWEEP_BATCH: usize = 256;

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Expired locks whose transaction was finished.
    pub resolved: usize,
    /// Expired locks that could not be resolved now (a store was down).
    pub failed: usize,
    /// Locks still held after the sweep, on every store: under a live
    /// lease, or expired but not resolvable now.
    pub remaining: usize,
}

impl Coordinator {
    /// Resolves up to [`SWEEP_BATCH`] expired locks per store.
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        for store in self.stores.values() {
            let expired = match store.expired_locks(SWEEP_BATCH).await {
                Ok(expired) => expired,
                Err(e) => {
                    tracing::warn!(store = store.name(), error = %e, "sweep could not read the lock index");
                    report.failed += 1;
                    continue;
                }
            };
            for (holder, key) in expired {
                match self.resolve(store.name(), &key, &holder).await {
                    Ok(()) => report.resolved += 1,
                    Err(e) => {
                        tracing::warn!(txn = holder, key, error = %e, "sweep could not resolve a lock");
                        report.failed += 1;
                    }
                }
            }
            match store.lock_count().await {
                Ok(n) => report.remaining += n,
                Err(_) => report.failed += 1,
            }
        }
        report
    }
}
