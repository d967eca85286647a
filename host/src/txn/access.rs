//! What steps declare and change, in Redis terms: the accesses of contract
//! 0.3.0 checked against the contract's rules and mapped into the
//! participant's namespaces, each write checked against the accesses that
//! must cover it, and the snapshot each step sees (the values read in round
//! trip 1, changed by the writes of the steps before it).
//!
//! ```text
//!  kind      targets                      modes
//!  string    whole                        read, write, adjust
//!  hash      whole, field                 read, write; adjust (a field)
//!  set       whole, member                read, write
//!  zset      whole, member, ranks, scores read, write; adjust (a member's
//!                                         score); ranges are read only
//!  stream    whole                        append
//!  list      whole                        append
//! ```
//!
//! A write needs an access of its key in `write` mode that covers it (the
//! key whole, or its field or member), a bounded delta (`adjust`, `hincrby`,
//! `zincrby`) one in `adjust` mode will do, an append one in `append` mode,
//! and `expire` any access of its key in `write` mode. Streams and lists
//! are only appended to, so appends commute with everything and take no
//! lock.

use std::collections::HashMap;

use crate::participants::Participant;
use crate::runtime::{GuestAbort, guest};
use crate::store::{Base64, Bounded, Found, Kind, Mode, Op, Read};

/// One access a step declared, its key a Redis key.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Declared {
    pub key: String,
    pub kind: Kind,
    pub target: guest::Target,
    pub mode: guest::Mode,
}

fn kind(k: guest::Kind) -> Kind {
    match k {
        guest::Kind::String => Kind::String,
        guest::Kind::Hash => Kind::Hash,
        guest::Kind::Set => Kind::Set,
        guest::Kind::Zset => Kind::Zset,
        guest::Kind::Stream => Kind::Stream,
        guest::Kind::List => Kind::List,
    }
}

fn guest_kind(k: Kind) -> guest::Kind {
    match k {
        Kind::String => guest::Kind::String,
        Kind::Hash => guest::Kind::Hash,
        Kind::Set => guest::Kind::Set,
        Kind::Zset => guest::Kind::Zset,
        Kind::Stream => guest::Kind::Stream,
        Kind::List => guest::Kind::List,
    }
}

impl Declared {
    /// What it locks (its field or member, or the key whole), and how.
    pub fn lock(&self) -> (Option<String>, Mode) {
        let part = match &self.target {
            guest::Target::Field(m) | guest::Target::Member(m) => Some(m.clone()),
            _ => None,
        };
        let mode = match self.mode {
            guest::Mode::Read => Mode::Shared,
            guest::Mode::Write => Mode::Exclusive,
            guest::Mode::Adjust => Mode::Adjust,
            guest::Mode::Append => Mode::Append,
        };
        (part, mode)
    }

    /// What it reads for the snapshot, if it reads.
    pub fn read(&self) -> Option<Read> {
        use guest::Target::*;
        if !matches!(self.mode, guest::Mode::Read | guest::Mode::Write) {
            return None;
        }
        Some(match (self.kind, &self.target) {
            (Kind::String, Whole) => Read::Get,
            (Kind::Hash, Field(f)) => Read::HGet(f.clone()),
            (Kind::Hash, Whole) => Read::HGetAll,
            (Kind::Set, Member(m)) => Read::SIsMember(m.clone()),
            (Kind::Set, Whole) => Read::SMembers,
            (Kind::Zset, Member(m)) => Read::ZScore(m.clone()),
            (Kind::Zset, Whole) => Read::ZAll,
            (Kind::Zset, Ranks((a, b))) => Read::ZRank(*a, *b),
            (Kind::Zset, Scores((a, b))) => Read::ZByScore(*a, *b),
            _ => unreachable!("checked by `declared`"),
        })
    }
}

/// Why a declaration cannot be taken: the abort code and its message.
pub(super) type Refused = (&'static str, String);

/// The abort code of an access the contract does not allow.
pub const BAD_ACCESS: &str = "bad_access";

/// A step's access set, checked and mapped to Redis keys.
pub(super) fn declared(p: &Participant, set: guest::AccessSet) -> Result<Vec<Declared>, Refused> {
    let mut out: Vec<Declared> = Vec::with_capacity(set.accesses.len());
    for a in set.accesses {
        if a.key.is_empty() {
            return Err((
                "bad_key",
                "declared an invalid key \"\": keys must not be empty".into(),
            ));
        }
        let Some(key) = p.key(&a.key) else {
            return Err((
                "bad_key",
                format!(
                    "declared key {:?}, which is outside its namespaces ({})",
                    a.key,
                    p.namespaces().join(", ")
                ),
            ));
        };
        check(&a).map_err(|m| (BAD_ACCESS, format!("key {:?}: {m}", a.key)))?;
        let kind = kind(a.kind);
        if let Some(other) = out.iter().find(|d| d.key == key && d.kind != kind) {
            return Err((
                BAD_ACCESS,
                format!(
                    "key {:?} declared as a {} and as a {}",
                    a.key,
                    other.kind.name(),
                    kind.name()
                ),
            ));
        }
        let declared = Declared {
            key,
            kind,
            target: a.target,
            mode: a.mode,
        };
        if !out.contains(&declared) {
            out.push(declared);
        }
    }
    Ok(out)
}

/// Whether an access keeps to the contract's table of kinds, targets and
/// modes (see the module essay); the reason when it does not.
fn check(a: &guest::Access) -> Result<(), String> {
    use guest::Kind as K;
    use guest::Mode as M;
    use guest::Target as T;
    let what = match &a.target {
        T::Whole => "the key whole",
        T::Field(_) => "a field",
        T::Member(_) => "a member",
        T::Ranks(_) => "a range of ranks",
        T::Scores(_) => "a range of scores",
    };
    let kind = kind(a.kind).name();
    let targets = match (&a.target, a.kind) {
        (T::Whole, _) | (T::Field(_), K::Hash) | (T::Member(_), K::Set | K::Zset) => true,
        (T::Ranks(_) | T::Scores(_), K::Zset) => a.mode == M::Read,
        _ => false,
    };
    if !targets {
        return Err(format!(
            "{what} of a {kind} cannot be declared in {:?} mode",
            a.mode
        ));
    }
    if let T::Scores((min, max)) = &a.target
        && (min.is_nan() || max.is_nan())
    {
        return Err("a range of scores cannot have NaN for a bound".into());
    }
    let modes = match a.mode {
        M::Read | M::Write => !matches!(a.kind, K::Stream | K::List),
        M::Adjust => matches!(
            (a.kind, &a.target),
            (K::String, T::Whole) | (K::Hash, T::Field(_)) | (K::Zset, T::Member(_))
        ),
        M::Append => matches!((a.kind, &a.target), (K::Stream | K::List, T::Whole)),
    };
    if !modes {
        return Err(format!(
            "{what} of a {kind} cannot be declared in {:?} mode (streams and lists are only \
             appended to; adjust takes a string, a hash field or a sorted set member)",
            a.mode
        ));
    }
    Ok(())
}

/// Whether a step's declarations cover `op` on the Redis key `key` (see the
/// module essay).
pub(super) fn covers(declared: &[Declared], key: &str, op: &guest::Op) -> bool {
    use guest::Mode as M;
    use guest::Op as O;
    use guest::Target as T;
    let on_key = || declared.iter().filter(move |d| d.key == key);
    let whole = |kinds: &[Kind], modes: &[M]| {
        on_key().any(|d| kinds.contains(&d.kind) && d.target == T::Whole && modes.contains(&d.mode))
    };
    let part = |kind: Kind, name: &str, modes: &[M]| {
        on_key().any(|d| {
            d.kind == kind
                && matches!(&d.target, T::Field(m) | T::Member(m) if m == name)
                && modes.contains(&d.mode)
        })
    };
    let w = [M::Write];
    let wa = [M::Write, M::Adjust];
    match op {
        O::Set(_) => whole(&[Kind::String], &w),
        O::Delete => whole(&[Kind::String, Kind::Hash, Kind::Set, Kind::Zset], &w),
        O::Adjust(_) => whole(&[Kind::String], &wa),
        O::Hset((f, _)) | O::Hdel(f) => part(Kind::Hash, f, &w) || whole(&[Kind::Hash], &w),
        O::Hincrby((f, _)) => part(Kind::Hash, f, &wa) || whole(&[Kind::Hash], &w),
        O::Sadd(m) | O::Srem(m) => part(Kind::Set, m, &w) || whole(&[Kind::Set], &w),
        O::Zadd((m, _)) | O::Zrem(m) => part(Kind::Zset, m, &w) || whole(&[Kind::Zset], &w),
        O::Zincrby((m, _)) => part(Kind::Zset, m, &wa) || whole(&[Kind::Zset], &w),
        O::Xadd(_) => whole(&[Kind::Stream], &[M::Append]),
        O::Rpush(_) | O::Lpush(_) => whole(&[Kind::List], &[M::Append]),
        O::Expire(_) => on_key().any(|d| d.mode == M::Write),
    }
}

/// A change a step returned, in the store's terms, and the bounded delta it
/// carries (with the abort to answer when its bound breaks), if any.
pub(super) fn op_of(op: guest::Op) -> (Op, Option<(Bounded, GuestAbort)>) {
    use guest::Op as O;
    let bounded = |b: guest::Bounded| {
        (
            Bounded {
                delta: b.delta,
                lower: b.lower,
                upper: b.upper,
            },
            b.abort,
        )
    };
    match op {
        O::Set((value, ttl_ms)) => (
            Op::Set {
                value: Base64(value),
                ttl_ms,
            },
            None,
        ),
        O::Delete => (Op::Delete, None),
        O::Adjust(b) => {
            let (step, abort) = bounded(b);
            (adjust(None, step), Some((step, abort)))
        }
        O::Hincrby((f, b)) | O::Zincrby((f, b)) => {
            let (step, abort) = bounded(b);
            (adjust(Some(f), step), Some((step, abort)))
        }
        O::Hset((f, v)) => (Op::HSet(f, Base64(v)), None),
        O::Hdel(f) => (Op::HDel(f), None),
        O::Sadd(m) => (Op::SAdd(m), None),
        O::Srem(m) => (Op::SRem(m), None),
        O::Zadd((m, s)) => (Op::ZAdd(m, s), None),
        O::Zrem(m) => (Op::ZRem(m), None),
        O::Xadd(e) => (
            Op::XAdd {
                fields: e.fields.into_iter().map(|(f, v)| (f, Base64(v))).collect(),
                maxlen: e.maxlen,
            },
            None,
        ),
        O::Rpush(vs) => (Op::RPush(vs.into_iter().map(Base64).collect()), None),
        O::Lpush(vs) => (Op::LPush(vs.into_iter().map(Base64).collect()), None),
        O::Expire(ms) => (Op::Expire(ms), None),
    }
}

fn adjust(part: Option<String>, step: Bounded) -> Op {
    Op::Adjust {
        part,
        steps: vec![step],
    }
}

/// The values read in round trip 1, by store and key, kept up to date with
/// the writes of the steps run so far.
#[derive(Debug, Default)]
pub(super) struct View(HashMap<(String, String), Vec<(Read, Found)>>);

impl View {
    pub fn insert(&mut self, store: &str, key: &str, reads: &[Read], found: Vec<Found>) {
        let pairs = reads.iter().cloned().zip(found).collect();
        self.0.insert((store.to_owned(), key.to_owned()), pairs);
    }

    /// What `read` of `key` finds now.
    pub fn get(&self, store: &str, key: &str, read: &Read) -> Option<&Found> {
        let pairs = self.0.get(&(store.to_owned(), key.to_owned()))?;
        pairs.iter().find(|(r, _)| r == read).map(|(_, f)| f)
    }

    /// The value a part of `key` holds now, as bytes: a string's (part
    /// none), a hash field's, a sorted set member's score as Redis writes
    /// it. `None` when no read of the key shows it.
    pub fn value(&self, store: &str, key: &str, part: Option<&str>) -> Option<Option<Vec<u8>>> {
        let pairs = self.0.get(&(store.to_owned(), key.to_owned()))?;
        pairs
            .iter()
            .find_map(|(read, found)| match (read, found, part) {
                (Read::Get, Found::Bytes(v), None) => Some(v.clone()),
                (Read::HGet(f), Found::Bytes(v), Some(p)) if f == p => Some(v.clone()),
                (Read::HGetAll, Found::Fields(fs), Some(p)) => {
                    Some(fs.iter().find(|(f, _)| f == p).map(|(_, v)| v.clone()))
                }
                (Read::ZScore(m), Found::Score(s), Some(p)) if m == p => {
                    Some(s.map(|s| score_bytes(s).into_bytes()))
                }
                (Read::ZAll, Found::Ranked(rs), Some(p)) => Some(
                    rs.iter()
                        .find(|(m, _)| m == p)
                        .map(|(_, s)| score_bytes(*s).into_bytes()),
                ),
                _ => None,
            })
    }

    /// Changes every value read of `key` as `op` does.
    pub fn apply(&mut self, store: &str, key: &str, op: &Op) {
        let Some(pairs) = self.0.get_mut(&(store.to_owned(), key.to_owned())) else {
            return;
        };
        for (read, found) in pairs.iter_mut() {
            overlay(read, found, op);
        }
        // Ranges follow from the whole sorted set, which the plan reads
        // whenever a transaction both writes one and reads a range of it.
        let all = pairs.iter().find_map(|(r, f)| match (r, f) {
            (Read::ZAll, Found::Ranked(all)) => Some(all.clone()),
            _ => None,
        });
        if let Some(all) = all {
            for (read, found) in pairs.iter_mut() {
                if let Some(range) = range(read, &all) {
                    *found = Found::Ranked(range);
                }
            }
        }
    }
}

/// A score as Redis writes it: an integral one without a fraction.
fn score_bytes(score: f64) -> String {
    if score.fract() == 0.0 && score.abs() < 1e17 {
        format!("{}", score as i64)
    } else {
        format!("{score}")
    }
}

/// What one read finds once `op` is made.
fn overlay(read: &Read, found: &mut Found, op: &Op) {
    match (op, read, found) {
        (Op::Delete, _, f) => *f = empty(read).unwrap_or_else(|| f.clone()),
        (Op::Set { value, .. }, Read::Get, Found::Bytes(v)) => *v = Some(value.0.clone()),
        (Op::HSet(f, value), Read::HGet(g), Found::Bytes(v)) if f == g => {
            *v = Some(value.0.clone())
        }
        (Op::HDel(f), Read::HGet(g), Found::Bytes(v)) if f == g => *v = None,
        (Op::HSet(f, value), Read::HGetAll, Found::Fields(fs)) => {
            fs.retain(|(g, _)| g != f);
            fs.push((f.clone(), value.0.clone()));
            fs.sort();
        }
        (Op::HDel(f), Read::HGetAll, Found::Fields(fs)) => fs.retain(|(g, _)| g != f),
        (Op::SAdd(m), Read::SIsMember(n), Found::Present(p)) if m == n => *p = true,
        (Op::SRem(m), Read::SIsMember(n), Found::Present(p)) if m == n => *p = false,
        (Op::SAdd(m), Read::SMembers, Found::Members(ms)) => {
            if let Err(at) = ms.binary_search(m) {
                ms.insert(at, m.clone());
            }
        }
        (Op::SRem(m), Read::SMembers, Found::Members(ms)) => ms.retain(|n| n != m),
        (Op::ZAdd(m, s), Read::ZScore(n), Found::Score(v)) if m == n => *v = Some(*s),
        (Op::ZRem(m), Read::ZScore(n), Found::Score(v)) if m == n => *v = None,
        (Op::ZAdd(m, s), Read::ZAll, Found::Ranked(rs)) => {
            rs.retain(|(n, _)| n != m);
            rs.push((m.clone(), *s));
            rs.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        }
        (Op::ZRem(m), Read::ZAll, Found::Ranked(rs)) => rs.retain(|(n, _)| n != m),
        _ => {}
    }
}

/// What a read of a key that does not exist finds.
fn empty(read: &Read) -> Option<Found> {
    Some(match read {
        Read::Get | Read::HGet(_) => Found::Bytes(None),
        Read::SIsMember(_) => Found::Present(false),
        Read::ZScore(_) => Found::Score(None),
        Read::HGetAll => Found::Fields(Vec::new()),
        Read::SMembers => Found::Members(Vec::new()),
        Read::ZAll | Read::ZRank(..) | Read::ZByScore(..) => Found::Ranked(Vec::new()),
    })
}

/// A range read, taken from the whole sorted set `all` (in order).
fn range(read: &Read, all: &[(String, f64)]) -> Option<Vec<(String, f64)>> {
    match read {
        Read::ZRank(a, b) => {
            let n = all.len() as i64;
            let norm = |i: i64| if i < 0 { n + i } else { i };
            let (a, b) = (norm(*a).max(0), norm(*b).min(n - 1));
            Some(if a > b {
                Vec::new()
            } else {
                all[a as usize..=b as usize].to_vec()
            })
        }
        Read::ZByScore(min, max) => Some(
            all.iter()
                .filter(|(_, s)| s >= min && s <= max)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

/// How many items a read found (a whole collection's or a range's).
pub(super) fn items(found: &Found) -> usize {
    match found {
        Found::Fields(fs) => fs.len(),
        Found::Members(ms) => ms.len(),
        Found::Ranked(rs) => rs.len(),
        _ => 0,
    }
}

/// One entry of a step's snapshot: the value of its access `d`, named as
/// the participant names its key.
pub(super) fn entry(name: &str, d: &Declared, found: &Found) -> guest::Entry {
    let value = match found.clone() {
        Found::Bytes(v) => guest::Value::Bytes(v),
        Found::Present(p) => guest::Value::Present(p),
        Found::Score(s) => guest::Value::Score(s),
        Found::Fields(fs) => guest::Value::Fields(fs),
        Found::Members(ms) => guest::Value::Members(ms),
        Found::Ranked(rs) => guest::Value::Ranked(rs),
    };
    guest::Entry {
        key: name.to_owned(),
        kind: guest_kind(d.kind),
        target: d.target.clone(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_whole_sorted_set() {
        let all: Vec<(String, f64)> = [("a", 1.0), ("b", 2.0), ("c", 3.0)]
            .iter()
            .map(|(m, s)| (m.to_string(), *s))
            .collect();
        let names = |r: Vec<(String, f64)>| r.into_iter().map(|(m, _)| m).collect::<Vec<_>>();
        assert_eq!(
            names(range(&Read::ZRank(0, -1), &all).unwrap()),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(range(&Read::ZRank(-2, -1), &all).unwrap()),
            ["b", "c"]
        );
        assert_eq!(
            names(range(&Read::ZRank(2, 1), &all).unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(names(range(&Read::ZRank(1, 99), &all).unwrap()), ["b", "c"]);
        let by = Read::ZByScore(1.5, f64::INFINITY);
        assert_eq!(names(range(&by, &all).unwrap()), ["b", "c"]);
    }

    #[test]
    fn writes_show_in_every_read_of_their_key() {
        let mut view = View::default();
        view.insert(
            "s",
            "h",
            &[Read::HGet("f".into()), Read::HGetAll],
            vec![
                Found::Bytes(None),
                Found::Fields(vec![("g".into(), b"1".to_vec())]),
            ],
        );
        view.apply("s", "h", &Op::HSet("f".into(), Base64(b"2".to_vec())));
        assert_eq!(
            view.get("s", "h", &Read::HGet("f".into())),
            Some(&Found::Bytes(Some(b"2".to_vec())))
        );
        assert_eq!(view.value("s", "h", Some("g")), Some(Some(b"1".to_vec())));
        view.apply("s", "h", &Op::Delete);
        assert_eq!(
            view.get("s", "h", &Read::HGetAll),
            Some(&Found::Fields(Vec::new()))
        );
    }
}
