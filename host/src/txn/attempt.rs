//! One attempt of a transaction, phase by phase (see the module essay).

use std::collections::{BTreeMap, HashMap};

use futures::future::join_all;

use super::idempotency::{self, ClaimToken};
use super::types::{AbortInfo, Record, Status, StepOutput, TxnResponse, output_json};
use super::{Coordinator, Step, TxnError, faults};
use crate::runtime::{Entry, Write as GuestWrite};
use crate::store::{CheckedKey, Conflict, ReadKey, Store, Write};

/// How an attempt ended.
pub(super) enum Outcome {
    Committed {
        outputs: Vec<StepOutput>,
        /// The decision record (and, with an idempotency key, the outcome)
        /// is already written.
        recorded: bool,
    },
    Aborted(AbortInfo),
    /// Another transaction got in the way; run again.
    Conflict(String),
}

/// How the two-phase path ended.
enum Decided {
    Committed,
    Conflict(String),
    /// A retry with the same idempotency key took over our claim.
    Superseded,
}

/// Store name -> the keys of this transaction on it, sorted, each once.
type KeysByStore = BTreeMap<String, Vec<String>>;

impl Coordinator {
    pub(super) async fn attempt(
        &self,
        id: &str,
        attempt: u32,
        steps: &mut [Step],
        claim: Option<&ClaimToken>,
    ) -> Result<Outcome, TxnError> {
        let keys = keys_by_store(steps);
        let reads = match self.read(&keys).await? {
            Ok(reads) => reads,
            Err(reason) => return Ok(Outcome::Conflict(reason)),
        };
        let (outputs, writes) = match execute(steps, &reads).await {
            Ok(done) => done,
            Err(abort) => return Ok(Outcome::Aborted(abort)),
        };
        let result = if writes.is_empty() && keys.len() <= 1 {
            Ok(()) // One store's read script saw one consistent state.
        } else if writes.is_empty() {
            self.validate(id, &keys, &reads, &writes).await?
        } else if keys.len() == 1 && claim.is_none() {
            // (With an idempotency key the decision must be written together
            // with the outcome on the log store, so even one store goes 2PC.)
            self.commit_one_phase(id, &keys, &reads, &writes).await?
        } else {
            let outcome = claim.map(|c| {
                let response = TxnResponse {
                    id: id.to_owned(),
                    status: Status::Committed,
                    attempts: attempt,
                    steps: outputs.clone(),
                    abort: None,
                };
                (c, c.done_record(&response))
            });
            let decided = self.two_phase(id, &keys, &reads, &writes, outcome).await?;
            return Ok(match decided {
                Decided::Committed => Outcome::Committed {
                    outputs,
                    recorded: true,
                },
                Decided::Conflict(reason) => Outcome::Conflict(reason),
                Decided::Superseded => Outcome::Aborted(idempotency::superseded()),
            });
        };
        Ok(match result {
            Ok(()) => Outcome::Committed {
                outputs,
                recorded: false,
            },
            Err(reason) => Outcome::Conflict(reason),
        })
    }

    /// Reads every key; `Err(reason)` when a lock is in the way.
    async fn read(
        &self,
        keys: &KeysByStore,
    ) -> Result<Result<HashMap<String, ReadKey>, String>, TxnError> {
        let replies = join_all(keys.iter().map(|(store, keys)| async move {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            (store, keys, self.store(store).read(&refs).await)
        }))
        .await;
        let mut reads = HashMap::new();
        let mut locked = None;
        for (store, keys, reply) in replies {
            for (key, read) in keys.iter().zip(reply?) {
                if let Some(lock) = &read.lock {
                    if lock.expired {
                        self.resolve_logged(store, key, &lock.holder).await;
                    }
                    locked = Some(format!("`{key}` is locked by {}", lock.holder));
                }
                reads.insert(key.clone(), read);
            }
        }
        Ok(match locked {
            Some(reason) => Err(reason),
            None => Ok(reads),
        })
    }

    /// Checks that every key read but not written is unchanged and unlocked.
    async fn validate(
        &self,
        id: &str,
        keys: &KeysByStore,
        reads: &HashMap<String, ReadKey>,
        writes: &BTreeMap<String, Write>,
    ) -> Result<Result<(), String>, TxnError> {
        let replies = join_all(keys.iter().filter_map(|(store, keys)| {
            let checks: Vec<(&str, &str)> = keys
                .iter()
                .filter(|k| !writes.contains_key(*k))
                .map(|k| (k.as_str(), reads[k].ver.as_str()))
                .collect();
            (!checks.is_empty()).then_some(async move {
                let reply = self.store(store).validate(id, &checks).await;
                (store, checks, reply)
            })
        }))
        .await;
        let mut first = Ok(());
        for (store, checks, reply) in replies {
            if let Some(c) = reply? {
                let reason = self
                    .conflict(store, &checks.iter().map(|c| c.0).collect::<Vec<_>>(), c)
                    .await;
                first = first.and(Err(reason));
            }
        }
        Ok(first)
    }

    /// All keys on one store: check and apply in one script.
    async fn commit_one_phase(
        &self,
        id: &str,
        keys: &KeysByStore,
        reads: &HashMap<String, ReadKey>,
        writes: &BTreeMap<String, Write>,
    ) -> Result<Result<(), String>, TxnError> {
        let (store, keys) = keys.iter().next().expect("one store");
        let checked: Vec<CheckedKey> = keys
            .iter()
            .map(|k| CheckedKey {
                key: k,
                ver: &reads[k].ver,
                write: writes.get(k),
            })
            .collect();
        match self.store(store).commit_one_phase(id, &checked).await? {
            None => Ok(Ok(())),
            Some(c) => {
                let names: Vec<&str> = keys.iter().map(String::as_str).collect();
                Ok(Err(self.conflict(store, &names, c).await))
            }
        }
    }

    /// Prepare, validate, decide, commit. With an idempotency claim, the
    /// decision goes together with `outcome` under the claimed key.
    async fn two_phase(
        &self,
        id: &str,
        keys: &KeysByStore,
        reads: &HashMap<String, ReadKey>,
        writes: &BTreeMap<String, Write>,
        outcome: Option<(&ClaimToken, Vec<u8>)>,
    ) -> Result<Decided, TxnError> {
        let locked: KeysByStore = keys
            .iter()
            .map(|(s, ks)| {
                (
                    s.clone(),
                    ks.iter()
                        .filter(|k| writes.contains_key(*k))
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, ks)| !ks.is_empty())
            .collect();
        if let Err(failure) = self.prepare(id, &locked, reads, writes).await {
            self.rollback(id, &locked).await;
            return failure.map(Decided::Conflict);
        }
        match self.validate(id, keys, reads, writes).await {
            Ok(Ok(())) => {}
            failed => {
                self.rollback(id, &locked).await;
                return failed.map(|r| Decided::Conflict(r.expect_err("failed")));
            }
        }
        faults::point("after-prepare").await;
        let record = Record::Committed {
            stores: locked.clone(),
        };
        let retention = self.config.record_retention();
        let unknown = |e: crate::store::StoreError| TxnError::OutcomeUnknown {
            id: id.to_owned(),
            message: e.to_string(),
        };
        let standing = match &outcome {
            None => Some(
                self.log()
                    .decide(id, &record.encode(), retention)
                    .await
                    .map_err(unknown)?,
            ),
            Some((claim, done)) => self
                .log()
                .decide_claimed(
                    id,
                    &record.encode(),
                    (&claim.key, &claim.owner),
                    done,
                    retention,
                )
                .await
                .map_err(unknown)?,
        };
        let Some(standing) = standing else {
            self.rollback(id, &locked).await;
            return Ok(Decided::Superseded);
        };
        if Record::decode(&standing).ok() != Some(record) {
            // Our leases ran out and someone decided `aborted` for us.
            self.rollback(id, &locked).await;
            return Ok(Decided::Conflict(format!(
                "transaction {id} was aborted by recovery before it could decide"
            )));
        }
        faults::point("after-decide").await;
        self.commit(id, &locked).await;
        Ok(Decided::Committed)
    }

    /// Locks and stages on every store with writes, in parallel. `Err` holds
    /// what to return: a conflict reason, or a store failure.
    async fn prepare(
        &self,
        id: &str,
        locked: &KeysByStore,
        reads: &HashMap<String, ReadKey>,
        writes: &BTreeMap<String, Write>,
    ) -> Result<(), Result<String, TxnError>> {
        let lease = self.config.lease();
        let replies = join_all(
            locked
                .iter()
                .enumerate()
                .map(|(i, (store, keys))| async move {
                    let staged: Vec<(&str, &str, &Write)> = keys
                        .iter()
                        .map(|k| (k.as_str(), reads[k].ver.as_str(), &writes[k]))
                        .collect();
                    if i > 0 {
                        faults::hold("prepare-partial").await;
                    }
                    let reply = self
                        .store(store)
                        .prepare(id, lease, &self.log_store, &staged)
                        .await;
                    if i == 0 {
                        faults::point("prepare-partial").await;
                    }
                    (store, keys, reply)
                }),
        )
        .await;
        for (store, keys, reply) in replies {
            match reply {
                Ok(None) => {}
                Ok(Some(c)) => {
                    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
                    return Err(Ok(self.conflict(store, &names, c).await));
                }
                Err(e) => return Err(Err(e.into())),
            }
        }
        Ok(())
    }

    /// Applies a decided transaction everywhere. A store that fails keeps
    /// its locks; whoever meets them rolls them forward from the record.
    async fn commit(&self, id: &str, locked: &KeysByStore) {
        let first = locked.keys().next().map(String::as_str);
        let replies = self
            .each_store(locked, |s, keys| async move {
                let is_first = Some(s.name()) == first;
                if !is_first {
                    faults::hold("commit-partial").await;
                }
                let reply = s.commit(id, keys).await;
                if is_first {
                    faults::point("commit-partial").await;
                }
                reply
            })
            .await;
        for (store, reply) in replies {
            if let Err(e) = reply {
                tracing::warn!(txn = id, store, error = %e, "commit incomplete; recovery will roll it forward");
            }
        }
    }

    /// Releases this attempt's locks. A store that fails keeps them until
    /// their lease ends; then whoever meets them rolls them back.
    async fn rollback(&self, id: &str, locked: &KeysByStore) {
        for (store, reply) in self
            .each_store(locked, |s, keys| s.rollback(id, keys))
            .await
        {
            if let Err(e) = reply {
                tracing::warn!(txn = id, store, error = %e, "rollback incomplete; locks expire with their lease");
            }
        }
    }

    /// Runs `op` on every store of `keys` in parallel.
    async fn each_store<'a, F, Fut, T>(&'a self, keys: &'a KeysByStore, op: F) -> Vec<(&'a str, T)>
    where
        F: Fn(&'a Store, &'a [String]) -> Fut,
        Fut: Future<Output = T>,
    {
        join_all(keys.iter().map(|(store, ks)| {
            let fut = op(self.store(store), ks);
            async move { (store.as_str(), fut.await) }
        }))
        .await
    }

    /// Describes a conflict, resolving the lock first if its lease is over.
    async fn conflict(&self, store: &str, keys: &[&str], conflict: Conflict) -> String {
        match conflict {
            Conflict::Changed { index } => format!("`{}` changed since it was read", keys[index]),
            Conflict::Locked { index, lock } => {
                if lock.expired {
                    self.resolve_logged(store, keys[index], &lock.holder).await;
                }
                format!("`{}` is locked by {}", keys[index], lock.holder)
            }
        }
    }
}

/// Groups the keys of all steps by store.
fn keys_by_store(steps: &[Step]) -> KeysByStore {
    let mut keys = KeysByStore::new();
    for step in steps {
        keys.entry(step.participant.store.clone())
            .or_default()
            .extend(step.keys.iter().cloned());
    }
    for ks in keys.values_mut() {
        ks.sort();
        ks.dedup();
    }
    keys
}

/// Runs the steps in order on the snapshot read, each seeing the writes of
/// the ones before it. Returns the outputs and the last write to each key.
async fn execute(
    steps: &mut [Step],
    reads: &HashMap<String, ReadKey>,
) -> Result<(Vec<StepOutput>, BTreeMap<String, Write>), AbortInfo> {
    let mut view: HashMap<&str, Option<Vec<u8>>> = reads
        .iter()
        .map(|(k, r)| (k.as_str(), r.value.clone()))
        .collect();
    let mut writes = BTreeMap::new();
    let mut outputs = Vec::with_capacity(steps.len());
    for step in steps.iter_mut() {
        let mut instance = match step.instance.take() {
            Some(instance) => instance,
            None => step
                .participant
                .instantiate()
                .await
                .map_err(|e| step.call_failed(e))?,
        };
        let p = &step.participant;
        let snapshot: Vec<Entry> = step
            .keys
            .iter()
            .map(|k| Entry {
                key: p.relative(k).to_owned(),
                value: view[k.as_str()].clone(),
            })
            .collect();
        let started = std::time::Instant::now();
        let executed = instance.execute(&step.input, &snapshot).await;
        p.calls.execute.record(started.elapsed());
        let outcome = match executed {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(abort)) => return Err(step.guest_abort(abort)),
            Err(e) => return Err(step.call_failed(e)),
        };
        for write in outcome.writes {
            let (relative, write) = match write {
                GuestWrite::Set((k, v)) => (k, Write::Set(v)),
                GuestWrite::Delete(k) => (k, Write::Delete),
            };
            let key = p.key(&relative);
            let Some(declared) = step.writes.iter().find(|w| **w == key) else {
                return Err(step.abort(
                    "undeclared_write",
                    format!(
                        "participant `{}` wrote {relative:?}, which it did not declare for writing",
                        p.name
                    ),
                ));
            };
            let value = match &write {
                Write::Set(v) => Some(v.clone()),
                Write::Delete => None,
            };
            view.insert(declared.as_str(), value);
            writes.insert(key, write);
        }
        outputs.push(StepOutput {
            participant: p.name.clone(),
            output: output_json(&outcome.output),
        });
    }
    Ok((outputs, writes))
}
