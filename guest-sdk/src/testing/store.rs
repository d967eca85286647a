//! Transactions of several steps on an in-memory store: see [`Store`].

use std::collections::BTreeMap;

use crate::{Abort, Access, Outcome, Participant, Snapshot, component};

/// An in-memory store of binary values, on which [`Transaction`]s run as
/// the host runs them.
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
/// store.set("n", "40");
/// let outputs = store.transaction().step::<Add>("1").step::<Add>("1").run().unwrap();
/// assert_eq!(outputs, [serde_json::json!(41), serde_json::json!(42)]);
/// assert_eq!(store.get("n"), Some(&b"42"[..]));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    values: BTreeMap<String, Vec<u8>>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Sets `key` (a full key: a participant's prefix included).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> &mut Store {
        self.values.insert(key.into(), value.into());
        self
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    /// Every key and value.
    pub fn values(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.values
    }

    /// A transaction on this store, to add steps to and run.
    pub fn transaction(&mut self) -> Transaction<'_> {
        Transaction {
            store: self,
            steps: Vec::new(),
        }
    }
}

/// The two calls of one participant type.
type Declare = fn(&[u8]) -> Result<Access, Abort>;
type Execute = fn(&[u8], &Snapshot) -> Result<Outcome, Abort>;

/// One step to run.
struct Step {
    name: &'static str,
    prefix: String,
    input: Vec<u8>,
    declare: Declare,
    execute: Execute,
}

/// Steps of one or more participants, run in order against one [`Store`]
/// by [`Transaction::run`] as the host runs them:
///
/// 1. `declare` of every step, before any value is read; an abort there
///    aborts the transaction;
/// 2. `execute` of each step in order, on a snapshot of exactly its
///    declared keys as the transaction sees them: the store plus the
///    writes of the steps before it;
/// 3. writes checked against the declared keys, adjustments applied with
///    their bounds checked against the value so far; an abort, or an
///    adjustment out of bounds, aborts the transaction;
/// 4. all writes applied to the store only if every step succeeded.
///
/// Each step's keys are under its prefix ([`Transaction::step_in`]), as a
/// participant's are under the one its manifest gives it. A broken
/// contract (an undeclared write, an empty key, different answers to the
/// same call) panics, as it fails the step in the host.
pub struct Transaction<'s> {
    store: &'s mut Store,
    steps: Vec<Step>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.steps.iter().map(|s| s.name).collect();
        f.debug_struct("Transaction")
            .field("steps", &names)
            .finish()
    }
}

/// Why a [`Transaction`] aborted: the step and its abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnAbort {
    /// The index of the step that aborted.
    pub step: usize,
    pub abort: Abort,
}

/// A transaction's view of the keys it wrote: `None` for a deleted one.
type View = BTreeMap<String, Option<Vec<u8>>>;

impl Transaction<'_> {
    /// A step of `P` whose keys are the store's keys as they are.
    pub fn step<P: Participant>(self, input_json: &str) -> Self {
        self.step_in::<P>("", input_json)
    }

    /// A step of `P` whose keys live under `prefix` in the store.
    pub fn step_in<P: Participant>(mut self, prefix: &str, input_json: &str) -> Self {
        self.steps.push(Step {
            name: std::any::type_name::<P>(),
            prefix: prefix.to_owned(),
            input: input_json.as_bytes().to_vec(),
            declare: component::declare::<P>,
            execute: component::execute::<P>,
        });
        self
    }

    /// Runs the steps; on success, applies their writes to the store and
    /// returns each step's output (JSON, or a string when it is not JSON,
    /// `null` when there is none). On an abort the store is unchanged.
    pub fn run(self) -> Result<Vec<serde_json::Value>, TxnAbort> {
        let aborted = |step: usize| move |abort: Abort| TxnAbort { step, abort };
        let mut declared = Vec::with_capacity(self.steps.len());
        for (i, step) in self.steps.iter().enumerate() {
            let access = twice("declare()", || (step.declare)(&step.input)).map_err(aborted(i))?;
            for key in access
                .reads()
                .chain(access.writes())
                .chain(access.adjusts())
            {
                assert!(
                    !key.is_empty(),
                    "{}: declare() returned an empty key",
                    step.name
                );
            }
            declared.push(access);
        }
        let mut view = View::new();
        let mut outputs = Vec::with_capacity(self.steps.len());
        for (i, (step, access)) in self.steps.iter().zip(&declared).enumerate() {
            let outcome = self.execute(step, access, &view).map_err(aborted(i))?;
            apply(step, access, &outcome, &mut view, |key| {
                self.store.values.get(key).cloned()
            })
            .map_err(aborted(i))?;
            outputs.push(super::output_json(outcome.output_bytes()));
        }
        for (key, value) in view {
            match value {
                Some(value) => self.store.values.insert(key, value),
                None => self.store.values.remove(&key),
            };
        }
        Ok(outputs)
    }

    /// `execute` of `step` on a snapshot of its declared keys as `view`
    /// sees them.
    fn execute(&self, step: &Step, access: &Access, view: &View) -> Result<Outcome, Abort> {
        let snapshot = Snapshot::from_entries(access.reads().chain(access.writes()).map(|key| {
            let full = format!("{}{key}", step.prefix);
            let value = match view.get(&full) {
                Some(value) => value.clone(),
                None => self.store.values.get(&full).cloned(),
            };
            (key.to_owned(), value)
        }));
        twice("execute()", || (step.execute)(&step.input, &snapshot))
    }
}

/// Applies a step's writes and adjustments to `view` (`stored`: a key's
/// value before the transaction), checking them against what it declared.
fn apply(
    step: &Step,
    access: &Access,
    outcome: &Outcome,
    view: &mut View,
    stored: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<(), Abort> {
    let full = |key: &str| format!("{}{key}", step.prefix);
    for (key, value) in outcome.writes() {
        assert!(
            access.is_writable(key),
            "{}: execute() wrote key `{key}`, which declare() did not return as a write",
            step.name
        );
        view.insert(full(key), value.map(<[u8]>::to_vec));
    }
    for a in outcome.adjustments() {
        assert!(
            access.is_adjustable(&a.key),
            "{}: execute() adjusted key `{}`, which declare() did not return as adjusted or written",
            step.name,
            a.key
        );
        let key = full(&a.key);
        let current = match view.get(&key) {
            Some(value) => value.clone(),
            None => stored(&key),
        };
        let current = super::integer(&a.key, current.as_deref())?;
        let value = current
            .checked_add(a.delta)
            .filter(|v| a.bounds.contain(*v))
            .ok_or_else(|| a.abort.clone())?;
        view.insert(key, Some(value.to_string().into_bytes()));
    }
    Ok(())
}

/// Calls `f` twice and requires the same answer: the host may call a
/// participant again and relies on it being deterministic.
fn twice<T: PartialEq + std::fmt::Debug>(
    what: &str,
    f: impl Fn() -> Result<T, Abort>,
) -> Result<T, Abort> {
    let first = f();
    assert_eq!(
        first,
        f(),
        "{what} answered differently for the same input: participants must be deterministic"
    );
    first
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::{Bounds, Positive};

    /// Takes `qty` of `stock`, never below 0 (an adjustment).
    struct Take;

    #[derive(Deserialize)]
    struct TakeInput {
        qty: Positive,
    }

    impl Participant for Take {
        type Input = TakeInput;

        fn declare(_: &TakeInput) -> Result<Access, Abort> {
            Ok(Access::new().adjust("stock"))
        }

        fn execute(input: &TakeInput, _: &Snapshot) -> Result<Outcome, Abort> {
            let abort = Abort::new("insufficient_stock", "not enough");
            Outcome::new()
                .adjust("stock", -input.qty.get(), Bounds::at_least(0), abort)
                .output_json(&input.qty)
        }
    }

    /// Copies the bytes of `from` to `to`, both its own keys.
    struct Copy;

    #[derive(Deserialize)]
    struct CopyInput {
        from: String,
        to: String,
    }

    impl Participant for Copy {
        type Input = CopyInput;

        fn declare(input: &CopyInput) -> Result<Access, Abort> {
            Ok(Access::new()
                .read(input.from.as_str())
                .write(input.to.as_str()))
        }

        fn execute(input: &CopyInput, snapshot: &Snapshot) -> Result<Outcome, Abort> {
            let value = snapshot.get(&input.from)?.unwrap_or_default().to_vec();
            Ok(Outcome::new().set(input.to.as_str(), value))
        }
    }

    #[test]
    fn steps_see_earlier_writes_under_their_own_prefixes_with_binary_values() {
        let mut store = Store::new();
        store
            .set("inv:stock", "5")
            .set("raw:blob", vec![0u8, 159, 146, 150]);
        let outputs = store
            .transaction()
            .step_in::<Take>("inv:", r#"{"qty": 2}"#)
            .step_in::<Copy>("raw:", r#"{"from": "blob", "to": "copy"}"#)
            .step_in::<Copy>("raw:", r#"{"from": "copy", "to": "again"}"#)
            .run()
            .expect("committed");
        assert_eq!(outputs, [json!(2), json!(null), json!(null)]);
        assert_eq!(store.get("inv:stock"), Some(&b"3"[..]));
        assert_eq!(store.get("raw:again"), Some(&[0u8, 159, 146, 150][..]));
    }

    #[test]
    fn an_abort_or_a_broken_bound_leaves_the_store_unchanged() {
        let mut store = Store::new();
        store.set("stock", "3");
        let before = store.clone();
        let err = store
            .transaction()
            .step::<Copy>(r#"{"from": "stock", "to": "seen"}"#)
            .step::<Take>(r#"{"qty": 2}"#)
            .step::<Take>(r#"{"qty": 2}"#)
            .run()
            .expect_err("the second take breaks the bound");
        assert_eq!(err.step, 2);
        assert_eq!(err.abort.code, "insufficient_stock");
        assert_eq!(store, before);
        let err = store
            .transaction()
            .step::<Take>("{}")
            .run()
            .expect_err("bad input");
        assert_eq!((err.step, err.abort.code.as_str()), (0, "bad_input"));
    }
}
