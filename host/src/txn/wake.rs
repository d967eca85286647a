//! Waiting for a lock that a transaction of another host holds, until its
//! release, not for a guessed backoff.
//!
//! When the lock script finds a key held by someone else it marks the key
//! as waited for (`wait` in its lock table entry); the script that finally
//! releases the key then publishes its name on the store's wake channel
//! (`rs:wake`). Each coordinator keeps one subscription per store it has
//! waited on, and wakes the transactions of this process waiting for that
//! key. A waiter registers before it checks the key once more, so that a
//! release between the conflict and the registration is not missed; and it
//! never waits past its bound (the holder's lease, the transaction's
//! remaining patience): a holder that died releases nothing, and is
//! resolved once its lease is over.
//!
//! While a store's subscription is down (the store restarted, say), waiters
//! fall back to short sleeps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, watch};

use crate::store::Store;
use crate::store::keys::WAKE_CHANNEL;

/// How long a waiter sleeps at a time while its store's subscription is
/// down.
const UNSUBSCRIBED_PAUSE: Duration = Duration::from_millis(20);

/// Pause before a lost subscription connects again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

type Waiters = HashMap<(String, String), (Arc<Notify>, usize)>;

/// The wake-ups of one coordinator.
#[derive(Debug, Default)]
pub(super) struct Waker {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (store, key) -> who waits for it, and how many.
    waiters: Mutex<Waiters>,
    /// Store -> its subscription's state: true while subscribed.
    subscriptions: Mutex<HashMap<String, Subscription>>,
}

#[derive(Debug)]
struct Subscription {
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for s in self
            .subscriptions
            .get_mut()
            .expect("subscriptions")
            .values()
        {
            s.task.abort();
        }
    }
}

impl Waker {
    /// Waits until `key` on `store` is released, or `bound` has passed.
    pub async fn wait(&self, store: &Store, key: &str, bound: Duration) {
        let waiting = Registration::new(&self.inner, store.name(), key);
        let notified = waiting.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let subscribed = self.subscribed(store).await;
        if let Ok(false) = store.is_locked(key).await {
            return; // Released since the lock script saw it held.
        }
        if subscribed {
            let _ = tokio::time::timeout(bound, notified).await;
        } else {
            tokio::time::sleep(bound.min(UNSUBSCRIBED_PAUSE)).await;
        }
    }

    /// Makes sure this coordinator listens to `store`'s wake channel;
    /// whether it does, after waiting at most the store timeout.
    async fn subscribed(&self, store: &Store) -> bool {
        let mut ready = {
            let mut subs = self.inner.subscriptions.lock().expect("subscriptions");
            subs.entry(store.name().to_owned())
                .or_insert_with(|| subscribe(Arc::downgrade(&self.inner), store.clone()))
                .ready
                .clone()
        };
        let ok = tokio::time::timeout(store.timeout(), ready.wait_for(|r| *r)).await;
        matches!(ok, Ok(Ok(_)))
    }
}

/// Starts listening to `store`'s wake channel, for as long as the waker
/// lives, connecting again whenever the connection is lost.
fn subscribe(inner: Weak<Inner>, store: Store) -> Subscription {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let connected =
                tokio::time::timeout(store.timeout(), store.client().get_async_pubsub()).await;
            if let Ok(Ok(mut pubsub)) = connected
                && pubsub.subscribe(WAKE_CHANNEL).await.is_ok()
            {
                let _ = tx.send(true);
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Some(inner) = inner.upgrade() else { return };
                    let key = String::from_utf8_lossy(message.get_payload_bytes());
                    inner.wake(store.name(), &key);
                }
                tracing::debug!(store = store.name(), "wake subscription lost; reconnecting");
            }
            let _ = tx.send(false);
            if inner.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    });
    Subscription { ready: rx, task }
}

impl Inner {
    fn wake(&self, store: &str, key: &str) {
        let waiters = self.waiters.lock().expect("waiters");
        if let Some((notify, _)) = waiters.get(&(store.to_owned(), key.to_owned())) {
            notify.notify_waiters();
        }
    }
}

/// A waiter's place in the table, given up on drop.
struct Registration<'a> {
    inner: &'a Inner,
    id: (String, String),
    notify: Arc<Notify>,
}

impl<'a> Registration<'a> {
    fn new(inner: &'a Inner, store: &str, key: &str) -> Registration<'a> {
        let id = (store.to_owned(), key.to_owned());
        let mut waiters = inner.waiters.lock().expect("waiters");
        let entry = waiters
            .entry(id.clone())
            .or_insert_with(|| (Arc::default(), 0));
        entry.1 += 1;
        let notify = entry.0.clone();
        drop(waiters);
        Registration { inner, id, notify }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiters = self.inner.waiters.lock().expect("waiters");
        if let Some(entry) = waiters.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiters.remove(&self.id);
            }
        }
    }
}
