//! The in-memory model of what Redis keeps: typed values by key, each
//! with a TTL, and what reads and writes do to them, as Redis does it.
//!
//! ```text
//! key ──> Entry { data, ttl_ms }
//!           data: String(bytes)                 GET / SET / INCRBY
//!                 Hash(field -> bytes)          HGET / HGETALL / HSET / HDEL / HINCRBY
//!                 Set(member)                   SISMEMBER / SMEMBERS / SADD / SREM
//!                 Zset(member -> score)         ZSCORE / ZRANGE / ZADD / ZREM / ZINCRBY
//!                 Stream([field -> bytes])      XADD [MAXLEN ~]
//!                 List([bytes])                 RPUSH / LPUSH
//! ```
//!
//! As in Redis, a hash, set or sorted set left empty is no key at all, and
//! a write of a value keeps the key's TTL unless it sets one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::snapshot::{by_score, ranks, scores};
use crate::{Kind, Target, Value};

/// A stream entry: its fields and their values, in order.
pub type StreamEntry = Vec<(String, Vec<u8>)>;

/// What one key holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Data {
    String(Vec<u8>),
    Hash(BTreeMap<String, Vec<u8>>),
    Set(BTreeSet<String>),
    Zset(BTreeMap<String, f64>),
    Stream(Vec<StreamEntry>),
    List(VecDeque<Vec<u8>>),
}

impl Data {
    pub(super) fn kind(&self) -> Kind {
        match self {
            Data::String(_) => Kind::String,
            Data::Hash(_) => Kind::Hash,
            Data::Set(_) => Kind::Set,
            Data::Zset(_) => Kind::Zset,
            Data::Stream(_) => Kind::Stream,
            Data::List(_) => Kind::List,
        }
    }

    /// An empty value of `kind`, for a write to a key that does not exist.
    pub(super) fn empty(kind: Kind) -> Data {
        match kind {
            Kind::String => Data::String(Vec::new()),
            Kind::Hash => Data::Hash(BTreeMap::new()),
            Kind::Set => Data::Set(BTreeSet::new()),
            Kind::Zset => Data::Zset(BTreeMap::new()),
            Kind::Stream => Data::Stream(Vec::new()),
            Kind::List => Data::List(VecDeque::new()),
        }
    }

    /// Whether Redis drops the key: an aggregate without elements (a
    /// stream stays, even trimmed to nothing).
    fn is_gone(&self) -> bool {
        match self {
            Data::Hash(h) => h.is_empty(),
            Data::Set(s) => s.is_empty(),
            Data::Zset(z) => z.is_empty(),
            Data::List(l) => l.is_empty(),
            Data::String(_) | Data::Stream(_) => false,
        }
    }

    /// A sorted set's members by score, then member: `ZRANGE`'s order.
    pub(super) fn ranked(zset: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
        let mut ranked: Vec<(String, f64)> = zset.iter().map(|(m, s)| (m.clone(), *s)).collect();
        ranked.sort_unstable_by(by_score);
        ranked
    }
}

/// A key's value and its TTL.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) data: Data,
    /// Recorded, never counted down: time does not pass in a test.
    pub(super) ttl_ms: Option<u64>,
}

/// Every key of a store.
pub(super) type Keys = BTreeMap<String, Entry>;

/// What a read of `target` of `key` (a `kind` the key holds, or missing)
/// finds, and how many items it carries (for `limits.read_items_max`).
pub(super) fn read(keys: &Keys, key: &str, kind: Kind, target: &Target) -> (Value, usize) {
    let data = keys.get(key).map(|e| &e.data);
    let hash = match data {
        Some(Data::Hash(h)) => Some(h),
        _ => None,
    };
    let zset = || match data {
        Some(Data::Zset(z)) => Data::ranked(z),
        _ => Vec::new(),
    };
    let value = match (kind, target) {
        (Kind::String, Target::Whole) => Value::Bytes(match data {
            Some(Data::String(v)) => Some(v.clone()),
            _ => None,
        }),
        (Kind::Hash, Target::Whole) => Value::Fields(
            hash.iter()
                .flat_map(|h| h.iter().map(|(f, v)| (f.clone(), v.clone())))
                .collect(),
        ),
        (Kind::Hash, Target::Field(f)) => Value::Bytes(hash.and_then(|h| h.get(f).cloned())),
        (Kind::Set, Target::Whole) => Value::Members(match data {
            Some(Data::Set(s)) => s.iter().cloned().collect(),
            _ => Vec::new(),
        }),
        (Kind::Set, Target::Member(m)) => {
            Value::Present(matches!(data, Some(Data::Set(s)) if s.contains(m)))
        }
        (Kind::Zset, Target::Whole) => Value::Ranked(zset()),
        (Kind::Zset, Target::Member(m)) => Value::Score(match data {
            Some(Data::Zset(z)) => z.get(m).copied(),
            _ => None,
        }),
        (Kind::Zset, Target::Ranks(start, stop)) => {
            let all = zset();
            Value::Ranked(all[ranks(all.len(), *start, *stop)].to_vec())
        }
        (Kind::Zset, Target::Scores(min, max)) => {
            let all = zset();
            Value::Ranked(all[scores(&all, *min, *max)].to_vec())
        }
        (kind, target) => unreachable!("a read of {target:?} of a {kind:?}: the rules refuse it"),
    };
    let items = match &value {
        Value::Fields(f) => f.len(),
        Value::Members(m) => m.len(),
        Value::Ranked(r) => r.len(),
        Value::Bytes(_) | Value::Present(_) | Value::Score(_) => 1,
    };
    (value, items)
}

/// The value of `key` for a write of `kind` to change: created empty if
/// missing.
///
/// # Panics
///
/// If `key` holds another type (the host's checks refuse that earlier).
pub(super) fn slot<'k>(keys: &'k mut Keys, key: &str, kind: Kind) -> &'k mut Data {
    let entry = keys.entry(key.to_owned()).or_insert_with(|| Entry {
        data: Data::empty(kind),
        ttl_ms: None,
    });
    let found = entry.data.kind();
    assert_eq!(
        found,
        kind,
        "`{key}` holds a {}, not a {}",
        found.name(),
        kind.name()
    );
    &mut entry.data
}

/// Drops `key` if a removal left it empty, as Redis does.
pub(super) fn drop_if_gone(keys: &mut Keys, key: &str) {
    if keys.get(key).is_some_and(|e| e.data.is_gone()) {
        keys.remove(key);
    }
}

/// Appends `fields` to the stream `key`, trimmed to `maxlen` entries: the
/// fewest `MAXLEN ~` may leave (Redis trims whole nodes only, so it may
/// keep more).
pub(super) fn xadd(keys: &mut Keys, key: &str, fields: StreamEntry, maxlen: Option<u64>) {
    let Data::Stream(entries) = slot(keys, key, Kind::Stream) else {
        unreachable!("slot() checked the type")
    };
    entries.push(fields);
    if let Some(maxlen) = maxlen {
        let keep = usize::try_from(maxlen).unwrap_or(usize::MAX);
        let excess = entries.len().saturating_sub(keep);
        entries.drain(..excess);
    }
}

/// Pushes `values` at the tail (`RPUSH`) or, one by one, at the head
/// (`LPUSH`) of the list `key`.
pub(super) fn push(keys: &mut Keys, key: &str, values: &[Vec<u8>], tail: bool) {
    let Data::List(list) = slot(keys, key, Kind::List) else {
        unreachable!("slot() checked the type")
    };
    for value in values {
        match tail {
            true => list.push_back(value.clone()),
            false => list.push_front(value.clone()),
        }
    }
}
