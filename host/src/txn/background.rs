//! The work a coordinator still owes after it answered: applying a
//! committed transaction on its other stores, and finalizing decision
//! records in batches. Both are group commits: one script call per store
//! carries whatever piled up while the previous one was on its way (the
//! applies through [`Store::apply_queued`]).
//!
//! None of it can change an outcome: the decision is written before the
//! answer. If it fails, or the host dies first, the locks stay and whoever
//! meets them (or the sweep, once their lease is over) finishes the job
//! from the decision record; a record that is never finalized keeps its
//! marker in the lock index, so the sweep finds it too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use futures::future::join_all;
use tokio::sync::{Notify, mpsc};

use super::faults;
use super::latch::Latch;
use super::types::Record;
use super::types::WorkKey;
use crate::store::{Finalize, KeyWork, Store, StoreError};

/// Records finalized in one script call, at most.
const FINALIZE_BATCH: usize = 256;

/// Work in flight, so that a test, the benchmark or a shutdown can wait for
/// it ([`super::Coordinator::flush`]).
#[derive(Debug, Default)]
pub(super) struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

/// One unit of pending work; done when dropped.
#[derive(Debug)]
pub(super) struct Ticket(Arc<Pending>);

impl Pending {
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ticket(self.clone())
    }

    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// One store's share of what a transaction owes after its answer: make
/// these changes to its keys (a key without any is just released), and
/// drop its lock index entry.
#[derive(Debug)]
pub(super) struct Owed {
    pub store: Store,
    pub entry: String,
    pub keys: Vec<WorkKey>,
}

impl Owed {
    async fn pay(&self, txn: &str) -> Result<usize, StoreError> {
        let keys: Vec<KeyWork> = self.keys.iter().map(WorkKey::work).collect();
        self.store.apply_queued(txn, Some(&self.entry), &keys).await
    }
}

/// What is left of a committed transaction once it answered.
#[derive(Debug)]
pub(super) struct Remaining {
    pub txn: String,
    /// Where its decision lives.
    pub primary: Store,
    /// Each other store with its index entry and its keys' writes.
    pub stores: Vec<Owed>,
    /// Its marker in the primary's lock index, if it has other stores.
    pub marker: Option<String>,
    /// How long the record stays once finalized.
    pub retention: std::time::Duration,
    /// The latches of its keys, released store by store as they apply.
    pub latches: Vec<Latch>,
}

/// Applies `work` on its other stores, then finalizes its record. Failures
/// are logged: recovery finishes what is left.
pub(super) async fn apply(work: Remaining, finalizer: &Finalizer) {
    let Remaining {
        txn,
        primary,
        stores,
        marker,
        retention,
        latches,
    } = work;
    // The primary applied at the commit point: its keys are free already.
    let mut by_store: BTreeMap<String, Vec<Latch>> = BTreeMap::new();
    for latch in latches.into_iter().filter(|l| l.store() != primary.name()) {
        by_store
            .entry(latch.store().to_owned())
            .or_default()
            .push(latch);
    }
    faults::point("after-answer").await;
    let first = stores.first().map(|o| o.store.name().to_owned());
    let results = join_all(stores.iter().map(|owed| {
        let name = owed.store.name();
        let latches = by_store.remove(name);
        let is_first = Some(name) == first.as_deref();
        let txn = &txn;
        async move {
            if !is_first {
                faults::hold("apply-partial").await;
            }
            let applied = owed.pay(txn).await;
            drop(latches);
            if is_first {
                faults::point("apply-partial").await;
            }
            applied.map_err(|e| (name.to_owned(), e))
        }
    }))
    .await;
    drop(by_store);
    let mut complete = true;
    for r in results {
        if let Err((store, e)) = r {
            complete = false;
            tracing::warn!(txn, store, error = %e, "apply incomplete; recovery will roll it forward");
        }
    }
    if complete {
        finalizer.send(
            &primary,
            Finalize {
                txn,
                ttl: retention,
                marker,
                compact: false,
            },
        );
    }
}

/// Finalizes decision records in batches: one script call per store for
/// whatever piled up while the previous call was on its way.
#[derive(Debug, Default)]
pub(super) struct Finalizer {
    queue: OnceLock<mpsc::UnboundedSender<(Store, Finalize, Ticket)>>,
    pending: Arc<Pending>,
}

impl Finalizer {
    pub fn new(pending: Arc<Pending>) -> Finalizer {
        Finalizer {
            queue: OnceLock::new(),
            pending,
        }
    }

    /// Queues `item` for its store (the record's primary).
    pub fn send(&self, store: &Store, item: Finalize) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(rx));
            tx
        });
        let ticket = self.pending.ticket();
        let _ = queue.send((store.clone(), item, ticket));
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<(Store, Finalize, Ticket)>) {
    let compact = Record::compact_committed().encode();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < FINALIZE_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut by_store: BTreeMap<String, (Store, Vec<Finalize>)> = BTreeMap::new();
        let mut tickets = Vec::with_capacity(batch.len());
        for (store, item, ticket) in batch {
            by_store
                .entry(store.name().to_owned())
                .or_insert_with(|| (store, Vec::new()))
                .1
                .push(item);
            tickets.push(ticket);
        }
        join_all(by_store.values().map(|(store, items)| {
            let compact = &compact;
            async move {
                if let Err(e) = store.finalize(compact, items).await {
                    tracing::warn!(store = store.name(), error = %e, records = items.len(), "could not finalize decision records; the sweep will");
                }
            }
        }))
        .await;
        drop(tickets);
    }
}
