//! One outcome per client idempotency key.
//!
//! A request with `idempotency_key` K first claims `rs:idem:K` on the log
//! store for an owner id of its own, with a lease, and with the request's
//! fingerprint:
//!
//! ```text
//!  claim(K) --> claimed ........ run it; the outcome replaces the claim
//!          --> done{response} .. a first request finished: answer its response
//!          --> in_flight ....... a first request is running: poll until it
//!                                is done, or its claim lease ends (then the
//!                                claim is taken over), or the wait bound
//!          --> reused .......... K was claimed for different steps, running
//!                                or done: `idempotency_key_reused`
//! ```
//!
//! The commit point of a claimed transaction writes the decision and
//! `done{response}` in one script, and only while the claim is still the
//! owner's. So a commit can never happen without its response being stored
//! (a retry cannot run it twice), and a request whose claim was taken over
//! by a retry can no longer commit (it aborts with `superseded`). A claimed
//! transaction that writes therefore always keeps its decision on the log
//! store.
//!
//! Outcomes that applied nothing (business aborts, read-only commits) are
//! stored after the fact, and answered only once stored: a retry must never
//! get a different answer than the first request gave. If storing fails, the
//! answer is `store_unavailable` instead (nothing was applied; the first
//! outcome was never told, so a retry may run again). `conflict` aborts and
//! store failures release the claim, so that a retry runs again rather than
//! repeating a transient failure. Whenever the claim turns out to be no
//! longer the owner's (a retry took it over after its lease), the first
//! request answers `superseded`, whatever it was about to say.
//!
//! A claim is idempotent for its owner, so a claim whose reply was lost is
//! asked again rather than left to block retries; if that fails too, it is
//! released in the background as soon as the log store answers again.
//!
//! A claim's owner is the id of its request's first attempt. So a retry
//! that finds the claim held need not wait out the claim's lease when the
//! first request's host is gone: every [`OWNER_CHECK`] it looks at the
//! owner's transaction. Rolled back by recovery (its record `aborted` with
//! code `recovered`, written by a sweep, a transaction that met its locks,
//! an operator's resolve or a lookup), or holding locks whose leases all
//! ended (the retry then fences it and rolls it back, as recovery would),
//! it can never commit: the claim is released and the retry runs. Otherwise the retry
//! waits, and its `in_flight` answer says when a retry can succeed: when
//! the owner's leases end, or else the claim's.
//!
//! The fingerprint is a SHA-256 of every step's participant and input. A
//! request that reuses a key for different steps is a client bug, not a
//! retry: it is rejected with `idempotency_key_reused` instead of answered
//! with an outcome that is not its own, or let in to take over a claim.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::inspect::KeptUnderKey;
use super::resolve::{RECOVERED, host};
use super::types::{AbortInfo, Record, Status, TxnResponse};
use super::{CONFLICT, CheckedSteps, Coordinator, TxnError, flagged, is_txn_id, new_txn_id};
use crate::store::{Claim, StoreError};

/// Longest a client key may be. Guards the log store against key bloat.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// First pause between polls of a claim held by a running first request;
/// doubles up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// How often a retry waiting for a first request looks at whether that
/// request's host is gone (see the module essay). Bounds what a waiting
/// retry costs the stores.
const OWNER_CHECK: Duration = Duration::from_millis(500);

/// A claim held by this host on a client key.
#[derive(Debug)]
pub(super) struct ClaimToken {
    pub key: String,
    /// The id of the request's first attempt.
    pub owner: String,
    /// The request's fingerprint, see [`fingerprint`].
    pub request: String,
    /// The stores the request's steps touch (and the log store): where
    /// its transaction may hold locks.
    pub stores: Vec<String>,
}

/// What a retry found of the first request holding a key.
enum Owner {
    /// Its transaction can never commit, and the claim is released.
    Gone,
    /// It may still run: a retry can succeed after this long.
    Running(Duration),
}

impl ClaimToken {
    /// The stored form of the claimed request's outcome.
    pub fn done_record(&self, response: &TxnResponse) -> Vec<u8> {
        serde_json::to_vec(&ClaimRecord::Done {
            response: response.clone(),
            request: Some(self.request.clone()),
        })
        .expect("responses serialize")
    }
}

/// What `rs:idem:K` holds once the first request has an outcome. (While it
/// runs, the claim script's own `pending` form.)
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ClaimRecord {
    Done {
        response: TxnResponse,
        /// The fingerprint of the request that had this outcome.
        #[serde(default)]
        request: Option<String>,
    },
}

/// Hex SHA-256 over each step's participant name and input, each
/// length-prefixed so that no two different requests share a preimage.
fn fingerprint(steps: &CheckedSteps) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (participant, input) in steps {
        for part in [participant.name.as_bytes(), input] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
    }
    crate::hex(&hash.finalize())
}

/// The abort of a request whose claim a retry took over.
pub(super) fn superseded() -> AbortInfo {
    AbortInfo {
        step: None,
        participant: None,
        code: "superseded".into(),
        message: "a retry with the same idempotency key took over this request after its claim lease ran out; \
                  the retry's outcome is the one that counts"
            .into(),
        limit: None,
    }
}

impl Coordinator {
    pub(super) async fn run_claimed(
        &self,
        key: &str,
        steps: CheckedSteps,
    ) -> Result<TxnResponse, TxnError> {
        check_key(key)?;
        let mut stores: Vec<String> = steps.iter().map(|(p, _)| p.store.clone()).collect();
        stores.push(self.log_store.clone());
        stores.sort();
        stores.dedup();
        let token = ClaimToken {
            key: key.to_owned(),
            owner: new_txn_id(false),
            request: fingerprint(&steps),
            stores,
        };
        if let Some(first) = self.claim(&token).await? {
            return Ok(first);
        }
        let result = self.run_steps(steps, Some(&token)).await;
        let retention = self.config.record_retention();
        let log = self.log();
        match result {
            // The commit point stored it, or refused for a taken-over claim.
            Ok((response, true)) => Ok(response),
            Ok((response, false)) => {
                let conflict = response.abort.as_ref().is_some_and(|a| a.code == CONFLICT);
                let record = if conflict {
                    Vec::new()
                } else {
                    token.done_record(&response)
                };
                self.metrics.round_trip();
                match log
                    .settle_claim(key, &token.owner, &record, retention)
                    .await
                {
                    Ok(true) => Ok(response),
                    Ok(false) => Ok(superseded_response(response)),
                    Err(e) => {
                        self.release_claim_later(&token);
                        Err(e.into())
                    }
                }
            }
            // The decision may be written; only its lease may end the claim.
            Err(e @ TxnError::OutcomeUnknown { .. }) => Err(e),
            Err(e) => {
                if let Ok(false) = log.settle_claim(key, &token.owner, &[], retention).await {
                    tracing::info!(key, "a retry took over this request's claim meanwhile");
                }
                Err(e)
            }
        }
    }

    /// Claims the key; `Some(response)` if a first request already answered.
    async fn claim(&self, token: &ClaimToken) -> Result<Option<TxnResponse>, TxnError> {
        let deadline = Instant::now() + self.config.idempotency_wait();
        let mut pause = POLL_MIN;
        let mut checked: Option<Instant> = None;
        let mut retry_after = self.config.idempotency_lease();
        loop {
            let claim = match self.claim_once(token).await {
                Ok(claim) => claim,
                // A reply lost on the way: claiming again with the same
                // owner is harmless, and tells.
                Err(_) => match self.claim_once(token).await {
                    Ok(claim) => claim,
                    Err(e) => {
                        self.release_claim_later(token);
                        return Err(e.into());
                    }
                },
            };
            match claim {
                Claim::Claimed => return Ok(None),
                Claim::Reused => return Err(reused(&token.key)),
                Claim::Done(bytes) => {
                    let ClaimRecord::Done { response, request } = serde_json::from_slice(&bytes)
                        .map_err(|e| StoreError::Protocol {
                            store: self.log_store.clone(),
                            message: format!(
                                "unreadable outcome of idempotency key {}: {e}",
                                token.key
                            ),
                        })?;
                    if request.is_some_and(|r| r != token.request) {
                        return Err(reused(&token.key));
                    }
                    return Ok(Some(response));
                }
                Claim::InFlight if checked.is_none_or(|c| c.elapsed() >= OWNER_CHECK) => {
                    checked = Some(Instant::now());
                    match self.first_request(token).await {
                        Ok(Owner::Gone) => continue,
                        Ok(Owner::Running(left)) => retry_after = left,
                        Err(e) => {
                            tracing::warn!(key = token.key, error = %e, "could not tell whether the first request of this key still runs");
                        }
                    }
                }
                Claim::InFlight if Instant::now() + pause > deadline => {
                    return Err(TxnError::InFlight {
                        key: token.key.clone(),
                        retry_after,
                    });
                }
                Claim::InFlight => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }

    /// Whether the first request holding `token`'s key can still commit
    /// (see the module essay); releases its claim when it cannot.
    async fn first_request(&self, token: &ClaimToken) -> Result<Owner, StoreError> {
        let log = self.log();
        let Some(bytes) = log.idempotency(&token.key).await? else {
            return Ok(Owner::Gone);
        };
        let Ok(KeptUnderKey::Pending { owner, lease }) = serde_json::from_slice(&bytes) else {
            // Done meanwhile: claiming again answers it.
            return Ok(Owner::Running(Duration::ZERO));
        };
        let now = log.now_ms().await?;
        let claim_left = lease.parse::<i64>().map_or(0, |l| l - now);
        let claim_left = Duration::from_millis(claim_left.max(0) as u64);
        if !is_txn_id(&owner) {
            return Ok(Owner::Running(claim_left));
        }
        // The first attempt's id is the owner, with its last bit set when
        // the attempt may leave no trace before its commit point (see
        // `new_txn_id`).
        let traceless = flagged(owner.clone(), true);
        let recovered = |record: Option<Record>| matches!(record, Some(Record::Aborted { abort: Some(a) }) if a.code == RECOVERED);
        let mut fenced = recovered(self.decision(&owner, &self.log_store, None).await?)
            || recovered(self.decision(&traceless, &self.log_store, None).await?);
        if !fenced {
            match self.owner_leases(&owner, &token.stores).await? {
                Some(left) if !left.is_zero() => return Ok(Owner::Running(left.min(claim_left))),
                Some(_) => {
                    let by = format!("a retry of idempotency key `{}` on {}", token.key, host());
                    let resolved = self.resolve(&owner, &by, false).await?;
                    fenced = resolved.is_some_and(|r| r.decision == Some(Status::Aborted));
                }
                // No lock: not locked yet, between attempts (then it may
                // still run, past what its first attempt's id tells), or an
                // attempt that leaves no trace before its commit point (a
                // lookup of its id fences it once it can no longer commit):
                // only the claim's lease says when it is over.
                None => {}
            }
        }
        if !fenced {
            return Ok(Owner::Running(claim_left));
        }
        let retention = self.config.record_retention();
        if log.settle_claim(&token.key, &owner, &[], retention).await? {
            tracing::info!(
                key = token.key,
                owner,
                "released the claim of a request whose transaction recovery rolled back"
            );
        }
        Ok(Owner::Gone)
    }

    /// How long until the last lease of `txn`'s locks on `stores` ends
    /// (zero once all have); `None` when it holds none there. Redis Cluster
    /// stores are left out: finding a transaction's entries there takes a
    /// `SCAN` of every master.
    async fn owner_leases(
        &self,
        txn: &str,
        stores: &[String],
    ) -> Result<Option<Duration>, StoreError> {
        let mut last: Option<i64> = None;
        for store in stores
            .iter()
            .filter_map(|s| self.stores.get(s))
            .filter(|s| !s.is_cluster())
        {
            let entries = store.entries_of(txn).await?;
            let Some(deadline) = entries.iter().map(|e| e.deadline_ms).max() else {
                continue;
            };
            let left = deadline - store.now_ms().await?;
            last = Some(last.map_or(left, |l| l.max(left)));
        }
        Ok(last.map(|left| Duration::from_millis(left.max(0) as u64)))
    }

    async fn claim_once(&self, token: &ClaimToken) -> Result<Claim, StoreError> {
        self.metrics.round_trip();
        self.log()
            .claim(
                &token.key,
                &token.owner,
                &token.request,
                self.config.idempotency_lease(),
                self.config.record_retention(),
            )
            .await
    }

    /// Drops `token`'s claim, if it holds one, as soon as the log store
    /// answers again (within the claim's own lease, after which it no
    /// longer matters): a claim whose request failed must not make retries
    /// wait for its lease.
    fn release_claim_later(&self, token: &ClaimToken) {
        let (log, key, owner) = (self.log().clone(), token.key.clone(), token.owner.clone());
        let retention = self.config.record_retention();
        let give_up = Instant::now() + self.config.idempotency_lease();
        let ticket = self.pending.ticket();
        tokio::spawn(async move {
            let mut pause = POLL_MIN;
            while Instant::now() < give_up {
                if log.settle_claim(&key, &owner, &[], retention).await.is_ok() {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(POLL_MAX);
            }
            drop(ticket);
        });
    }
}

/// An idempotency key is 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] bytes.
pub fn check_key(key: &str) -> Result<(), TxnError> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(TxnError::BadRequest {
            code: "bad_idempotency_key",
            message: format!("idempotency_key must have 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"),
        });
    }
    Ok(())
}

fn reused(key: &str) -> TxnError {
    TxnError::BadRequest {
        code: "idempotency_key_reused",
        message: format!(
            "idempotency key {key} was used before for a different request (other steps or inputs); \
             a retry must repeat its request exactly, a new request needs a new key"
        ),
    }
}

/// What a first request answers once a retry took its claim over.
fn superseded_response(response: TxnResponse) -> TxnResponse {
    TxnResponse {
        status: Status::Aborted,
        steps: Vec::new(),
        abort: Some(superseded()),
        ..response
    }
}
