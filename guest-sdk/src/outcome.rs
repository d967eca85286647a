//! The outcome of a step: the writes to apply if the transaction commits, and
//! the output returned to the client.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Abort;

/// What a successful [`Participant::execute`] returns: writes, applied in
/// the order made and only if the whole transaction commits, and the output
/// for the client.
///
/// The writes are named after the Redis commands that do the same:
/// strings [`set`](Outcome::set), [`psetex`](Outcome::psetex),
/// [`delete`](Outcome::delete), [`adjust`](Outcome::adjust) (a bounded
/// `INCRBY`); hashes [`hset`](Outcome::hset), [`hdel`](Outcome::hdel),
/// [`hincrby`](Outcome::hincrby); sets [`sadd`](Outcome::sadd),
/// [`srem`](Outcome::srem); sorted sets [`zadd`](Outcome::zadd),
/// [`zrem`](Outcome::zrem), [`zincrby`](Outcome::zincrby); streams
/// [`xadd`](Outcome::xadd); lists [`rpush`](Outcome::rpush),
/// [`lpush`](Outcome::lpush); any key [`pexpire`](Outcome::pexpire). Each
/// needs a declaration that covers it (see [`Access`]); the host fails the
/// step with `undeclared_write` otherwise.
///
/// ```
/// use redstage_guest::{Abort, Bounds, Outcome};
///
/// let outcome = Outcome::new()
///     .set_i64("stock:A1", 8)
///     .delete("hold:A1")
///     .sadd("following:{alice}", "bob")
///     .hincrby("user:{alice}", "following", 1, Bounds::none(), Abort::new("overflow", "too many"))
///     .xadd("inbox:{bob}", [("from", "alice"), ("text", "hi")])
///     .output_json(&serde_json::json!({ "A1": 8 }))?;
/// assert_eq!(outcome.ops().count(), 5);
/// # Ok::<(), redstage_guest::Abort>(())
/// ```
///
/// [`Participant::execute`]: crate::Participant::execute
/// [`Access`]: crate::Access
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    // In the order made: the host applies them in this order.
    writes: Vec<Write>,
    output: Vec<u8>,
}

/// One change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub op: Op,
}

/// A change to one key, as the contract names it (`op` in
/// `wit/participant.wit`).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A string: its new value, and its TTL in ms (`None` keeps the TTL the
    /// key has, as `SET ... KEEPTTL`).
    Set { value: Vec<u8>, ttl_ms: Option<u64> },
    /// The key, whatever it holds.
    Delete,
    /// A string: add a bounded delta (`INCRBY`).
    Adjust(Bounded),
    /// A hash: set a field.
    Hset { field: String, value: Vec<u8> },
    /// A hash: remove a field.
    Hdel { field: String },
    /// A hash: add a bounded delta to an integer field (`HINCRBY`).
    Hincrby { field: String, by: Bounded },
    /// A set: add a member.
    Sadd { member: String },
    /// A set: remove a member.
    Srem { member: String },
    /// A sorted set: add a member, or change its score.
    Zadd { member: String, score: f64 },
    /// A sorted set: remove a member.
    Zrem { member: String },
    /// A sorted set: add a bounded delta to a member's integer score
    /// (`ZINCRBY`).
    Zincrby { member: String, by: Bounded },
    /// A stream: append an entry (`XADD key [MAXLEN ~ maxlen] * ...`).
    Xadd {
        fields: Vec<(String, Vec<u8>)>,
        maxlen: Option<u64>,
    },
    /// A list: append values at its tail (`RPUSH`).
    Rpush { values: Vec<Vec<u8>> },
    /// A list: push values at its head (`LPUSH`), one after the other.
    Lpush { values: Vec<Vec<u8>> },
    /// The key's TTL, in ms from the commit (`PEXPIRE`).
    Expire { ttl_ms: u64 },
}

// Scores are never NaN in a write the host accepts.
impl Eq for Op {}

/// A delta the host adds to an integer and keeps within `bounds` whichever
/// of the transactions in flight commit; if it cannot, the transaction
/// aborts with `abort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounded {
    pub delta: i64,
    pub bounds: Bounds,
    pub abort: Abort,
}

/// The range an adjusted value must stay within, whichever of the
/// transactions in flight commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    pub lower: Option<i64>,
    pub upper: Option<i64>,
}

impl Bounds {
    /// Any value.
    pub fn none() -> Bounds {
        Bounds::default()
    }

    /// `lower` or more: `Bounds::at_least(0)` never oversells.
    pub fn at_least(lower: i64) -> Bounds {
        Bounds {
            lower: Some(lower),
            upper: None,
        }
    }

    /// `upper` or less.
    pub fn at_most(upper: i64) -> Bounds {
        Bounds {
            lower: None,
            upper: Some(upper),
        }
    }

    /// From `lower` to `upper`, both included.
    pub fn between(lower: i64, upper: i64) -> Bounds {
        Bounds {
            lower: Some(lower),
            upper: Some(upper),
        }
    }

    /// Whether `value` is within the bounds.
    pub fn contain(&self, value: i64) -> bool {
        self.lower.is_none_or(|l| value >= l) && self.upper.is_none_or(|u| value <= u)
    }
}

/// A bounded increment of a string, as [`Outcome::adjust`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub key: String,
    pub delta: i64,
    pub bounds: Bounds,
    /// What the transaction aborts with if the bounds cannot be kept.
    pub abort: Abort,
}

impl Outcome {
    /// No writes, empty output.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(mut self, key: impl Into<String>, op: Op) -> Self {
        self.writes.push(Write {
            key: key.into(),
            op,
        });
        self
    }

    /// Stores `value` under the string `key`, keeping the TTL it has
    /// (`SET key value KEEPTTL`). Setting a key twice keeps the last value.
    pub fn set(self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let value = value.into();
        self.with(
            key,
            Op::Set {
                value,
                ttl_ms: None,
            },
        )
    }

    /// Stores `value` under the string `key` with a TTL of `ttl_ms`
    /// milliseconds from the commit (`PSETEX key ttl_ms value`).
    pub fn psetex(self, key: impl Into<String>, ttl_ms: u64, value: impl Into<Vec<u8>>) -> Self {
        let value = value.into();
        let ttl_ms = Some(ttl_ms);
        self.with(key, Op::Set { value, ttl_ms })
    }

    /// Stores `value` under `key` as a decimal string (`8` becomes `"8"`), the
    /// form [`Snapshot::get_i64`] reads and Redis' own `INCRBY` understands.
    ///
    /// [`Snapshot::get_i64`]: crate::Snapshot::get_i64
    pub fn set_i64(self, key: impl Into<String>, value: i64) -> Self {
        self.set(key, value.to_string())
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json(self, key: impl Into<String>, value: &impl Serialize) -> Result<Self, Abort> {
        let key = key.into();
        let bytes = to_json(value, &format!("the value for key `{key}`"))?;
        Ok(self.set(key, bytes))
    }

    /// Removes `key`, whatever it holds (`DEL`): needs the key declared
    /// whole in write mode.
    pub fn delete(self, key: impl Into<String>) -> Self {
        self.with(key, Op::Delete)
    }

    /// Adds `delta` to the integer under `key` (a decimal string; a missing
    /// key counts as 0), which must be declared with [`Access::adjust`] (or
    /// [`Access::write`]), keeping it within `bounds` whichever of the
    /// transactions in flight commit; if that cannot be promised, the whole
    /// transaction aborts with `abort`. The step does not see the value: use
    /// it where the answer does not depend on it ("take 2 from stock, never
    /// below 0"), so that concurrent transactions on a hot key need not wait
    /// for each other.
    ///
    /// ```
    /// use redstage_guest::{Abort, Bounds, Outcome};
    ///
    /// let outcome = Outcome::new().adjust(
    ///     "stock:A1",
    ///     -2,
    ///     Bounds::at_least(0),
    ///     Abort::new("insufficient_stock", "fewer than 2 of `A1` in stock"),
    /// );
    /// assert_eq!(outcome.adjustments().count(), 1);
    /// ```
    ///
    /// [`Access::adjust`]: crate::Access::adjust
    /// [`Access::write`]: crate::Access::write
    pub fn adjust(self, key: impl Into<String>, delta: i64, bounds: Bounds, abort: Abort) -> Self {
        let by = Bounded {
            delta,
            bounds,
            abort,
        };
        self.with(key, Op::Adjust(by))
    }

    /// Sets `field` of the hash `key` to `value` (`HSET key field value`).
    pub fn hset(
        self,
        key: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        let (field, value) = (field.into(), value.into());
        self.with(key, Op::Hset { field, value })
    }

    /// Sets `field` of the hash `key` to `value` as a decimal string, the
    /// form [`Snapshot::hget_i64`] reads and `HINCRBY` understands.
    ///
    /// [`Snapshot::hget_i64`]: crate::Snapshot::hget_i64
    pub fn hset_i64(self, key: impl Into<String>, field: impl Into<String>, value: i64) -> Self {
        self.hset(key, field, value.to_string())
    }

    /// Removes `field` from the hash `key` (`HDEL`); a hash left without
    /// fields no longer exists, as in Redis.
    pub fn hdel(self, key: impl Into<String>, field: impl Into<String>) -> Self {
        let field = field.into();
        self.with(key, Op::Hdel { field })
    }

    /// Adds `delta` to the integer in `field` of the hash `key` (a missing
    /// field counts as 0), within `bounds`, as [`adjust`](Outcome::adjust)
    /// does for a string (`HINCRBY`). Declared with
    /// [`Access::adjust_hash_field`] (not read: other transactions adjusting
    /// the field need not wait), or in write mode.
    ///
    /// [`Access::adjust_hash_field`]: crate::Access::adjust_hash_field
    pub fn hincrby(
        self,
        key: impl Into<String>,
        field: impl Into<String>,
        delta: i64,
        bounds: Bounds,
        abort: Abort,
    ) -> Self {
        let field = field.into();
        let by = Bounded {
            delta,
            bounds,
            abort,
        };
        self.with(key, Op::Hincrby { field, by })
    }

    /// Adds `member` to the set `key` (`SADD`).
    pub fn sadd(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        let member = member.into();
        self.with(key, Op::Sadd { member })
    }

    /// Removes `member` from the set `key` (`SREM`); a set left empty no
    /// longer exists.
    pub fn srem(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        let member = member.into();
        self.with(key, Op::Srem { member })
    }

    /// Adds `member` to the sorted set `key` with `score`, or changes its
    /// score (`ZADD key score member`).
    pub fn zadd(self, key: impl Into<String>, score: f64, member: impl Into<String>) -> Self {
        let member = member.into();
        self.with(key, Op::Zadd { member, score })
    }

    /// Removes `member` from the sorted set `key` (`ZREM`); a sorted set
    /// left empty no longer exists.
    pub fn zrem(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        let member = member.into();
        self.with(key, Op::Zrem { member })
    }

    /// Adds `delta` to the score of `member` in the sorted set `key` (a
    /// missing member counts as 0; the score must be an integer within
    /// ±2^53), within `bounds`, as [`adjust`](Outcome::adjust) does for a
    /// string (`ZINCRBY`). Declared with [`Access::adjust_zset_member`],
    /// or in write mode.
    ///
    /// [`Access::adjust_zset_member`]: crate::Access::adjust_zset_member
    pub fn zincrby(
        self,
        key: impl Into<String>,
        member: impl Into<String>,
        delta: i64,
        bounds: Bounds,
        abort: Abort,
    ) -> Self {
        let member = member.into();
        let by = Bounded {
            delta,
            bounds,
            abort,
        };
        self.with(key, Op::Zincrby { member, by })
    }

    /// Appends an entry of `fields` (field, value pairs, in order) to the
    /// stream `key` (`XADD key * field value ...`). Declared with
    /// [`Access::append_stream`]: no lock, nothing read; the entries of a
    /// transaction appear if and only if it commits.
    ///
    /// [`Access::append_stream`]: crate::Access::append_stream
    pub fn xadd<F: Into<String>, V: Into<Vec<u8>>>(
        self,
        key: impl Into<String>,
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> Self {
        self.xadd_entry(key, None, fields)
    }

    /// [`xadd`](Outcome::xadd), trimming the stream to about `maxlen`
    /// entries (`XADD key MAXLEN ~ maxlen * ...`).
    pub fn xadd_maxlen<F: Into<String>, V: Into<Vec<u8>>>(
        self,
        key: impl Into<String>,
        maxlen: u64,
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> Self {
        self.xadd_entry(key, Some(maxlen), fields)
    }

    fn xadd_entry<F: Into<String>, V: Into<Vec<u8>>>(
        self,
        key: impl Into<String>,
        maxlen: Option<u64>,
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> Self {
        let fields = fields
            .into_iter()
            .map(|(f, v)| (f.into(), v.into()))
            .collect();
        self.with(key, Op::Xadd { fields, maxlen })
    }

    /// Appends `values` at the tail of the list `key`, in order (`RPUSH`).
    /// Declared with [`Access::append_list`].
    ///
    /// [`Access::append_list`]: crate::Access::append_list
    pub fn rpush<V: Into<Vec<u8>>>(
        self,
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let values = values.into_iter().map(Into::into).collect();
        self.with(key, Op::Rpush { values })
    }

    /// Pushes `values` at the head of the list `key`, one after the other,
    /// so the last ends up first (`LPUSH`). Declared with
    /// [`Access::append_list`].
    ///
    /// [`Access::append_list`]: crate::Access::append_list
    pub fn lpush<V: Into<Vec<u8>>>(
        self,
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let values = values.into_iter().map(Into::into).collect();
        self.with(key, Op::Lpush { values })
    }

    /// Sets the TTL of `key` to `ttl_ms` milliseconds from the commit
    /// (`PEXPIRE`; nothing if the key does not exist then). Needs a
    /// declaration of the key in write or append mode.
    pub fn pexpire(self, key: impl Into<String>, ttl_ms: u64) -> Self {
        self.with(key, Op::Expire { ttl_ms })
    }

    /// Sets the output returned to the client to raw bytes. The host renders
    /// JSON as JSON and anything else as a string.
    pub fn output(mut self, output: impl Into<Vec<u8>>) -> Self {
        self.output = output.into();
        self
    }

    /// Sets the output returned to the client to `value` as JSON.
    pub fn output_json(self, value: &impl Serialize) -> Result<Self, Abort> {
        let bytes = to_json(value, "the output")?;
        Ok(self.output(bytes))
    }

    /// Every write, in the order made: the order the host applies them in.
    pub fn ops(&self) -> impl Iterator<Item = &Write> {
        self.writes.iter()
    }

    /// The strings set (`Some`) or deleted (`None`), the last write of each
    /// key, in key order. (Deletes of other kinds too: a delete is one op
    /// whatever the key holds.)
    pub fn writes(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        let mut last = BTreeMap::new();
        for w in &self.writes {
            match &w.op {
                Op::Set { value, .. } => last.insert(w.key.as_str(), Some(value.as_slice())),
                Op::Delete => last.insert(w.key.as_str(), None),
                _ => None,
            };
        }
        last.into_iter()
    }

    /// The adjustments of strings, in the order made.
    pub fn adjustments(&self) -> impl Iterator<Item = Adjustment> + '_ {
        self.writes.iter().filter_map(|w| match &w.op {
            Op::Adjust(by) => Some(Adjustment {
                key: w.key.clone(),
                delta: by.delta,
                bounds: by.bounds,
                abort: by.abort.clone(),
            }),
            _ => None,
        })
    }

    /// The output bytes.
    pub fn output_bytes(&self) -> &[u8] {
        &self.output
    }

    pub(crate) fn into_parts(self) -> (Vec<Write>, Vec<u8>) {
        (self.writes, self.output)
    }
}

fn to_json(value: &impl Serialize, what: &str) -> Result<Vec<u8>, Abort> {
    // Only exotic types fail here (maps with non-string keys, a failing
    // `Serialize` impl); a participant bug, reported as such rather than a trap.
    serde_json::to_vec(value)
        .map_err(|err| Abort::new("bad_output", format!("cannot serialize {what}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn last_write_to_a_key_wins() {
        let outcome = Outcome::new()
            .set("b", "1")
            .set_i64("a", -7)
            .delete("b")
            .set_json("c", &[1, 2])
            .unwrap();
        let writes: Vec<_> = outcome.writes().collect();
        assert_eq!(
            writes,
            [
                ("a", Some(&b"-7"[..])),
                ("b", None),
                ("c", Some(&b"[1,2]"[..])),
            ]
        );
    }

    #[test]
    fn writes_keep_the_order_made() {
        let abort = || Abort::new("no", "no");
        let outcome = Outcome::new()
            .hset_i64("h", "qty", 2)
            .psetex("s", 1000, "v")
            .zadd("z", 1.5, "m")
            .zincrby("z", "m", 1, Bounds::none(), abort())
            .rpush("l", ["a", "b"])
            .lpush("l", [vec![0u8]])
            .xadd_maxlen("x", 10, [("f", "v")])
            .pexpire("h", 5)
            .adjust("n", 1, Bounds::at_most(3), abort())
            .hdel("h", "qty")
            .srem("t", "m")
            .zrem("z", "m");
        let ops: Vec<&Op> = outcome.ops().map(|w| &w.op).collect();
        assert_eq!(ops.len(), 12);
        assert_eq!(
            ops[0],
            &Op::Hset {
                field: "qty".into(),
                value: b"2".to_vec()
            }
        );
        assert_eq!(
            ops[1],
            &Op::Set {
                value: b"v".to_vec(),
                ttl_ms: Some(1000)
            }
        );
        assert_eq!(
            ops[6],
            &Op::Xadd {
                fields: vec![("f".into(), b"v".to_vec())],
                maxlen: Some(10)
            }
        );
        assert_eq!(
            outcome.writes().collect::<Vec<_>>(),
            [("s", Some(&b"v"[..]))]
        );
        let adjusted: Vec<_> = outcome.adjustments().map(|a| (a.key, a.delta)).collect();
        assert_eq!(adjusted, [("n".to_string(), 1)]);
    }

    #[test]
    fn output_defaults_to_empty_and_takes_json() {
        assert_eq!(Outcome::new().output_bytes(), b"");
        let outcome = Outcome::new()
            .output_json(&serde_json::json!({"ok": true}))
            .unwrap();
        assert_eq!(outcome.output_bytes(), br#"{"ok":true}"#);
    }

    #[test]
    fn unserializable_json_is_an_abort() {
        let bad: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
        let err = Outcome::new().output_json(&bad).unwrap_err();
        assert_eq!(err.code, "bad_output");
        let err = Outcome::new().set_json("k", &bad).unwrap_err();
        assert!(err.message.contains("`k`"), "{}", err.message);
    }
}
