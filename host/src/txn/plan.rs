//! What a transaction will lock where, and which store decides it: fixed
//! once every step has declared its keys, the same for every attempt.

use std::collections::BTreeMap;

use super::Step;
use crate::store::keys::key_slot;
use crate::store::{IndexEntry, Mode};

/// The keys of one store, sorted, each once, with the mode it is held in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Part {
    pub store: String,
    pub keys: Vec<(String, Mode)>,
}

impl Part {
    /// Whether the transaction locks anything on this store.
    pub fn locks(&self) -> bool {
        self.keys.iter().any(|(_, m)| *m != Mode::Read)
    }

    /// The lock index entry of transaction `txn` on this store.
    pub fn entry(&self, txn: &str, primary: &str) -> IndexEntry {
        IndexEntry {
            txn: txn.to_owned(),
            primary: primary.to_owned(),
            keys: self.keys.iter().map(|(k, _)| k.clone()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// Every store the transaction touches (and its primary), by name.
    pub parts: Vec<Part>,
    /// The store that holds the decision: none for a read-only transaction,
    /// which decides nothing.
    pub primary: Option<usize>,
    /// Every key is only adjusted: no step reads a value, so the steps may
    /// run before anything is locked, the other stores reserve as they
    /// lock, and the primary's keys are adjusted by the commit point
    /// without a lock of their own (see the module essay).
    pub blind: bool,
}

impl Plan {
    /// Keys written by any step are held exclusively, keys only read are
    /// shared, keys only adjusted are held in adjust mode (escrow: other
    /// adjusters may hold them too), except in a read-only transaction on
    /// one store, which one script reads atomically without locks. A key
    /// one step reads and another adjusts is held exclusively: the host
    /// then applies the adjustment to the value read.
    ///
    /// The decision lives on the log store when the transaction holds an
    /// idempotency claim (whose outcome is stored with the decision there).
    /// Otherwise on the store where it writes the most keys (the log store
    /// first among equals): the commit point applies that store's writes
    /// and frees its keys at once, while the others wait for the apply after
    /// the answer, so the store with the most written keys (an order's
    /// payer and payee, against one SKU) should not be the one waiting.
    ///
    /// A store for which `cluster` says so is a Redis Cluster, where one
    /// script reaches one hash slot only: it is never the primary (the log
    /// store, a single Redis, decides a transaction that writes only
    /// there), and a read-only transaction on it alone is read without
    /// locks only when its keys share a slot.
    pub fn new(
        steps: &[Step],
        log_store: &str,
        claimed: bool,
        cluster: impl Fn(&str) -> bool,
    ) -> Plan {
        let mut stores: BTreeMap<&str, BTreeMap<&str, Mode>> = BTreeMap::new();
        for step in steps {
            let keys = stores.entry(&step.participant.store).or_default();
            let adjusts = step.adjusts.iter().map(|k| (k, Mode::Adjust));
            for (key, mode) in step
                .keys
                .iter()
                .map(|key| {
                    let mode = match step.writes.binary_search(key) {
                        Ok(_) => Mode::Exclusive,
                        Err(_) => Mode::Shared,
                    };
                    (key, mode)
                })
                .chain(adjusts)
            {
                let held = keys.entry(key).or_insert(mode);
                *held = held.combine(mode);
            }
        }
        let written = |ks: &BTreeMap<&str, Mode>| {
            ks.values()
                .any(|m| matches!(m, Mode::Exclusive | Mode::Adjust))
        };
        let writes = stores.values().any(written);
        let writes_single = stores.iter().any(|(s, ks)| !cluster(s) && written(ks));
        let log_decides = writes && (claimed || !writes_single);
        if log_decides {
            stores.entry(log_store).or_default();
        }
        let single = match stores.iter().next() {
            Some((store, keys)) if stores.len() == 1 && cluster(store) => {
                let mut slots = keys.keys().map(|k| key_slot(k.as_bytes()));
                let first = slots.next();
                slots.all(|s| Some(s) == first)
            }
            _ => stores.len() == 1,
        };
        let parts: Vec<Part> = stores
            .into_iter()
            .map(|(store, keys)| Part {
                store: store.to_owned(),
                keys: keys
                    .into_iter()
                    .map(|(k, m)| {
                        let m = if !writes && single { Mode::Read } else { m };
                        (k.to_owned(), m)
                    })
                    .collect(),
            })
            .collect();
        let written = |p: &Part| {
            p.keys
                .iter()
                .filter(|(_, m)| matches!(m, Mode::Exclusive | Mode::Adjust))
                .count()
        };
        let primary = writes.then(|| {
            let log = parts.iter().position(|p| p.store == log_store);
            match log {
                Some(log) if log_decides => log,
                _ => parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !cluster(&p.store))
                    .max_by_key(|(i, p)| (written(p), Some(*i) == log))
                    .map(|(i, _)| i)
                    .expect("a transaction with writes writes somewhere"),
            }
        });
        let blind = writes
            && parts
                .iter()
                .all(|p| p.keys.iter().all(|(_, m)| *m == Mode::Adjust));
        Plan {
            parts,
            primary,
            blind,
        }
    }

    /// Whether round trip 1 reads or locks part `i`: every part with keys,
    /// except the primary of an attempt that goes `blind`.
    pub fn reads(&self, i: usize, blind: bool) -> bool {
        let skipped = blind && Some(i) == self.primary;
        !self.parts[i].keys.is_empty() && !skipped
    }

    /// Whether an attempt may leave no trace on any store before its
    /// commit point: a blind transaction on one store locks nothing before
    /// it (its only trace is the record it writes there).
    pub fn traceless(&self) -> bool {
        self.blind && self.parts.len() == 1
    }

    /// The name of the primary store, or "" for a read-only transaction.
    pub fn primary_name(&self) -> &str {
        self.primary.map_or("", |p| &self.parts[p].store)
    }

    /// Whether a store other than the primary holds locks of the
    /// transaction (`held`: which parts hold an index entry): then the
    /// decision must outlive the commit point until they have applied.
    pub fn spans(&self, held: &[Option<String>]) -> bool {
        held.iter()
            .enumerate()
            .any(|(i, e)| Some(i) != self.primary && e.is_some())
    }

    /// The primary's index entry that marks transaction `txn`'s record as
    /// unfinished until it is finalized, and whether the commit point must
    /// add it. The transaction's own entry there serves, if it locked
    /// anything there (the commit point leaves it); otherwise, when other
    /// stores are left to apply, an entry without keys is added.
    pub fn marker(&self, txn: &str, held: &[Option<String>]) -> Option<(String, bool)> {
        let primary = self.primary?;
        if let Some(entry) = &held[primary] {
            return Some((entry.clone(), false));
        }
        self.spans(held).then(|| {
            let marker = IndexEntry {
                txn: txn.to_owned(),
                primary: self.parts[primary].store.clone(),
                keys: Vec::new(),
            };
            (marker.encode(), true)
        })
    }

    /// The mode a key of `store` is held in, if the transaction has it.
    pub fn mode(&self, store: &str, key: &str) -> Option<Mode> {
        let part = self.parts.iter().find(|p| p.store == store)?;
        let i = part
            .keys
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()?;
        Some(part.keys[i].1)
    }

    /// Every key with its mode, in the global latch order.
    pub fn latch_keys(&self) -> impl Iterator<Item = (&str, &str, Mode)> {
        self.parts.iter().flat_map(|p| {
            p.keys
                .iter()
                .map(move |(k, m)| (p.store.as_str(), k.as_str(), *m))
        })
    }
}
