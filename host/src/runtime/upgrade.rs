//! The answers of components of earlier contracts, in 0.3.0's terms: a
//! component of 0.2.x or 0.1.0 names string keys only, read, written or
//! adjusted as whole keys, and gets their values as bytes.

use super::guest::{self, Access, Kind, Mode, Op, Target, Value, Write};
use super::{AccessSet, Entry, GuestAbort, Outcome, legacy, v2};

/// A string key accessed whole, in `mode`.
fn whole(key: String, mode: Mode) -> Access {
    Access {
        key,
        kind: Kind::String,
        target: Target::Whole,
        mode,
    }
}

/// The value of a string entry (every entry of a transaction whose steps
/// are all of earlier contracts is one).
fn bytes(entry: &Entry) -> Option<Vec<u8>> {
    match &entry.value {
        Value::Bytes(v) => v.clone(),
        _ => None,
    }
}

/// The entries an earlier contract can name: string keys, whole.
fn strings(snapshot: &[Entry]) -> impl Iterator<Item = &Entry> {
    snapshot
        .iter()
        .filter(|e| e.kind == Kind::String && e.target == Target::Whole)
}

pub(super) fn v2_access(a: v2::redstage::participant::types::AccessSet) -> AccessSet {
    let reads = a.reads.into_iter().map(|k| whole(k, Mode::Read));
    let writes = a.writes.into_iter().map(|k| whole(k, Mode::Write));
    let adjusts = a.adjusts.into_iter().map(|k| whole(k, Mode::Adjust));
    AccessSet {
        accesses: reads.chain(writes).chain(adjusts).collect(),
    }
}

pub(super) fn v2_abort(a: v2::redstage::participant::types::Abort) -> GuestAbort {
    GuestAbort {
        code: a.code,
        message: a.message,
    }
}

pub(super) fn v2_snapshot(snapshot: &[Entry]) -> Vec<v2::redstage::participant::types::Entry> {
    strings(snapshot)
        .map(|e| v2::redstage::participant::types::Entry {
            key: e.key.clone(),
            value: bytes(e),
        })
        .collect()
}

pub(super) fn v2_outcome(o: v2::redstage::participant::types::Outcome) -> Outcome {
    use v2::redstage::participant::types::Write as Old;
    let writes = o
        .writes
        .into_iter()
        .map(|w| match w {
            Old::Set((key, value)) => Write {
                key,
                op: Op::Set((value, None)),
            },
            Old::Delete(key) => Write {
                key,
                op: Op::Delete,
            },
            Old::Adjust(a) => Write {
                key: a.key,
                op: Op::Adjust(guest::Bounded {
                    delta: a.delta,
                    lower: a.lower,
                    upper: a.upper,
                    abort: v2_abort(a.abort),
                }),
            },
        })
        .collect();
    Outcome {
        writes,
        output: o.output,
    }
}

pub(super) fn v1_access(a: legacy::redstage::participant::types::AccessSet) -> AccessSet {
    let reads = a.reads.into_iter().map(|k| whole(k, Mode::Read));
    let writes = a.writes.into_iter().map(|k| whole(k, Mode::Write));
    AccessSet {
        accesses: reads.chain(writes).collect(),
    }
}

pub(super) fn v1_abort(a: legacy::redstage::participant::types::Abort) -> GuestAbort {
    GuestAbort {
        code: a.code,
        message: a.message,
    }
}

pub(super) fn v1_snapshot(snapshot: &[Entry]) -> Vec<legacy::redstage::participant::types::Entry> {
    strings(snapshot)
        .map(|e| legacy::redstage::participant::types::Entry {
            key: e.key.clone(),
            value: bytes(e),
        })
        .collect()
}

pub(super) fn v1_outcome(o: legacy::redstage::participant::types::Outcome) -> Outcome {
    use legacy::redstage::participant::types::Write as Old;
    let writes = o
        .writes
        .into_iter()
        .map(|w| match w {
            Old::Set((key, value)) => Write {
                key,
                op: Op::Set((value, None)),
            },
            Old::Delete(key) => Write {
                key,
                op: Op::Delete,
            },
        })
        .collect();
    Outcome {
        writes,
        output: o.output,
    }
}
