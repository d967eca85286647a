//! Running a participant natively, in plain `cargo test`, without wasm or Redis.
//!
//! [`run`] does what the host does around one step: it calls `declare`, builds
//! the snapshot of exactly the declared keys from the given store contents,
//! calls `execute`, checks the writes against the declared write set, and
//! applies adjustments to the given values with their bounds checked. On
//! top of that it calls `declare` and `execute` twice each and requires the
//! same answer, because the host may re-run a step after a conflict and
//! relies on participants being deterministic.
//!
//! Contract violations that the host would turn into a failed step (an
//! undeclared write, an empty key, non-determinism) panic here, so a test
//! fails loudly; business aborts come back as `Err(Abort)`.
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

use std::collections::BTreeMap;

use crate::{Abort, Access, Participant, Snapshot, component};

/// What a step did, in a form that is easy to assert on.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    /// What `declare` returned.
    pub access: Access,
    /// Written keys: `Some(value)` for a set, `None` for a delete; an
    /// adjusted key with the value it ends up with. Values that are not
    /// UTF-8 are converted lossily.
    pub writes: BTreeMap<String, Option<String>>,
    /// Adjusted keys with the sum of their deltas.
    pub adjustments: BTreeMap<String, i64>,
    /// The output as the client would see it: JSON parsed, other bytes as a
    /// string, no output as `null`.
    pub output: serde_json::Value,
}

/// Calls `P::declare` on `input_json`, as the host would.
pub fn declare<P: Participant>(input_json: &str) -> Result<Access, Abort> {
    let input = input_json.as_bytes();
    let access = component::declare::<P>(input);
    assert_eq!(
        access,
        component::declare::<P>(input),
        "declare() answered differently for the same input: participants must be deterministic"
    );
    let access = access?;
    for key in access
        .reads()
        .chain(access.writes())
        .chain(access.adjusts())
    {
        assert!(!key.is_empty(), "declare() returned an empty key");
    }
    Ok(access)
}

/// Runs one step of `P` on `input_json` against a store holding `store`
/// (`(key, value)` pairs; keys that are not listed do not exist, and keys
/// that are not declared are not shown to the participant).
///
/// # Panics
///
/// If the participant breaks the contract: writes a key it did not declare
/// for writing, declares an empty key, or answers differently when called
/// twice with the same input and snapshot.
pub fn run<P: Participant>(input_json: &str, store: &[(&str, &str)]) -> Result<TestOutcome, Abort> {
    let access = declare::<P>(input_json)?;

    let store: BTreeMap<&str, &str> = store.iter().copied().collect();
    let snapshot = Snapshot::from_entries(access.reads().chain(access.writes()).map(|key| {
        let value = store.get(key).map(|value| value.as_bytes().to_vec());
        (key.to_string(), value)
    }));

    let input = input_json.as_bytes();
    let outcome = component::execute::<P>(input, &snapshot);
    assert_eq!(
        outcome,
        component::execute::<P>(input, &snapshot),
        "execute() answered differently for the same input and snapshot: \
         participants must be deterministic"
    );
    let outcome = outcome?;

    let mut writes: BTreeMap<String, Option<String>> = outcome
        .writes()
        .map(|(key, value)| {
            assert!(
                access.is_writable(key),
                "execute() wrote key `{key}`, which declare() did not return as a write \
                 (declared writes: {:?})",
                access.writes().collect::<Vec<_>>()
            );
            let value = value.map(|bytes| String::from_utf8_lossy(bytes).into_owned());
            (key.to_string(), value)
        })
        .collect();
    let mut adjustments = BTreeMap::new();
    for a in outcome.adjustments() {
        assert!(
            access.is_adjustable(&a.key),
            "execute() adjusted key `{}`, which declare() did not return as adjusted or written",
            a.key
        );
        let current = match writes.get(&a.key) {
            Some(value) => value.clone(),
            None => store.get(a.key.as_str()).map(|v| v.to_string()),
        };
        let current = match current {
            None => 0,
            Some(text) => crate::snapshot::integer(text.as_bytes()).ok_or_else(|| {
                Abort::new(
                    "not_an_integer",
                    format!(
                        "`{}` holds a value that is not a decimal integer: it cannot be adjusted",
                        a.key
                    ),
                )
            })?,
        };
        let value = current
            .checked_add(a.delta)
            .filter(|v| a.bounds.contain(*v))
            .ok_or_else(|| a.abort.clone())?;
        writes.insert(a.key.clone(), Some(value.to_string()));
        *adjustments.entry(a.key.clone()).or_insert(0) += a.delta;
    }

    let output = match outcome.output_bytes() {
        [] => serde_json::Value::Null,
        bytes => serde_json::from_slice(bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned())
        }),
    };

    Ok(TestOutcome {
        access,
        writes,
        adjustments,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Outcome, Positive, checked_add};
    use serde::Deserialize;
    use serde_json::json;

    /// `{"key": K, "by": N}` adds N to K and reads `limit`.
    struct Add;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddInput {
        key: String,
        by: Positive,
    }

    impl Participant for Add {
        type Input = AddInput;

        fn declare(input: &AddInput) -> Result<Access, Abort> {
            Ok(Access::new().read("limit").write(input.key.as_str()))
        }

        fn execute(input: &AddInput, snapshot: &Snapshot) -> Result<Outcome, Abort> {
            let value = checked_add(snapshot.get_i64(&input.key)?, input.by.get())?;
            if value > snapshot.get_i64("limit")? {
                return Err(Abort::new(
                    "over_limit",
                    format!("{value} is over the limit"),
                ));
            }
            Outcome::new()
                .set_i64(input.key.as_str(), value)
                .output_json(&json!({ "value": value }))
        }
    }

    #[test]
    fn runs_declare_then_execute_on_the_declared_keys() {
        let out = run::<Add>(
            r#"{"key": "n", "by": 2}"#,
            &[("n", "5"), ("limit", "10"), ("other", "x")],
        )
        .unwrap();
        assert_eq!(out.access, Access::new().read("limit").write("n"));
        assert_eq!(out.writes, BTreeMap::from([("n".into(), Some("7".into()))]));
        assert_eq!(out.output, json!({ "value": 7 }));
    }

    #[test]
    fn missing_keys_are_absent() {
        let err = run::<Add>(r#"{"key": "n", "by": 2}"#, &[]).unwrap_err();
        assert_eq!(err, Abort::new("over_limit", "2 is over the limit"));
    }

    #[test]
    fn malformed_input_is_bad_input() {
        for input in [
            "",
            "[]",
            r#"{"key": "n"}"#,
            r#"{"key": "n", "by": 0}"#,
            r#"{"key": "n", "by": 1, "extra": 1}"#,
        ] {
            let err = run::<Add>(input, &[]).unwrap_err();
            assert_eq!(err.code, "bad_input", "{input}: {err}");
        }
        let err = declare::<Add>(r#"{"key": "n", "by": -1}"#).unwrap_err();
        assert!(
            err.message.contains("expected a positive 64-bit integer"),
            "{}",
            err.message
        );
    }

    #[test]
    fn stored_garbage_and_overflow_abort() {
        let input = r#"{"key": "n", "by": 1}"#;
        let err = run::<Add>(input, &[("n", "seven")]).unwrap_err();
        assert_eq!(err.code, "bad_value");
        let err = run::<Add>(input, &[("n", &i64::MAX.to_string())]).unwrap_err();
        assert_eq!(err.code, "overflow");
    }

    /// Writes a key it never declared.
    struct Sneaky;

    impl Participant for Sneaky {
        type Input = ();

        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new().read("a"))
        }

        fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
            Ok(Outcome::new().delete("a"))
        }
    }

    #[test]
    #[should_panic(expected = "execute() wrote key `a`, which declare() did not return as a write")]
    fn undeclared_write_panics() {
        let _ = run::<Sneaky>("null", &[]);
    }

    /// Reads a key it never declared.
    struct Nosy;

    impl Participant for Nosy {
        type Input = ();

        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new())
        }

        fn execute(_: &(), snapshot: &Snapshot) -> Result<Outcome, Abort> {
            snapshot.get("secret")?;
            Ok(Outcome::new())
        }
    }

    #[test]
    fn undeclared_read_aborts() {
        let err = run::<Nosy>("null", &[("secret", "x")]).unwrap_err();
        assert_eq!(err.code, "undeclared_key");
    }

    /// Answers differently each time: what the host must never see.
    struct Fickle;

    impl Participant for Fickle {
        type Input = ();

        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new())
        }

        fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
            use std::sync::atomic::{AtomicU32, Ordering};
            static CALLS: AtomicU32 = AtomicU32::new(0);
            Ok(Outcome::new().output(CALLS.fetch_add(1, Ordering::Relaxed).to_string()))
        }
    }

    #[test]
    #[should_panic(expected = "participants must be deterministic")]
    fn nondeterminism_panics() {
        let _ = run::<Fickle>("null", &[]);
    }

    /// Returns non-JSON output.
    struct Plain;

    impl Participant for Plain {
        type Input = ();

        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new())
        }

        fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
            Ok(Outcome::new().output("not json"))
        }
    }

    #[test]
    fn non_json_output_is_a_string() {
        assert_eq!(run::<Plain>("null", &[]).unwrap().output, json!("not json"));
    }
}
