//! The in-memory store transactions run on: see [`Store`].

use std::collections::BTreeMap;

use super::data::{self, Data, Entry, Keys, StreamEntry};
use super::rules::Limits;
use super::txn::{Transaction, TxnAbort};
use crate::snapshot::ranks;
use crate::{Kind, Participant};

/// An in-memory store of typed values (strings, hashes, sets, sorted sets,
/// streams, lists, all binary) on which [`Transaction`]s run as the host
/// runs them.
///
/// Its methods are named after the Redis commands that do the same, to set
/// up data before a test and look at it after. They refer to full keys (a
/// participant's prefix included), and panic on a key of another type, as
/// Redis answers `WRONGTYPE`: that is a mistake in the test.
///
/// ```
/// # use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
/// # struct Add;
/// # impl Participant for Add {
/// #     type Input = i64;
/// #     fn declare(_: &i64) -> Result<Access, Abort> { Ok(Access::new().write("n")) }
/// #     fn execute(by: &i64, s: &Snapshot) -> Result<Outcome, Abort> {
/// #         let n = s.get_i64("n")? + by;
/// #         Outcome::new().set_i64("n", n).output_json(&n)
/// #     }
/// # }
/// use redstage_guest::testing::Store;
///
/// let mut store = Store::new();
/// store.set("n", "40").sadd("tags", "x").hset("user:{a}", "sent", "3");
/// let outputs = store.transaction().step::<Add>("1").step::<Add>("1").run().unwrap();
/// assert_eq!(outputs, [serde_json::json!(41), serde_json::json!(42)]);
/// assert_eq!(store.get("n"), Some(&b"42"[..]));
/// assert!(store.sismember("tags", "x"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    pub(super) keys: Keys,
    pub(super) limits: Limits,
}

// Scores are never NaN: `zadd` refuses them.
impl Eq for Store {}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Sets the limits every step runs under (by default the host's).
    pub fn set_limits(&mut self, limits: Limits) -> &mut Store {
        self.limits = limits;
        self
    }

    /// The limits every step runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A transaction on this store, to add steps to and run.
    pub fn transaction(&mut self) -> Transaction<'_> {
        Transaction::new(self)
    }

    /// Runs a transaction of one step of `P` on `input_json`, whose keys are
    /// the store's as they are: its output, or why it aborted.
    pub fn run<P: Participant>(&mut self, input_json: &str) -> Result<serde_json::Value, TxnAbort> {
        let mut outputs = self.transaction().step::<P>(input_json).run()?;
        Ok(outputs.remove(0))
    }

    fn data(&self, key: &str, kind: Kind) -> Option<&Data> {
        let data = &self.keys.get(key)?.data;
        assert_eq!(
            data.kind(),
            kind,
            "`{key}` holds a {}, not a {}",
            data.kind().name(),
            kind.name()
        );
        Some(data)
    }

    /// The type of `key`, `None` if it does not exist (`TYPE`).
    pub fn key_type(&self, key: &str) -> Option<Kind> {
        self.keys.get(key).map(|e| e.data.kind())
    }

    /// Whether `key` exists (`EXISTS`).
    pub fn exists(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Removes `key`, whatever it holds (`DEL`).
    pub fn delete(&mut self, key: &str) -> &mut Store {
        self.keys.remove(key);
        self
    }

    /// The TTL recorded for `key` in ms (`PTTL`; time does not pass here):
    /// `None` if the key has none or does not exist.
    pub fn pttl(&self, key: &str) -> Option<u64> {
        self.keys.get(key)?.ttl_ms
    }

    /// Records a TTL of `ttl_ms` for `key`, if it exists (`PEXPIRE`).
    pub fn pexpire(&mut self, key: &str, ttl_ms: u64) -> &mut Store {
        if let Some(entry) = self.keys.get_mut(key) {
            entry.ttl_ms = Some(ttl_ms);
        }
        self
    }

    /// Sets the string `key` (`SET`; a key of another type is replaced,
    /// its TTL dropped).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Store {
        let entry = Entry {
            data: Data::String(value.into()),
            ttl_ms: None,
        };
        self.keys.insert(key.into(), entry);
        self
    }

    /// The value of the string `key`, if it exists (`GET`).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match self.data(key, Kind::String)? {
            Data::String(value) => Some(value),
            _ => unreachable!("data() checked the type"),
        }
    }

    /// Every string and its value (keys of other types are not listed).
    pub fn values(&self) -> BTreeMap<String, Vec<u8>> {
        self.keys
            .iter()
            .filter_map(|(key, entry)| match &entry.data {
                Data::String(value) => Some((key.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    /// Sets `field` of the hash `key` (`HSET`).
    pub fn hset(&mut self, key: &str, field: &str, value: impl Into<Vec<u8>>) -> &mut Store {
        if let Data::Hash(hash) = data::slot(&mut self.keys, key, Kind::Hash) {
            hash.insert(field.to_owned(), value.into());
        }
        self
    }

    /// The value of `field` of the hash `key` (`HGET`).
    pub fn hget(&self, key: &str, field: &str) -> Option<&[u8]> {
        match self.data(key, Kind::Hash)? {
            Data::Hash(hash) => hash.get(field).map(Vec::as_slice),
            _ => unreachable!("data() checked the type"),
        }
    }

    /// The fields of the hash `key` and their values, by field (`HGETALL`).
    pub fn hgetall(&self, key: &str) -> Vec<(&str, &[u8])> {
        match self.data(key, Kind::Hash) {
            Some(Data::Hash(hash)) => hash
                .iter()
                .map(|(f, v)| (f.as_str(), v.as_slice()))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Adds `member` to the set `key` (`SADD`).
    pub fn sadd(&mut self, key: &str, member: &str) -> &mut Store {
        if let Data::Set(set) = data::slot(&mut self.keys, key, Kind::Set) {
            set.insert(member.to_owned());
        }
        self
    }

    /// Whether `member` is in the set `key` (`SISMEMBER`).
    pub fn sismember(&self, key: &str, member: &str) -> bool {
        matches!(self.data(key, Kind::Set), Some(Data::Set(set)) if set.contains(member))
    }

    /// The members of the set `key`, sorted (`SMEMBERS`).
    pub fn smembers(&self, key: &str) -> Vec<&str> {
        match self.data(key, Kind::Set) {
            Some(Data::Set(set)) => set.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// Adds `member` to the sorted set `key` with `score`, or changes its
    /// score (`ZADD`).
    ///
    /// # Panics
    ///
    /// On a NaN score, which Redis refuses.
    pub fn zadd(&mut self, key: &str, score: f64, member: &str) -> &mut Store {
        assert!(!score.is_nan(), "a sorted set's score is not NaN");
        if let Data::Zset(zset) = data::slot(&mut self.keys, key, Kind::Zset) {
            zset.insert(member.to_owned(), score);
        }
        self
    }

    /// The score of `member` in the sorted set `key` (`ZSCORE`).
    pub fn zscore(&self, key: &str, member: &str) -> Option<f64> {
        match self.data(key, Kind::Zset)? {
            Data::Zset(zset) => zset.get(member).copied(),
            _ => unreachable!("data() checked the type"),
        }
    }

    /// The members of the sorted set `key` from rank `start` to `stop`,
    /// with their scores, by score (`ZRANGE key start stop WITHSCORES`).
    pub fn zrange(&self, key: &str, start: i64, stop: i64) -> Vec<(String, f64)> {
        let Some(Data::Zset(zset)) = self.data(key, Kind::Zset) else {
            return Vec::new();
        };
        let ranked = Data::ranked(zset);
        ranked[ranks(ranked.len(), start, stop)].to_vec()
    }

    /// Appends an entry to the stream `key` (`XADD key * field value ...`).
    pub fn xadd<F: Into<String>, V: Into<Vec<u8>>>(
        &mut self,
        key: &str,
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> &mut Store {
        let fields = fields
            .into_iter()
            .map(|(f, v)| (f.into(), v.into()))
            .collect();
        data::xadd(&mut self.keys, key, fields, None);
        self
    }

    /// The entries of the stream `key`, oldest first (`XRANGE key - +`).
    pub fn xrange(&self, key: &str) -> &[StreamEntry] {
        match self.data(key, Kind::Stream) {
            Some(Data::Stream(entries)) => entries,
            _ => &[],
        }
    }

    /// Appends `values` at the tail of the list `key` (`RPUSH`).
    pub fn rpush<V: Into<Vec<u8>>>(
        &mut self,
        key: &str,
        values: impl IntoIterator<Item = V>,
    ) -> &mut Store {
        let values: Vec<Vec<u8>> = values.into_iter().map(Into::into).collect();
        data::push(&mut self.keys, key, &values, true);
        data::drop_if_gone(&mut self.keys, key);
        self
    }

    /// The values of the list `key` from index `start` to `stop`, both
    /// included, negative from the end (`LRANGE`).
    pub fn lrange(&self, key: &str, start: i64, stop: i64) -> Vec<&[u8]> {
        let Some(Data::List(list)) = self.data(key, Kind::List) else {
            return Vec::new();
        };
        list.range(ranks(list.len(), start, stop))
            .map(Vec::as_slice)
            .collect()
    }
}
