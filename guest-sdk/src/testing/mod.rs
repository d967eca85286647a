//! Running participants natively, in plain `cargo test`, without wasm or Redis.
//!
//! [`Store`] runs transactions of several steps, of one or more
//! participants, on one in-memory store of typed, binary values (strings,
//! hashes, sets, sorted sets, streams, lists), as the host runs them (see
//! [`Transaction`]): every `declare` first, then each `execute` on a
//! snapshot of exactly what it declared, as the store and the steps before
//! it left it, its writes checked against its declarations and applied in
//! order, bounded ones within their bounds, and all of it kept only if
//! every step succeeds. [`run`] does the same for one step on a store of
//! strings. Both call `declare` and `execute` twice each and require the
//! same answer, because the host may re-run a step after a conflict and
//! relies on participants being deterministic; a participant that answers
//! differently panics.
//!
//! Everything the host refuses comes back as the abort the host answers,
//! with its code, so a test can assert on it like on a participant's own
//! abort (`insufficient_stock`); [`TxnAbort::limit`] names a broken limit:
//!
//! | code | when |
//! | --- | --- |
//! | `limit_exceeded` | a limit of [`Limits`] is broken: `input`, `output`, `keys`, `key_bytes`, `writes`, `value_bytes`, `read_items`, `member_bytes`, `abort_code_bytes`, `abort_message_bytes` |
//! | `bad_key` | an empty key is declared |
//! | `bad_access` | a declaration the contract does not allow (a field of a set, a range in write mode, adjusting a set, reading a stream, ...), or one key with two kinds |
//! | `bad_abort_code` | an abort with one of the host's codes, or with characters other than ASCII letters, digits and `_-.:` |
//! | `bad_write` | a write Redis could not apply: a NaN score, an entry without fields, a push without values, a TTL of 0 ms or past `i64::MAX` |
//! | `undeclared_write` | a write no declaration covers |
//! | `wrong_type` | a declared key holds another type |
//! | `not_an_integer` | a bounded write to a value that is not an integer (`INCRBY`'s rule; for a score, an integer within 2^53 either side of 0) |
//! | `overflow` | a bounded write to a part no step of the transaction reads (escrow: Redis adds) taking it past 2^53 either side of 0, where Redis adds exactly; to a part some step reads (the host adds), the write's own abort past the 64-bit range |
//!
//! What the host does not check, and this module does not model: time
//! (TTLs are recorded, never counted down), memory and fuel, concurrency
//! (transactions here run one at a time, so escrow's bounds are checked
//! against the value the transaction sees), and `MAXLEN ~`'s slack (a
//! stream is trimmed to exactly `maxlen` entries, the fewest Redis may
//! keep).
//!
//! ```
//! # use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
//! # struct Echo;
//! # impl Participant for Echo {
//! #     type Input = String;
//! #     fn declare(key: &String) -> Result<Access, Abort> { Ok(Access::new().write(key.as_str())) }
//! #     fn execute(key: &String, snap: &Snapshot) -> Result<Outcome, Abort> {
//! #         let n = snap.get_i64(key)?;
//! #         Outcome::new().set_i64(key.as_str(), n + 1).output_json(&n)
//! #     }
//! # }
//! use redstage_guest::testing;
//!
//! let out = testing::run::<Echo>(r#""hits""#, &[("hits", "41")]).unwrap();
//! assert_eq!(out.writes["hits"].as_deref(), Some("42"));
//! assert_eq!(out.output, serde_json::json!(41));
//! ```

mod data;
mod rules;
mod store;
#[cfg(test)]
mod tests;
mod txn;

pub use data::StreamEntry;
pub use rules::Limits;
pub use store::Store;
pub use txn::{Transaction, TxnAbort};

use std::collections::BTreeMap;

use crate::{Abort, Access, Op, Participant, Write};

/// What a step did, in a form that is easy to assert on.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    /// What `declare` returned.
    pub access: Access,
    /// The strings written: `Some(value)` for a set, `None` for a delete;
    /// an adjusted string with the value it ends up with. Values that are
    /// not UTF-8 are converted lossily.
    pub writes: BTreeMap<String, Option<String>>,
    /// Adjusted strings with the sum of their deltas.
    pub adjustments: BTreeMap<String, i64>,
    /// The output as the client would see it: JSON parsed, other bytes as a
    /// string, no output as `null`.
    pub output: serde_json::Value,
    /// Every write `execute` returned, in order.
    pub ops: Vec<Write>,
    /// The store after the step: what its writes made of the given values.
    pub store: Store,
}

/// Calls `P::declare` on `input_json` and checks what it returns, as the
/// host would (with the host's default [`Limits`]).
pub fn declare<P: Participant>(input_json: &str) -> Result<Access, Abort> {
    let step = txn::Step::of::<P>("", input_json);
    txn::declare(&step, &Limits::default()).map_err(|fail| fail.abort)
}

/// Runs one step of `P` on `input_json` against a store holding `store`
/// (`(key, value)` pairs of strings; keys that are not listed do not
/// exist, and what is not declared is not shown to the participant), as
/// a transaction of one step: see [`Transaction`]. An abort is the
/// participant's, or one of the host's codes (see above).
///
/// # Panics
///
/// If the participant answers differently when called twice with the
/// same input and snapshot.
pub fn run<P: Participant>(input_json: &str, store: &[(&str, &str)]) -> Result<TestOutcome, Abort> {
    let mut before = Store::new();
    for (key, value) in store {
        before.set(*key, *value);
    }
    let steps = [txn::Step::of::<P>("", input_json)];
    let (keys, mut done) =
        txn::run_steps(&before.keys, &before.limits, &steps).map_err(|err| err.abort)?;
    let txn::Done { access, outcome } = done.remove(0);
    let after = Store {
        keys,
        limits: before.limits,
    };
    let mut writes = BTreeMap::new();
    let mut adjustments = BTreeMap::new();
    for w in outcome.ops() {
        match &w.op {
            Op::Set { .. } | Op::Delete => {}
            Op::Adjust(by) => *adjustments.entry(w.key.clone()).or_insert(0) += by.delta,
            _ => continue,
        }
        let value = match after.key_type(&w.key) {
            Some(crate::Kind::String) => after.get(&w.key),
            _ => None,
        };
        let value = value.map(|v| String::from_utf8_lossy(v).into_owned());
        writes.insert(w.key.clone(), value);
    }
    Ok(TestOutcome {
        access,
        writes,
        adjustments,
        output: output_json(outcome.output_bytes()),
        ops: outcome.ops().cloned().collect(),
        store: after,
    })
}

/// An output as the client sees it: JSON parsed, other bytes as a string,
/// no output as `null`.
fn output_json(bytes: &[u8]) -> serde_json::Value {
    match bytes {
        [] => serde_json::Value::Null,
        bytes => serde_json::from_slice(bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
        }),
    }
}
