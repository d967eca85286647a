//! The access set: which keys one input reads, which it may write, and which
//! it may only adjust.

use std::collections::BTreeSet;

/// The keys a step will touch, returned by [`Participant::declare`].
///
/// The host locks every declared key from the moment it reads it to the
/// end of the transaction, and rejects any write outside the write set. A
/// key declared for writing is also read (its current value is in the
/// snapshot), so declaring it as a read as well is harmless: it is kept
/// once, as a write.
///
/// A key declared with [`Access::adjust`] is not read at all: the step may
/// only add a bounded delta to it ([`Outcome::adjust`]), and other
/// transactions adjusting the same key need not wait for this one (escrow:
/// the host reserves each delta against its bounds). Reading a key and
/// adjusting it makes it a write.
///
/// [`Outcome::adjust`]: crate::Outcome::adjust
///
/// ```
/// use redstage_guest::Access;
///
/// let access = Access::new().read("rate").write("balance:alice").read("balance:alice");
/// assert_eq!(access.reads().collect::<Vec<_>>(), ["rate"]);
/// assert_eq!(access.writes().collect::<Vec<_>>(), ["balance:alice"]);
/// ```
///
/// [`Participant::declare`]: crate::Participant::declare
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    // Disjoint, and sorted so that what reaches the host does not depend on
    // the order the participant happened to declare keys in.
    reads: BTreeSet<String>,
    writes: BTreeSet<String>,
    adjusts: BTreeSet<String>,
}

impl Access {
    /// An empty access set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `key` as read (a no-op if it is already declared for
    /// writing; a write if it is declared as adjusted).
    pub fn read(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if self.adjusts.remove(&key) {
            self.writes.insert(key);
        } else if !self.writes.contains(&key) {
            self.reads.insert(key);
        }
        self
    }

    /// Declares every key in `keys` as read.
    pub fn read_all<K: Into<String>>(self, keys: impl IntoIterator<Item = K>) -> Self {
        keys.into_iter().fold(self, Self::read)
    }

    /// Declares `key` as possibly written (and therefore read).
    pub fn write(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.reads.remove(&key);
        self.adjusts.remove(&key);
        self.writes.insert(key);
        self
    }

    /// Declares `key` as possibly adjusted, and not read: see
    /// [`Outcome::adjust`](crate::Outcome::adjust). (A no-op if it is
    /// already declared for writing; a write if it is declared as read.)
    pub fn adjust(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if self.reads.remove(&key) {
            self.writes.insert(key);
        } else if !self.writes.contains(&key) {
            self.adjusts.insert(key);
        }
        self
    }

    /// Declares every key in `keys` as possibly written.
    pub fn write_all<K: Into<String>>(self, keys: impl IntoIterator<Item = K>) -> Self {
        keys.into_iter().fold(self, Self::write)
    }

    /// The keys that are only read, in sorted order.
    pub fn reads(&self) -> impl Iterator<Item = &str> {
        self.reads.iter().map(String::as_str)
    }

    /// The keys that may be written, in sorted order.
    pub fn writes(&self) -> impl Iterator<Item = &str> {
        self.writes.iter().map(String::as_str)
    }

    /// The keys that are only adjusted, in sorted order.
    pub fn adjusts(&self) -> impl Iterator<Item = &str> {
        self.adjusts.iter().map(String::as_str)
    }

    /// Whether `key` is declared at all, to read, write or adjust.
    pub fn contains(&self, key: &str) -> bool {
        self.reads.contains(key) || self.writes.contains(key) || self.adjusts.contains(key)
    }

    /// Whether `key` is declared for writing.
    pub fn is_writable(&self, key: &str) -> bool {
        self.writes.contains(key)
    }

    /// Whether `key` may be adjusted: declared as adjusted, or written.
    pub fn is_adjustable(&self, key: &str) -> bool {
        self.adjusts.contains(key) || self.writes.contains(key)
    }

    pub(crate) fn into_parts(self) -> (Vec<String>, Vec<String>, Vec<String>) {
        (
            self.reads.into_iter().collect(),
            self.writes.into_iter().collect(),
            self.adjusts.into_iter().collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (reads, writes, adjusts) = access.into_parts();
        assert_eq!(reads, ["a", "b"]);
        assert_eq!(writes, ["y", "z"]);
        assert!(adjusts.is_empty());
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
}
