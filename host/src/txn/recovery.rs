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

use futures::future::join_all;

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
                log.decide(
                    holder,
                    &Record::Aborted.encode(),
                    self.config.record_retention(),
                )
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
            Record::Aborted => {
                self.store(store).rollback(holder, &[key]).await?;
                tracing::info!(txn = holder, key, "rolled back an expired lock");
            }
        }
        Ok(())
    }

    /// [`Coordinator::resolve`] for callers that will retry anyway.
    pub(super) async fn resolve_logged(&self, store: &str, key: &str, holder: &str) {
        if let Err(e) = self.resolve(store, key, holder).await {
            tracing::warn!(txn = holder, key, error = %e, "could not resolve an expired lock");
        }
    }
}
