//! What a transaction does to one data key of a store, as the scripts take
//! it: the Redis type the key must hold, the targets it locks (the key
//! whole, or hash fields and set members, each in its mode), what it reads
//! for the snapshot, and the changes it makes. One [`KeyWork`] per key, the
//! same shape for every script (see `scripts`).

use redis::Value;
use serde::{Deserialize, Serialize};

use super::{Bounded, Mode, steps_arg};

/// Bytes, as base64 in JSON (the records carry values this way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Base64, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Base64)
            .map_err(serde::de::Error::custom)
    }
}

/// A Redis type, as `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    String,
    Hash,
    Set,
    Zset,
    Stream,
    List,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::Zset => "zset",
            Kind::Stream => "stream",
            Kind::List => "list",
        }
    }
}

/// One read of a key, for the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// A string's value.
    Get,
    /// A hash field's value.
    HGet(String),
    /// Whether a member is in a set.
    SIsMember(String),
    /// A sorted set member's score.
    ZScore(String),
    /// A whole hash.
    HGetAll,
    /// A whole set.
    SMembers,
    /// A whole sorted set.
    ZAll,
    /// A sorted set's members from one rank to another, both included.
    ZRank(i64, i64),
    /// A sorted set's members with scores within two, both included.
    ZByScore(f64, f64),
}

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Bytes(Option<Vec<u8>>),
    Present(bool),
    Score(Option<f64>),
    /// Sorted by field.
    Fields(Vec<(String, Vec<u8>)>),
    /// Sorted.
    Members(Vec<String>),
    /// In order of score, then member.
    Ranked(Vec<(String, f64)>),
}

/// One change to a key, applied only if its transaction commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A string's value, with a TTL in ms (none: the key's TTL is kept).
    Set {
        value: Base64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    Delete,
    /// Bounded deltas to an integer: the string (`part` none), a hash field
    /// or a sorted set member's score. Reserved before the decision unless
    /// the key is held exclusively (then the host applies them itself, as
    /// a `Set`, `HSet` or `ZAdd`).
    Adjust {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<String>,
        steps: Vec<Bounded>,
    },
    HSet(String, Base64),
    HDel(String),
    SAdd(String),
    SRem(String),
    ZAdd(String, f64),
    ZRem(String),
    /// A stream entry: field-value pairs, and `MAXLEN ~`.
    XAdd {
        fields: Vec<(String, Base64)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maxlen: Option<u64>,
    },
    RPush(Vec<Base64>),
    LPush(Vec<Base64>),
    /// The key's TTL, in ms from the commit.
    Expire(u64),
}

impl Op {
    /// Whether it appends (and so needs no lock: see `scripts`).
    pub fn appends(&self) -> bool {
        matches!(self, Op::XAdd { .. } | Op::RPush(_) | Op::LPush(_))
    }

    /// The part of the key it changes: a field or member, or none for the
    /// key whole (or an append).
    pub fn part(&self) -> Option<&str> {
        match self {
            Op::Adjust { part, .. } => part.as_deref(),
            Op::HSet(m, _)
            | Op::HDel(m)
            | Op::SAdd(m)
            | Op::SRem(m)
            | Op::ZAdd(m, _)
            | Op::ZRem(m) => Some(m),
            _ => None,
        }
    }
}

/// Everything a transaction does to one data key on one store.
#[derive(Debug, Clone, Copy)]
pub struct KeyWork<'a> {
    pub key: &'a str,
    pub kind: Kind,
    /// The targets it locks: the key whole (part none) alone, or distinct
    /// parts, each with its mode.
    pub targets: &'a [(Option<String>, Mode)],
    /// For the snapshot (round trip 1 only).
    pub reads: &'a [Read],
    /// The changes, in order (at the commit point and the apply only).
    pub ops: &'a [Op],
}

impl<'a> KeyWork<'a> {
    /// The same key and targets, with nothing to read or change: what
    /// releases its locks.
    pub fn released(&self) -> KeyWork<'a> {
        KeyWork {
            reads: &[],
            ops: &[],
            ..*self
        }
    }

    /// For a string adjusted whole and nothing else (the shape
    /// `scripts::LOCK_ADJUSTED`, `COMMIT_ADJUSTED` and `APPLY_ADJUSTED`
    /// take): its adjustments as the scripts take them ('' for none), or
    /// none if the key has another shape. With `reads`, a key with a read
    /// has another shape.
    pub(super) fn adjusted(&self, reads: bool) -> Option<Vec<u8>> {
        self.adjusted_steps(reads).map(steps_arg)
    }

    /// The adjustments of [`KeyWork::adjusted`], as they are.
    pub(super) fn adjusted_steps(&self, reads: bool) -> Option<&[Bounded]> {
        if self.kind != Kind::String
            || (reads && !self.reads.is_empty())
            || !matches!(self.targets, [(None, Mode::Adjust)])
        {
            return None;
        }
        match self.ops {
            [] => Some(&[]),
            [Op::Adjust { part: None, steps }] if !steps.is_empty() => Some(steps),
            _ => None,
        }
    }

    /// The target (1-based) whose lock an op needs to be applied, or 0 for
    /// an append (which needs none). An op no target covers is a bug of the
    /// caller, which checks every write against what its step declared.
    fn target_of(&self, op: &Op) -> usize {
        if op.appends() {
            return 0;
        }
        let exact = op.part().and_then(|p| {
            self.targets
                .iter()
                .position(|(t, _)| t.as_deref() == Some(p))
        });
        let whole = || self.targets.iter().position(|(t, _)| t.is_none());
        let locked = || {
            self.targets
                .iter()
                .position(|(_, m)| !matches!(m, Mode::Read | Mode::Append))
        };
        let at = match op {
            Op::Expire(_) => whole().or_else(locked),
            _ => exact.or_else(whole),
        };
        at.expect("every op is covered by a target") + 1
    }

    /// The arguments of this key's block (see `scripts`): with `reserve`,
    /// the adjustments of each adjusted target for the script to reserve;
    /// with `reads` and `ops`, those.
    pub(super) fn args(&self, out: &mut Vec<Vec<u8>>, reserve: bool, reads: bool, ops: bool) {
        let mut push = |s: &[u8]| out.push(s.to_vec());
        push(self.kind.name().as_bytes());
        push(self.targets.len().to_string().as_bytes());
        for (part, mode) in self.targets {
            match part {
                Some(p) => {
                    push(b"p");
                    push(p.as_bytes());
                }
                None => {
                    push(b"w");
                    push(b"");
                }
            }
            push(mode.code().as_bytes());
            let steps = match (reserve, mode) {
                (true, Mode::Adjust) => self.ops.iter().find_map(|op| match op {
                    Op::Adjust { part: p, steps } if p == part => Some(steps_arg(steps)),
                    _ => None,
                }),
                _ => None,
            };
            push(&steps.unwrap_or_default());
        }
        let reads: &[Read] = if reads { self.reads } else { &[] };
        push(reads.len().to_string().as_bytes());
        for read in reads {
            read_args(read, &mut push);
        }
        let ops: &[Op] = if ops { self.ops } else { &[] };
        push(ops.len().to_string().as_bytes());
        for op in ops {
            self.op_args(op, &mut push);
        }
    }

    fn op_args(&self, op: &Op, push: &mut impl FnMut(&[u8])) {
        let (code, target) = (op_code(op), self.target_of(op));
        push(code.as_bytes());
        push(target.to_string().as_bytes());
        match op {
            Op::Set { value, ttl_ms } => {
                push(&value.0);
                push(ttl_ms.map(|t| t.to_string()).unwrap_or_default().as_bytes());
            }
            Op::Delete => {}
            Op::Adjust { steps, .. } => push(&steps_arg(steps)),
            Op::HSet(f, v) => {
                push(f.as_bytes());
                push(&v.0);
            }
            Op::HDel(m) | Op::SAdd(m) | Op::SRem(m) | Op::ZRem(m) => push(m.as_bytes()),
            Op::ZAdd(m, score) => {
                push(m.as_bytes());
                push(score_arg(*score).as_bytes());
            }
            Op::XAdd { fields, maxlen } => {
                push(maxlen.map(|m| m.to_string()).unwrap_or_default().as_bytes());
                push((2 * fields.len()).to_string().as_bytes());
                for (f, v) in fields {
                    push(f.as_bytes());
                    push(&v.0);
                }
            }
            Op::RPush(values) | Op::LPush(values) => {
                push(values.len().to_string().as_bytes());
                for v in values {
                    push(&v.0);
                }
            }
            Op::Expire(ms) => push(ms.to_string().as_bytes()),
        }
    }
}

fn op_code(op: &Op) -> &'static str {
    match op {
        Op::Set { .. } => "set",
        Op::Delete => "del",
        Op::Adjust { .. } => "adj",
        Op::HSet(..) => "hset",
        Op::HDel(_) => "hdel",
        Op::SAdd(_) => "sadd",
        Op::SRem(_) => "srem",
        Op::ZAdd(..) => "zadd",
        Op::ZRem(_) => "zrem",
        Op::XAdd { .. } => "xadd",
        Op::RPush(_) => "rpush",
        Op::LPush(_) => "lpush",
        Op::Expire(_) => "pexpire",
    }
}

fn read_args(read: &Read, push: &mut impl FnMut(&[u8])) {
    match read {
        Read::Get => push(b"get"),
        Read::HGet(f) => {
            push(b"hget");
            push(f.as_bytes());
        }
        Read::SIsMember(m) => {
            push(b"sismember");
            push(m.as_bytes());
        }
        Read::ZScore(m) => {
            push(b"zscore");
            push(m.as_bytes());
        }
        Read::HGetAll => push(b"hgetall"),
        Read::SMembers => push(b"smembers"),
        Read::ZAll => push(b"zall"),
        Read::ZRank(a, b) => {
            push(b"zrank");
            push(a.to_string().as_bytes());
            push(b.to_string().as_bytes());
        }
        Read::ZByScore(min, max) => {
            push(b"zbyscore");
            push(score_arg(*min).as_bytes());
            push(score_arg(*max).as_bytes());
        }
    }
}

/// A score as Redis takes it: infinities spelled `+inf`/`-inf`, finite ones
/// with every digit Rust needs to give the same number back.
fn score_arg(score: f64) -> String {
    if score == f64::INFINITY {
        "+inf".into()
    } else if score == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{score:?}")
    }
}

/// A score as Redis gives it (`ZSCORE`, `WITHSCORES`).
fn score(bytes: &[u8]) -> Option<f64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// What one read found, from its value in a script's reply.
pub(super) fn found(read: &Read, value: &Value) -> Option<Found> {
    let bytes = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let text = |v: &Value| bytes(v).and_then(|b| String::from_utf8(b).ok());
    let items = |v: &Value| match v {
        Value::Array(items) => Some(items.clone()),
        Value::Nil => Some(Vec::new()),
        _ => None,
    };
    Some(match read {
        Read::Get | Read::HGet(_) => Found::Bytes(match value {
            Value::Nil => None,
            v => Some(bytes(v)?),
        }),
        Read::SIsMember(_) => Found::Present(matches!(value, Value::Int(1))),
        Read::ZScore(_) => Found::Score(match value {
            Value::Nil => None,
            v => Some(score(&bytes(v)?)?),
        }),
        Read::HGetAll => {
            let items = items(value)?;
            let mut fields = Vec::with_capacity(items.len() / 2);
            for pair in items.chunks(2) {
                fields.push((text(&pair[0])?, bytes(pair.get(1)?)?));
            }
            fields.sort();
            Found::Fields(fields)
        }
        Read::SMembers => {
            let mut members = items(value)?.iter().map(text).collect::<Option<Vec<_>>>()?;
            members.sort();
            Found::Members(members)
        }
        Read::ZAll | Read::ZRank(..) | Read::ZByScore(..) => {
            let items = items(value)?;
            let mut ranked = Vec::with_capacity(items.len() / 2);
            for pair in items.chunks(2) {
                ranked.push((text(&pair[0])?, score(&bytes(pair.get(1)?)?)?));
            }
            Found::Ranked(ranked)
        }
    })
}
