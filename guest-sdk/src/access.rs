//! The access set: which keys one input reads and which it may write.

use std::collections::BTreeSet;

/// The keys a step will touch, returned by [`Participant::declare`].
///
/// The host locks the write keys, validates the read keys at commit, and
/// rejects any write outside the write set. A key declared for writing is
/// also read (its current value is in the snapshot), so declaring it as a
/// read as well is harmless: it is kept once, as a write.
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
}

impl Access {
    /// An empty access set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `key` as read (a no-op if it is already declared for writing).
    pub fn read(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if !self.writes.contains(&key) {
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
        self.writes.insert(key);
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

    /// Whether `key` is declared at all, for reading or writing.
    pub fn contains(&self, key: &str) -> bool {
        self.reads.contains(key) || self.writes.contains(key)
    }

    /// Whether `key` is declared for writing.
    pub fn is_writable(&self, key: &str) -> bool {
        self.writes.contains(key)
    }

    pub(crate) fn into_parts(self) -> (Vec<String>, Vec<String>) {
        (
            self.reads.into_iter().collect(),
            self.writes.into_iter().collect(),
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
        let (reads, writes) = access.into_parts();
        assert_eq!(reads, ["a", "b"]);
        assert_eq!(writes, ["y", "z"]);
    }

    #[test]
    fn undeclared_keys_are_not_contained() {
        let access = Access::new().read("a");
        assert!(!access.contains("b"));
        assert!(!access.is_writable("a"));
    }
}
