//! Redis stores: connections, the key layout, and the scripts that change
//! keys atomically.
//!
//! # Key layout
//!
//! Data stays where a plain Redis client expects it; everything redstage
//! needs to run transactions lives beside it, in the same hash slot, under
//! the reserved `rs:` prefix:
//!
//! ```text
//!  key                       type    fields / value                 lives on
//!  ------------------------  ------  -----------------------------  -----------------
//!  inventory:stock:A1        string  "8"  (the committed value)     participant's store
//!  rs:{inventory:stock:A1}   hash    ver      committed version     same store, same slot
//!                                    lock     txn id holding it      } only while a txn
//!                                    lease    deadline, ms, by the   } is between prepare
//!                                             store's own clock      } and commit/rollback
//!                                    primary  store of the decision  }
//!                                    op       set | del              }
//!                                    staged   the new value          }
//!  rs:locks                  zset    "<txn id>\n<data key>" scored  every store
//!                                    by lease deadline: the locks
//!                                    the recovery sweep walks
//!  rs:txn:<txn id>           string  {"state":"committed",          the log store
//!                                     "stores":{"orders":[keys]}}   (TTL: record retention)
//!                                    or {"state":"aborted",...}
//!  rs:idem:<client key>      string  {"state":"pending","owner",    the log store
//!                                     "lease"} while the first       (TTL: record retention)
//!                                    request runs, then
//!                                    {"state":"done","response"}
//! ```
//!
//! A data key with braces gets a meta key whose hash tag is chosen to land in
//! the data key's slot (`rs:{<tag>}:<key>`), so one script on one slot can
//! always check and change both. Versions only grow: the metadata hash of a
//! key that was ever committed stays, even after the key is deleted, so a
//! delete and a re-create can never look like "unchanged".
//!
//! # Operations
//!
//! Each operation is one script call on one store ([`scripts`]), bounded by
//! the store timeout: [`Store::read`], [`Store::prepare`],
//! [`Store::validate`], [`Store::commit`], [`Store::rollback`],
//! [`Store::commit_one_phase`], and on the log store [`Store::decide`] and
//! [`Store::record`]. The protocol that strings them together is in `txn`.

pub mod keys;
pub mod scripts;

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};

pub use keys::Key;

/// What went wrong talking to a store. Every variant names the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not reach the store, or it did not answer within the timeout.
    /// The operation may or may not have been applied.
    #[error("store `{store}` is unavailable: {message}")]
    Unavailable { store: String, message: String },
    /// The store answered something the protocol does not expect (a data key
    /// of another Redis type, for instance).
    #[error("store `{store}` answered unexpectedly: {message}")]
    Protocol { store: String, message: String },
}

/// The state of one key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadKey {
    pub value: Option<Vec<u8>>,
    /// The committed version ("0" for a key redstage never wrote).
    pub ver: String,
    pub lock: Option<Lock>,
}

/// A lock met on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The transaction holding it.
    pub holder: String,
    /// True once its lease ran out (by the store's clock): anyone may resolve it.
    pub expired: bool,
}

/// Why a checking script refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The key at this index is locked by another transaction.
    Locked { index: usize, lock: Lock },
    /// The key at this index changed since it was read.
    Changed { index: usize },
}

/// A write to stage or apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(Vec<u8>),
    Delete,
}

impl Write {
    fn op(&self) -> &'static str {
        match self {
            Write::Set(_) => "set",
            Write::Delete => "del",
        }
    }

    fn value(&self) -> &[u8] {
        match self {
            Write::Set(v) => v,
            Write::Delete => b"",
        }
    }
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours: run the transaction.
    Claimed,
    /// A first request with this key is still running.
    InFlight,
    /// A first request finished; its stored outcome.
    Done(Vec<u8>),
}

/// A key checked by [`Store::commit_one_phase`]: its version as read, and the
/// write to apply, if any.
#[derive(Debug, Clone)]
pub struct CheckedKey<'a> {
    pub key: &'a str,
    pub ver: &'a str,
    pub write: Option<&'a Write>,
}

/// The compiled scripts, loaded once per process.
struct Scripts {
    read: Script,
    prepare: Script,
    validate: Script,
    commit: Script,
    rollback: Script,
    commit_one_phase: Script,
    expired_locks: Script,
    claim: Script,
    settle_claim: Script,
    decide_claimed: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        read: Script::new(scripts::READ),
        prepare: Script::new(scripts::PREPARE),
        validate: Script::new(scripts::VALIDATE),
        commit: Script::new(scripts::COMMIT),
        rollback: Script::new(scripts::ROLLBACK),
        commit_one_phase: Script::new(scripts::COMMIT_ONE_PHASE),
        expired_locks: Script::new(scripts::EXPIRED_LOCKS),
        claim: Script::new(scripts::CLAIM),
        settle_claim: Script::new(scripts::SETTLE_CLAIM),
        decide_claimed: Script::new(scripts::DECIDE_CLAIMED),
    })
}

/// One named Redis store.
#[derive(Clone)]
pub struct Store {
    /// The name operators gave it in the config; errors and records use it.
    name: String,
    /// Reconnects by itself after the store restarts; cheap to clone.
    conn: ConnectionManager,
    /// Upper bound on any one operation, so that a stopped store fails a
    /// transaction instead of hanging it.
    timeout: Duration,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

impl Store {
    /// Sets up a connection to `url` without waiting for it: a store that is
    /// down at start-up fails the transactions that need it, not the service.
    pub fn connect(name: &str, url: &str, timeout: Duration) -> Result<Store, StoreError> {
        let unavailable = |e: redis::RedisError| StoreError::Unavailable {
            store: name.to_owned(),
            message: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(Store {
            name: name.to_owned(),
            conn,
            timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Answers when the store answers `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let _: Value = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Values, versions and locks of `keys`, in one round trip.
    pub async fn read(&self, keys: &[&str]) -> Result<Vec<ReadKey>, StoreError> {
        let mut inv = scripts().read.prepare_invoke();
        for k in keys {
            inv.key(Key::Data(k).encode()).key(Key::Meta(k).encode());
        }
        let reply = self.invoke(&mut inv).await?;
        let items = self.array(reply)?;
        if items.len() != keys.len() * 4 {
            return Err(self.protocol("read returned the wrong number of fields"));
        }
        items
            .chunks(4)
            .map(|c| {
                let lock = match &c[2] {
                    Value::Nil => None,
                    holder => Some(Lock {
                        holder: self.string(holder)?,
                        expired: matches!(c[3], Value::Int(1)),
                    }),
                };
                Ok(ReadKey {
                    value: self.bytes_or_nil(&c[0])?,
                    ver: self.string(&c[1])?,
                    lock,
                })
            })
            .collect()
    }

    /// Locks each key for `txn` and stages its write, if every key is
    /// unlocked (or already ours) and still at the version read.
    pub async fn prepare(
        &self,
        txn: &str,
        lease: Duration,
        primary: &str,
        writes: &[(&str, &str, &Write)],
    ) -> Result<Option<Conflict>, StoreError> {
        let mut inv = scripts().prepare.prepare_invoke();
        inv.arg(txn).arg(lease.as_millis() as u64).arg(primary);
        for (key, ver, write) in writes {
            inv.key(Key::Data(key).encode())
                .key(Key::Meta(key).encode());
            inv.arg(*ver).arg(write.op()).arg(write.value());
        }
        inv.key(Key::LockIndex.encode());
        let reply = self.invoke(&mut inv).await?;
        self.conflict(reply)
    }

    /// Checks that keys read but not written are unlocked and unchanged.
    pub async fn validate(
        &self,
        txn: &str,
        reads: &[(&str, &str)],
    ) -> Result<Option<Conflict>, StoreError> {
        let mut inv = scripts().validate.prepare_invoke();
        inv.arg(txn);
        for (key, ver) in reads {
            inv.key(Key::Meta(key).encode()).arg(*ver);
        }
        let reply = self.invoke(&mut inv).await?;
        self.conflict(reply)
    }

    /// Checks and applies a whole single-store transaction at once.
    pub async fn commit_one_phase(
        &self,
        txn: &str,
        keys: &[CheckedKey<'_>],
    ) -> Result<Option<Conflict>, StoreError> {
        let mut inv = scripts().commit_one_phase.prepare_invoke();
        inv.arg(txn);
        for k in keys {
            inv.key(Key::Data(k.key).encode())
                .key(Key::Meta(k.key).encode());
            match k.write {
                Some(w) => inv.arg(k.ver).arg(w.op()).arg(w.value()),
                None => inv.arg(k.ver).arg("read").arg(""),
            };
        }
        let reply = self.invoke(&mut inv).await?;
        self.conflict(reply)
    }

    /// Applies what `txn` staged on `keys`. Returns how many were applied
    /// now (0 when a previous call already did).
    pub async fn commit(&self, txn: &str, keys: &[impl AsRef<str>]) -> Result<usize, StoreError> {
        let mut inv = scripts().commit.prepare_invoke();
        inv.arg(txn);
        for k in keys {
            let k = k.as_ref();
            inv.key(Key::Data(k).encode()).key(Key::Meta(k).encode());
        }
        inv.key(Key::LockIndex.encode());
        let reply = self.invoke(&mut inv).await?;
        self.count(reply)
    }

    /// Drops what `txn` staged on `keys` and releases their locks.
    pub async fn rollback(&self, txn: &str, keys: &[impl AsRef<str>]) -> Result<usize, StoreError> {
        let mut inv = scripts().rollback.prepare_invoke();
        inv.arg(txn);
        for k in keys {
            let k = k.as_ref();
            inv.key(Key::Data(k).encode()).key(Key::Meta(k).encode());
        }
        inv.key(Key::LockIndex.encode());
        let reply = self.invoke(&mut inv).await?;
        self.count(reply)
    }

    /// Writes the decision record of `txn` unless one exists (`SET NX`), and
    /// returns the record that stands: ours, or the one written first.
    pub async fn decide(
        &self,
        txn: &str,
        record: &[u8],
        retention: Duration,
    ) -> Result<Vec<u8>, StoreError> {
        let key = Key::TxnRecord(txn).encode();
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(record)
            .arg("NX")
            .arg("PX")
            .arg(retention.as_millis() as u64);
        let mut get = redis::cmd("GET");
        get.arg(&key);
        // One round trip: the GET sees whichever SET won.
        let mut pipe = redis::pipe();
        pipe.add_command(set).ignore().add_command(get);
        let (stored,): (Option<Vec<u8>>,) = self.bounded(pipe.query_async(&mut conn)).await?;
        stored.ok_or_else(|| self.protocol("decision record vanished right after SET NX"))
    }

    /// The decision record of `txn`, if any.
    pub async fn record(&self, txn: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(Key::TxnRecord(txn).encode());
        self.bounded(get.query_async(&mut conn)).await
    }

    /// Up to `max` locks whose lease has run out, as `(txn, data key)`.
    pub async fn expired_locks(&self, max: usize) -> Result<Vec<(String, String)>, StoreError> {
        let mut inv = scripts().expired_locks.prepare_invoke();
        inv.key(Key::LockIndex.encode()).arg(max);
        let entries = self.array(self.invoke(&mut inv).await?)?;
        entries
            .iter()
            .map(|e| {
                let entry = self.string(e)?;
                let (txn, key) = entry
                    .split_once('\n')
                    .ok_or_else(|| self.protocol("malformed lock index entry"))?;
                Ok((txn.to_owned(), key.to_owned()))
            })
            .collect()
    }

    /// How many locks are held on this store (live or expired).
    pub async fn lock_count(&self) -> Result<usize, StoreError> {
        let mut conn = self.conn.clone();
        let mut card = redis::cmd("ZCARD");
        card.arg(Key::LockIndex.encode());
        self.bounded(card.query_async(&mut conn)).await
    }

    /// Whether `txn` holds any lock on this store.
    pub async fn holds_locks(&self, txn: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut scan = redis::cmd("ZSCAN");
        scan.arg(Key::LockIndex.encode())
            .arg(0)
            .arg("MATCH")
            .arg(format!("{txn}\n*"))
            .arg("COUNT")
            .arg(10_000);
        let (_, found): (String, Vec<String>) = self.bounded(scan.query_async(&mut conn)).await?;
        Ok(!found.is_empty())
    }

    /// Claims an idempotency key (see [`scripts::CLAIM`]).
    pub async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Claim, StoreError> {
        let mut inv = scripts().claim.prepare_invoke();
        inv.key(Key::Idempotency(key).encode())
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .arg(retention.as_millis() as u64);
        let items = self.array(self.invoke(&mut inv).await?)?;
        match (
            items
                .first()
                .map(|v| self.string(v))
                .transpose()?
                .as_deref(),
            items.get(1),
        ) {
            (Some("claimed"), _) => Ok(Claim::Claimed),
            (Some("in_flight"), _) => Ok(Claim::InFlight),
            (Some("done"), Some(record)) => {
                Ok(Claim::Done(self.bytes_or_nil(record)?.unwrap_or_default()))
            }
            _ => Err(self.protocol("unknown claim reply")),
        }
    }

    /// Replaces `owner`'s claim with `record`, or drops it if `record` is
    /// empty. False when the claim is no longer `owner`'s.
    pub async fn settle_claim(
        &self,
        key: &str,
        owner: &str,
        record: &[u8],
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let mut inv = scripts().settle_claim.prepare_invoke();
        inv.key(Key::Idempotency(key).encode())
            .arg(owner)
            .arg(record)
            .arg(retention.as_millis() as u64);
        Ok(self.count(self.invoke(&mut inv).await?)? == 1)
    }

    /// [`Store::decide`] for a transaction holding an idempotency claim: the
    /// decision and, if it stands, `outcome` under the idempotency key, at
    /// once. `None` when the claim was taken over (nothing was decided).
    pub async fn decide_claimed(
        &self,
        txn: &str,
        record: &[u8],
        claim: (&str, &str),
        outcome: &[u8],
        retention: Duration,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (key, owner) = claim;
        let mut inv = scripts().decide_claimed.prepare_invoke();
        inv.key(Key::TxnRecord(txn).encode())
            .key(Key::Idempotency(key).encode())
            .arg(record)
            .arg(owner)
            .arg(retention.as_millis() as u64)
            .arg(outcome);
        let items = self.array(self.invoke(&mut inv).await?)?;
        match (
            items
                .first()
                .map(|v| self.string(v))
                .transpose()?
                .as_deref(),
            items.get(1),
        ) {
            (Some("fenced"), _) => Ok(None),
            (Some("standing"), Some(r)) => Ok(self.bytes_or_nil(r)?),
            _ => Err(self.protocol("unknown decide reply")),
        }
    }

    async fn invoke(&self, inv: &mut redis::ScriptInvocation<'_>) -> Result<Value, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(inv.invoke_async(&mut conn)).await
    }

    /// Runs one Redis call under the store timeout and names the store in
    /// any error.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_unavailable(&e) => Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: e.to_string(),
            }),
            Ok(Err(e)) => Err(self.protocol(&e.to_string())),
            Err(_) => Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }

    fn conflict(&self, reply: Value) -> Result<Option<Conflict>, StoreError> {
        let items = self.array(reply)?;
        let tag = items.first().map(|v| self.string(v)).transpose()?;
        let index = || match items.get(1) {
            Some(Value::Int(i)) => Ok(*i as usize),
            _ => Err(self.protocol("conflict reply without a key index")),
        };
        match tag.as_deref() {
            Some("ok") => Ok(None),
            Some("changed") => Ok(Some(Conflict::Changed { index: index()? })),
            Some("locked") if items.len() == 4 => Ok(Some(Conflict::Locked {
                index: index()?,
                lock: Lock {
                    holder: self.string(&items[2])?,
                    expired: matches!(items[3], Value::Int(1)),
                },
            })),
            _ => Err(self.protocol("unknown script reply")),
        }
    }

    fn array(&self, v: Value) -> Result<Vec<Value>, StoreError> {
        match v {
            Value::Array(items) => Ok(items),
            other => Err(self.protocol(&format!("expected an array, got {other:?}"))),
        }
    }

    fn count(&self, v: Value) -> Result<usize, StoreError> {
        match v {
            Value::Int(n) if n >= 0 => Ok(n as usize),
            other => Err(self.protocol(&format!("expected a count, got {other:?}"))),
        }
    }

    fn bytes_or_nil(&self, v: &Value) -> Result<Option<Vec<u8>>, StoreError> {
        match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(b.clone())),
            other => Err(self.protocol(&format!("expected a value, got {other:?}"))),
        }
    }

    fn string(&self, v: &Value) -> Result<String, StoreError> {
        match v {
            Value::BulkString(b) => String::from_utf8(b.clone())
                .map_err(|_| self.protocol("expected UTF-8 in a protocol field")),
            Value::SimpleString(s) => Ok(s.clone()),
            Value::Int(i) => Ok(i.to_string()),
            other => Err(self.protocol(&format!("expected a string, got {other:?}"))),
        }
    }

    fn protocol(&self, message: &str) -> StoreError {
        StoreError::Protocol {
            store: self.name.clone(),
            message: message.to_owned(),
        }
    }
}

/// Errors after which the store may still be fine but we cannot tell what it
/// did: connection trouble and timeouts, as opposed to an error reply.
fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}
