//! The outcome of a step: the writes to apply if the transaction commits, and
//! the output returned to the client.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Abort;

/// What a successful [`Participant::execute`] returns.
///
/// Writing the same key twice keeps the last write, so a participant can
/// build its outcome incrementally. Every written key must have been declared
/// with [`Access::write`]; the host fails the step otherwise.
///
/// ```
/// use redstage_guest::Outcome;
///
/// let outcome = Outcome::new()
///     .set_i64("stock:A1", 8)
///     .delete("hold:A1")
///     .output_json(&serde_json::json!({ "A1": 8 }))?;
/// # Ok::<(), redstage_guest::Abort>(())
/// ```
///
/// [`Participant::execute`]: crate::Participant::execute
/// [`Access::write`]: crate::Access::write
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    // `None` deletes the key. Sorted, so the host sees the same writes in the
    // same order on every run of the same input.
    writes: Writes,
    // In the order made: the host applies a key's adjustments in order.
    adjustments: Vec<Adjustment>,
    output: Vec<u8>,
}

/// Sets (`Some`) and deletes (`None`), by key.
pub(crate) type Writes = BTreeMap<String, Option<Vec<u8>>>;

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

/// A bounded increment of an integer key, as [`Outcome::adjust`] records it.
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

    /// Stores `value` under `key`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.writes.insert(key.into(), Some(value.into()));
        self
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

    /// Removes `key`.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.writes.insert(key.into(), None);
        self
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
    pub fn adjust(
        mut self,
        key: impl Into<String>,
        delta: i64,
        bounds: Bounds,
        abort: Abort,
    ) -> Self {
        self.adjustments.push(Adjustment {
            key: key.into(),
            delta,
            bounds,
            abort,
        });
        self
    }

    /// The adjustments, in the order made.
    pub fn adjustments(&self) -> impl Iterator<Item = &Adjustment> {
        self.adjustments.iter()
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

    /// The writes, in key order; `None` is a delete.
    pub fn writes(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.writes
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
    }

    /// The output bytes.
    pub fn output_bytes(&self) -> &[u8] {
        &self.output
    }

    pub(crate) fn into_parts(self) -> (Writes, Vec<Adjustment>, Vec<u8>) {
        (self.writes, self.adjustments, self.output)
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
