//! Latches: the keys a transaction locks, queued for in this process first.
//!
//! Two transactions of the same host that want the same key need not race
//! for it in Redis and lose: before its first attempt a transaction takes a
//! latch on every key it declared, in the mode it will lock it in, in one
//! global order (store, then key), so that latches can never deadlock. A
//! latch has the Redis lock's modes and compatibilities: readers share it,
//! adjusters share it, nothing else does. It is fair: a request waits
//! behind every request that came before it, and a releasing transaction
//! hands the key on directly, without a round trip. A latch is held until
//! the key's Redis lock is released (the key's store has applied the
//! decision), so the next transaction of this host never meets a lock of
//! this host in Redis.
//!
//! Latches are an optimisation and a fairness device, never a correctness
//! one: the Redis locks are what every host obeys. A latch that is not
//! held by anyone leaves no trace.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::store::Mode;

/// Shards of the latch table, so that transactions on different keys
/// seldom meet on one mutex.
const SHARDS: usize = 64;

/// The state of one key's latch: who holds it, in which mode, and who
/// waits, in order.
#[derive(Debug, Default)]
struct State {
    mode: Option<Mode>,
    holders: usize,
    waiting: VecDeque<(Mode, oneshot::Sender<()>)>,
}

type Table = HashMap<(String, String), State>;

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
    latches: Latches,
}

impl Latch {
    pub fn store(&self) -> &str {
        &self.store
    }
}

/// Whether a key held in `held` may also be taken in `wanted`. (A key a
/// transaction locks by parts, or only appends to, is latched in `Append`
/// mode: transactions on different parts share the key, and those on the
/// same part meet in Redis.)
fn compatible(held: Mode, wanted: Mode) -> bool {
    held == wanted
        && matches!(
            held,
            Mode::Read | Mode::Shared | Mode::Adjust | Mode::Append
        )
}

/// The latch mode of a lock mode: reading without a lock and reading under
/// a shared lock share a latch.
fn latch_mode(mode: Mode) -> Mode {
    match mode {
        Mode::Read => Mode::Shared,
        m => m,
    }
}

impl Latches {
    /// Takes a latch on each `(store, key, mode)`, in the global order,
    /// waiting in line for each. The keys must come sorted and unique.
    pub async fn acquire<'a>(
        &self,
        keys: impl IntoIterator<Item = (&'a str, &'a str, Mode)>,
    ) -> Vec<Latch> {
        let mut held = Vec::new();
        for (store, key, mode) in keys {
            let mode = latch_mode(mode);
            let waiting = {
                let mut table = self.shard(store, key).lock().expect("latch table");
                let state = table.entry((store.to_owned(), key.to_owned())).or_default();
                let free = state.mode.is_none();
                let joins = state
                    .mode
                    .is_some_and(|m| compatible(m, mode) && state.waiting.is_empty());
                if free || joins {
                    state.mode = Some(mode);
                    state.holders += 1;
                    None
                } else {
                    let (tx, rx) = oneshot::channel();
                    state.waiting.push_back((mode, tx));
                    Some(rx)
                }
            };
            if let Some(granted) = waiting {
                let mut wait = Waiting {
                    latches: self,
                    store,
                    key,
                    granted: Some(granted),
                };
                // Granted by a release; the sender is never dropped unsent.
                let _ = wait.granted.as_mut().expect("set above").await;
                wait.granted = None;
            }
            held.push(Latch {
                store: store.to_owned(),
                key: key.to_owned(),
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

    /// Lets go of one hold; the last holder hands the latch to the waiters
    /// at the head of the line (all of them, up to the first that needs
    /// another mode, if they can share it).
    fn release(&self, store: &str, key: &str) {
        let mut table = self.shard(store, key).lock().expect("latch table");
        let k = (store.to_owned(), key.to_owned());
        let Some(state) = table.get_mut(&k) else {
            return;
        };
        state.holders -= 1;
        if state.holders > 0 {
            return;
        }
        state.mode = None;
        while let Some((mode, _)) = state.waiting.front() {
            let mode = *mode;
            if state.mode.is_some_and(|m| !compatible(m, mode)) {
                break;
            }
            let (_, granted) = state.waiting.pop_front().expect("a waiter");
            // A waiter that gave up (its transaction was dropped) is
            // skipped; the next one gets the latch.
            if granted.send(()).is_ok() {
                state.mode = Some(mode);
                state.holders += 1;
            }
        }
        if state.mode.is_none() {
            table.remove(&k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

/// A request waiting in line. Dropped before it is granted (its
/// transaction was cancelled), it leaves the line; dropped just after, it
/// gives the grant back, so that no hold is lost.
struct Waiting<'a> {
    latches: &'a Latches,
    store: &'a str,
    key: &'a str,
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut granted) = self.granted.take() {
            // Closed first, so that no grant can arrive after the look.
            granted.close();
            if granted.try_recv().is_ok() {
                self.latches.release(self.store, self.key);
            }
        }
    }
}

impl Drop for Latch {
    fn drop(&mut self) {
        self.latches.release(&self.store, &self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn blocked(latches: &Latches, mode: Mode) -> tokio::task::JoinHandle<Vec<Latch>> {
        let latches = latches.clone();
        let task = tokio::spawn(async move { latches.acquire([("s", "k", mode)]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task
    }

    #[tokio::test]
    async fn exclusive_latches_queue_and_leave_no_trace() {
        let latches = Latches::default();
        let first = latches.acquire([("s", "k", Mode::Exclusive)]).await;
        let second = blocked(&latches, Mode::Exclusive).await;
        assert!(!second.is_finished(), "a second writer got in");
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(latches.len(), 1);
        drop(second);
        assert_eq!(latches.len(), 0);
    }

    #[tokio::test]
    async fn readers_share_adjusters_share_but_not_with_each_other() {
        let latches = Latches::default();
        let readers = [
            latches.acquire([("s", "k", Mode::Shared)]).await,
            latches.acquire([("s", "k", Mode::Read)]).await,
        ];
        let adjuster = blocked(&latches, Mode::Adjust).await;
        assert!(!adjuster.is_finished(), "an adjuster got in among readers");
        // Fair: a reader that comes after the waiting adjuster waits too.
        let late_reader = blocked(&latches, Mode::Shared).await;
        assert!(!late_reader.is_finished(), "a reader overtook a waiter");
        drop(readers);
        let adjuster = adjuster.await.unwrap();
        let other = tokio::time::timeout(
            Duration::from_millis(200),
            latches.acquire([("s", "k", Mode::Adjust)]),
        )
        .await;
        assert!(other.is_err(), "a newcomer overtook the waiting reader");
        drop(adjuster);
        drop(late_reader.await.unwrap());
        assert_eq!(latches.len(), 0);
    }

    #[tokio::test]
    async fn adjusters_share() {
        let latches = Latches::default();
        let a = latches.acquire([("s", "k", Mode::Adjust)]).await;
        let b = tokio::time::timeout(
            Duration::from_secs(1),
            latches.acquire([("s", "k", Mode::Adjust)]),
        )
        .await
        .expect("adjusters share a latch");
        drop((a, b));
        assert_eq!(latches.len(), 0);
    }
}
