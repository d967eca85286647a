//! Redis stores: connections, the key layout, and the scripts that change
//! keys atomically.
//!
//! # Key layout
//!
//! Data stays where a plain Redis client expects it; everything redstage
//! needs to run transactions lives beside it, in the same hash slot, under
//! the reserved `rs:` prefix, and only for as long as it is needed:
//!
//! ```text
//!  key                       type    fields / value                   lives
//!  ------------------------  ------  -------------------------------  ---------------------
//!  inventory:stock:A1        any     the committed value, of the type participant's store
//!                                    the participants declare
//!                                    (string, hash, set, zset,
//!                                    stream, list)
//!  rs:{inventory:stock:A1}   hash    the key's lock table: the lock   same store and slot,
//!                                    on the key whole (`w`), on each  only while something
//!                                    field or member (`p:<part>`),    of the key is locked:
//!                                    each a mode (x exclusive, s      gone with its last
//!                                    shared, a adjusted), a wait      lock
//!                                    flag and per holder its txn,
//!                                    lease deadline (ms, by the
//!                                    store's own clock) and primary;
//!                                    the adjusters of each target
//!                                    and their reservations (see
//!                                    `scripts`)
//!  rs:locks                  zset    one entry per transaction with   every store; gone
//!                                    locks (or appends) here:         when empty
//!                                    "<txn>\n[primary, [targets]]",
//!                                    scored by lease deadline: what
//!                                    the sweep walks. On the
//!                                    primary, the entry stays after
//!                                    the commit point as the
//!                                    record's marker, until finalized
//!  rs:{<tag>}:locks          zset    the same, per hash slot, on a    a cluster store, in
//!                                    Redis Cluster store: entries     the slot it indexes
//!                                    for that slot's keys only
//!                                    (see `cluster`)
//!  rs:txn:<txn>              string  the decision record, see         the primary store:
//!                                    `txn::types::Record`             no TTL while a store
//!                                                                     is unapplied, then
//!                                                                     retention
//!  rs:idem:<client key>      string  {"state":"pending","owner",      the log store
//!                                     "lease","request"} while the    (TTL: record
//!                                    first request runs, then         retention)
//!                                    {"state":"done","response"}
//!  channel rs:wake                   keys released while waited for
//! ```
//!
//! A data key with braces gets a lock table key whose hash tag is chosen to
//! land in the data key's slot (`rs:{<tag>}:<key>`), so one script on one
//! slot can always check and change both. Nothing is kept for an unlocked
//! key: no version numbers, so nothing grows with the keys a store has
//! seen, and nothing to compare: a transaction holds a lock on everything
//! it reads (the key, or the field or member) from the read until its
//! decision is applied, so what it read cannot change under it (see `txn`).
//! What a transaction does to one key, as every script takes it, is a
//! [`KeyWork`] (see `work`).
//!
//! # Operations
//!
//! Each operation is one script call on one store ([`scripts`]), bounded by
//! the store timeout: [`Store::lock`] (read and lock, reserving
//! adjustments as it locks when asked), [`Store::reserve`],
//! [`Store::commit`] (the commit point; `free`, for targets only adjusted or
//! appended to, which it checks and changes without a lock taken before),
//! [`Store::apply`] (apply or roll back, and release; after an answer,
//! [`Store::apply_queued`]: many transactions in one call), [`Store::renew`],
//! [`Store::finalize`], and for recovery [`Store::decide`],
//! [`Store::record`], [`Store::expired`]. The protocol that strings them
//! together is in `txn`.

pub mod cluster;
pub mod durability;
pub mod inspect;
pub mod keys;
pub mod scripts;
pub mod work;

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::join_all;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{StoreConfig, StoreTls};

pub use durability::{Replication, Settings};
pub use keys::{IndexEntry, Key, Target};
pub use work::{Base64, Found, KeyWork, Kind, Op, Read};

use serde::{Deserialize, Serialize};

/// What went wrong talking to a store. Every variant names the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Could not reach the store, or it did not answer within the timeout,
    /// or fewer replicas than configured acknowledged a write. The
    /// operation may or may not have been applied.
    #[error("store `{store}` is unavailable: {message}")]
    Unavailable { store: String, message: String },
    /// The store answered something the protocol does not expect (a data key
    /// of another Redis type, for instance).
    #[error("store `{store}` answered unexpectedly: {message}")]
    Protocol { store: String, message: String },
}

/// How a transaction holds a target (a key whole, or a hash field or set
/// member) from the moment it reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Read without a lock: a read-only transaction on one store, which a
    /// single script reads atomically.
    Read,
    /// Read and lock against writers: a target only read, by a transaction
    /// that spans stores or writes.
    Shared,
    /// Read and lock against everyone: a target the transaction may write.
    Exclusive,
    /// Lock against readers and writers, not against other adjusters, and
    /// read nothing: a target the transaction only adjusts (escrow).
    Adjust,
    /// No lock at all: a key the transaction only appends to (a stream, a
    /// list). Appends commute and read nothing.
    Append,
}

impl Mode {
    fn code(self) -> &'static str {
        match self {
            Mode::Read => "r",
            Mode::Shared => "s",
            Mode::Exclusive => "x",
            Mode::Adjust => "a",
            Mode::Append => "-",
        }
    }

    /// How a transaction must hold a target that its steps want in both
    /// modes.
    pub fn combine(self, other: Mode) -> Mode {
        match (self, other) {
            (a, b) if a == b => a,
            (Mode::Read, m) | (m, Mode::Read) => m,
            (Mode::Append, m) | (m, Mode::Append) => m,
            // Read and adjusted, or written: the value is needed, and
            // changed.
            _ => Mode::Exclusive,
        }
    }

    /// Whether holding a target in this mode takes a lock.
    pub fn locks(self) -> bool {
        !matches!(self, Mode::Read | Mode::Append)
    }
}

/// The transaction in the way of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub txn: String,
    /// Until its lease runs out, by the store's clock; zero or less once it
    /// has (then anyone may resolve it).
    pub remaining_ms: i64,
    /// The store holding its decision; empty for a read-only transaction.
    pub primary: String,
}

impl Holder {
    pub fn expired(&self) -> bool {
        self.remaining_ms <= 0
    }
}

/// What [`Store::lock`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Locked {
    /// Every target is held in its mode; per key, what each of its reads
    /// found, in order.
    Values(Vec<Vec<Found>>),
    /// Target `target` of the key at `index` is held by another
    /// transaction; nothing was locked.
    Conflict {
        index: usize,
        target: usize,
        holder: Holder,
    },
    /// A key cannot be locked or read as declared, or an adjustment to
    /// reserve cannot be made; nothing was locked.
    Refused(Refusal),
}

/// One adjustment of an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounded {
    pub delta: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<i64>,
}

/// Adjustments as a script takes them, `delta:lower:upper;...` (a bound
/// left empty when there is none).
pub(crate) fn steps_arg(steps: &[Bounded]) -> Vec<u8> {
    let bound = |b: Option<i64>| b.map(|b| b.to_string()).unwrap_or_default();
    steps
        .iter()
        .map(|s| format!("{}:{}:{}", s.delta, bound(s.lower), bound(s.upper)))
        .collect::<Vec<_>>()
        .join(";")
        .into_bytes()
}

/// Adjustments as [`scripts::COMMIT_ADJUSTED`] takes them: their sum, and
/// the least and the most the value (with the reservations of others
/// counted) may be for every step to stay within its bounds, and every sum
/// along the way within what Lua's numbers hold exactly, so that the script
/// compares two numbers instead of parsing the steps; a bound is empty
/// where there is none (no steps). Both bounds are kept within ±(2^53 - 1):
/// beyond, the script answers `again` and the general one decides. None
/// when no value passes, or a sum along the way is beyond 2^53: the general
/// script takes those.
pub fn commit_bounds(steps: &[Bounded]) -> Option<[String; 3]> {
    const EXACT: i128 = 1 << 53;
    if steps.is_empty() {
        return Some(["0".to_owned(), String::new(), String::new()]);
    }
    let (mut sum, mut low, mut high) = (0i128, -(EXACT - 1), EXACT - 1);
    for step in steps {
        sum += i128::from(step.delta);
        if sum.abs() > EXACT {
            return None;
        }
        low = low.max(-EXACT - sum);
        high = high.min(EXACT - sum);
        if let Some(lower) = step.lower {
            low = low.max(i128::from(lower) - sum);
        }
        if let Some(upper) = step.upper {
            high = high.min(i128::from(upper) - sum);
        }
    }
    (low <= high).then(|| [sum.to_string(), low.to_string(), high.to_string()])
}

/// Why targets could not be locked, read or adjusted as declared. `index`
/// is the key's, in the caller's list; `target`, the target's in that
/// key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Adjustment `step` of the target would break its bound.
    Bound {
        index: usize,
        target: usize,
        step: usize,
    },
    /// The target holds a value that is not an integer.
    NotInteger { index: usize, target: usize },
    /// The target would leave the range adjustments are exact in (+-2^53).
    Range { index: usize, target: usize },
    /// A lock of the transaction on the target is gone (recovery took
    /// it): nothing was reserved.
    Lost { index: usize, target: usize },
    /// The key holds a value of another Redis type (`found`, as `TYPE`
    /// names it) than declared.
    WrongType { index: usize, found: String },
    /// A read of the whole key (or a range of it) would return `count`
    /// items, more than the limit the script was given.
    TooMany { index: usize, count: usize },
}

impl Refusal {
    /// The key it refuses, as an index into the caller's list.
    pub fn index(&self) -> usize {
        match self {
            Refusal::Bound { index, .. }
            | Refusal::NotInteger { index, .. }
            | Refusal::Range { index, .. }
            | Refusal::Lost { index, .. }
            | Refusal::WrongType { index, .. }
            | Refusal::TooMany { index, .. } => *index,
        }
    }

    /// The same refusal with its key's index passed through `f`.
    pub fn reindex(self, f: impl Fn(usize) -> usize) -> Refusal {
        let mut refusal = self;
        match &mut refusal {
            Refusal::Bound { index, .. }
            | Refusal::NotInteger { index, .. }
            | Refusal::Range { index, .. }
            | Refusal::Lost { index, .. }
            | Refusal::WrongType { index, .. }
            | Refusal::TooMany { index, .. } => *index = f(*index),
        }
        refusal
    }
}

/// The integer `bytes` holds, by the rule `INCRBY` and `HINCRBY` apply:
/// `0`, or an optional `-`, a digit 1-9 and more digits, within a signed
/// 64-bit integer. So `007`, `-0`, `+5`, ` 5` and `1e3` are not integers
/// here either (the scripts' `integer` helper is the same rule in Lua).
pub fn integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [b'0'] => bytes.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours: run the transaction.
    Claimed,
    /// A first request with this key is still running.
    InFlight,
    /// The key was used before for a different request.
    Reused,
    /// A first request finished; its stored outcome.
    Done(Vec<u8>),
}

/// The commit point of one transaction, on its primary store.
#[derive(Debug)]
pub struct CommitPoint<'a> {
    pub txn: &'a str,
    /// The decision record.
    pub record: &'a [u8],
    /// Its TTL, or none while other stores still have to apply.
    pub record_ttl: Option<Duration>,
    /// This store's keys, with their targets and changes.
    pub keys: &'a [KeyWork<'a>],
    /// An entry to add to the lock index, marking the record as unfinished
    /// until [`Store::finalize`]: when the transaction holds no lock here
    /// (its own index entry here is the marker otherwise).
    pub marker: Option<&'a str>,
    /// How long before the sweep may look at an unfinished record.
    pub lease: Duration,
    /// The transaction holds no lock here: its keys here are only adjusted
    /// (see [`scripts::COMMIT`]), checked free and adjusted in this step.
    pub free: bool,
    /// The idempotency claim this commit must still hold, and the outcome
    /// to store under it.
    pub claim: Option<ClaimedOutcome<'a>>,
}

/// An idempotency key's claim and the outcome that replaces it on commit.
#[derive(Debug)]
pub struct ClaimedOutcome<'a> {
    pub key: &'a str,
    pub owner: &'a str,
    pub outcome: &'a [u8],
    pub retention: Duration,
}

/// How a commit point went.
#[derive(Debug)]
pub enum Committed {
    /// Decided and applied here.
    Ok,
    /// An adjustment here cannot be made: nothing was decided.
    Refused(Refusal),
    /// A record was there first (recovery's `aborted`): nothing changed.
    Decided(Vec<u8>),
    /// The idempotency claim was taken over: nothing changed.
    Superseded,
    /// A lock of the transaction here is gone: nothing changed.
    Lost,
    /// A commit point that is `free`: target `target` of the key at `index`
    /// is held by another transaction. Nothing changed.
    Conflict {
        index: usize,
        target: usize,
        holder: Holder,
    },
    /// A commit point that is `free` met what it cannot go past (a lock of
    /// the first protocol), as this error says. Nothing changed.
    Stopped(StoreError),
}

/// A decision record to end (see [`Store::finalize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finalize {
    pub txn: String,
    /// Keep the compact record this long; zero: delete it.
    pub ttl: Duration,
    /// Its marker entry in the lock index, if any.
    pub marker: Option<String>,
    /// The record is in the compact form already (a transaction of one
    /// store wrote it so): only its TTL changes.
    pub compact: bool,
}

/// Transactions applied in one script call, at most (see
/// [`Store::apply_queued`]).
pub const APPLY_BATCH_MAX: usize = 128;

/// One transaction's share of an [`scripts::APPLY`] call, encoded once.
#[derive(Debug, Clone)]
struct Applying {
    txn: String,
    entry: String,
    /// Its data keys, and the Redis type each is declared as.
    keys: Vec<String>,
    kinds: Vec<Kind>,
    /// The keys' argument blocks.
    blocks: Vec<Vec<u8>>,
    /// The keys' adjustments, when every key is a string adjusted whole
    /// (see [`scripts::APPLY_ADJUSTED`]).
    adjusted: Option<Vec<Vec<u8>>>,
}

impl Applying {
    fn new(txn: &str, entry: &str, keys: &[KeyWork<'_>]) -> Applying {
        Applying {
            txn: txn.to_owned(),
            entry: entry.to_owned(),
            keys: keys.iter().map(|k| k.key.to_owned()).collect(),
            kinds: keys.iter().map(|k| k.kind).collect(),
            blocks: blocks(keys, false, false, true),
            adjusted: keys.iter().map(|k| k.adjusted(false)).collect(),
        }
    }
}

/// The argument blocks of `keys` (see [`scripts`] and [`KeyWork::args`]).
fn blocks(keys: &[KeyWork<'_>], reserve: bool, reads: bool, ops: bool) -> Vec<Vec<u8>> {
    let mut args = Vec::new();
    for k in keys {
        k.args(&mut args, reserve, reads, ops);
    }
    args
}

/// Whether a script for one shape (see [`scripts::LOCK_ADJUSTED`]) answered
/// `again`: it changed nothing, and the general script runs.
fn again(reply: &Value) -> bool {
    match reply {
        Value::BulkString(b) => b == b"again",
        Value::SimpleString(s) => s == "again",
        _ => false,
    }
}

/// A transaction's share queued for [`Store::apply_queued`], and where its
/// reply goes.
struct Queued {
    /// The lock index (a slot's, on a cluster) it goes with.
    index: String,
    part: Applying,
    reply: oneshot::Sender<Result<usize, StoreError>>,
}

/// The queued shares one call carries, and the type each of their keys is
/// declared as.
struct Batch {
    index: String,
    queued: Vec<Queued>,
    kinds: std::collections::HashMap<String, Kind>,
}

impl Batch {
    fn new(index: String) -> Batch {
        Batch {
            index,
            queued: Vec::new(),
            kinds: Default::default(),
        }
    }

    /// Whether `part` declares a key of the batch as another type.
    fn clashes(&self, part: &Applying) -> bool {
        part.keys
            .iter()
            .zip(&part.kinds)
            .any(|(key, kind)| self.kinds.get(key).is_some_and(|k| k != kind))
    }

    fn push(&mut self, q: Queued) {
        for (key, kind) in q.part.keys.iter().zip(&q.part.kinds) {
            self.kinds.insert(key.clone(), *kind);
        }
        self.queued.push(q);
    }
}

/// A script and its SHA-1, sent as `EVALSHA` built in one go.
struct Script {
    code: String,
    sha: String,
}

impl Script {
    fn new(code: &str) -> Script {
        let code = scripts::lean(code);
        Script {
            sha: redis::Script::new(&code).get_hash().to_owned(),
            code,
        }
    }
}

/// The compiled scripts, loaded once per process.
struct Scripts {
    lock: Script,
    lock_adjusted: Script,
    commit_adjusted: Script,
    apply_adjusted: Script,
    reserve: Script,
    commit: Script,
    apply: Script,
    finalize: Script,
    expired: Script,
    lock_counts: Script,
    rescore: Script,
    claim: Script,
    settle_claim: Script,
    decision: Script,
    renew: Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        lock: Script::new(scripts::LOCK),
        lock_adjusted: Script::new(scripts::LOCK_ADJUSTED),
        commit_adjusted: Script::new(scripts::COMMIT_ADJUSTED),
        apply_adjusted: Script::new(scripts::APPLY_ADJUSTED),
        reserve: Script::new(scripts::RESERVE),
        commit: Script::new(scripts::COMMIT),
        apply: Script::new(scripts::APPLY),
        finalize: Script::new(scripts::FINALIZE),
        expired: Script::new(scripts::EXPIRED),
        lock_counts: Script::new(scripts::LOCK_COUNTS),
        rescore: Script::new(scripts::RESCORE),
        claim: Script::new(scripts::CLAIM),
        settle_claim: Script::new(scripts::SETTLE_CLAIM),
        decision: Script::new(scripts::DECISION),
        renew: Script::new(scripts::RENEW),
    })
}

/// An `EVALSHA` being built: keys first, then arguments.
struct Call {
    script: &'static Script,
    keys: Vec<Vec<u8>>,
    args: Cmd,
}

impl Call {
    fn new(script: &'static Script) -> Call {
        Call {
            script,
            keys: Vec::new(),
            args: Cmd::new(),
        }
    }

    fn key(&mut self, key: impl Into<Vec<u8>>) -> &mut Call {
        self.keys.push(key.into());
        self
    }

    /// The two keys a script takes per data key: the key, and its lock
    /// table.
    fn keyed(&mut self, keys: &[KeyWork<'_>]) -> &mut Call {
        self.keyed_by_name(keys.iter().map(|k| k.key))
    }

    /// [`Call::keyed`], for keys given by name.
    fn keyed_by_name<'k>(&mut self, keys: impl IntoIterator<Item = &'k str>) -> &mut Call {
        for key in keys {
            self.key(Key::Data(key).encode())
                .key(Key::Meta(key).encode());
        }
        self
    }

    /// One block of arguments per key (see [`scripts`]).
    fn blocks(&mut self, keys: &[KeyWork<'_>], reserve: bool, reads: bool, ops: bool) -> &mut Call {
        for arg in blocks(keys, reserve, reads, ops) {
            self.args.arg(arg);
        }
        self
    }

    fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Call {
        self.args.arg(arg);
        self
    }

    fn command(&self, verb: &str, body: &str) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(self.keys.len()).arg(&self.keys);
        for arg in self.args.args_iter() {
            if let redis::Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd
    }
}

/// A connection to a single Redis, or to every node of a Redis Cluster
/// (commands routed by their first key, `MOVED` and `ASK` followed). Both
/// reconnect by themselves and are cheap to clone.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a lock call says besides its keys.
struct LockHeader<'a> {
    txn: &'a str,
    lease: Duration,
    entry: &'a IndexEntry,
    reserve: bool,
    read_items_max: usize,
}

/// The first wait before a cluster call is sent again (TRYAGAIN while a
/// slot migrates, a node that went away), in ms; each further wait doubles.
const CLUSTER_RETRY_WAIT_MS: u64 = 10;

/// One named Redis store: a single Redis, or a Redis Cluster (see
/// [`cluster`]).
#[derive(Clone)]
pub struct Store {
    /// The name operators gave it in the config; errors and records use it.
    name: String,
    conn: Conn,
    /// For connections of other kinds (the wake subscription; on a cluster,
    /// to its first seed node, which hears what every node publishes).
    client: redis::Client,
    /// Upper bound on any one operation, so that a stopped store fails a
    /// transaction instead of hanging it.
    timeout: Duration,
    /// Replicas every write must reach before it counts (`WAIT`), if the
    /// config asks for it.
    replication: Option<Replication>,
    /// Failed calls, for `/metrics`, and whether the last call was answered.
    health: Arc<Health>,
    /// The queue of [`Store::apply_queued`], once something was queued.
    applier: Arc<OnceLock<mpsc::UnboundedSender<Queued>>>,
}

/// Failed calls to one store, by kind.
#[derive(Debug, Default)]
struct Health {
    unavailable: AtomicU64,
    protocol: AtomicU64,
    /// Whether the last call that ended got an answer (see
    /// [`Store::answering`]). False until one does.
    answering: AtomicBool,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

impl Store {
    /// Sets up a connection to `url` without waiting for it: a store that is
    /// down at start-up fails the transactions that need it, not the service.
    pub fn connect(
        name: &str,
        store: &StoreConfig,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let unavailable = |e: redis::RedisError| StoreError::Unavailable {
            store: name.to_owned(),
            message: e.to_string(),
        };
        let bad_url = |message| StoreError::Unavailable {
            store: name.to_owned(),
            message,
        };
        let (conn, client) = if store.url.starts_with(cluster::SCHEME) {
            let seeds = cluster::seeds(&store.url).map_err(bad_url)?;
            // A slot on the move answers TRYAGAIN to a script whose keys
            // are half moved, for the few milliseconds a MIGRATE takes: wait
            // 10 ms, then twice that, and so on, up to a tenth of the store
            // timeout, which bounds the whole call.
            let max_wait = (timeout.as_millis() as u64 / 10).max(CLUSTER_RETRY_WAIT_MS + 1);
            let cluster = redis::cluster::ClusterClient::builder(seeds.clone())
                .min_retry_wait(CLUSTER_RETRY_WAIT_MS)
                .max_retry_wait(max_wait)
                .retry_wait_formula(CLUSTER_RETRY_WAIT_MS, 2)
                .build()
                .map_err(unavailable)?;
            let conn = cluster.get_pending_async_connection_with_config(
                redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout),
            );
            let first_seed = redis::Client::open(seeds[0].as_str()).map_err(unavailable)?;
            (Conn::Cluster(conn), first_seed)
        } else {
            let client = client(&store.url, &store.tls).map_err(bad_url)?;
            // Replies are bounded by `bounded`, one timer per call; the
            // manager's own response timer would be a second one.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_max_delay(timeout);
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map_err(unavailable)?;
            (Conn::Single(conn), client)
        };
        Ok(Store {
            name: name.to_owned(),
            conn,
            client,
            timeout,
            replication: store.replication,
            health: Arc::default(),
            applier: Arc::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Answers when the store answers `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: Value = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    /// Reads and locks `keys` (each key's targets in their modes), all or
    /// none: on a cluster, a conflict in one slot releases what the others
    /// locked. With `reserve`, the adjustments of targets held in adjust
    /// mode are reserved as they are locked (a refusal locks nothing: see
    /// [`scripts::LOCK`]). No read of a whole collection may return more
    /// than `read_items_max` items.
    pub async fn lock(
        &self,
        txn: &str,
        lease: Duration,
        entry: &IndexEntry,
        keys: &[KeyWork<'_>],
        reserve: bool,
        read_items_max: usize,
    ) -> Result<Locked, StoreError> {
        let groups = self.groups(keys.iter().map(|k| k.key));
        let replies = join_all(groups.iter().map(|g| {
            let keys: Vec<KeyWork> = g.at.iter().map(|&i| keys[i]).collect();
            let entry = entry.of_keys(keys.iter().map(|k| k.key));
            async move {
                let header = LockHeader {
                    txn,
                    lease,
                    entry: &entry,
                    reserve,
                    read_items_max,
                };
                self.lock_group(&header, &g.index, &keys).await
            }
        }))
        .await;
        let mut values = vec![Vec::new(); keys.len()];
        let (mut conflict, mut locked) = (None, false);
        for (g, reply) in groups.iter().zip(replies) {
            match reply? {
                Locked::Values(vs) => {
                    for (&i, v) in g.at.iter().zip(vs) {
                        values[i] = v;
                    }
                    locked = true;
                }
                Locked::Conflict {
                    index,
                    target,
                    holder,
                } => {
                    conflict.get_or_insert(Locked::Conflict {
                        index: g.at[index],
                        target,
                        holder,
                    });
                }
                Locked::Refused(refusal) => {
                    conflict.get_or_insert(Locked::Refused(refusal.reindex(|i| g.at[i])));
                }
            }
        }
        let Some(conflict) = conflict else {
            return Ok(Locked::Values(values));
        };
        if locked {
            // Other slots locked: release them (a target this call did not
            // lock is left as it is).
            let releases: Vec<KeyWork> = keys.iter().map(KeyWork::released).collect();
            self.apply(txn, Some(&entry.encode()), &releases).await?;
        }
        Ok(conflict)
    }

    /// [`Store::lock`] on the keys of one slot.
    async fn lock_group(
        &self,
        header: &LockHeader<'_>,
        index: &Key<'_>,
        keys: &[KeyWork<'_>],
    ) -> Result<Locked, StoreError> {
        let entry = header.entry.encode();
        // The keys and arguments LOCK and LOCK_ADJUSTED begin with.
        let call = |script| {
            let mut call = Call::new(script);
            call.keyed(keys).key(index.encode());
            call.arg(header.txn)
                .arg(header.lease.as_millis() as u64)
                .arg(&header.entry.primary)
                .arg(&entry);
            call
        };
        if let Some(adjusted) = keys
            .iter()
            .map(|k| k.adjusted(true))
            .collect::<Option<Vec<_>>>()
        {
            let mut call = call(&scripts().lock_adjusted);
            for steps in adjusted {
                call.arg(if header.reserve { steps } else { Vec::new() });
            }
            let reply = self.invoke(&call, true).await?;
            if !again(&reply) {
                if self.string(&reply)? != "ok" {
                    return Err(self.protocol("unknown lock reply"));
                }
                return Ok(Locked::Values(vec![Vec::new(); keys.len()]));
            }
        }
        let mut call = call(&scripts().lock);
        call.arg(self.reassert()).arg(header.read_items_max);
        call.blocks(keys, header.reserve, true, false);
        // Even a read that locks nothing waits for the replicas: it writes
        // for that (see `scripts::LOCK`).
        let items = self.array(self.invoke(&call, true).await?)?;
        match self.tag(&items)?.as_deref() {
            Some("ok") => {
                let mut values = items[1..].iter();
                let mut found = Vec::with_capacity(keys.len());
                for key in keys {
                    let mut of_key = Vec::with_capacity(key.reads.len());
                    for read in key.reads {
                        let value = values
                            .next()
                            .ok_or_else(|| self.protocol("a lock reply without every read"))?;
                        of_key.push(work::found(read, value).ok_or_else(|| {
                            self.protocol(&format!("an unreadable value of {:?}", key.key))
                        })?);
                    }
                    found.push(of_key);
                }
                Ok(Locked::Values(found))
            }
            Some("locked" | "legacy") => {
                let (index, target, holder) =
                    self.in_the_way(&items, |i| keys.get(i).map(|k| k.key))?;
                Ok(Locked::Conflict {
                    index,
                    target,
                    holder,
                })
            }
            Some("bound" | "nan" | "range" | "wrong_type" | "too_many") => {
                Ok(Locked::Refused(self.refusal(&items)?))
            }
            Some("stopped") => Err(self.stopped(&items)),
            _ => Err(self.protocol("unknown lock reply")),
        }
    }

    /// A `{'locked', i, j, holder, remaining_ms, holder's primary}` reply:
    /// the key's index, its target's, and the holder. A `{'legacy', i,
    /// holder}` one (a lock of the first protocol, on the key `key` names)
    /// is an error saying what to do.
    fn in_the_way<'k>(
        &self,
        items: &[Value],
        key: impl Fn(usize) -> Option<&'k str>,
    ) -> Result<(usize, usize, Holder), StoreError> {
        let index = self.int(items.get(1).unwrap_or(&Value::Nil))? as usize;
        match self.tag(items)?.as_deref() {
            Some("locked") if items.len() == 6 => Ok((
                index,
                self.int(&items[2])? as usize,
                Holder {
                    txn: self.string(&items[3])?,
                    remaining_ms: self.int(&items[4])?,
                    primary: self.string(&items[5])?,
                },
            )),
            Some("legacy") if items.len() == 3 => Err(self.protocol(&format!(
                "key {:?} is locked by transaction {} of an earlier redstage \
                 (protocol 1), which this version cannot finish: run that version's \
                 `redstage recover --wait` against this store, then send this again",
                key(index).unwrap_or("?"),
                self.string(&items[2])?
            ))),
            _ => Err(self.protocol("unknown lock reply")),
        }
    }

    /// The commit point (see [`CommitPoint`]).
    pub async fn commit(&self, point: &CommitPoint<'_>) -> Result<Committed, StoreError> {
        if self.is_cluster() {
            // The plan never puts a commit point here: its keys span slots.
            return Err(self.protocol("a Redis Cluster store cannot hold a commit point"));
        }
        let record_key = Key::TxnRecord(point.txn).encode();
        let adjusted = point
            .keys
            .iter()
            .map(|k| k.adjusted_steps(false).and_then(commit_bounds))
            .collect::<Option<Vec<_>>>()
            .filter(|_| point.free);
        if let Some(adjusted) = adjusted {
            let mut call = Call::new(&scripts().commit_adjusted);
            self.commit_header(&mut call, point, &record_key);
            for bounds in &adjusted {
                for arg in bounds {
                    call.arg(arg);
                }
            }
            let reply = self.invoke(&call, true).await?;
            if !again(&reply) {
                return self.committed(point, &self.array(reply)?);
            }
        }
        let mut call = Call::new(&scripts().commit);
        self.commit_header(&mut call, point, &record_key);
        call.arg(if point.free { "free" } else { "held" });
        call.blocks(point.keys, false, false, true);
        let items = self.array(self.invoke(&call, true).await?)?;
        self.committed(point, &items)
    }

    /// The keys and arguments [`scripts::COMMIT`] and
    /// [`scripts::COMMIT_ADJUSTED`] share, the key blocks' keys included.
    fn commit_header(&self, call: &mut Call, point: &CommitPoint<'_>, record_key: &str) {
        call.key(record_key).key(Key::LockIndex.encode());
        match &point.claim {
            Some(c) => call.key(Key::Idempotency(c.key).encode()),
            None => call.key(record_key),
        };
        call.keyed(point.keys);
        call.arg(point.txn)
            .arg(point.record)
            .arg(point.record_ttl.map_or(0, |t| t.as_millis() as u64))
            .arg(point.marker.unwrap_or(""))
            .arg(point.lease.as_millis() as u64);
        match &point.claim {
            Some(c) => call
                .arg(c.owner)
                .arg(c.outcome)
                .arg(c.retention.as_millis() as u64),
            None => call.arg("").arg("").arg(0),
        };
    }

    /// What a commit point's reply says.
    fn committed(&self, point: &CommitPoint<'_>, items: &[Value]) -> Result<Committed, StoreError> {
        match (self.tag(items)?.as_deref(), items.get(1)) {
            (Some("ok"), _) => Ok(Committed::Ok),
            (Some("decided"), Some(r)) => Ok(Committed::Decided(
                self.bytes_or_nil(r)?.unwrap_or_default(),
            )),
            (Some("superseded"), _) => Ok(Committed::Superseded),
            (Some("lost"), _) => Ok(Committed::Lost),
            (Some("bound" | "nan" | "range" | "wrong_type"), _) => {
                Ok(Committed::Refused(self.refusal(items)?))
            }
            (Some("stopped"), _) => Ok(Committed::Stopped(self.stopped(items))),
            (Some("locked" | "legacy"), _) => {
                match self.in_the_way(items, |i| point.keys.get(i).map(|k| k.key)) {
                    Ok((index, target, holder)) => Ok(Committed::Conflict {
                        index,
                        target,
                        holder,
                    }),
                    Err(e) => Ok(Committed::Stopped(e)),
                }
            }
            _ => Err(self.protocol("unknown commit reply")),
        }
    }

    /// Checks `txn`'s adjustments of the targets of `keys` it holds in
    /// adjust mode against their bounds, counting what other transactions
    /// in flight reserved, and reserves them, all or none (see
    /// [`scripts::RESERVE`]).
    pub async fn reserve(
        &self,
        txn: &str,
        keys: &[KeyWork<'_>],
    ) -> Result<Option<Refusal>, StoreError> {
        let groups = self.groups(keys.iter().map(|k| k.key));
        let replies = join_all(groups.iter().map(|g| {
            let keys: Vec<KeyWork> = g.at.iter().map(|&i| keys[i]).collect();
            async move {
                let mut call = Call::new(&scripts().reserve);
                call.keyed(&keys).arg(txn);
                call.blocks(&keys, true, false, false);
                let items = self.array(self.invoke(&call, true).await?)?;
                match self.tag(&items)?.as_deref() {
                    Some("ok") => Ok(None),
                    Some("bound" | "nan" | "range" | "lost" | "wrong_type") => {
                        Ok(Some(self.refusal(&items)?))
                    }
                    _ => Err(self.protocol("unknown reserve reply")),
                }
            }
        }))
        .await;
        for (g, reply) in groups.iter().zip(replies) {
            if let Some(refusal) = reply? {
                return Ok(Some(refusal.reindex(|i| g.at[i])));
            }
        }
        Ok(None)
    }

    /// `{'bound', i, j, s}`, `{'nan', i, j}`, `{'range', i, j}`, `{'lost',
    /// i, j}`, `{'wrong_type', i, type}` or `{'too_many', i, n}` (0-based
    /// `i` and `j`, 1-based `s`).
    fn refusal(&self, items: &[Value]) -> Result<Refusal, StoreError> {
        let tag = self.tag(items)?;
        let number = |i: usize| -> Result<usize, StoreError> {
            let n = items
                .get(i)
                .ok_or_else(|| self.protocol("a refusal without its key"))?;
            Ok(self.int(n)? as usize)
        };
        let (index, target) = (number(1)?, || number(2));
        match tag.as_deref() {
            Some("bound") => Ok(Refusal::Bound {
                index,
                target: target()?,
                step: number(3)?.saturating_sub(1),
            }),
            Some("nan") => Ok(Refusal::NotInteger {
                index,
                target: target()?,
            }),
            Some("range") => Ok(Refusal::Range {
                index,
                target: target()?,
            }),
            Some("lost") => Ok(Refusal::Lost {
                index,
                target: target()?,
            }),
            Some("wrong_type") => Ok(Refusal::WrongType {
                index,
                found: self.string(items.get(2).unwrap_or(&Value::Nil))?,
            }),
            Some("too_many") => Ok(Refusal::TooMany {
                index,
                count: number(2)?,
            }),
            _ => Err(self.protocol("unknown refusal")),
        }
    }

    /// A `{'stopped', message}` reply: a script that met what it cannot go
    /// past, before it changed anything.
    fn stopped(&self, items: &[Value]) -> StoreError {
        let message = items.get(1).and_then(|m| self.string(m).ok());
        self.protocol(message.as_deref().unwrap_or("stopped"))
    }

    /// Applies `keys`' ops for `txn` and releases its locks on their
    /// targets (a key with no op is just released); removes `entry` from
    /// the lock index. Returns how many of the targets `txn` still held.
    /// On a cluster, each slot's keys and its part of the entry go to that
    /// slot's index; a slot that fails keeps its locks, and its error is
    /// returned.
    pub async fn apply(
        &self,
        txn: &str,
        entry: Option<&str>,
        keys: &[KeyWork<'_>],
    ) -> Result<usize, StoreError> {
        let parts = self.applying(txn, entry, keys)?;
        let applied = join_all(parts.iter().map(|(index, part)| async move {
            let mut replies = self.apply_batch(index, std::slice::from_ref(part)).await?;
            replies.pop().unwrap_or(Ok(0))
        }))
        .await;
        applied.into_iter().sum()
    }

    /// [`Store::apply`], in one script call with whatever else is queued
    /// for this store (per slot on a cluster) while its previous call is on
    /// its way: group commit. A lone transaction goes at once; under load
    /// one call (and one `WAIT`) carries many. Each transaction still gets
    /// its own reply.
    pub async fn apply_queued(
        &self,
        txn: &str,
        entry: Option<&str>,
        keys: &[KeyWork<'_>],
    ) -> Result<usize, StoreError> {
        let queue = self.applier.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // The task's own handle has no queue, so that the queue closes
            // (and the task ends) with the last handle that has one.
            let store = Store {
                applier: Arc::default(),
                ..self.clone()
            };
            tokio::spawn(store.applying_batches(rx));
            tx
        });
        let parts = self.applying(txn, entry, keys)?;
        let mut replies = Vec::with_capacity(parts.len());
        for (index, part) in parts {
            let (reply, answer) = oneshot::channel();
            if queue.send(Queued { index, part, reply }).is_err() {
                // The queue's task is gone with the runtime that ran it:
                // nothing was sent, so go alone.
                return self.apply(txn, entry, keys).await;
            }
            replies.push(answer);
        }
        let applied = join_all(replies).await;
        applied
            .into_iter()
            .map(|r| r.unwrap_or_else(|_| Err(self.unavailable("the apply queue stopped"))))
            .sum()
    }

    /// Runs what [`Store::apply_queued`] queues, a batch per round and
    /// slot: at most [`APPLY_BATCH_MAX`] transactions, never two that
    /// declare one key as two Redis types (see [`scripts::APPLY`]); one
    /// that would be goes in the next round.
    async fn applying_batches(self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let mut later: std::collections::VecDeque<Queued> = Default::default();
        loop {
            let first = match later.pop_front() {
                Some(q) => q,
                None => match rx.recv().await {
                    Some(q) => q,
                    None => return,
                },
            };
            let mut batches: Vec<Batch> = Vec::new();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(q) = next.take() {
                taken += 1;
                let at = match batches.iter().position(|b| b.index == q.index) {
                    Some(at) => at,
                    None => {
                        batches.push(Batch::new(q.index.clone()));
                        batches.len() - 1
                    }
                };
                if batches[at].clashes(&q.part) {
                    later.push_back(q);
                } else {
                    batches[at].push(q);
                }
                if taken < APPLY_BATCH_MAX {
                    next = later.pop_front().or_else(|| rx.try_recv().ok());
                }
            }
            let store = &self;
            join_all(batches.into_iter().map(|b| async move {
                let parts: Vec<Applying> = b.queued.iter().map(|q| q.part.clone()).collect();
                match store.apply_batch(&b.index, &parts).await {
                    Ok(replies) => {
                        for (q, r) in b.queued.into_iter().zip(replies) {
                            let _ = q.reply.send(r);
                        }
                    }
                    Err(e) => {
                        for q in b.queued {
                            let _ = q.reply.send(Err(e.clone()));
                        }
                    }
                }
            }))
            .await;
        }
    }

    /// `keys` and `entry` of `txn` as the calls that apply them: one, or
    /// one per slot on a cluster (each with its part of the entry).
    fn applying(
        &self,
        txn: &str,
        entry: Option<&str>,
        keys: &[KeyWork<'_>],
    ) -> Result<Vec<(String, Applying)>, StoreError> {
        if !self.is_cluster() {
            let part = Applying::new(txn, entry.unwrap_or(""), keys);
            return Ok(vec![(Key::LockIndex.encode(), part)]);
        }
        let entry = entry
            .map(|e| IndexEntry::decode(e).ok_or_else(|| self.protocol("unreadable index entry")))
            .transpose()?;
        // The keys to release, then the entry's: each slot gets its share
        // of both.
        let entry_keys = entry
            .iter()
            .flat_map(|e| e.keys.iter().map(|t| t.key.as_str()));
        let all: Vec<&str> = keys.iter().map(|k| k.key).chain(entry_keys).collect();
        let n = keys.len();
        Ok(self
            .groups(all)
            .into_iter()
            .map(|g| {
                let (released, listed) = g.at.split_at(g.at.partition_point(|&i| i < n));
                let entry = match (&entry, listed) {
                    (Some(e), [_, ..]) => e.part(listed.iter().map(|&i| i - n)).encode(),
                    _ => String::new(),
                };
                let keys: Vec<KeyWork> = released.iter().map(|&i| keys[i]).collect();
                (g.index.encode(), Applying::new(txn, &entry, &keys))
            })
            .collect())
    }

    /// One [`scripts::APPLY`] call on the lock index `index` (a slot's, on
    /// a cluster) for `parts`: per part, how many targets it held, or the
    /// store's refusal.
    async fn apply_batch(
        &self,
        index: &str,
        parts: &[Applying],
    ) -> Result<Vec<Result<usize, StoreError>>, StoreError> {
        // APPLY and APPLY_ADJUSTED take the same keys and arguments but for
        // each key's: its block, or its adjustments.
        let call = |script, args: fn(&Applying) -> &[Vec<u8>]| {
            let mut call = Call::new(script);
            call.key(index).arg(parts.len());
            for part in parts {
                call.keyed_by_name(part.keys.iter().map(String::as_str));
                call.arg(&part.txn).arg(&part.entry).arg(part.keys.len());
                for arg in args(part) {
                    call.arg(arg);
                }
            }
            call
        };
        if parts.iter().all(|p| p.adjusted.is_some()) {
            let call = call(&scripts().apply_adjusted, |p| {
                p.adjusted.as_deref().unwrap_or_default()
            });
            let reply = self.invoke(&call, true).await?;
            if !again(&reply) {
                return self.applied(parts, &self.array(reply)?);
            }
        }
        let call = call(&scripts().apply, |p| &p.blocks);
        let replies = self.array(self.invoke(&call, true).await?)?;
        self.applied(parts, &replies)
    }

    /// What an apply's reply says, per part: how many targets it held, or
    /// the store's refusal.
    fn applied(
        &self,
        parts: &[Applying],
        replies: &[Value],
    ) -> Result<Vec<Result<usize, StoreError>>, StoreError> {
        if replies.len() != parts.len() {
            return Err(self.protocol("an apply reply without every transaction's"));
        }
        Ok(replies
            .iter()
            .map(|r| match r {
                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                other => {
                    self.health.protocol.fetch_add(1, Relaxed);
                    Err(self.protocol(&self.string(other)?))
                }
            })
            .collect())
    }

    /// Extends `txn`'s leases on `keys`' targets here, and on its index
    /// entry, to `lease` from now (see [`scripts::RENEW`]). Returns how
    /// many of the targets it no longer holds.
    pub async fn renew(
        &self,
        txn: &str,
        lease: Duration,
        entry: &IndexEntry,
        keys: &[KeyWork<'_>],
    ) -> Result<usize, StoreError> {
        let groups = self.groups(keys.iter().map(|k| k.key));
        let renewed = join_all(groups.iter().map(|g| {
            let keys: Vec<KeyWork> = g.at.iter().map(|&i| keys[i]).collect();
            let part = entry.of_keys(keys.iter().map(|k| k.key));
            async move {
                let mut call = Call::new(&scripts().renew);
                call.keyed(&keys).key(g.index.encode());
                call.arg(txn)
                    .arg(lease.as_millis() as u64)
                    .arg(part.encode());
                call.blocks(&keys, false, false, false);
                let reply = self.invoke(&call, false).await?;
                self.count(reply)
            }
        }))
        .await;
        renewed.into_iter().sum()
    }

    /// Writes `record` as the decision of `txn` unless one exists, and
    /// returns the record that stands: ours, or the one written first. How
    /// recovery fences a transaction whose lease ran out. Answers only once
    /// the record that stands has reached the replicas the store's setting
    /// demands (see [`scripts::DECISION`]).
    pub async fn decide(
        &self,
        txn: &str,
        record: &[u8],
        ttl: Duration,
    ) -> Result<Vec<u8>, StoreError> {
        let stored = self.decision(txn, Some((record, ttl))).await?;
        stored.ok_or_else(|| self.protocol("decision record vanished right after it was written"))
    }

    /// Writes the outcome record of a transaction that decided nothing
    /// durable (an abort), kept `ttl`, for lookups.
    pub async fn receipt(&self, txn: &str, record: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut set = redis::cmd("SET");
        set.arg(Key::TxnRecord(txn).encode())
            .arg(record)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let _: Value = self.query(&set).await?;
        self.replicated().await
    }

    /// The decision record of `txn`, if any, once it has reached the
    /// replicas the store's setting demands: what may be acted on or
    /// answered (see [`scripts::DECISION`]).
    pub async fn record(&self, txn: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.decision(txn, None).await
    }

    /// [`Store::record`], fencing with `fence` (a record and its TTL) when
    /// there is none.
    async fn decision(
        &self,
        txn: &str,
        fence: Option<(&[u8], Duration)>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut call = Call::new(&scripts().decision);
        call.key(Key::TxnRecord(txn).encode());
        match fence {
            Some((record, ttl)) => call
                .arg("fence")
                .arg(self.reassert())
                .arg(record)
                .arg(ttl.as_millis() as u64),
            None => call.arg("read").arg(self.reassert()).arg("").arg(0),
        };
        let reply = self.invoke(&call, true).await?;
        self.bytes_or_nil(&reply)
    }

    /// `1` when what a script reads must be written again before it is
    /// acted on, for a `WAIT` to cover it: the store's writes must reach
    /// replicas (see [`scripts::DECISION`]).
    fn reassert(&self) -> &'static str {
        if self.replication.is_some() { "1" } else { "" }
    }

    /// Ends decision records whose stores have all applied (see
    /// [`scripts::FINALIZE`]).
    pub async fn finalize(&self, compact: &[u8], items: &[Finalize]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut call = Call::new(&scripts().finalize);
        call.key(Key::LockIndex.encode()).arg(compact);
        for item in items {
            call.key(Key::TxnRecord(&item.txn).encode())
                .arg(item.ttl.as_millis() as u64)
                .arg(item.marker.as_deref().unwrap_or(""))
                .arg(if item.compact { "1" } else { "" });
        }
        self.invoke(&call, true).await?;
        Ok(())
    }

    /// Up to `max` lock index entries whose lease has run out, oldest first,
    /// with their deadlines. Entries that cannot be read are returned as
    /// errors, one each, so that the caller can put them aside.
    pub async fn expired(&self, max: usize) -> Result<Vec<inspect::Indexed>, StoreError> {
        let mut found = Vec::new();
        for index in self.indexes().await? {
            if found.len() >= max {
                break;
            }
            let mut call = Call::new(&scripts().expired);
            call.key(index.encode()).arg(max - found.len());
            let flat = self.array(self.invoke(&call, false).await?)?;
            let flat = flat
                .iter()
                .map(|v| self.string(v).map(String::into_bytes))
                .collect::<Result<_, _>>()?;
            found.extend(self.scored(flat)?);
        }
        Ok(found)
    }

    /// Sends an index entry to the back of the sweep's line, `delay` from now.
    /// On a cluster, the entry's keys name its slot; one that cannot be
    /// read is looked for in every slot's index.
    pub async fn rescore(&self, member: &str, delay: Duration) -> Result<(), StoreError> {
        let slot = IndexEntry::decode(member).and_then(|e| e.keys.first().cloned());
        let indexes = match slot {
            Some(key) => self
                .groups([key.key.as_str()])
                .into_iter()
                .map(|g| g.index)
                .collect(),
            None => self.indexes().await?,
        };
        for index in indexes {
            let mut call = Call::new(&scripts().rescore);
            call.key(index.encode())
                .arg(member)
                .arg(delay.as_millis() as u64);
            self.invoke(&call, true).await?;
        }
        Ok(())
    }

    /// Locks held here right now, and how many of them are past their
    /// lease (in doubt until someone finishes them): lock index entries.
    pub async fn lock_counts(&self) -> Result<(u64, u64), StoreError> {
        let (mut held, mut expired) = (0, 0);
        for index in self.indexes().await? {
            let mut call = Call::new(&scripts().lock_counts);
            call.key(index.encode());
            let counts = self.array(self.invoke(&call, false).await?)?;
            match counts.as_slice() {
                [Value::Int(h), Value::Int(e)] => {
                    held += *h as u64;
                    expired += *e as u64;
                }
                other => return Err(self.protocol(&format!("expected two counts, got {other:?}"))),
            }
        }
        Ok((held, expired))
    }

    /// Failed calls so far: `(unavailable, protocol)` (see [`StoreError`]).
    pub fn errors(&self) -> (u64, u64) {
        (
            self.health.unavailable.load(Relaxed),
            self.health.protocol.load(Relaxed),
        )
    }

    /// Whether `txn` (a well-formed transaction id) holds any lock here:
    /// every lock index, page by page.
    pub async fn holds_locks(&self, txn: &str) -> Result<bool, StoreError> {
        for index in self.indexes().await? {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("ZSCAN");
                scan.arg(index.encode())
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(IndexEntry::pattern(txn))
                    .arg("COUNT")
                    .arg(1000);
                let (next, found): (u64, Vec<String>) = self.query(&scan).await?;
                if !found.is_empty() {
                    return Ok(true);
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(false)
    }

    /// Whether `key` is locked by anyone right now.
    pub async fn is_locked(&self, key: &str) -> Result<bool, StoreError> {
        let mut exists = redis::cmd("EXISTS");
        exists.arg(Key::Meta(key).encode());
        let n: u64 = self.query(&exists).await?;
        Ok(n > 0)
    }

    /// Claims an idempotency key (see [`scripts::CLAIM`]).
    pub async fn claim(
        &self,
        key: &str,
        owner: &str,
        request: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Claim, StoreError> {
        let mut call = Call::new(&scripts().claim);
        call.key(Key::Idempotency(key).encode())
            .arg(owner)
            .arg(lease.as_millis() as u64)
            .arg(retention.as_millis() as u64)
            .arg(request)
            .arg(self.reassert());
        let items = self.array(self.invoke(&call, true).await?)?;
        match (self.tag(&items)?.as_deref(), items.get(1)) {
            (Some("claimed"), _) => Ok(Claim::Claimed),
            (Some("in_flight"), _) => Ok(Claim::InFlight),
            (Some("reused"), _) => Ok(Claim::Reused),
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
        let mut call = Call::new(&scripts().settle_claim);
        call.key(Key::Idempotency(key).encode())
            .arg(owner)
            .arg(record)
            .arg(retention.as_millis() as u64);
        let reply = self.invoke(&call, true).await?;
        Ok(self.count(reply)? == 1)
    }

    /// Runs a script (loading it first if the server lost it, after a
    /// restart). A script that `writes` waits for the configured replicas:
    /// `WAIT` goes in one pipeline with the script, so that it follows the
    /// script on the same connection to the same node whatever the client
    /// does in between (reconnect, follow a cluster redirection, resend).
    async fn invoke(&self, call: &Call, writes: bool) -> Result<Value, StoreError> {
        let wait = self.replication.filter(|_| writes);
        let pipeline = |verb: &str, body: &str| {
            let mut pipe = redis::pipe();
            pipe.add_command(call.command(verb, body));
            if let Some(r) = wait {
                pipe.cmd("WAIT").arg(r.replicas).arg(r.timeout_ms);
            }
            pipe
        };
        let mut conn = self.conn.clone();
        let no_script = redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
        let evalsha = pipeline("EVALSHA", &call.script.sha);
        let replies: Vec<Value> =
            match tokio::time::timeout(self.timeout, evalsha.query_async(&mut conn)).await {
                Ok(Err(e)) if e.kind() == no_script => {
                    let eval = pipeline("EVAL", &call.script.code);
                    self.bounded(eval.query_async(&mut conn)).await?
                }
                first => self.settle(first)?,
            };
        let mut replies = replies.into_iter();
        let reply = replies
            .next()
            .ok_or_else(|| self.protocol("a script without its reply"))?;
        if let Some(r) = wait {
            let acked = match replies.next() {
                Some(Value::Int(n)) => n,
                other => return Err(self.protocol(&format!("unexpected WAIT reply: {other:?}"))),
            };
            self.enough_replicas(&r, acked)?;
        }
        Ok(reply)
    }

    /// Waits for the configured replicas to acknowledge every write made so
    /// far on this connection (`WAIT`); an error if fewer do in time.
    async fn replicated(&self) -> Result<(), StoreError> {
        let Some(r) = &self.replication else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(r.replicas).arg(r.timeout_ms);
        let acked: i64 = self.query(&wait).await?;
        self.enough_replicas(r, acked)
    }

    /// An error unless `acked` replicas are as many as `r` asks for.
    fn enough_replicas(&self, r: &Replication, acked: i64) -> Result<(), StoreError> {
        if acked < i64::from(r.replicas) {
            return Err(StoreError::Unavailable {
                store: self.name.clone(),
                message: format!(
                    "only {acked} of {} replicas acknowledged a write within {} ms",
                    r.replicas, r.timeout_ms
                ),
            });
        }
        Ok(())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// Runs one Redis call under the store timeout and names the store in
    /// any error.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.settle(tokio::time::timeout(self.timeout, call).await)
    }

    /// A bounded call's result, with the store named in any error.
    fn settle<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let settled = match result {
            Ok(Ok(v)) => {
                self.answered(true);
                return Ok(v);
            }
            Ok(Err(e)) if is_unavailable(&e) => StoreError::Unavailable {
                store: self.name.clone(),
                message: e.to_string(),
            },
            Ok(Err(e)) => self.protocol(&e.to_string()),
            Err(_) => StoreError::Unavailable {
                store: self.name.clone(),
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        };
        let counter = match settled {
            StoreError::Unavailable { .. } => &self.health.unavailable,
            StoreError::Protocol { .. } => &self.health.protocol,
        };
        counter.fetch_add(1, Relaxed);
        self.answered(matches!(settled, StoreError::Protocol { .. }));
        Err(settled)
    }

    fn answered(&self, answered: bool) {
        if self.health.answering.load(Relaxed) != answered {
            self.health.answering.store(answered, Relaxed);
        }
    }

    /// Whether the last call to this store that ended was answered (a
    /// store that was never called has not). A transaction whose first call
    /// to a store would be its commit point locks there first while this is
    /// false: a lock that fails has changed nothing, so the answer can say
    /// so, where a commit point that fails leaves its outcome unknown.
    pub fn answering(&self) -> bool {
        self.health.answering.load(Relaxed)
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

    fn int(&self, v: &Value) -> Result<i64, StoreError> {
        match v {
            Value::Int(n) => Ok(*n),
            other => Err(self.protocol(&format!("expected an integer, got {other:?}"))),
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

    /// The first item of a script's reply: what kind of answer it is.
    fn tag(&self, items: &[Value]) -> Result<Option<String>, StoreError> {
        items.first().map(|v| self.string(v)).transpose()
    }

    fn unavailable(&self, message: &str) -> StoreError {
        StoreError::Unavailable {
            store: self.name.clone(),
            message: message.to_owned(),
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
/// did: connection trouble and timeouts, as opposed to an error reply; and
/// on a cluster, the replies of a slot in transit or without a master
/// (`MOVED`, `ASK` or `TRYAGAIN` still answered once the client's retries
/// ran out, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY` from a master just
/// demoted, `LOADING`), which say the call did not run.
fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
                    | redis::ServerErrorKind::BusyLoading
            )
        )
}

/// A client for `url`, over TLS with `tls`'s certificates when it names
/// any (a `rediss://` URL without them trusts the system's roots).
fn client(url: &str, tls: &StoreTls) -> Result<redis::Client, String> {
    if url.starts_with("rediss://") {
        // rustls needs a process-wide crypto provider; a second install
        // (another store) finds it there.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if *tls == StoreTls::default() {
        return redis::Client::open(url).map_err(|e| e.to_string());
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = tls.ca_file.as_deref().map(read).transpose()?;
    let certificates = redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    redis::Client::build_with_tls(url, certificates).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{Bounded, commit_bounds, integer};

    #[test]
    fn a_commit_points_steps_become_two_bounds() {
        let step = |delta, lower, upper| Bounded {
            delta,
            lower,
            upper,
        };
        let strings = |a: &str, b: &str, c: &str| Some([a.to_owned(), b.to_owned(), c.to_owned()]);
        const LIMIT: i64 = (1 << 53) - 1;
        assert_eq!(commit_bounds(&[]), strings("0", "", ""));
        // Paying 5 out of at least 0: the value must be 5 or more.
        assert_eq!(
            commit_bounds(&[step(-5, Some(0), None)]),
            strings("-5", "5", &LIMIT.to_string())
        );
        // Each step's bound counts at that step: -50, -40 (>= 0 each), +20.
        assert_eq!(
            commit_bounds(&[
                step(-50, Some(0), None),
                step(-40, Some(0), None),
                step(20, Some(0), None)
            ]),
            strings("-70", "90", &LIMIT.to_string())
        );
        assert_eq!(
            commit_bounds(&[step(5, None, Some(10))]),
            strings("5", &(-LIMIT).to_string(), "5")
        );
        // No value passes, or a sum beyond 2^53: the general script's.
        assert_eq!(
            commit_bounds(&[step(5, Some(10), Some(12))]),
            strings("5", "5", "7")
        );
        assert_eq!(commit_bounds(&[step(5, Some(20), Some(12))]), None);
        assert_eq!(commit_bounds(&[step(i64::MAX, None, None)]), None);
    }

    #[test]
    fn integers_are_what_incrby_takes() {
        for (text, value) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-7", Some(-7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("007", None),
            ("-0", None),
            ("+5", None),
            (" 5", None),
            ("5 ", None),
            ("1e3", None),
            ("", None),
            ("-", None),
            ("1234567890123456789012345", None),
        ] {
            assert_eq!(integer(text.as_bytes()), value, "{text:?}");
        }
    }
}
