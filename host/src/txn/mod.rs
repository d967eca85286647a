//! The coordinator: runs a transaction's steps and commits their writes
//! atomically across stores, with two-phase commit whose state lives in Redis.
//!
//! # One attempt
//!
//! ```text
//!  declare     every step's participant names the keys it reads and writes
//!     |        (once per transaction; keys get the participant's prefix)
//!  read        values, versions, locks of all keys: one script per store,
//!     |        all stores in parallel. A live lock -> conflict; an expired
//!     |        one -> resolve it (see recovery), then conflict.
//!  execute     steps in order on that snapshot; each sees the writes of the
//!     |        steps before it. A step's abort, trap or broken limit ends the
//!     |        transaction here: nothing was locked, nothing is written.
//!     +-- no writes, one store ......... committed (the read was atomic)
//!     +-- no writes, several stores .... validate all keys -> committed
//!     +-- one store .................... commit_one_phase: check + apply in
//!     |                                  one script -> committed
//!  prepare     per store with writes, in parallel: lock each write key
//!     |        (lock, lease, staged value) if unlocked and at the version read
//!  validate    keys only read, on every store: unlocked and unchanged (after
//!     |        every write lock is held, so the reads and writes line up)
//!  decide      SET rs:txn:<id> {"state":"committed",...} NX on the log store:
//!     |        THE COMMIT POINT. If an `aborted` record got there first, our
//!     |        lease ran out and someone rolled us back: roll back, re-run.
//!  commit      per store, in parallel: apply staged values, bump versions,
//!              drop locks. A store that fails here is rolled forward later
//!              by whoever meets the lock; the answer is already `committed`.
//! ```
//!
//! Any conflict (a lock held by another transaction, a version that moved)
//! rolls back what this attempt locked and re-runs the whole transaction with
//! a new attempt id, after a jittered exponential backoff, at most
//! `txn.attempts_max` times; then it aborts with code `conflict`. Re-running
//! is safe because participants are pure.
//!
//! # States of a key
//!
//! ```text
//!            prepare(T)                     commit(T): value := staged, ver += 1
//!  unlocked ------------> locked by T ----------------------------------> unlocked
//!     ^                     |    |
//!     |   rollback(T)       |    | lease expired, met by anyone:
//!     +---------------------+    |   record committed -> commit(T)
//!                                |   no record -> write `aborted` NX -> rollback(T)
//! ```
//!
//! # Why it is serializable
//!
//! Every write key is locked at the version the transaction read, and every
//! read-only key is checked unchanged and unlocked after all those locks are
//! held. So there is an instant, between the last lock and the first check,
//! at which every value the transaction read was current and nothing it
//! writes could change: the transaction takes effect there. A read-only
//! transaction across stores checks its reads the same way, after all reads.
//!
//! # Layout
//!
//! - [`types`]: requests, responses, the decision record.
//! - `attempt`: one attempt, phase by phase.
//! - `recovery`: resolving locks whose lease expired; the sweep.
//! - `idempotency`: one outcome per client idempotency key.
//! - `faults`: named points where tests crash a host.

mod attempt;
pub mod faults;
mod idempotency;
mod recovery;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, TxnConfig};
use crate::metrics::Metrics;
use crate::participants::{Participant, Registry};
use crate::runtime::{CallError, GuestAbort, Instance};
use crate::store::{Store, StoreError};
use idempotency::ClaimToken;
pub use recovery::SweepReport;
use types::{AbortInfo, Lookup, LookupStatus, Record, Status, TxnRequest, TxnResponse};

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
    /// A first request with the same idempotency key is still running.
    #[error("a request with idempotency key `{key}` is still running; send it again later")]
    InFlight { key: String },
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
        }
    }

    fn bad_request(code: &'static str, message: String) -> TxnError {
        TxnError::BadRequest { code, message }
    }
}

/// Runs transactions against the configured stores and participants. Holds
/// no transaction state of its own: everything that must survive a crash is
/// in Redis.
#[derive(Debug)]
pub struct Coordinator {
    registry: Arc<Registry>,
    /// Every configured store, by name.
    stores: BTreeMap<String, Store>,
    /// Name of the store holding decision records.
    log_store: String,
    config: TxnConfig,
    metrics: Metrics,
}

/// One step, declared.
struct Step {
    index: usize,
    participant: Arc<Participant>,
    input: Vec<u8>,
    /// Every declared key, once, as Redis keys.
    keys: Vec<String>,
    /// The declared write keys, as Redis keys.
    writes: Vec<String>,
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
            .map(|(name, url)| {
                Ok((
                    name.clone(),
                    Store::connect(name, url, config.txn.store_timeout())?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Coordinator {
            registry,
            stores,
            log_store: config.log_store.clone(),
            config: config.txn.clone(),
            metrics: Metrics::default(),
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

    /// Runs `request` to a decision: committed, or aborted with a reason.
    /// With an idempotency key, a request already decided returns its first
    /// outcome instead (see `idempotency`).
    pub async fn run(&self, request: TxnRequest) -> Result<TxnResponse, TxnError> {
        let started = std::time::Instant::now();
        let result = match self.check(&request) {
            Ok(steps) => match &request.idempotency_key {
                Some(key) => self.run_claimed(key, steps).await,
                None => self.run_steps(steps, None).await,
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

    /// The coordinator's counters, for `GET /metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Declares, then attempts until a decision or `attempts_max`, and
    /// leaves a record of the outcome for lookups.
    async fn run_steps(
        &self,
        steps: CheckedSteps,
        claim: Option<&ClaimToken>,
    ) -> Result<TxnResponse, TxnError> {
        // Instance slots for every step, before the first instance.
        let _slots = self.registry.runtime().reserve(steps.len()).await;
        let mut steps = match self.declare(steps).await {
            Ok(steps) => steps,
            Err(abort) => return self.finish(aborted(new_txn_id(), 1, abort)).await,
        };
        let mut attempt = 1;
        loop {
            let id = new_txn_id();
            let response = match self.attempt(&id, attempt, &mut steps, claim).await? {
                attempt::Outcome::Committed { outputs, recorded } => {
                    let response = TxnResponse {
                        id,
                        status: Status::Committed,
                        attempts: attempt,
                        steps: outputs,
                        abort: None,
                    };
                    if recorded {
                        return Ok(response);
                    }
                    response
                }
                attempt::Outcome::Aborted(abort) => aborted(id, attempt, abort),
                attempt::Outcome::Conflict(reason) if attempt >= self.config.attempts_max => {
                    let abort = AbortInfo {
                        step: None,
                        participant: None,
                        code: CONFLICT.into(),
                        message: format!(
                            "gave up after {attempt} attempts (txn.attempts_max); last conflict: {reason}"
                        ),
                        limit: None,
                    };
                    aborted(id, attempt, abort)
                }
                attempt::Outcome::Conflict(reason) => {
                    tracing::debug!(txn = %id, attempt, %reason, "conflict; re-running");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                    continue;
                }
            };
            return self.finish(response).await;
        }
    }

    /// Records an outcome that no decision record holds yet (aborts,
    /// one-phase and read-only commits), so that its id can be looked up.
    /// Failing to is logged, not returned: the outcome itself stands.
    async fn finish(&self, response: TxnResponse) -> Result<TxnResponse, TxnError> {
        let record = match response.status {
            Status::Committed => Record::Committed {
                stores: BTreeMap::new(),
            },
            Status::Aborted => Record::Aborted {
                abort: response.abort.clone(),
            },
        };
        let retention = self.config.record_retention();
        if let Err(e) = self
            .log()
            .decide(&response.id, &record.encode(), retention)
            .await
        {
            tracing::warn!(txn = %response.id, error = %e, "could not record the outcome for lookups");
        }
        Ok(response)
    }

    /// What is known of transaction `id`: its record, or its locks.
    pub async fn lookup(&self, id: &str) -> Result<Option<Lookup>, TxnError> {
        if let Some(bytes) = self.log().record(id).await? {
            let record = Record::decode(&bytes).map_err(|e| StoreError::Protocol {
                store: self.log_store.clone(),
                message: format!("unreadable record of {id}: {e}"),
            })?;
            let (status, abort) = match record {
                Record::Committed { .. } => (LookupStatus::Committed, None),
                Record::Aborted { abort } => (LookupStatus::Aborted, abort),
            };
            return Ok(Some(Lookup {
                id: id.to_owned(),
                status,
                abort,
            }));
        }
        for store in self.stores.values() {
            if store.holds_locks(id).await? {
                return Ok(Some(Lookup {
                    id: id.to_owned(),
                    status: LookupStatus::InDoubt,
                    abort: None,
                }));
            }
        }
        Ok(None)
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
        request
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let p = self.registry.get(&s.participant).ok_or_else(|| {
                    let known = self.registry.names();
                    TxnError::bad_request(
                        "unknown_participant",
                        format!(
                            "step {i}: no participant named `{}`; known: {}",
                            s.participant,
                            known.join(", ")
                        ),
                    )
                })?;
                let input = serde_json::to_vec(&s.input).expect("JSON values serialize");
                Ok((p, input))
            })
            .collect()
    }

    /// Runs `declare` for every step, each on a fresh instance.
    async fn declare(&self, steps: CheckedSteps) -> Result<Vec<Step>, AbortInfo> {
        let mut declared = Vec::with_capacity(steps.len());
        for (index, (participant, input)) in steps.into_iter().enumerate() {
            let mut step = Step {
                index,
                participant,
                input,
                keys: Vec::new(),
                writes: Vec::new(),
                instance: None,
            };
            let mut instance = step
                .participant
                .instantiate()
                .await
                .map_err(|e| step.call_failed(e))?;
            let started = std::time::Instant::now();
            let reply = instance.declare(&step.input).await;
            step.participant.calls.declare.record(started.elapsed());
            let access = match reply {
                Ok(Ok(access)) => access,
                Ok(Err(abort)) => return Err(step.guest_abort(abort)),
                Err(e) => return Err(step.call_failed(e)),
            };
            if let Some(bad) = access
                .reads
                .iter()
                .chain(&access.writes)
                .find(|k| k.is_empty())
            {
                return Err(step.abort(
                    "bad_key",
                    format!("declared an invalid key {bad:?}: keys must not be empty"),
                ));
            }
            let p = &step.participant;
            step.writes = access.writes.iter().map(|k| p.key(k)).collect();
            step.writes.sort();
            step.writes.dedup();
            step.keys = access
                .reads
                .iter()
                .chain(&access.writes)
                .map(|k| p.key(k))
                .collect();
            step.keys.sort();
            step.keys.dedup();
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

fn aborted(id: String, attempts: u32, abort: AbortInfo) -> TxnResponse {
    TxnResponse {
        id,
        status: Status::Aborted,
        attempts,
        steps: Vec::new(),
        abort: Some(abort),
    }
}

/// Unique across hosts without coordination, and time-ordered, which makes
/// records easy to scan by age.
fn new_txn_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
