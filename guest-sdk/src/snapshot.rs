//! The snapshot: what the declared reads found, as this transaction sees it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Range;

use serde::de::DeserializeOwned;

use crate::{Abort, Kind, Target};

/// What one read access found.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string's value, or a hash field's; `None` when it does not exist.
    Bytes(Option<Vec<u8>>),
    /// Whether a member is in a set.
    Present(bool),
    /// A sorted set member's score; `None` when it is not a member.
    Score(Option<f64>),
    /// A whole hash: its fields and their values, sorted by field.
    Fields(Vec<(String, Vec<u8>)>),
    /// A whole set: its members, sorted.
    Members(Vec<String>),
    /// A sorted set, whole or a range of it: members and scores, by score
    /// and then by member, as `ZRANGE` orders them.
    Ranked(Vec<(String, f64)>),
}

// Scores come from Redis, which has no NaN.
impl Eq for Value {}

/// The value of every part of a key declared in read or write mode, handed
/// to [`Participant::execute`], with accessors named after the Redis
/// commands that would read the same: [`get`](Snapshot::get),
/// [`hget`](Snapshot::hget), [`hgetall`](Snapshot::hgetall),
/// [`sismember`](Snapshot::sismember), [`smembers`](Snapshot::smembers),
/// [`zscore`](Snapshot::zscore), [`zrange`](Snapshot::zrange),
/// [`zrangebyscore`](Snapshot::zrangebyscore).
///
/// A whole hash, set or sorted set answers for its parts too: `hget` of a
/// field, `sismember`, `zscore` and the ranges are served from a whole
/// read when no read of the part itself was declared.
///
/// Reading what was not declared is a bug in the participant, not a
/// business decision, but it still surfaces as an abort (`undeclared_key`)
/// naming the key rather than as a trap, so the client learns what went
/// wrong.
///
/// [`Participant::execute`]: crate::Participant::execute
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    // By key; each key's parts in the order the host sent them.
    entries: BTreeMap<String, Vec<(Kind, Target, Value)>>,
}

impl Snapshot {
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = (String, Kind, Target, Value)>,
    ) -> Self {
        let mut snapshot = Snapshot::default();
        for (key, kind, target, mut value) in entries {
            // In the contract's order already; sorting what is sorted is one
            // pass, and the lookups below rely on it.
            match &mut value {
                Value::Fields(fields) => fields.sort_unstable_by(|(a, _), (b, _)| a.cmp(b)),
                Value::Members(members) => members.sort_unstable(),
                Value::Ranked(ranked) => ranked.sort_unstable_by(by_score),
                Value::Bytes(_) | Value::Present(_) | Value::Score(_) => {}
            }
            snapshot
                .entries
                .entry(key)
                .or_default()
                .push((kind, target, value));
        }
        snapshot
    }

    /// What the read of `target` of `key`, a `kind`, found; `None` if it
    /// was not declared in read or write mode.
    pub fn value(&self, key: &str, kind: Kind, target: &Target) -> Option<&Value> {
        self.entries
            .get(key)?
            .iter()
            .find(|(k, t, _)| *k == kind && t == target)
            .map(|(.., value)| value)
    }

    /// The value of the string `key`, `None` if it does not exist (`GET`).
    pub fn get(&self, key: &str) -> Result<Option<&[u8]>, Abort> {
        match self.value(key, Kind::String, &Target::Whole) {
            Some(Value::Bytes(value)) => Ok(value.as_deref()),
            _ => Err(undeclared(format!("key `{key}`"))),
        }
    }

    /// The value of the string `key` as a decimal integer, by the rule
    /// Redis's `INCRBY` applies (see [`integer`]); a missing key reads as 0,
    /// so counters and balances need no initialisation.
    pub fn get_i64(&self, key: &str) -> Result<i64, Abort> {
        let Some(bytes) = self.get(key)? else {
            return Ok(0);
        };
        integer(bytes).ok_or_else(|| bad_value(&format!("key `{key}`"), bytes, DECIMAL))
    }

    /// The value of the string `key` parsed as JSON, `None` if the key does
    /// not exist.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Abort> {
        self.get(key)?
            .map(|bytes| {
                serde_json::from_slice(bytes).map_err(|err| {
                    bad_value(&format!("key `{key}`"), bytes, &format!("JSON ({err})"))
                })
            })
            .transpose()
    }

    /// The value of `field` in the hash `key`, `None` if either does not
    /// exist (`HGET`). Declared with the field, or with the whole hash.
    pub fn hget(&self, key: &str, field: &str) -> Result<Option<&[u8]>, Abort> {
        let part = Target::Field(field.to_owned());
        if let Some(Value::Bytes(value)) = self.value(key, Kind::Hash, &part) {
            return Ok(value.as_deref());
        }
        match self.value(key, Kind::Hash, &Target::Whole) {
            Some(Value::Fields(fields)) => Ok(fields
                .binary_search_by(|(f, _)| f.as_str().cmp(field))
                .ok()
                .map(|i| fields[i].1.as_slice())),
            _ => Err(undeclared(format!("field `{field}` of hash `{key}`"))),
        }
    }

    /// The value of `field` in the hash `key` as a decimal integer, as
    /// [`get_i64`](Snapshot::get_i64) reads a string: a missing field (or
    /// hash) reads as 0.
    pub fn hget_i64(&self, key: &str, field: &str) -> Result<i64, Abort> {
        let Some(bytes) = self.hget(key, field)? else {
            return Ok(0);
        };
        integer(bytes).ok_or_else(|| {
            let what = format!("field `{field}` of hash `{key}`");
            bad_value(&what, bytes, DECIMAL)
        })
    }

    /// Every field of the hash `key` and its value, sorted by field; empty
    /// if the hash does not exist (`HGETALL`). Declared with the whole hash.
    pub fn hgetall(&self, key: &str) -> Result<&[(String, Vec<u8>)], Abort> {
        match self.value(key, Kind::Hash, &Target::Whole) {
            Some(Value::Fields(fields)) => Ok(fields),
            _ => Err(undeclared(format!("hash `{key}`"))),
        }
    }

    /// Whether `member` is in the set `key` (`SISMEMBER`). Declared with
    /// the member, or with the whole set.
    pub fn sismember(&self, key: &str, member: &str) -> Result<bool, Abort> {
        let part = Target::Member(member.to_owned());
        if let Some(Value::Present(present)) = self.value(key, Kind::Set, &part) {
            return Ok(*present);
        }
        match self.value(key, Kind::Set, &Target::Whole) {
            Some(Value::Members(members)) => {
                Ok(members.binary_search_by(|m| m.as_str().cmp(member)).is_ok())
            }
            _ => Err(undeclared(format!("member `{member}` of set `{key}`"))),
        }
    }

    /// The members of the set `key`, sorted; empty if the set does not
    /// exist (`SMEMBERS`). Declared with the whole set.
    pub fn smembers(&self, key: &str) -> Result<&[String], Abort> {
        match self.value(key, Kind::Set, &Target::Whole) {
            Some(Value::Members(members)) => Ok(members),
            _ => Err(undeclared(format!("set `{key}`"))),
        }
    }

    /// The score of `member` in the sorted set `key`, `None` if it is not a
    /// member (`ZSCORE`). Declared with the member, or with the whole
    /// sorted set.
    pub fn zscore(&self, key: &str, member: &str) -> Result<Option<f64>, Abort> {
        let part = Target::Member(member.to_owned());
        if let Some(Value::Score(score)) = self.value(key, Kind::Zset, &part) {
            return Ok(*score);
        }
        match self.value(key, Kind::Zset, &Target::Whole) {
            Some(Value::Ranked(ranked)) => Ok(ranked
                .iter()
                .find(|(m, _)| m == member)
                .map(|(_, score)| *score)),
            _ => Err(undeclared(format!(
                "member `{member}` of sorted set `{key}`"
            ))),
        }
    }

    /// The members of the sorted set `key` from rank `start` to rank
    /// `stop`, both included, with their scores, by score (`ZRANGE key
    /// start stop WITHSCORES`: negative ranks count from the highest
    /// score). Declared with [`Access::read_zset_ranks`] and the same
    /// `start` and `stop`, or with the whole sorted set.
    ///
    /// [`Access::read_zset_ranks`]: crate::Access::read_zset_ranks
    pub fn zrange(&self, key: &str, start: i64, stop: i64) -> Result<&[(String, f64)], Abort> {
        if let Some(Value::Ranked(ranked)) =
            self.value(key, Kind::Zset, &Target::Ranks(start, stop))
        {
            return Ok(ranked);
        }
        match self.value(key, Kind::Zset, &Target::Whole) {
            Some(Value::Ranked(all)) => Ok(&all[ranks(all.len(), start, stop)]),
            _ => Err(undeclared(format!(
                "ranks {start} to {stop} of sorted set `{key}`"
            ))),
        }
    }

    /// The members of the sorted set `key` with a score from `min` to
    /// `max`, both included, with their scores, by score (`ZRANGEBYSCORE
    /// key min max WITHSCORES`). Declared with [`Access::read_zset_scores`]
    /// and the same `min` and `max`, or with the whole sorted set.
    ///
    /// [`Access::read_zset_scores`]: crate::Access::read_zset_scores
    pub fn zrangebyscore(&self, key: &str, min: f64, max: f64) -> Result<&[(String, f64)], Abort> {
        if let Some(Value::Ranked(ranked)) = self.value(key, Kind::Zset, &Target::Scores(min, max))
        {
            return Ok(ranked);
        }
        match self.value(key, Kind::Zset, &Target::Whole) {
            Some(Value::Ranked(all)) => Ok(&all[scores(all, min, max)]),
            _ => Err(undeclared(format!(
                "scores {min} to {max} of sorted set `{key}`"
            ))),
        }
    }
}

/// `ZRANGE`'s order of sorted-set members: by score, then by member.
pub(crate) fn by_score((m1, s1): &(String, f64), (m2, s2): &(String, f64)) -> Ordering {
    s1.total_cmp(s2).then_with(|| m1.cmp(m2))
}

/// The indexes `ZRANGE start stop` covers in a sorted set of `len`
/// members: negative ranks count from the end, both ends included, out of
/// range clamped.
pub(crate) fn ranks(len: usize, start: i64, stop: i64) -> Range<usize> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let from_end = |rank: i64| {
        if rank < 0 {
            rank.saturating_add(len)
        } else {
            rank
        }
    };
    let (start, stop) = (from_end(start).max(0), from_end(stop).min(len - 1));
    if start > stop {
        return 0..0;
    }
    // Both within 0..len now.
    start as usize..stop as usize + 1
}

/// The indexes of the members of `ranked` (ordered by score) with a score
/// within `min..=max`.
pub(crate) fn scores(ranked: &[(String, f64)], min: f64, max: f64) -> Range<usize> {
    let start = ranked.partition_point(|(_, score)| *score < min);
    let end = ranked.partition_point(|(_, score)| *score <= max);
    start..end.max(start)
}

const DECIMAL: &str = "a decimal 64-bit integer";

fn undeclared(what: String) -> Abort {
    Abort::new(
        "undeclared_key",
        format!("read of {what}, which declare() did not return"),
    )
}

fn bad_value(what: &str, bytes: &[u8], expected: &str) -> Abort {
    // Stored values may be large or binary: show only enough to recognise it.
    const SHOWN: usize = 64;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    let ellipsis = if bytes.len() > SHOWN { "..." } else { "" };
    Abort::new(
        "bad_value",
        format!("{what} holds {shown:?}{ellipsis}, expected {expected}"),
    )
}

/// The integer `bytes` holds, by the rule Redis's `INCRBY` applies and the
/// host checks adjustments with: `0`, or an optional `-`, a digit 1-9 and
/// more digits, within a signed 64-bit integer. `007`, `-0`, `+5`, ` 5`
/// and `1e3` are not integers.
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

/// The largest integer a sorted set's score (a double) holds exactly:
/// 2^53. A bounded adjustment of a score (`zincrby`) needs a score within
/// `-SCORE_INTEGER_MAX..=SCORE_INTEGER_MAX` and leaves one there.
pub const SCORE_INTEGER_MAX: i64 = 1 << 53;

/// The integer a sorted set's `score` is, if it is one a bounded
/// adjustment can take: integral, within [`SCORE_INTEGER_MAX`] either side
/// of 0.
pub fn score_integer(score: f64) -> Option<i64> {
    let integral = score.fract() == 0.0 && score.abs() <= SCORE_INTEGER_MAX as f64;
    // Exact: integral and within 2^53.
    integral.then_some(score as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(entries: &[(&str, Option<&str>)]) -> Snapshot {
        Snapshot::from_entries(entries.iter().map(|(k, v)| {
            let value = Value::Bytes(v.map(|v| v.as_bytes().to_vec()));
            (k.to_string(), Kind::String, Target::Whole, value)
        }))
    }

    fn ranked(members: &[(&str, f64)]) -> Value {
        Value::Ranked(members.iter().map(|(m, s)| (m.to_string(), *s)).collect())
    }

    #[test]
    fn get_distinguishes_missing_from_undeclared() {
        let snap = snapshot(&[("present", Some("v")), ("missing", None)]);
        assert_eq!(snap.get("present"), Ok(Some(&b"v"[..])));
        assert_eq!(snap.get("missing"), Ok(None));
        let err = snap.get("other").unwrap_err();
        assert_eq!(err.code, "undeclared_key");
        assert!(err.message.contains("`other`"), "{}", err.message);
    }

    #[test]
    fn get_i64_parses_decimal_and_defaults_to_zero() {
        let snap = snapshot(&[("n", Some("-42")), ("missing", None)]);
        assert_eq!(snap.get_i64("n"), Ok(-42));
        assert_eq!(snap.get_i64("missing"), Ok(0));
        assert_eq!(snap.get_i64("other").unwrap_err().code, "undeclared_key");
    }

    #[test]
    fn get_i64_rejects_what_is_not_a_decimal_i64() {
        for value in [
            "abc",
            "1.5",
            " 1",
            "",
            "9223372036854775808",
            "007",
            "-0",
            "+5",
            "1e3",
        ] {
            let snap = snapshot(&[("n", Some(value))]);
            let err = snap.get_i64("n").unwrap_err();
            assert_eq!(err.code, "bad_value", "{value:?}");
            assert!(err.message.contains("decimal"), "{}", err.message);
        }
    }

    #[test]
    fn bad_value_message_truncates_long_values() {
        let long = "x".repeat(1000);
        let snap = snapshot(&[("n", Some(&long))]);
        let err = snap.get_i64("n").unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
        assert!(err.message.contains("..."), "{}", err.message);
    }

    #[test]
    fn get_json_parses_or_aborts() {
        let snap = snapshot(&[
            ("doc", Some(r#"{"a":[1,2]}"#)),
            ("bad", Some("{")),
            ("missing", None),
        ]);
        let doc: Option<serde_json::Value> = snap.get_json("doc").unwrap();
        assert_eq!(doc, Some(serde_json::json!({"a": [1, 2]})));
        assert_eq!(snap.get_json::<serde_json::Value>("missing"), Ok(None));
        let err = snap.get_json::<serde_json::Value>("bad").unwrap_err();
        assert_eq!(err.code, "bad_value");
        assert!(err.message.contains("JSON"), "{}", err.message);
    }

    #[test]
    fn hash_fields_are_read_alone_or_from_the_whole_hash() {
        // Out of order on purpose: the snapshot sorts what it gets.
        let fields = vec![
            ("c".to_string(), b"x".to_vec()),
            ("a".to_string(), b"1".to_vec()),
        ];
        let snap = Snapshot::from_entries([
            ("h".into(), Kind::Hash, Target::Whole, Value::Fields(fields)),
            (
                "f".into(),
                Kind::Hash,
                Target::Field("n".into()),
                Value::Bytes(Some(b"7".to_vec())),
            ),
        ]);
        assert_eq!(snap.hget("h", "a"), Ok(Some(&b"1"[..])));
        assert_eq!(snap.hget("h", "b"), Ok(None));
        assert_eq!(snap.hget_i64("h", "b"), Ok(0));
        assert_eq!(snap.hget_i64("f", "n"), Ok(7));
        assert_eq!(snap.hgetall("h").unwrap().len(), 2);
        let err = snap.hget_i64("h", "c").unwrap_err();
        assert_eq!(err.code, "bad_value");
        assert!(err.message.contains("field `c` of hash `h`"), "{err}");
        for err in [
            snap.hget("f", "other").unwrap_err(),
            snap.hgetall("f").unwrap_err(),
            snap.get("h").unwrap_err(),
        ] {
            assert_eq!(err.code, "undeclared_key", "{err}");
        }
    }

    #[test]
    fn set_members_are_read_alone_or_from_the_whole_set() {
        let snap = Snapshot::from_entries([
            (
                "s".into(),
                Kind::Set,
                Target::Whole,
                Value::Members(vec!["b".into(), "a".into()]),
            ),
            (
                "t".into(),
                Kind::Set,
                Target::Member("x".into()),
                Value::Present(false),
            ),
        ]);
        assert_eq!(snap.sismember("s", "b"), Ok(true));
        assert_eq!(snap.sismember("s", "c"), Ok(false));
        assert_eq!(snap.sismember("t", "x"), Ok(false));
        assert_eq!(snap.smembers("s").unwrap(), ["a", "b"]);
        assert_eq!(snap.sismember("t", "y").unwrap_err().code, "undeclared_key");
        assert_eq!(snap.smembers("t").unwrap_err().code, "undeclared_key");
    }

    #[test]
    fn sorted_sets_answer_scores_and_ranges_from_what_was_declared() {
        let all = ranked(&[("d", 5.0), ("c", 2.0), ("a", 1.0), ("b", 2.0)]);
        let snap = Snapshot::from_entries([
            ("z".into(), Kind::Zset, Target::Whole, all),
            (
                "r".into(),
                Kind::Zset,
                Target::Ranks(-2, -1),
                ranked(&[("y", 3.0), ("z", 4.0)]),
            ),
            (
                "m".into(),
                Kind::Zset,
                Target::Member("x".into()),
                Value::Score(None),
            ),
        ]);
        assert_eq!(snap.zscore("z", "c"), Ok(Some(2.0)));
        assert_eq!(snap.zscore("z", "e"), Ok(None));
        assert_eq!(snap.zscore("m", "x"), Ok(None));
        let members = |r: &[(String, f64)]| r.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>();
        assert_eq!(
            members(snap.zrange("z", 0, -1).unwrap()),
            ["a", "b", "c", "d"]
        );
        assert_eq!(members(snap.zrange("z", 1, 2).unwrap()), ["b", "c"]);
        assert_eq!(members(snap.zrange("z", -2, 10).unwrap()), ["c", "d"]);
        assert!(snap.zrange("z", 3, 1).unwrap().is_empty());
        assert_eq!(members(snap.zrange("r", -2, -1).unwrap()), ["y", "z"]);
        assert_eq!(
            members(snap.zrangebyscore("z", 2.0, 5.0).unwrap()),
            ["b", "c", "d"]
        );
        assert!(snap.zrangebyscore("z", 3.0, 4.0).unwrap().is_empty());
        assert!(snap.zrangebyscore("z", 5.0, 1.0).unwrap().is_empty());
        assert_eq!(
            members(snap.zrangebyscore("z", f64::NEG_INFINITY, 1.0).unwrap()),
            ["a"]
        );
        for err in [
            snap.zrange("r", 0, -1).unwrap_err(),
            snap.zscore("r", "y").unwrap_err(),
            snap.zrangebyscore("m", 0.0, 1.0).unwrap_err(),
        ] {
            assert_eq!(err.code, "undeclared_key", "{err}");
        }
    }

    #[test]
    fn ranks_count_as_zrange_does() {
        assert_eq!(ranks(4, 0, -1), 0..4);
        assert_eq!(ranks(4, -100, 100), 0..4);
        assert_eq!(ranks(4, 4, 10), 0..0);
        assert_eq!(ranks(4, -1, -1), 3..4);
        assert_eq!(ranks(4, 2, 1), 0..0);
        assert_eq!(ranks(0, 0, -1), 0..0);
        assert_eq!(ranks(4, i64::MIN, i64::MAX), 0..4);
    }

    #[test]
    fn score_integers_are_integral_and_within_2_pow_53() {
        assert_eq!(score_integer(3.0), Some(3));
        assert_eq!(score_integer(-0.0), Some(0));
        assert_eq!(score_integer(9007199254740992.0), Some(1 << 53));
        assert_eq!(score_integer(-9007199254740992.0), Some(-(1 << 53)));
        for bad in [0.5, 9007199254740994.0, f64::INFINITY, f64::NAN] {
            assert_eq!(score_integer(bad), None, "{bad}");
        }
    }
}
