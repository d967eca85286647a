//! What a transaction will lock where, read for its snapshot, and which
//! store decides it: fixed once every step has declared its accesses, the
//! same for every attempt.

use std::collections::BTreeMap;

use super::Step;
use super::access::Declared;
use crate::store::keys::key_slot;
use crate::store::{IndexEntry, KeyWork, Kind, Mode, Op, Read, Target};

/// One data key of a store: its Redis type, what is locked of it, and what
/// is read of it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyPlan {
    pub key: String,
    pub kind: Kind,
    /// The key whole (part none) alone, or its parts, sorted; each with its
    /// mode.
    pub targets: Vec<(Option<String>, Mode)>,
    /// What round trip 1 reads of it, each once.
    pub reads: Vec<Read>,
}

impl KeyPlan {
    /// This key's work with `ops` to make.
    pub fn work<'a>(&'a self, ops: &'a [Op]) -> KeyWork<'a> {
        KeyWork {
            key: &self.key,
            kind: self.kind,
            targets: &self.targets,
            reads: &self.reads,
            ops,
        }
    }

    /// The mode a target of this key is held in: the key whole's, if it is
    /// held whole, else the part's.
    pub fn mode(&self, part: Option<&str>) -> Option<Mode> {
        self.targets
            .iter()
            .find(|(p, _)| p.is_none() || p.as_deref() == part)
            .map(|(_, m)| *m)
    }

    /// Whether every target of it is only adjusted or appended to.
    fn blind(&self) -> bool {
        self.reads.is_empty()
            && self
                .targets
                .iter()
                .all(|(_, m)| matches!(m, Mode::Adjust | Mode::Append))
    }
}

/// The keys of one store, sorted, each once.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Part {
    pub store: String,
    pub keys: Vec<KeyPlan>,
}

impl Part {
    /// Whether the transaction takes a lock (or, to append, its index
    /// entry) on this store.
    pub fn locks(&self) -> bool {
        self.keys
            .iter()
            .any(|k| k.targets.iter().any(|(_, m)| *m != Mode::Read))
    }

    /// The lock index entry of transaction `txn` on this store: every
    /// target of its keys, in order.
    pub fn entry(&self, txn: &str, primary: &str) -> IndexEntry {
        IndexEntry {
            txn: txn.to_owned(),
            primary: primary.to_owned(),
            keys: self
                .keys
                .iter()
                .flat_map(|k| {
                    k.targets.iter().map(|(part, _)| Target {
                        key: k.key.clone(),
                        part: part.clone(),
                    })
                })
                .collect(),
        }
    }

    /// The key `key`, if the transaction has it here.
    pub fn key(&self, key: &str) -> Option<&KeyPlan> {
        let at = self
            .keys
            .binary_search_by(|k| k.key.as_str().cmp(key))
            .ok()?;
        Some(&self.keys[at])
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Plan {
    /// Every store the transaction touches (and its primary), by name.
    pub parts: Vec<Part>,
    /// The store that holds the decision: none for a read-only transaction,
    /// which decides nothing.
    pub primary: Option<usize>,
    /// Every target is only adjusted or appended to: no step reads a
    /// value, so the steps may run before anything is locked, the other
    /// stores reserve as they lock, and the primary's targets are adjusted
    /// by the commit point without a lock of their own (see the module
    /// essay).
    pub blind: bool,
}

/// A key as the steps declared it, before its targets are settled.
#[derive(Default)]
struct Declaring {
    kind: Option<Kind>,
    whole: Option<Mode>,
    parts: BTreeMap<String, Mode>,
    reads: Vec<Read>,
    /// The parts some step adjusts (none: the key whole).
    adjusted: Vec<Option<String>>,
}

impl Declaring {
    fn add(&mut self, d: &Declared) {
        self.kind.get_or_insert(d.kind);
        let (part, mode) = d.lock();
        match part.clone() {
            None => self.whole = Some(self.whole.map_or(mode, |m| m.combine(mode))),
            Some(p) => {
                let held = self.parts.entry(p).or_insert(mode);
                *held = held.combine(mode);
            }
        }
        if let Some(read) = d.read()
            && !self.reads.contains(&read)
        {
            self.reads.push(read);
        }
        if mode == Mode::Adjust {
            self.adjusted.push(part);
        }
    }

    /// The key's targets: the key whole alone, holding every part's mode
    /// too, as soon as some step has it whole; else its parts. Then what
    /// the host needs read besides what the steps read: the value of a
    /// target both adjusted and held exclusively (the host applies the
    /// delta to it), and a whole sorted set whose ranges are read and
    /// which is written (the ranges are taken from it again after each
    /// write).
    fn settle(mut self, key: String) -> KeyPlan {
        let kind = self.kind.unwrap_or(Kind::String);
        let targets = match self.whole {
            Some(whole) => {
                let mode = self.parts.values().fold(whole, |m, p| m.combine(*p));
                vec![(None, mode)]
            }
            None => self.parts.into_iter().map(|(p, m)| (Some(p), m)).collect(),
        };
        let plan = KeyPlan {
            key,
            kind,
            targets,
            reads: Vec::new(),
        };
        let mut needed = Vec::new();
        for part in &self.adjusted {
            if plan.mode(part.as_deref()) != Some(Mode::Exclusive) {
                continue;
            }
            let read = match (kind, part) {
                (Kind::Hash, Some(f)) if !self.reads.contains(&Read::HGetAll) => {
                    Read::HGet(f.clone())
                }
                (Kind::Zset, Some(m)) if !self.reads.contains(&Read::ZAll) => {
                    Read::ZScore(m.clone())
                }
                (Kind::String, None) => Read::Get,
                _ => continue,
            };
            needed.push(read);
        }
        let ranges = self
            .reads
            .iter()
            .any(|r| matches!(r, Read::ZRank(..) | Read::ZByScore(..)));
        let written = plan
            .targets
            .iter()
            .any(|(_, m)| matches!(m, Mode::Exclusive | Mode::Adjust));
        if ranges && written {
            needed.push(Read::ZAll);
        }
        for read in needed {
            if !self.reads.contains(&read) {
                self.reads.push(read);
            }
        }
        KeyPlan {
            reads: self.reads,
            ..plan
        }
    }
}

impl Plan {
    /// Targets written by any step are held exclusively, targets only read
    /// are shared, targets only adjusted are held in adjust mode (escrow:
    /// other adjusters may hold them too), keys only appended to take no
    /// lock; except in a read-only transaction on one store, which one
    /// script reads atomically without locks. A target one step reads and
    /// another adjusts is held exclusively: the host then applies the
    /// adjustment to the value read.
    ///
    /// The decision lives on the log store when the transaction holds an
    /// idempotency claim (whose outcome is stored with the decision there).
    /// Otherwise on the store where it writes the most targets (the log
    /// store first among equals): the commit point applies that store's
    /// writes and frees its keys at once, while the others wait for the
    /// apply after the answer, so the store with the most written targets
    /// (an order's payer and payee, against one SKU) should not be the one
    /// waiting.
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
        let mut stores: BTreeMap<&str, BTreeMap<&str, Declaring>> = BTreeMap::new();
        for step in steps {
            let keys = stores.entry(&step.participant.store).or_default();
            for d in &step.declared {
                keys.entry(&d.key).or_default().add(d);
            }
        }
        let mut stores: BTreeMap<&str, Vec<KeyPlan>> = stores
            .into_iter()
            .map(|(store, keys)| {
                let keys = keys
                    .into_iter()
                    .map(|(key, d)| d.settle(key.to_owned()))
                    .collect();
                (store, keys)
            })
            .collect();
        let written = |ks: &[KeyPlan]| {
            ks.iter()
                .flat_map(|k| &k.targets)
                .filter(|(_, m)| matches!(m, Mode::Exclusive | Mode::Adjust | Mode::Append))
                .count()
        };
        let writes = stores.values().any(|ks| written(ks) > 0);
        let writes_single = stores.iter().any(|(s, ks)| !cluster(s) && written(ks) > 0);
        let log_decides = writes && (claimed || !writes_single);
        if log_decides {
            stores.entry(log_store).or_default();
        }
        let single = match stores.iter().next() {
            Some((store, keys)) if stores.len() == 1 && cluster(store) => {
                let mut slots = keys.iter().map(|k| key_slot(k.key.as_bytes()));
                let first = slots.next();
                slots.all(|s| Some(s) == first)
            }
            _ => stores.len() == 1,
        };
        let parts: Vec<Part> = stores
            .into_iter()
            .map(|(store, mut keys)| {
                if !writes && single {
                    for key in &mut keys {
                        for (_, mode) in &mut key.targets {
                            *mode = Mode::Read;
                        }
                    }
                }
                Part {
                    store: store.to_owned(),
                    keys,
                }
            })
            .collect();
        let primary = writes.then(|| {
            let log = parts.iter().position(|p| p.store == log_store);
            match log {
                Some(log) if log_decides => log,
                _ => parts
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !cluster(&p.store))
                    .max_by_key(|(i, p)| (written(&p.keys), Some(*i) == log))
                    .map(|(i, _)| i)
                    .expect("a transaction with writes writes somewhere"),
            }
        });
        let blind = writes && parts.iter().all(|p| p.keys.iter().all(KeyPlan::blind));
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

    /// The name of the primary store, or "" for a read-only transaction.
    pub fn primary_name(&self) -> &str {
        self.primary.map_or("", |p| &self.parts[p].store)
    }

    /// Whether an attempt may leave no trace on any store before its
    /// commit point: a blind transaction on one store locks nothing before
    /// it (its only trace is the record it writes there).
    pub fn traceless(&self) -> bool {
        self.blind && self.parts.len() == 1
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

    /// The part of store `store`, if the transaction has one.
    pub fn part(&self, store: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.store == store)
    }

    /// Every key with its latch mode, in the global latch order: a key
    /// held whole in its mode, a key locked by parts (or only appended to)
    /// in `Append`, which such transactions share (see `latch`).
    pub fn latch_keys(&self) -> impl Iterator<Item = (&str, &str, Mode)> {
        self.parts.iter().flat_map(|p| {
            p.keys.iter().map(move |k| {
                let mode = match k.targets.as_slice() {
                    [(None, mode)] if *mode != Mode::Append => *mode,
                    _ => Mode::Append,
                };
                (p.store.as_str(), k.key.as_str(), mode)
            })
        })
    }
}
