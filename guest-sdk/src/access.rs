//! The access set: what one input touches, at which granularity, and how.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// The Redis type a key holds. A step declares each key with one kind; an
/// access to a key that holds another type aborts the transaction with
/// `wrong_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    String,
    Hash,
    Set,
    Zset,
    Stream,
    List,
}

impl Kind {
    /// The name Redis's `TYPE` answers for it.
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

/// Which part of a key an access is about.
///
/// Ordered (and compared) with scores by [`f64::total_cmp`], so that an
/// access set has one order whatever the order of declaration.
#[derive(Debug, Clone)]
pub enum Target {
    /// The key as a whole: a string's value; read, every field of a hash
    /// or member of a set or sorted set (at most `limits.read_items_max`);
    /// written, the key itself and every part of it.
    Whole,
    /// One field of a hash.
    Field(String),
    /// One member of a set or a sorted set.
    Member(String),
    /// The members of a sorted set from rank `start` to rank `stop`, both
    /// included, as `ZRANGE` counts them (0 the lowest score, -1 the
    /// highest). Read only.
    Ranks(i64, i64),
    /// The members of a sorted set whose score is within `min` and `max`,
    /// both included, as `ZRANGEBYSCORE` finds them. Read only.
    Scores(f64, f64),
}

impl Target {
    fn rank(&self) -> u8 {
        match self {
            Target::Whole => 0,
            Target::Field(_) => 1,
            Target::Member(_) => 2,
            Target::Ranks(..) => 3,
            Target::Scores(..) => 4,
        }
    }
}

impl Ord for Target {
    fn cmp(&self, other: &Target) -> Ordering {
        match (self, other) {
            (Target::Field(a), Target::Field(b)) | (Target::Member(a), Target::Member(b)) => {
                a.cmp(b)
            }
            (Target::Ranks(a, b), Target::Ranks(c, d)) => (a, b).cmp(&(c, d)),
            (Target::Scores(a, b), Target::Scores(c, d)) => {
                a.total_cmp(c).then_with(|| b.total_cmp(d))
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Target {
    fn partial_cmp(&self, other: &Target) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Target {}

/// What a step does with what it declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Reads it: in the snapshot, locked against writers (shared).
    Read,
    /// Reads it and may write it: in the snapshot, locked exclusively.
    Write,
    /// Only adds bounded deltas to it (a string, a hash field, a sorted set
    /// member's score), without reading it: not in the snapshot; shares its
    /// lock with other adjusters (escrow).
    Adjust,
    /// Only appends to it (a stream or a list), without reading it: not in
    /// the snapshot, and no lock at all.
    Append,
}

/// One thing a step touches: a part of a key, its kind, and the mode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Declaration {
    pub key: String,
    pub kind: Kind,
    pub target: Target,
    pub mode: Mode,
}

/// The modes declared for one part of a key, merged: reading and writing
/// (or reading and adjusting) is writing, adjusting and writing is writing.
/// Appending merges with nothing: declared beside another mode, both reach
/// the host, which refuses the pair (`bad_access`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Modes {
    /// Read, write or adjust, merged.
    access: Option<Mode>,
    append: bool,
}

impl Modes {
    fn with(mut self, mode: Mode) -> Modes {
        self.access = match (self.access, mode) {
            (access, Mode::Append) => {
                self.append = true;
                access
            }
            (None, mode) => Some(mode),
            (Some(old), mode) if old == mode => Some(mode),
            (Some(_), _) => Some(Mode::Write),
        };
        self
    }

    fn iter(self) -> impl Iterator<Item = Mode> {
        self.access
            .into_iter()
            .chain(self.append.then_some(Mode::Append))
    }
}

/// What one input will touch, returned by [`Participant::declare`].
///
/// The host locks each declared part of a key at the granularity declared
/// (a string, one field of a hash, one member of a set, a whole hash or
/// set, a range of a sorted set), reads what is declared in read or write
/// mode into the [`Snapshot`], and refuses any write a declaration does not
/// cover (`undeclared_write`). Declaring the same part twice merges the
/// modes: read and write is a write, read and adjust is a write; so a key
/// declared for writing and reading is kept once, as a write.
///
/// The methods are named after what they declare. Strings, the key whole:
/// [`read`](Access::read), [`write`](Access::write),
/// [`adjust`](Access::adjust); hashes: [`read_hash`](Access::read_hash),
/// [`write_hash`](Access::write_hash),
/// [`read_hash_field`](Access::read_hash_field),
/// [`write_hash_field`](Access::write_hash_field),
/// [`adjust_hash_field`](Access::adjust_hash_field); sets and sorted sets
/// likewise (`read_set_member`, `adjust_zset_member`, ...), sorted-set
/// ranges ([`read_zset_ranks`](Access::read_zset_ranks),
/// [`read_zset_scores`](Access::read_zset_scores)), appends
/// ([`append_stream`](Access::append_stream),
/// [`append_list`](Access::append_list)); any combination with
/// [`declare`](Access::declare). What the host refuses (a kind and a target
/// or mode that do not go together, one key with two kinds) is the host's
/// `bad_access`, and [`testing`](crate::testing) checks it the same way.
///
/// ```
/// use redstage_guest::Access;
///
/// let access = Access::new().read("rate").write("balance:alice").read("balance:alice");
/// assert_eq!(access.reads().collect::<Vec<_>>(), ["rate"]);
/// assert_eq!(access.writes().collect::<Vec<_>>(), ["balance:alice"]);
///
/// // alice follows bob: one member of each set, one field of each counter hash.
/// let follow = Access::new()
///     .write_set_member("following:{alice}", "bob")
///     .write_set_member("followers:{bob}", "alice")
///     .adjust_hash_field("user:{alice}", "following")
///     .adjust_hash_field("user:{bob}", "followers");
/// assert_eq!(follow.accesses().count(), 4);
/// ```
///
/// [`Participant::declare`]: crate::Participant::declare
/// [`Snapshot`]: crate::Snapshot
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    // Sorted, so that what reaches the host does not depend on the order
    // the participant happened to declare in.
    parts: BTreeMap<(String, Kind, Target), Modes>,
}

impl Access {
    /// An empty access set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `target` of `key`, a `kind`, in `mode`: the one method the
    /// others are shorthands for.
    pub fn declare(
        mut self,
        key: impl Into<String>,
        kind: Kind,
        target: Target,
        mode: Mode,
    ) -> Self {
        let modes = self.parts.entry((key.into(), kind, target)).or_default();
        *modes = modes.with(mode);
        self
    }

    /// Declares the string `key` as read (a no-op if it is already
    /// declared for writing; a write if it is declared as adjusted).
    pub fn read(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::String, Target::Whole, Mode::Read)
    }

    /// Declares every string in `keys` as read.
    pub fn read_all<K: Into<String>>(self, keys: impl IntoIterator<Item = K>) -> Self {
        keys.into_iter().fold(self, Self::read)
    }

    /// Declares the string `key` as possibly written, `set` or `delete`
    /// (and therefore read).
    pub fn write(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::String, Target::Whole, Mode::Write)
    }

    /// Declares every string in `keys` as possibly written.
    pub fn write_all<K: Into<String>>(self, keys: impl IntoIterator<Item = K>) -> Self {
        keys.into_iter().fold(self, Self::write)
    }

    /// Declares the string `key` as possibly adjusted, and not read: see
    /// [`Outcome::adjust`](crate::Outcome::adjust). (A no-op if it is
    /// already declared for writing; a write if it is declared as read.)
    pub fn adjust(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::String, Target::Whole, Mode::Adjust)
    }

    /// Declares the whole hash `key` as read: every field is in the
    /// snapshot ([`Snapshot::hgetall`](crate::Snapshot::hgetall)), and no
    /// field of it can be written by another transaction meanwhile.
    pub fn read_hash(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Hash, Target::Whole, Mode::Read)
    }

    /// Declares the whole hash `key` as read and possibly written: any
    /// field, or `delete`.
    pub fn write_hash(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Hash, Target::Whole, Mode::Write)
    }

    /// Declares `field` of the hash `key` as read
    /// ([`Snapshot::hget`](crate::Snapshot::hget)).
    pub fn read_hash_field(self, key: impl Into<String>, field: impl Into<String>) -> Self {
        self.declare(key, Kind::Hash, Target::Field(field.into()), Mode::Read)
    }

    /// Declares `field` of the hash `key` as read and possibly written
    /// (`hset`, `hdel`, `hincrby`).
    pub fn write_hash_field(self, key: impl Into<String>, field: impl Into<String>) -> Self {
        self.declare(key, Kind::Hash, Target::Field(field.into()), Mode::Write)
    }

    /// Declares `field` of the hash `key` as possibly adjusted
    /// ([`Outcome::hincrby`](crate::Outcome::hincrby)), and not read.
    pub fn adjust_hash_field(self, key: impl Into<String>, field: impl Into<String>) -> Self {
        self.declare(key, Kind::Hash, Target::Field(field.into()), Mode::Adjust)
    }

    /// Declares the whole set `key` as read
    /// ([`Snapshot::smembers`](crate::Snapshot::smembers)).
    pub fn read_set(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Set, Target::Whole, Mode::Read)
    }

    /// Declares the whole set `key` as read and possibly written: any
    /// member, or `delete`.
    pub fn write_set(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Set, Target::Whole, Mode::Write)
    }

    /// Declares whether `member` is in the set `key` as read
    /// ([`Snapshot::sismember`](crate::Snapshot::sismember)).
    pub fn read_set_member(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        self.declare(key, Kind::Set, Target::Member(member.into()), Mode::Read)
    }

    /// Declares `member` of the set `key` as read and possibly added or
    /// removed (`sadd`, `srem`).
    pub fn write_set_member(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        self.declare(key, Kind::Set, Target::Member(member.into()), Mode::Write)
    }

    /// Declares the whole sorted set `key` as read
    /// ([`Snapshot::zrange`](crate::Snapshot::zrange) `0, -1`).
    pub fn read_zset(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Zset, Target::Whole, Mode::Read)
    }

    /// Declares the whole sorted set `key` as read and possibly written:
    /// any member, or `delete`.
    pub fn write_zset(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Zset, Target::Whole, Mode::Write)
    }

    /// Declares the score of `member` in the sorted set `key` as read
    /// ([`Snapshot::zscore`](crate::Snapshot::zscore)).
    pub fn read_zset_member(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        self.declare(key, Kind::Zset, Target::Member(member.into()), Mode::Read)
    }

    /// Declares `member` of the sorted set `key` as read and possibly
    /// written (`zadd`, `zrem`, `zincrby`).
    pub fn write_zset_member(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        self.declare(key, Kind::Zset, Target::Member(member.into()), Mode::Write)
    }

    /// Declares the score of `member` in the sorted set `key` as possibly
    /// adjusted ([`Outcome::zincrby`](crate::Outcome::zincrby)), and not
    /// read.
    pub fn adjust_zset_member(self, key: impl Into<String>, member: impl Into<String>) -> Self {
        self.declare(key, Kind::Zset, Target::Member(member.into()), Mode::Adjust)
    }

    /// Declares the members of the sorted set `key` from rank `start` to
    /// rank `stop` as read, both included, counted as `ZRANGE` counts them
    /// (negative from the highest score: `0, -1` is all of it). See
    /// [`Snapshot::zrange`](crate::Snapshot::zrange).
    pub fn read_zset_ranks(self, key: impl Into<String>, start: i64, stop: i64) -> Self {
        self.declare(key, Kind::Zset, Target::Ranks(start, stop), Mode::Read)
    }

    /// Declares the members of the sorted set `key` with a score from `min`
    /// to `max` as read, both included (`f64::NEG_INFINITY` and
    /// `f64::INFINITY` for no bound). See
    /// [`Snapshot::zrangebyscore`](crate::Snapshot::zrangebyscore).
    pub fn read_zset_scores(self, key: impl Into<String>, min: f64, max: f64) -> Self {
        self.declare(key, Kind::Zset, Target::Scores(min, max), Mode::Read)
    }

    /// Declares the stream `key` as appended to
    /// ([`Outcome::xadd`](crate::Outcome::xadd)): not read, not locked.
    pub fn append_stream(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::Stream, Target::Whole, Mode::Append)
    }

    /// Declares the list `key` as pushed to
    /// ([`Outcome::rpush`](crate::Outcome::rpush),
    /// [`Outcome::lpush`](crate::Outcome::lpush)): not read, not locked.
    pub fn append_list(self, key: impl Into<String>) -> Self {
        self.declare(key, Kind::List, Target::Whole, Mode::Append)
    }

    /// Every declaration, in order of key, kind and target: what reaches
    /// the host.
    pub fn accesses(&self) -> impl Iterator<Item = Declaration> + '_ {
        self.parts.iter().flat_map(|((key, kind, target), modes)| {
            modes.iter().map(|mode| Declaration {
                key: key.clone(),
                kind: *kind,
                target: target.clone(),
                mode,
            })
        })
    }

    /// Whether `target` of `key`, a `kind`, is declared in one of `modes`.
    pub(crate) fn has(&self, key: &str, kind: Kind, target: &Target, modes: &[Mode]) -> bool {
        self.parts
            .get(&(key.to_owned(), kind, target.clone()))
            .is_some_and(|declared| declared.iter().any(|m| modes.contains(&m)))
    }

    /// The strings declared in `mode` (merged), in sorted order.
    fn strings(&self, mode: Mode) -> impl Iterator<Item = &str> {
        self.parts
            .iter()
            .filter(move |((_, kind, target), modes)| {
                *kind == Kind::String && *target == Target::Whole && modes.access == Some(mode)
            })
            .map(|((key, ..), _)| key.as_str())
    }

    /// The strings that are only read, in sorted order.
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        self.strings(Mode::Read)
    }

    /// The strings that may be written, in sorted order.
    pub fn writes(&self) -> impl Iterator<Item = &str> {
        self.strings(Mode::Write)
    }

    /// The strings that are only adjusted, in sorted order.
    pub fn adjusts(&self) -> impl Iterator<Item = &str> {
        self.strings(Mode::Adjust)
    }

    /// Whether any part of `key` is declared, in any mode.
    pub fn contains(&self, key: &str) -> bool {
        self.parts.keys().any(|(k, ..)| k == key)
    }

    /// Whether the string `key` is declared for writing.
    pub fn is_writable(&self, key: &str) -> bool {
        self.writes().any(|k| k == key)
    }

    /// Whether the string `key` may be adjusted: declared as adjusted, or
    /// written.
    pub fn is_adjustable(&self, key: &str) -> bool {
        self.writes().chain(self.adjusts()).any(|k| k == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(access: &Access) -> Vec<(String, Kind, Target, Mode)> {
        access
            .accesses()
            .map(|d| (d.key, d.kind, d.target, d.mode))
            .collect()
    }

    #[test]
    fn write_wins_over_read_whatever_the_order() {
        let a = Access::new().read("k").write("k");
        let b = Access::new().write("k").read("k");
        assert_eq!(a, b);
        assert_eq!(a.reads().count(), 0);
        assert!(a.is_writable("k"));
        assert!(a.contains("k"));
    }

    #[test]
    fn keys_are_deduplicated_and_sorted() {
        let access = Access::new()
            .read_all(["b", "a", "b"])
            .write_all(vec!["z".to_string(), "y".to_string()]);
        assert_eq!(access.reads().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(access.writes().collect::<Vec<_>>(), ["y", "z"]);
        assert_eq!(access.adjusts().count(), 0);
        assert_eq!(
            declared(&access),
            [
                ("a".into(), Kind::String, Target::Whole, Mode::Read),
                ("b".into(), Kind::String, Target::Whole, Mode::Read),
                ("y".into(), Kind::String, Target::Whole, Mode::Write),
                ("z".into(), Kind::String, Target::Whole, Mode::Write),
            ]
        );
    }

    #[test]
    fn reading_an_adjusted_key_makes_it_a_write() {
        let a = Access::new().adjust("k").read("k");
        let b = Access::new().read("k").adjust("k");
        assert_eq!(a, Access::new().write("k"));
        assert_eq!(b, Access::new().write("k"));
        let c = Access::new().write("k").adjust("k");
        assert_eq!(c, Access::new().write("k"));
        let d = Access::new().adjust("k");
        assert_eq!(d.adjusts().collect::<Vec<_>>(), ["k"]);
        assert!(d.is_adjustable("k") && !d.is_writable("k") && d.contains("k"));
    }

    #[test]
    fn undeclared_keys_are_not_contained() {
        let access = Access::new().read("a");
        assert!(!access.contains("b"));
        assert!(!access.is_writable("a"));
    }

    #[test]
    fn parts_of_a_key_merge_modes_each_on_their_own() {
        let access = Access::new()
            .read_hash_field("h", "a")
            .adjust_hash_field("h", "a")
            .adjust_hash_field("h", "b")
            .read_hash("h");
        assert_eq!(
            declared(&access),
            [
                ("h".into(), Kind::Hash, Target::Whole, Mode::Read),
                (
                    "h".into(),
                    Kind::Hash,
                    Target::Field("a".into()),
                    Mode::Write
                ),
                (
                    "h".into(),
                    Kind::Hash,
                    Target::Field("b".into()),
                    Mode::Adjust
                ),
            ]
        );
        // Strings only: a hash is not among the string keys.
        assert_eq!(access.reads().count() + access.writes().count(), 0);
        assert!(access.contains("h"));
    }

    #[test]
    fn an_append_beside_another_mode_reaches_the_host_as_declared() {
        let access = Access::new()
            .append_stream("s")
            .declare("s", Kind::Stream, Target::Whole, Mode::Read)
            .append_stream("s");
        assert_eq!(
            declared(&access),
            [
                ("s".into(), Kind::Stream, Target::Whole, Mode::Read),
                ("s".into(), Kind::Stream, Target::Whole, Mode::Append),
            ]
        );
    }

    #[test]
    fn a_key_with_two_kinds_stays_two_declarations() {
        let access = Access::new().read("k").read_set("k");
        assert_eq!(access.accesses().count(), 2);
    }

    #[test]
    fn ranges_are_ordered_and_compared_exactly() {
        let access = Access::new()
            .read_zset_scores("z", 1.0, f64::INFINITY)
            .read_zset_ranks("z", 0, -1)
            .read_zset_scores("z", 1.0, f64::INFINITY)
            .read_zset_scores("z", -0.0, 0.0);
        let targets: Vec<Target> = access.accesses().map(|d| d.target).collect();
        assert_eq!(
            targets,
            [
                Target::Ranks(0, -1),
                Target::Scores(-0.0, 0.0),
                Target::Scores(1.0, f64::INFINITY),
            ]
        );
        assert_ne!(Target::Scores(0.0, 1.0), Target::Scores(-0.0, 1.0));
    }
}
