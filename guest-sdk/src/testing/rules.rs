//! The host's checks of what a step declares and writes, answered with
//! the codes and limit names the host answers with (the table of codes is
//! in the `testing` module's documentation).
//!
//! Declarations allowed, by kind (`whole` is the key itself):
//!
//! | kind | read, write | adjust | append |
//! | --- | --- | --- | --- |
//! | string | whole | whole | - |
//! | hash | whole, field | field | - |
//! | set | whole, member | - | - |
//! | zset | whole, member; ranks, scores (read only) | member | - |
//! | stream, list | - | - | whole |
//!
//! What covers a write: `set`: the string in write mode; `delete`: the key
//! whole (a string, hash, set or sorted set) in write mode; `adjust`: the
//! string in adjust or write mode; `hset`/`hdel` of a field: the field or
//! the whole hash in write mode; `hincrby`: the field in adjust or write
//! mode, or the whole hash in write mode; `sadd`/`srem`, `zadd`/`zrem`: the
//! member or the whole set in write mode; `zincrby`: the member in adjust or
//! write mode, or the whole sorted set in write mode; `xadd`: the stream in
//! append mode; `rpush`/`lpush`: the list in append mode; `expire`: any
//! declaration of the key in write mode.

use std::collections::BTreeMap;

use crate::{Abort, Access, Bounded, Kind, Mode, Op, Outcome, Target};

/// The host's limits on one step, by the names of its `[limits]` config
/// (defaults as the host's). A broken limit fails the step with
/// `limit_exceeded` and the limit's name (`TxnAbort::limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a step's input (limit `input`).
    pub input_bytes_max: usize,
    /// Bytes of a step's output (limit `output`).
    pub output_bytes_max: usize,
    /// Declarations one step returns (limit `keys`).
    pub keys_max: usize,
    /// Bytes of one declared key, before the prefix (limit `key_bytes`).
    pub key_bytes_max: usize,
    /// Writes one step returns, a push counting one per value (limit
    /// `writes`).
    pub writes_max: usize,
    /// Bytes of one written value: a string's, a hash field's, a pushed
    /// value, a stream entry's fields and values together (limit
    /// `value_bytes`).
    pub value_bytes_max: usize,
    /// Items one whole-key or range read returns: fields, members (limit
    /// `read_items`).
    pub read_items_max: usize,
    /// Bytes of a hash field's or a (sorted) set member's name, declared or
    /// written (limit `member_bytes`).
    pub member_bytes_max: usize,
    /// Bytes of an abort's code (limit `abort_code_bytes`).
    pub abort_code_bytes_max: usize,
    /// Bytes of an abort's message (limit `abort_message_bytes`).
    pub abort_message_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            input_bytes_max: 64 << 10,
            output_bytes_max: 1 << 20,
            keys_max: 256,
            key_bytes_max: 512,
            writes_max: 256,
            value_bytes_max: 1 << 20,
            read_items_max: 1024,
            member_bytes_max: 512,
            abort_code_bytes_max: 64,
            abort_message_bytes_max: 4096,
        }
    }
}

/// The codes only the host answers with; a participant's abort with one
/// of them is `bad_abort_code`.
const RESERVED_ABORT_CODES: &[&str] = &[
    "conflict",
    "superseded",
    "trap",
    "limit_exceeded",
    "undeclared_write",
    "bad_key",
    "bad_access",
    "bad_abort_code",
    "bad_write",
    "wrong_type",
    "recovered",
];

/// Why the host fails a step: the abort the client sees and, for a broken
/// limit, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fail {
    pub(super) abort: Abort,
    pub(super) limit: Option<&'static str>,
}

impl Fail {
    pub(super) fn new(code: &str, message: String) -> Fail {
        Fail {
            abort: Abort::new(code, message),
            limit: None,
        }
    }
}

impl From<Abort> for Fail {
    fn from(abort: Abort) -> Fail {
        Fail { abort, limit: None }
    }
}

/// Checks limit `name` (its bound described by `bound`) of participant
/// `who`.
pub(super) fn limit(
    who: &str,
    name: &'static str,
    broken: bool,
    bound: String,
) -> Result<(), Fail> {
    if !broken {
        return Ok(());
    }
    Err(Fail {
        abort: Abort::new(
            "limit_exceeded",
            format!("participant `{who}` exceeded its {name} limit ({bound})"),
        ),
        limit: Some(name),
    })
}

/// The checks of what `declare` returned, in the host's order: limits, an
/// empty key, the contract's rules.
pub(super) fn check_access(who: &str, access: &Access, limits: &Limits) -> Result<(), Fail> {
    let declared: Vec<_> = access.accesses().collect();
    limit(
        who,
        "keys",
        declared.len() > limits.keys_max,
        format!("{} declared keys", limits.keys_max),
    )?;
    let long_key = declared.iter().any(|d| d.key.len() > limits.key_bytes_max);
    let bound = format!("{} bytes per key", limits.key_bytes_max);
    limit(who, "key_bytes", long_key, bound)?;
    let long_member = declared.iter().any(|d| match &d.target {
        Target::Field(name) | Target::Member(name) => name.len() > limits.member_bytes_max,
        _ => false,
    });
    let bound = format!("{} bytes per field or member", limits.member_bytes_max);
    limit(who, "member_bytes", long_member, bound)?;
    if declared.iter().any(|d| d.key.is_empty()) {
        let message = "declared an invalid key \"\": keys must not be empty";
        return Err(Fail::new("bad_key", message.to_owned()));
    }
    let mut kinds: BTreeMap<&str, Kind> = BTreeMap::new();
    for d in &declared {
        let kind = *kinds.entry(&d.key).or_insert(d.kind);
        if kind != d.kind {
            return Err(bad_access(format!(
                "`{}` is declared both as a {} and as a {}: a key has one kind",
                d.key,
                kind.name(),
                d.kind.name()
            )));
        }
        if let Some(rule) = broken_rule(d.kind, &d.target, d.mode) {
            return Err(bad_access(format!(
                "{} of the {} `{}` in {} mode: {rule}",
                describe(&d.target),
                d.kind.name(),
                d.key,
                mode_name(d.mode),
            )));
        }
    }
    Ok(())
}

/// Which rule of the contract a declaration breaks, if any.
fn broken_rule(kind: Kind, target: &Target, mode: Mode) -> Option<&'static str> {
    let appendable = matches!(kind, Kind::Stream | Kind::List);
    match (kind, target, mode) {
        (_, Target::Field(_), _) if kind != Kind::Hash => Some("only a hash has fields"),
        (_, Target::Member(_), _) if !matches!(kind, Kind::Set | Kind::Zset) => {
            Some("only a set or a sorted set has members")
        }
        (_, Target::Ranks(..) | Target::Scores(..), _) if kind != Kind::Zset => {
            Some("only a sorted set has ranks and scores")
        }
        (_, Target::Ranks(..) | Target::Scores(..), m) if m != Mode::Read => {
            Some("a range is only read")
        }
        (_, Target::Scores(min, max), _) if min.is_nan() || max.is_nan() => {
            Some("a score range has no NaN bound")
        }
        (_, _, Mode::Append) if !appendable => Some("only a stream or a list is appended to"),
        (_, _, Mode::Read | Mode::Write | Mode::Adjust) if appendable => {
            Some("a stream or a list is only appended to")
        }
        (Kind::String, Target::Whole, Mode::Adjust)
        | (Kind::Hash, Target::Field(_), Mode::Adjust)
        | (Kind::Zset, Target::Member(_), Mode::Adjust) => None,
        (_, _, Mode::Adjust) => {
            Some("only a string, a hash field or a sorted set member is adjusted")
        }
        _ => None,
    }
}

fn bad_access(message: String) -> Fail {
    Fail::new("bad_access", message)
}

fn describe(target: &Target) -> String {
    match target {
        Target::Whole => "the whole".to_owned(),
        Target::Field(f) => format!("field `{f}`"),
        Target::Member(m) => format!("member `{m}`"),
        Target::Ranks(start, stop) => format!("ranks {start} to {stop}"),
        Target::Scores(min, max) => format!("scores {min} to {max}"),
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Read => "read",
        Mode::Write => "write",
        Mode::Adjust => "adjust",
        Mode::Append => "append",
    }
}

/// A participant's own abort, as the host checks it: within its bounds,
/// not one of the host's codes, of the allowed characters.
pub(super) fn check_abort(who: &str, abort: &Abort, limits: &Limits) -> Result<(), Fail> {
    let bound = format!("{} bytes of abort code", limits.abort_code_bytes_max);
    let long = abort.code.len() > limits.abort_code_bytes_max;
    limit(who, "abort_code_bytes", long, bound)?;
    let bound = format!("{} bytes of abort message", limits.abort_message_bytes_max);
    let long = abort.message.len() > limits.abort_message_bytes_max;
    limit(who, "abort_message_bytes", long, bound)?;
    let why = if RESERVED_ABORT_CODES.contains(&abort.code.as_str()) {
        format!("`{}` is one of the host's own codes", abort.code)
    } else if abort.code.is_empty()
        || !abort
            .code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
    {
        format!(
            "{:?} is not a non-empty run of ASCII letters, digits and `_-.:`",
            abort.code
        )
    } else {
        return Ok(());
    };
    Err(Fail::new(
        "bad_abort_code",
        format!("participant `{who}` aborted with a code it may not use: {why}"),
    ))
}

/// The checks of what `execute` returned as a whole, in the host's order:
/// output, count of writes, sizes, the bounded writes' aborts.
pub(super) fn check_outcome(who: &str, outcome: &Outcome, limits: &Limits) -> Result<(), Fail> {
    let output = outcome.output_bytes().len();
    let bound = format!("{} bytes of output", limits.output_bytes_max);
    limit(who, "output", output > limits.output_bytes_max, bound)?;
    // A push counts a write per value, so that one op cannot carry what
    // `writes_max` keeps from many.
    let writes: usize = outcome.ops().map(|w| pushed(&w.op)).sum();
    let bound = format!("{} writes", limits.writes_max);
    limit(who, "writes", writes > limits.writes_max, bound)?;
    let too_big = outcome
        .ops()
        .any(|w| value_sizes(&w.op).any(|len| len > limits.value_bytes_max));
    let bound = format!("{} bytes per value", limits.value_bytes_max);
    limit(who, "value_bytes", too_big, bound)?;
    let too_long = outcome
        .ops()
        .any(|w| member(&w.op).is_some_and(|n| n.len() > limits.member_bytes_max));
    let bound = format!("{} bytes per field or member", limits.member_bytes_max);
    limit(who, "member_bytes", too_long, bound)?;
    for w in outcome.ops() {
        if let Some(by) = bounded(&w.op) {
            check_abort(who, &by.abort, limits)?;
        }
    }
    Ok(())
}

/// The writes an op counts for: one, or one per value pushed.
fn pushed(op: &Op) -> usize {
    match op {
        Op::Rpush { values } | Op::Lpush { values } => values.len().max(1),
        _ => 1,
    }
}

/// The sizes of the values an op writes, each bounded by `value_bytes_max`:
/// a string's or a field's value, each value pushed, a stream entry whole
/// (its field names and values together).
fn value_sizes(op: &Op) -> Box<dyn Iterator<Item = usize> + '_> {
    match op {
        Op::Set { value, .. } | Op::Hset { value, .. } => Box::new(std::iter::once(value.len())),
        Op::Xadd { fields, .. } => {
            let entry = fields.iter().map(|(f, v)| f.len() + v.len()).sum();
            Box::new(std::iter::once(entry))
        }
        Op::Rpush { values } | Op::Lpush { values } => Box::new(values.iter().map(Vec::len)),
        _ => Box::new(std::iter::empty()),
    }
}

/// The field or member an op names, bounded by `member_bytes_max`.
fn member(op: &Op) -> Option<&String> {
    match op {
        Op::Hset { field, .. } | Op::Hdel { field } | Op::Hincrby { field, .. } => Some(field),
        Op::Sadd { member }
        | Op::Srem { member }
        | Op::Zadd { member, .. }
        | Op::Zrem { member }
        | Op::Zincrby { member, .. } => Some(member),
        _ => None,
    }
}

pub(super) fn bounded(op: &Op) -> Option<&Bounded> {
    match op {
        Op::Adjust(by) | Op::Hincrby { by, .. } | Op::Zincrby { by, .. } => Some(by),
        _ => None,
    }
}

/// Why Redis could not apply `op` whatever the data, if it could not.
pub(super) fn bad_write(key: &str, op: &Op) -> Result<(), Fail> {
    let ttl = |ttl_ms: u64| (ttl_ms == 0 || ttl_ms > i64::MAX as u64).then_some(ttl_ms);
    let why = match op {
        Op::Zadd { score, member } if score.is_nan() => {
            format!("`zadd` of `{member}` with a NaN score")
        }
        Op::Xadd { fields, .. } if fields.is_empty() => {
            "`xadd` of an entry without fields".to_owned()
        }
        Op::Rpush { values } | Op::Lpush { values } if values.is_empty() => {
            "a push of no values".to_owned()
        }
        Op::Set {
            ttl_ms: Some(ttl_ms),
            ..
        }
        | Op::Expire { ttl_ms }
            if ttl(*ttl_ms).is_some() =>
        {
            format!("a TTL of {ttl_ms} ms: a TTL is 1 to {} ms", i64::MAX)
        }
        _ => return Ok(()),
    };
    Err(Fail::new("bad_write", format!("{why}, to `{key}`")))
}

/// Whether `access` covers `op` on `key`.
pub(super) fn covers(access: &Access, key: &str, op: &Op) -> bool {
    use Mode::{Adjust, Append, Write};
    let whole = |kind: Kind, modes: &[Mode]| access.has(key, kind, &Target::Whole, modes);
    let field = |f: &str, modes: &[Mode]| {
        access.has(key, Kind::Hash, &Target::Field(f.to_owned()), modes)
            || whole(Kind::Hash, &[Write])
    };
    let member = |kind: Kind, m: &str, modes: &[Mode]| {
        access.has(key, kind, &Target::Member(m.to_owned()), modes) || whole(kind, &[Write])
    };
    match op {
        Op::Set { .. } => whole(Kind::String, &[Write]),
        Op::Delete => access.accesses().any(|d| {
            d.key == key
                && d.target == Target::Whole
                && d.mode == Write
                && !matches!(d.kind, Kind::Stream | Kind::List)
        }),
        Op::Adjust(_) => whole(Kind::String, &[Adjust, Write]),
        Op::Hset { field: f, .. } | Op::Hdel { field: f } => field(f, &[Write]),
        Op::Hincrby { field: f, .. } => field(f, &[Adjust, Write]),
        Op::Sadd { member: m } | Op::Srem { member: m } => member(Kind::Set, m, &[Write]),
        Op::Zadd { member: m, .. } | Op::Zrem { member: m } => member(Kind::Zset, m, &[Write]),
        Op::Zincrby { member: m, .. } => member(Kind::Zset, m, &[Adjust, Write]),
        Op::Xadd { .. } => whole(Kind::Stream, &[Append]),
        Op::Rpush { .. } | Op::Lpush { .. } => whole(Kind::List, &[Append]),
        Op::Expire { .. } => access.accesses().any(|d| d.key == key && d.mode == Write),
    }
}

/// The op's name and what it needs declared, for `undeclared_write`.
pub(super) fn needs(op: &Op) -> String {
    match op {
        Op::Set { .. } => "`set` needs the string in write mode".to_owned(),
        Op::Delete => {
            "`delete` needs the key whole in write mode (a string, hash, set or sorted set)"
                .to_owned()
        }
        Op::Adjust(_) => "`adjust` needs the string in adjust or write mode".to_owned(),
        Op::Hset { field, .. } | Op::Hdel { field } => {
            format!("`hset`/`hdel` of `{field}` need the field, or the whole hash, in write mode")
        }
        Op::Hincrby { field, .. } => format!(
            "`hincrby` of `{field}` needs the field in adjust or write mode, or the whole hash in write mode"
        ),
        Op::Sadd { member } | Op::Srem { member } => {
            format!("`sadd`/`srem` of `{member}` need the member, or the whole set, in write mode")
        }
        Op::Zadd { member, .. } | Op::Zrem { member } => format!(
            "`zadd`/`zrem` of `{member}` need the member, or the whole sorted set, in write mode"
        ),
        Op::Zincrby { member, .. } => format!(
            "`zincrby` of `{member}` needs the member in adjust or write mode, or the whole sorted set in write mode"
        ),
        Op::Xadd { .. } => "`xadd` needs the stream in append mode".to_owned(),
        Op::Rpush { .. } | Op::Lpush { .. } => "a push needs the list in append mode".to_owned(),
        Op::Expire { .. } => "`expire` needs some access of the key in write mode".to_owned(),
    }
}
