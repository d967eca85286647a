//! `Positive`: a quantity that input parsing has already checked.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use serde::{Serialize, Serializer};

/// An integer from 1 to `i64::MAX`: a quantity, an amount.
///
/// Used as an input field, it makes the SDK reject `0`, negatives, fractions,
/// strings and out-of-range numbers as `bad_input` before the participant
/// runs, with the message "expected a positive 64-bit integer". It fits in
/// `i64`, the type [`Snapshot::get_i64`] reads, so it never needs a cast.
///
/// ```
/// use redstage_guest::Positive;
///
/// let qty: Positive = serde_json::from_str("5")?;
/// assert_eq!(qty.get(), 5);
/// let err = serde_json::from_str::<Positive>("0").unwrap_err();
/// assert!(err.to_string().contains("expected a positive 64-bit integer"));
/// # Ok::<(), serde_json::Error>(())
/// ```
///
/// [`Snapshot::get_i64`]: crate::Snapshot::get_i64
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Positive(i64);

impl Positive {
    /// `Some` if `value` is at least 1.
    pub fn new(value: i64) -> Option<Self> {
        (value > 0).then_some(Self(value))
    }

    /// The value, always at least 1.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Positive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Positive {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_i64(PositiveVisitor)
    }
}

struct PositiveVisitor;

impl Visitor<'_> for PositiveVisitor {
    type Value = Positive;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive 64-bit integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Positive, E> {
        Positive::new(value).ok_or_else(|| E::invalid_value(Unexpected::Signed(value), &self))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Positive, E> {
        i64::try_from(value)
            .ok()
            .and_then(Positive::new)
            .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(value), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_one_to_i64_max() {
        for (json, value) in [("1", 1), ("9223372036854775807", i64::MAX)] {
            let parsed: Positive = serde_json::from_str(json).unwrap();
            assert_eq!(parsed.get(), value);
            assert_eq!(serde_json::to_string(&parsed).unwrap(), json);
        }
    }

    #[test]
    fn rejects_everything_else_saying_what_was_expected() {
        for json in [
            "0",
            "-3",
            "1.5",
            "2.0",
            "\"5\"",
            "null",
            "9223372036854775808",
        ] {
            let err = serde_json::from_str::<Positive>(json).unwrap_err();
            assert!(
                err.to_string()
                    .contains("expected a positive 64-bit integer"),
                "{json}: {err}"
            );
        }
    }

    #[test]
    fn new_checks_the_sign() {
        assert_eq!(Positive::new(0), None);
        assert_eq!(Positive::new(-1), None);
        assert_eq!(Positive::new(2).map(Positive::get), Some(2));
        assert_eq!(Positive::new(2).unwrap().to_string(), "2");
    }
}
