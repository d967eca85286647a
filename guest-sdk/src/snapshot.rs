//! The snapshot: the values of the declared keys, as this transaction sees them.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::Abort;

/// The current value of every declared key, handed to
/// [`Participant::execute`].
///
/// Reading a key that was not declared is a bug in the participant, not a
/// business decision, but it still surfaces as an abort (`undeclared_key`)
/// naming the key rather than as a trap, so the client learns what went wrong.
///
/// [`Participant::execute`]: crate::Participant::execute
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    // `None`: the key is declared but does not exist in the store.
    entries: BTreeMap<String, Option<Vec<u8>>>,
}

impl Snapshot {
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = (String, Option<Vec<u8>>)>,
    ) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    /// The raw value of `key`, `None` if it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<&[u8]>, Abort> {
        match self.entries.get(key) {
            Some(value) => Ok(value.as_deref()),
            None => Err(Abort::new(
                "undeclared_key",
                format!("read of key `{key}`, which declare() did not return"),
            )),
        }
    }

    /// The value of `key` as a decimal integer, by the rule Redis's `INCRBY`
    /// applies (see [`integer`]); a missing key reads as 0, so counters and
    /// balances need no initialisation.
    pub fn get_i64(&self, key: &str) -> Result<i64, Abort> {
        let Some(bytes) = self.get(key)? else {
            return Ok(0);
        };
        integer(bytes).ok_or_else(|| bad_value(key, bytes, "a decimal 64-bit integer"))
    }

    /// The value of `key` parsed as JSON, `None` if the key does not exist.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Abort> {
        self.get(key)?
            .map(|bytes| {
                serde_json::from_slice(bytes)
                    .map_err(|err| bad_value(key, bytes, &format!("JSON ({err})")))
            })
            .transpose()
    }
}

fn bad_value(key: &str, bytes: &[u8], expected: &str) -> Abort {
    // Stored values may be large or binary: show only enough to recognise it.
    const SHOWN: usize = 64;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    let ellipsis = if bytes.len() > SHOWN { "..." } else { "" };
    Abort::new(
        "bad_value",
        format!("key `{key}` holds {shown:?}{ellipsis}, expected {expected}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(entries: &[(&str, Option<&str>)]) -> Snapshot {
        Snapshot::from_entries(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec()))),
        )
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
}
