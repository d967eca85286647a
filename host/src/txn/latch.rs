//! Latches: the keys a transaction locks, queued for in this process first.
//!
//! Two transactions of the same host that want the same key need not race
//! for it in Redis and lose: before its first attempt a transaction takes a
//! latch on every key it declared (shared for keys it only reads, exclusive
//! for keys it may write), in one global order (store, then key), so that
//! latches can never deadlock. Each latch is a fair read-write lock: waiters
//! are served in the order they came, and a releasing transaction hands the
//! key on directly, without a round trip. A latch is held until the key's
//! Redis lock is released (the key's store has applied the decision), so
//! the next transaction of this host never meets a lock of this host in
//! Redis.
//!
//! Latches are an optimisation and a fairness device, never a correctness
//! one: the Redis locks are what every host obeys. A latch that is not
//! held by anyone leaves no trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Shards of the latch table, so that transactions on different keys
/// seldom meet on one mutex.
const SHARDS: usize = 64;

type Table = HashMap<(String, String), Arc<RwLock<()>>>;

/// The latch table of one coordinator.
#[derive(Debug, Clone)]
pub(super) struct Latches {
    shards: Arc<[Mutex<Table>]>,
}

impl Default for Latches {
    fn default() -> Self {
        Latches {
            shards: (0..SHARDS).map(|_| Mutex::new(Table::new())).collect(),
        }
    }
}

/// A held latch on one key of one store.
#[derive(Debug)]
pub(super) struct Latch {
    store: String,
    key: String,
    lock: Arc<RwLock<()>>,
    guard: Option<Guard>,
    latches: Latches,
}

#[derive(Debug)]
enum Guard {
    #[allow(dead_code)] // held for its drop
    Shared(OwnedRwLockReadGuard<()>),
    #[allow(dead_code)] // held for its drop
    Exclusive(OwnedRwLockWriteGuard<()>),
}

impl Latch {
    pub fn store(&self) -> &str {
        &self.store
    }
}

impl Latches {
    /// Takes a latch on each `(store, key, exclusive)`, in the global order,
    /// waiting in line for each. The keys must come sorted and unique.
    pub async fn acquire<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str, bool)>,
    ) -> Vec<Latch> {
        let mut held = Vec::new();
        for (store, key, exclusive) in keys {
            let lock = self.entry(store, key);
            let guard = if exclusive {
                Guard::Exclusive(lock.clone().write_owned().await)
            } else {
                Guard::Shared(lock.clone().read_owned().await)
            };
            held.push(Latch {
                store: store.to_owned(),
                key: key.to_owned(),
                lock,
                guard: Some(guard),
                latches: self.clone(),
            });
        }
        held
    }

    fn shard(&self, store: &str, key: &str) -> &Mutex<Table> {
        use std::hash::{Hash, Hasher};
        // Fixed keys: the same key must always land in the same shard.
        let mut hasher = std::hash::DefaultHasher::new();
        (store, key).hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }

    fn entry(&self, store: &str, key: &str) -> Arc<RwLock<()>> {
        let mut table = self.shard(store, key).lock().expect("latch table");
        table
            .entry((store.to_owned(), key.to_owned()))
            .or_default()
            .clone()
    }

    /// Forgets the latch of a key nobody holds or waits for. Clones of an
    /// entry are only made under the shard's mutex, so the count cannot
    /// grow while it is held.
    fn forget(&self, store: &str, key: &str, lock: &Arc<RwLock<()>>) {
        let mut table = self.shard(store, key).lock().expect("latch table");
        let k = (store.to_owned(), key.to_owned());
        if Arc::strong_count(lock) == 2 && table.get(&k).is_some_and(|l| Arc::ptr_eq(l, lock)) {
            table.remove(&k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

impl Drop for Latch {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.latches.forget(&self.store, &self.key, &self.lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn exclusive_latches_queue_and_leave_no_trace() {
        let latches = Latches::default();
        let first = latches.acquire([("s", "k", true)]).await;
        let second = {
            let latches = latches.clone();
            tokio::spawn(async move { latches.acquire([("s", "k", true)]).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "a second writer got in");
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(latches.len(), 1);
        drop(second);
        assert_eq!(latches.len(), 0);
    }

    #[tokio::test]
    async fn shared_latches_share() {
        let latches = Latches::default();
        let a = latches.acquire([("s", "k", false)]).await;
        let b = tokio::time::timeout(Duration::from_secs(1), latches.acquire([("s", "k", false)]))
            .await
            .expect("readers share a latch");
        drop((a, b));
        assert_eq!(latches.len(), 0);
    }
}
