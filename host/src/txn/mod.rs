//! The coordinator: runs a transaction's steps and commits their writes
//! atomically across stores, with two-phase locking and a commit point whose
//! state lives in Redis.
//!
//! # One transaction
//!
//! ```text
//!  declare     every step's participant names the keys it reads and writes
//!     |        (once per transaction; keys get the participant's prefix)
//!  latch       queue in this process for every key, in one global order
//!     |        (see `latch`): a host's own transactions never race in Redis
//!  lock+read   ROUND TRIP 1, every store in parallel, one script each (one
//!     |        per hash slot on a Redis Cluster store, see `store::cluster`):
//!     |        lock every key (exclusive if some step may write it, shared
//!     |        if only read) and read its value, all or nothing per store. A
//!     |        lock held by another transaction: release what was locked,
//!     |        get it out of the way (see `recovery`: roll it forward or back
//!     |        if decided, else wait for its release), run again.
//!  execute     steps in order on that snapshot; each sees the writes of the
//!     |        steps before it. A step's abort, trap or broken limit: release
//!     |        the locks, nothing is written.
//!     +-- read-only, one store .. committed: the one read script was atomic
//!     |                           (it locks nothing)
//!     +-- read-only, several .... release the shared locks, each store
//!     |                           counting those still held: all held, they
//!     |                           were held at once between the last read
//!     |                           and the first release: committed; one
//!     |                           broken by recovery meanwhile: run again
//!  commit      ROUND TRIP 2, one script on the primary store (see `plan`:
//!   point      the log store, or the single Redis it writes most, never a
//!     |        Redis Cluster): unless a decision stands, write the record
//!     |        {"state":"committed", other stores' keys and writes}, apply
//!     |        the primary's own writes and release its locks, all at once.
//!     |        THIS IS THE COMMIT POINT. A standing `aborted` means our lease
//!     |        ran out and recovery fenced us: release, run again.
//!  answer      `committed`, with each step's output
//!     |
//!  apply       after the answer, every other store in parallel: apply the
//!     |        writes, release the locks (and the latches). A store that
//!     |        fails keeps its locks; whoever meets one rolls it forward from
//!     |        the record, which stays until every store has applied.
//!  finalize    the record shrinks to {"state":"committed"} with a TTL
//!              (batched, see `background`)
//! ```
//!
//! A transaction whose every key is only adjusted (see "Adjusted keys"
//! below: an order, a transfer, with the examples) needs no value, and
//! takes a shorter way: two round trips across stores, one on one store.
//!
//! While an attempt holds locks, its host renews their leases every third
//! of a lease (see `attempt`): a transaction is never taken for dead while
//! its host runs it, however long its steps take within their limits. A
//! host that dies or loses its stores stops renewing, and its leases end.
//!
//! A transaction that meets a live lock runs again after the lock's release
//! wakes it (or its lease ends), at most `txn.attempts_max` times and for at
//! most `txn.lock_wait_ms` of waiting in all; then it aborts with code
//! `conflict`. Re-running is safe because participants are pure.
//!
//! # States of a key
//!
//! ```text
//!           lock(T, x)            commit point of T (on T's primary), or
//!  free -------------------> held by T ----> apply(T) (elsewhere, after it):
//!   ^  \                       |    |       value := T's write; lock dropped
//!   |   \ lock(R, s)           |    |
//!   |    +----> shared by       |    | met by anyone: T's decision is
//!   |           R1..Rn          |    |   committed -> apply(T) here
//!   |            |              |    |   aborted   -> release
//!   +------------+--------------+    |   none, lease over -> SET aborted NX,
//!         release (rollback,         |     then as above
//!         or read-only done)         |   none, lease running -> wait
//! ```
//!
//! A lock table (`rs:{K}`) exists only while something of the key is held;
//! a free key has no metadata at all.
//!
//! # Targets: keys, fields, members
//!
//! A step of contract 0.3.0 declares what it touches at the granularity it
//! needs (see `access`): a key whole, one field of a hash, one member of a
//! set or sorted set, a range of a sorted set. What is locked follows:
//!
//! ```text
//!  declared                        locked
//!  a key whole (any mode)          the key whole, in that mode
//!  a field, a member               that part, in that mode; parts of one
//!                                  key never wait for each other
//!  a range of a sorted set         the key whole, shared
//!  an append (stream, list)        nothing: appends commute with everything
//!                                  (streams and lists are only appended to)
//! ```
//!
//! A transaction that has a key whole and parts of it too holds the key
//! whole, in the strongest of their modes. A whole-key lock and part locks
//! never share a key: who wants the key whole waits for the parts to be
//! released (and keeps new ones from starting meanwhile), and a part waits
//! for a whole-key lock. So a read of a whole hash and a write of one of
//! its fields are serialized as any two conflicting locks are, and the
//! argument below holds target by target. Escrow works on hash fields and
//! sorted set scores as on strings: each adjusted target has its own
//! adjusters and reservations.
//!
//! # Adjusted keys (escrow)
//!
//! A step of contract 0.2.0 may declare keys it only adjusts: it never sees
//! their values and returns, per key, a signed delta with optional bounds
//! ("take 2, never below 0") and the abort to report if a bound would
//! break. Adjustments commute, so such keys take the lock in mode `a`,
//! which any number of adjusting transactions share and which excludes
//! readers and writers of the key as `x` does. Each adjuster's delta is
//! *reserved* before its commit point: the key's adjuster hash keeps the
//! sum of the reserved negative and positive deltas, and a reservation is
//! refused unless the bound holds both if every in-flight adjuster commits
//! and if none does (value + all reserved negatives >= lower bound, value +
//! all reserved positives <= upper bound). So whichever subset of the
//! concurrent adjusters commits, the bound holds. Applying a committed
//! adjustment adds its delta (`INCRBY`, the value stays a decimal string)
//! and drops its reservation; a rollback drops the reservation only.
//!
//! ```text
//!  lock+read   RT 1: adjusted keys locked in mode `a` (not read)
//!  execute     the steps' adjustments, summed per key
//!  reserve     RT 2, only when a store other than the primary has adjusted
//!     |        keys: one script per such store, in parallel, reserving the
//!     |        deltas against their bounds (a refusal aborts with the
//!     |        step's own code)
//!  commit      the primary checks and applies its own adjustments inside
//!   point      the commit point itself, against the reservations of others
//! ```
//!
//! Recovery treats a reservation like a lock: roll forward applies it, roll
//! back drops it, and the hash goes when its last adjuster does.
//!
//! A *blind* transaction, one whose every key is only adjusted, reads no
//! value at all, so it does not wait for one:
//!
//! ```text
//!  execute     first, on no snapshot: the deltas are known up front
//!  lock        RT 1, every store but the primary, in parallel: one script
//!     |        each joins the keys in mode `a` and reserves the deltas
//!     |        (a refusal locks nothing there, and aborts with the step's
//!     |        own code)
//!  commit      RT 2 (RT 1 when the primary is the only store): the
//!   point      primary's keys were never locked; the commit point checks
//!              that each is free or held by adjusters only, checks the
//!              bounds against their reservations, and adjusts, with the
//!              decision, in one script. A key held otherwise is in the way
//!              as a lock would be: nothing changes, wait, run again.
//! ```
//!
//! A primary that did not answer its last call (`Store::answering`) is
//! locked first, the usual way: a store that is down then fails the
//! transaction before its commit point, which has changed nothing, where a
//! commit point that fails leaves its outcome unknown.
//!
//! # Why it is strictly serializable
//!
//! Every transaction holds a lock on every key it reads, from the moment it
//! reads it until its decision is applied to that key: exclusive on keys it
//! may write, shared on keys it only reads. So locks are taken before any
//! are released (all in round trip 1, released only after the commit
//! point): strict two-phase locking. While a transaction holds its locks,
//! nothing it read can change and nothing it writes can be read; its commit
//! point is an instant at which it holds all of them, and the commit points
//! order the transactions (a read-only transaction is ordered at the end of
//! round trip 1). The order respects real time: a transaction that starts
//! after another answered meets that one's locks until they are released,
//! and a lock of a committed transaction is rolled forward by whoever meets
//! it, so an acknowledged write is never invisible to a later transaction.
//! Leases keep a dead coordinator from blocking forever without breaking
//! the argument: a lock is only taken away from an undecided transaction
//! after `aborted` is written where its commit point would write, so it
//! can no longer commit; a read-only transaction, which has no decision to
//! fence, answers only once every one of its shared locks turned out to
//! be still held when it released them, and runs again otherwise, so it
//! depends on no clock. Adjusters share a key's lock, but
//! none of them reads it and no reader or writer can hold it meanwhile;
//! their deltas commute, so the value any later reader sees is the same in
//! every order of their commit points, and reservations keep each bound
//! true at every one of them. A blind transaction holds its primary's keys
//! for the one instant of its commit script, and the others' from round
//! trip 1 on: at its commit point it still holds all of them at once, and a
//! key of its primary held by anyone but adjusters stops it there as a
//! lock would have. A Redis Cluster store changes nothing in the
//! argument: the locks are per key whichever slot holds them, its slots
//! lock and apply like separate stores, and the commit point is never on a
//! cluster, so it stays one script.
//!
//! # Layout
//!
//! - [`types`]: requests, responses, the decision record.
//! - `plan`: which keys are locked how on which store, which store decides.
//! - `attempt`: one attempt, phase by phase.
//! - `latch`: queueing for keys within this process.
//! - `wake`: waiting for keys held by other hosts.
//! - `background`: applying other stores and finalizing records after the
//!   answer.
//! - `recovery`: resolving locks that are in the way; the sweep.
//! - [`resolve`]: finishing one transaction now, and recovery's reports.
//! - [`inspect`]: listing transactions and locks for operators.
//! - `idempotency`: one outcome per client idempotency key.
//! - `faults`: named points where tests crash a host.

mod access;
mod attempt;
mod background;
pub mod faults;
mod idempotency;
pub mod inspect;
mod latch;
mod plan;
mod recovery;
pub mod resolve;
pub mod types;
mod wake;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::Instrument;

use crate::config::{Config, TxnConfig};
use crate::metrics::{Metrics, Phase};
use crate::participants::{Participant, Registry};
use crate::runtime::{CallError, GuestAbort, Instance};
use crate::store::durability::Durability;
use crate::store::{Finalize, Store, StoreError};
use attempt::{After, Outcome};
use background::{Finalizer, Pending, Remaining};
use idempotency::ClaimToken;
use latch::{Latch, Latches};
use plan::Plan;
pub use recovery::{Count, SweepReport};
use types::{AbortInfo, Lookup, Record, Status, TxnRequest, TxnResponse};

/// A request's steps once checked: each participant with its input bytes.
type CheckedSteps = Vec<(Arc<Participant>, Vec<u8>)>;

/// The abort code of a transaction that lost every race it ran.
pub const CONFLICT: &str = "conflict";

/// A request that cannot run as given, or a failure that left its outcome
/// open. (A transaction that ran and aborted is a normal [`TxnResponse`].)
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The request itself is wrong; sending it again will not help.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// A store failed before anything was decided: nothing was applied, and
    /// the request can be sent again.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A store failed while the decision was being written: the transaction
    /// may or may not have committed. Its id tells, once the store is back.
    #[error("transaction {id}: the decision could not be confirmed ({message}); look it up by id")]
    OutcomeUnknown { id: String, message: String },
    /// A first request with the same idempotency key is still running; a
    /// retry may succeed after `retry_after` (its claim's lease, or its
    /// transaction's locks' leases, whichever end first).
    #[error(
        "a request with idempotency key `{key}` is still running; send it again in {} s",
        seconds(*retry_after)
    )]
    InFlight { key: String, retry_after: Duration },
    /// The host is at one of its bounds (`what`); nothing was touched, and
    /// the request can be sent again after a pause.
    #[error("the host is overloaded: {what}; nothing was applied, send it again shortly")]
    Overloaded { what: String },
}

/// `d` in whole seconds, rounded up, at least 1: what a `Retry-After` says.
pub fn seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

impl TxnError {
    /// The stable code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            TxnError::BadRequest { code, .. } => code,
            TxnError::Store(StoreError::Unavailable { .. }) => "store_unavailable",
            TxnError::Store(StoreError::Protocol { .. }) => "store_error",
            TxnError::OutcomeUnknown { .. } => "outcome_unknown",
            TxnError::InFlight { .. } => "in_flight",
            TxnError::Overloaded { .. } => "overloaded",
        }
    }

    fn bad_request(code: &'static str, message: String) -> TxnError {
        TxnError::BadRequest { code, message }
    }
}

/// Runs transactions against the configured stores and participants. Holds
/// no transaction state that must survive a crash: that is all in Redis.
#[derive(Debug)]
pub struct Coordinator {
    registry: Arc<Registry>,
    /// Every configured store, by name.
    stores: BTreeMap<String, Store>,
    /// Name of the store holding idempotency keys (and preferred for
    /// decisions).
    log_store: String,
    config: TxnConfig,
    /// Whether the stores were required to be durable (see
    /// `store::durability`).
    durability: Durability,
    metrics: Metrics,
    /// Keys queued for within this process (see `latch`).
    latches: Latches,
    /// Wake-ups for keys held by other hosts (see `wake`).
    waker: wake::Waker,
    /// Applies and finalizations still running after their answers.
    pending: Arc<Pending>,
    finalizer: Arc<Finalizer>,
    /// Transactions running now, bounded by `txn.in_flight_max`.
    in_flight: Arc<AtomicUsize>,
    /// Set once the host is shutting down: it is no longer ready.
    draining: AtomicBool,
}

/// A transaction's place among those in flight, given back when dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One step, declared.
struct Step {
    index: usize,
    participant: Arc<Participant>,
    input: Vec<u8>,
    /// What it declared, checked, its keys Redis keys (see `access`).
    declared: Vec<access::Declared>,
    /// The instance that ran `declare`, kept for the first `execute` so a
    /// step instantiates once when there is no conflict.
    instance: Option<Instance>,
}

impl Step {
    fn abort(&self, code: &str, message: String) -> AbortInfo {
        AbortInfo {
            step: Some(self.index),
            participant: Some(self.participant.name.clone()),
            code: code.to_owned(),
            message,
            limit: None,
        }
    }

    fn guest_abort(&self, abort: GuestAbort) -> AbortInfo {
        self.abort(&abort.code, abort.message)
    }

    fn call_failed(&self, error: CallError) -> AbortInfo {
        let name = &self.participant.name;
        match error {
            CallError::Trap(m) => self.abort("trap", format!("participant `{name}` trapped: {m}")),
            CallError::BadAbortCode(m) => self.abort(
                "bad_abort_code",
                format!("participant `{name}` aborted with a code it may not use: {m}"),
            ),
            CallError::Limit { limit, bound } => AbortInfo {
                limit: Some(limit.name().to_owned()),
                ..self.abort(
                    "limit_exceeded",
                    format!(
                        "participant `{name}` exceeded its {} limit ({bound})",
                        limit.name()
                    ),
                )
            },
        }
    }
}

impl Coordinator {
    /// Connects to every configured store (lazily: a store that is down
    /// fails the transactions that need it, not the start-up).
    pub fn new(config: &Config, registry: Arc<Registry>) -> Result<Coordinator, StoreError> {
        let stores = config
            .stores
            .iter()
            .map(|(name, store)| {
                let timeout = config.txn.store_timeout();
                let store = Store::connect(name, store, timeout)?;
                Ok((name.clone(), store))
            })
            .collect::<Result<_, StoreError>>()?;
        let pending = Arc::new(Pending::default());
        Ok(Coordinator {
            registry,
            stores,
            log_store: config.log_store.clone(),
            config: config.txn.clone(),
            durability: config.durability,
            metrics: Metrics::new(
                [
                    config.txn.lock_wait(),
                    config.txn.idempotency_wait(),
                    config.txn.slot_wait(),
                ]
                .into_iter()
                .max()
                .unwrap_or_default(),
            ),
            latches: Latches::default(),
            waker: wake::Waker::default(),
            finalizer: Arc::new(Finalizer::new(pending.clone())),
            in_flight: Arc::default(),
            draining: AtomicBool::new(false),
            pending,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    fn store(&self, name: &str) -> &Store {
        self.stores
            .get(name)
            .expect("participant stores are checked at load")
    }

    fn log(&self) -> &Store {
        self.store(&self.log_store)
    }

    /// Checks every store's persistence and eviction settings (see
    /// `store::durability`): one message per store that could lose an
    /// acknowledged decision, none when all are fine.
    pub async fn check_durability(&self) -> Vec<String> {
        let checks = join_all(
            self.stores
                .values()
                .map(|s| s.check_durability(self.durability)),
        )
        .await;
        checks.into_iter().filter_map(Result::err).collect()
    }

    /// Whether the stores are held to the durability rules.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Marks the host as shutting down: `/v1/ready` answers 503 from now on,
    /// so that load balancers stop sending it work.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Transactions running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Runs `request` to a decision: committed, or aborted with a reason.
    /// With an idempotency key, a request already decided returns its first
    /// outcome instead (see `idempotency`).
    pub async fn run(&self, request: TxnRequest) -> Result<TxnResponse, TxnError> {
        let started = Instant::now();
        let result = match self.check(&request).and_then(|s| Ok((s, self.admit()?))) {
            Ok((steps, _admitted)) => match &request.idempotency_key {
                Some(key) => self.run_claimed(key, steps).await,
                None => self.run_steps(steps, None).await.map(|(r, _)| r),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => {
                let code = r.abort.as_ref().map(|a| a.code.as_str());
                self.metrics.decided(code, r.attempts, started.elapsed());
            }
            Err(e) => self.metrics.failed(e.code()),
        }
        faults::point("before-reply").await;
        result
    }

    /// A place among the transactions in flight, or `overloaded` when all
    /// `txn.in_flight_max` are taken.
    fn admit(&self) -> Result<Admitted, TxnError> {
        let max = self.config.in_flight_max;
        let admitted = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        match admitted {
            true => Ok(Admitted(self.in_flight.clone())),
            false => Err(TxnError::Overloaded {
                what: format!("{max} transactions in flight (txn.in_flight_max)"),
            }),
        }
    }

    /// The coordinator's counters, for `GET /metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Waits until the work this coordinator still owes after its answers
    /// (applies, releases, record finalizations) is done.
    pub async fn flush(&self) {
        self.pending.idle().await;
    }

    /// Declares, then attempts until a decision, `attempts_max` or
    /// `lock_wait_ms`. Also says whether the commit point itself stored the
    /// outcome under the idempotency claim.
    async fn run_steps(
        &self,
        steps: CheckedSteps,
        claim: Option<&ClaimToken>,
    ) -> Result<(TxnResponse, bool), TxnError> {
        // Instance slots for every step, before the first instance.
        let wait = self.config.slot_wait();
        let Some(_slots) = self.registry.runtime().reserve(steps.len(), wait).await else {
            return Err(TxnError::Overloaded {
                what: format!(
                    "no {} free instance slots within {} ms (runtime.instance_pool, \
                     txn.slot_wait_ms)",
                    steps.len(),
                    wait.as_millis()
                ),
            });
        };
        let declaring = Instant::now();
        // The first attempt's id names the declare phase too, so that what
        // participants print there is logged under it. A claimed request's
        // is its claim's owner, so that a retry can tell from that
        // transaction when the request's host is gone (see `idempotency`).
        let first_id = claim.map_or_else(|| new_txn_id(false), |c| c.owner.clone());
        let declared = self
            .declare(steps)
            .instrument(tracing::info_span!("txn", id = %first_id, attempt = 1))
            .await;
        self.metrics.phase(Phase::Declare, declaring.elapsed());
        let mut steps = match declared {
            Ok(steps) => steps,
            Err(abort) => return Ok((self.aborted(first_id, 1, abort).await, false)),
        };
        let plan = Plan::new(&steps, &self.log_store, claim.is_some(), |store| {
            self.stores.get(store).is_some_and(Store::is_cluster)
        });
        // Only now is it known whether the transaction may leave no trace
        // (see `new_txn_id`): a traceless one's id differs from the one its
        // declare phase was logged under in its last bit.
        let mut first_id = Some(flagged(first_id, plan.traceless()));
        let latches = self.latches.acquire(plan.latch_keys()).await;
        let mut waited = Duration::ZERO;
        let mut attempt = 1;
        loop {
            let id = first_id
                .take()
                .unwrap_or_else(|| new_txn_id(plan.traceless()));
            let span = tracing::info_span!("txn", id = %id, attempt);
            let outcome = self
                .attempt(&id, attempt, &mut steps, &plan, claim)
                .instrument(span)
                .await?;
            let (reason, blocked) = match outcome {
                Outcome::Committed { outputs, after } => {
                    let recorded = claim.is_some() && plan.primary.is_some();
                    let response = TxnResponse {
                        id: id.clone(),
                        status: Status::Committed,
                        attempts: attempt,
                        steps: outputs,
                        abort: None,
                    };
                    self.after(id, after, latches);
                    return Ok((response, recorded));
                }
                Outcome::Aborted(abort) => {
                    return Ok((self.aborted(id, attempt, abort).await, false));
                }
                Outcome::Blocked(b) => (
                    format!("`{}` is locked by {}", b.key, b.holder.txn),
                    Some(b),
                ),
                Outcome::Fenced(reason) => (reason, None),
            };
            let patience = self.config.lock_wait().saturating_sub(waited);
            if attempt >= self.config.attempts_max || patience.is_zero() {
                let abort = AbortInfo {
                    step: None,
                    participant: None,
                    code: CONFLICT.into(),
                    message: format!(
                        "gave up after {attempt} attempts and {} ms waiting for locks \
                         (txn.attempts_max, txn.lock_wait_ms); last conflict: {reason}",
                        waited.as_millis()
                    ),
                    limit: None,
                };
                return Ok((self.aborted(id, attempt, abort).await, false));
            }
            tracing::debug!(txn = %id, attempt, %reason, "conflict; running again");
            let started = Instant::now();
            let unblocked = match &blocked {
                Some(b) => self.unblock(b, patience).await,
                None => Err(StoreError::Protocol {
                    store: String::new(),
                    message: reason,
                }),
            };
            if let Err(e) = unblocked {
                if blocked.is_some() {
                    tracing::warn!(txn = %id, error = %e, "could not resolve a lock in the way");
                }
                tokio::time::sleep(self.backoff(attempt).min(patience)).await;
            }
            waited += started.elapsed();
            attempt += 1;
        }
    }

    /// Hands what a committed attempt still owes to the background.
    fn after(&self, id: String, after: After, latches: Vec<Latch>) {
        match after {
            After::Nothing => drop(latches),
            After::Apply {
                primary,
                stores,
                marker,
            } if stores.is_empty() => {
                // One store: the record is a receipt, kept record_retention_s
                // in case the answer got lost; now it can shrink, and the
                // index entry go.
                drop(latches);
                let item = Finalize {
                    txn: id,
                    ttl: self.config.finalized_retention(),
                    marker,
                    compact: true,
                };
                self.finalizer.send(self.store(&primary), item);
            }
            After::Apply {
                primary,
                stores,
                marker,
            } => {
                let work = Remaining {
                    txn: id,
                    primary: self.store(&primary).clone(),
                    stores,
                    marker,
                    retention: self.config.finalized_retention(),
                    latches,
                };
                let (finalizer, ticket) = (self.finalizer.clone(), self.pending.ticket());
                tokio::spawn(async move {
                    background::apply(work, &finalizer).await;
                    drop(ticket);
                });
            }
        }
    }

    /// An aborted transaction's response, with a receipt on the log store
    /// for lookups (kept `txn.answered_retention_s`). Failing to write it
    /// is logged, not returned: the outcome itself stands.
    async fn aborted(&self, id: String, attempts: u32, abort: AbortInfo) -> TxnResponse {
        let retention = self.config.answered_retention();
        if !retention.is_zero() {
            self.metrics.round_trip();
            let record = Record::Aborted {
                abort: Some(abort.clone()),
            };
            if let Err(e) = self.log().receipt(&id, &record.encode(), retention).await {
                tracing::warn!(txn = %id, error = %e, "could not record the outcome for lookups");
            }
        }
        TxnResponse {
            id,
            status: Status::Aborted,
            attempts,
            steps: Vec::new(),
            abort: Some(abort),
        }
    }

    /// What is known of transaction `id`: its record (on any store: a
    /// commit wins over an `aborted` that a lookup's fence left on a store
    /// that was not its primary), or its locks. A transaction of which no
    /// store holds a trace is in doubt while it may still be running (its
    /// lease since it started, by the clock in its id, and a store call).
    /// Then, if its id says it may leave no trace before its commit point
    /// (one store, keys only adjusted: no lock before the commit point), it
    /// is fenced: `aborted` is written on every store that could hold its
    /// decision unless a record stands, so that a commit still on its way
    /// (a request held up in the network) can no longer land, and the
    /// answer is final. Any other transaction with no trace never ran, was
    /// read-only, or has a record past its retention. Past
    /// `txn.answered_retention_s` its record, had it committed, may have
    /// expired: then nothing is fenced, and nothing is known. None also for
    /// an id that is not a transaction id at all.
    pub async fn lookup(&self, id: &str) -> Result<Option<Lookup>, TxnError> {
        let Some(started) = txn_started(id) else {
            return Ok(None);
        };
        let records = join_all(self.stores.values().map(|s| s.record(id))).await;
        let mut decided = Vec::new();
        for (store, record) in self.stores.values().zip(records) {
            if let Some(bytes) = record? {
                decided.push(decode_record(store.name(), id, &bytes)?);
            }
        }
        if let Some(record) = final_record(decided) {
            return Ok(Some(Lookup::of(id, record)));
        }
        for store in self.stores.values() {
            if store.holds_locks(id).await? {
                return Ok(Some(Lookup::in_doubt(id)));
            }
        }
        let age = std::time::SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        if age < self.config.lease() + self.config.store_timeout() {
            return Ok(Some(Lookup::in_doubt(id)));
        }
        if !traceless(id) || age >= self.config.answered_retention() {
            return Ok(None);
        }
        Ok(Some(Lookup::of(id, self.fence_everywhere(id).await?)))
    }

    /// Writes `aborted` as the decision of `id` on every store that could
    /// be its primary (any single Redis), unless a record stands there, and
    /// returns the decision that stands.
    async fn fence_everywhere(&self, id: &str) -> Result<Record, TxnError> {
        let fence = Record::Aborted {
            abort: Some(AbortInfo {
                step: None,
                participant: None,
                code: RECOVERED.into(),
                message: format!(
                    "no store held a trace of transaction {id} once its lease was over: a lookup \
                     fenced it, so that it can never commit; nothing of it was applied"
                ),
                limit: None,
            }),
        }
        .encode();
        let retention = self.config.record_retention();
        let singles: Vec<&Store> = self.stores.values().filter(|s| !s.is_cluster()).collect();
        let stood = join_all(singles.iter().map(|s| s.decide(id, &fence, retention))).await;
        let mut decided = Vec::new();
        for (store, record) in singles.iter().zip(stood) {
            decided.push(decode_record(store.name(), id, &record?)?);
        }
        tracing::info!(txn = id, "a lookup fenced a transaction no store knew");
        Ok(final_record(decided).expect("every fence leaves a record"))
    }

    /// Resolves the participants and encodes the inputs.
    fn check(&self, request: &TxnRequest) -> Result<CheckedSteps, TxnError> {
        if request.steps.is_empty() {
            return Err(TxnError::bad_request(
                "empty_transaction",
                "a transaction needs at least one step: {\"steps\":[{\"participant\":...,\"input\":...}]}".into(),
            ));
        }
        if request.steps.len() > self.config.steps_max {
            return Err(TxnError::bad_request(
                "too_many_steps",
                format!(
                    "{} steps; at most {} (txn.steps_max)",
                    request.steps.len(),
                    self.config.steps_max
                ),
            ));
        }
        let participants = self
            .registry
            .get_all(request.steps.iter().map(|s| s.participant.as_str()))
            .map_err(|i| {
                TxnError::bad_request(
                    "unknown_participant",
                    format!(
                        "step {i}: no participant named `{}`; known: {}",
                        request.steps[i].participant,
                        self.registry.names().join(", ")
                    ),
                )
            })?;
        let inputs = request
            .steps
            .iter()
            .map(|s| serde_json::to_vec(&s.input).expect("JSON values serialize"));
        Ok(participants.into_iter().zip(inputs).collect())
    }

    /// Runs `declare` for every step, each on a fresh instance.
    async fn declare(&self, steps: CheckedSteps) -> Result<Vec<Step>, AbortInfo> {
        let mut declared = Vec::with_capacity(steps.len());
        for (index, (participant, input)) in steps.into_iter().enumerate() {
            let mut step = Step {
                index,
                participant,
                input,
                declared: Vec::new(),
                instance: None,
            };
            let mut instance = step
                .participant
                .instantiate(step.index)
                .await
                .map_err(|e| step.call_failed(e))?;
            let started = Instant::now();
            let span = tracing::debug_span!("call", participant = %step.participant.name, phase = "declare");
            let reply = instance.declare(&step.input).instrument(span).await;
            step.participant.calls.declare.record(started.elapsed());
            let access = match reply {
                Ok(Ok(access)) => access,
                Ok(Err(abort)) => return Err(step.guest_abort(abort)),
                Err(e) => return Err(step.call_failed(e)),
            };
            step.declared = access::declared(&step.participant, access)
                .map_err(|(code, message)| step.abort(code, message))?;
            step.instance = Some(instance);
            declared.push(step);
        }
        Ok(declared)
    }

    /// Full jitter over an exponentially growing cap.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(self.config.backoff_max_ms);
        Duration::from_millis(fastrand::u64(0..=cap))
    }
}

/// Whether `id` is a transaction id: a UUID in its hyphenated form, which
/// is all the ids this host hands out look like (and never holds a
/// character that means something in a Redis pattern).
pub fn is_txn_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok()
}

/// When transaction `id` started, by the clock of the host that ran it (a
/// UUIDv7 carries it); None for an id this host could not have handed out.
fn txn_started(id: &str) -> Option<std::time::SystemTime> {
    if !is_txn_id(id) {
        return None;
    }
    let (secs, nanos) = uuid::Uuid::try_parse(id).ok()?.get_timestamp()?.to_unix();
    Some(std::time::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The record that stands among those found for one transaction on
/// several stores: a commit wins, since only its primary can hold one; an
/// `aborted` elsewhere is a lookup's fence. An abort with its reason is
/// preferred to one without.
fn final_record(records: Vec<Record>) -> Option<Record> {
    records.into_iter().max_by_key(Record::finality)
}

fn decode_record(store: &str, id: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    Record::decode(bytes).map_err(|e| StoreError::Protocol {
        store: store.to_owned(),
        message: format!("unreadable record of {id}: {e}"),
    })
}

/// The abort code of a transaction that recovery rolled back, or that a
/// lookup fenced, rather than one of its steps.
pub const RECOVERED: &str = "recovered";

/// Unique across hosts without coordination, and time-ordered, which makes
/// records easy to scan by age (a UUIDv7). Its last bit says whether the
/// transaction may leave no trace before its commit point (see
/// [`Plan::traceless`]): only such an id is fenced by a lookup that finds
/// nothing of it (see [`Coordinator::lookup`]); any other transaction is
/// known by its locks until it decides, and by its record after.
fn new_txn_id(traceless: bool) -> String {
    with_flag(uuid::Uuid::now_v7(), traceless).to_string()
}

/// Transaction id `id` with its last bit set to `traceless`.
fn flagged(id: String, traceless: bool) -> String {
    match uuid::Uuid::try_parse(&id) {
        Ok(uuid) => with_flag(uuid, traceless).to_string(),
        Err(_) => id,
    }
}

fn with_flag(uuid: uuid::Uuid, traceless: bool) -> uuid::Uuid {
    let mut bytes = *uuid.as_bytes();
    bytes[15] = (bytes[15] & !1) | u8::from(traceless);
    uuid::Uuid::from_bytes(bytes)
}

/// Whether transaction `id` may have left no trace before its commit point
/// (see [`new_txn_id`]).
fn traceless(id: &str) -> bool {
    uuid::Uuid::try_parse(id).is_ok_and(|u| u.as_bytes()[15] & 1 == 1)
}
