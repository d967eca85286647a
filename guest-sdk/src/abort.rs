//! Aborts: the one way a participant says "no", and the checked arithmetic
//! that turns overflow into one instead of a trap or a wrapped value.

use std::fmt;

/// Why a step refuses to run: the whole transaction aborts, nothing is
/// written, and the client sees `code` and `message`.
///
/// `code` is meant for programs (`insufficient_stock`), `message` for people
/// ("only 3 of `A1` in stock, 5 requested"). The SDK itself uses these codes:
///
/// | code | when |
/// | --- | --- |
/// | `bad_input` | the input is not what the participant expects |
/// | `bad_value` | a stored value does not parse (e.g. `get_i64` on `"abc"`) |
/// | `overflow` | [`checked_add`] or [`checked_sub`] left the `i64` range |
/// | `undeclared_key` | the participant read a key it did not declare |
/// | `bad_output` | a value or output could not be serialized to JSON |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    /// A stable, machine-readable reason, e.g. `insufficient_stock`.
    pub code: String,
    /// What happened, for a person reading the response.
    pub message: String,
}

impl Abort {
    /// An abort with `code`: 1 to 64 ASCII letters, digits and `_-.:`, not
    /// one of the host's own codes (`conflict`, `trap`, `limit_exceeded`,
    /// ...), and a message of at most 4096 bytes; the host answers
    /// `bad_abort_code` or `limit_exceeded` for an abort that is not.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The input is malformed; `message` should say what was expected.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new("bad_input", message)
    }
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Abort {}

/// `a + b`, or an `overflow` abort. A wrapped balance would be silently
/// wrong, and a panic would surface as a trap rather than as a reason.
pub fn checked_add(a: i64, b: i64) -> Result<i64, Abort> {
    a.checked_add(b).ok_or_else(|| overflow(a, '+', b))
}

/// `a - b`, or an `overflow` abort.
pub fn checked_sub(a: i64, b: i64) -> Result<i64, Abort> {
    a.checked_sub(b).ok_or_else(|| overflow(a, '-', b))
}

fn overflow(a: i64, op: char, b: i64) -> Abort {
    Abort::new(
        "overflow",
        format!("{a} {op} {b} does not fit in a 64-bit signed integer"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_in_range() {
        assert_eq!(checked_add(2, 3), Ok(5));
        assert_eq!(checked_sub(2, 3), Ok(-1));
    }

    #[test]
    fn overflow_aborts() {
        let err = checked_add(i64::MAX, 1).unwrap_err();
        assert_eq!(err.code, "overflow");
        assert_eq!(
            err.message,
            "9223372036854775807 + 1 does not fit in a 64-bit signed integer"
        );
        assert_eq!(checked_sub(i64::MIN, 1).unwrap_err().code, "overflow");
    }

    #[test]
    fn display_shows_code_and_message() {
        let err = Abort::bad_input("expected an object");
        assert_eq!(err.to_string(), "bad_input: expected an object");
    }
}
