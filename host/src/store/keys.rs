//! Every Redis key redstage reads or writes is named here, and only here.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The namespace redstage keeps its own keys in. Participant prefixes may not
/// overlap it, so no participant can name a lock, a version or a txn record.
pub const RESERVED_PREFIX: &str = "rs:";

/// A Redis key of redstage's layout (see the module essay in `store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A participant's data, a plain Redis value of its declared type.
    Data(&'a str),
    /// The lock table of a data key: a hash of its locks (whole, and per
    /// field or member) and adjusters (see `scripts`). Exists only while
    /// something of the key is locked. Always in the data key's slot.
    Meta(&'a str),
    /// The decision record of one transaction, on its primary store.
    TxnRecord(&'a str),
    /// The claim, then the outcome, of one client idempotency key, on the
    /// log store.
    Idempotency(&'a str),
    /// One entry per transaction holding locks on a store (see
    /// [`IndexEntry`]), scored by lease deadline: what the recovery sweep
    /// walks.
    LockIndex,
    /// The lock index of one hash slot of a Redis Cluster store: the same
    /// entries, for the keys of that slot only, so that every script
    /// touches one slot.
    SlotIndex(u16),
}

/// What `SCAN ... MATCH` finds every [`Key::SlotIndex`] of a node with.
pub const SLOT_INDEX_PATTERN: &str = "rs:{*}:locks";

/// The channel on which releasing scripts name the keys that had waiters
/// (`PUBLISH`), so that waiting transactions wake up at once.
pub const WAKE_CHANNEL: &str = "rs:wake";

impl Key<'_> {
    /// The key's bytes as sent to Redis.
    pub fn encode(&self) -> String {
        match self {
            Key::Data(k) => (*k).to_owned(),
            Key::Meta(k) => meta_key(k),
            Key::TxnRecord(id) => format!("{RESERVED_PREFIX}txn:{id}"),
            Key::Idempotency(k) => format!("{RESERVED_PREFIX}idem:{k}"),
            Key::LockIndex => format!("{RESERVED_PREFIX}locks"),
            Key::SlotIndex(slot) => format!("{RESERVED_PREFIX}{{{}}}:locks", slot_tag(*slot)),
        }
    }
}

/// A lock index entry: transaction `txn` holds locks on `keys` of this store
/// and its decision lives on store `primary` (empty for a read-only
/// transaction, which decides nothing). An entry without keys, on the
/// primary, marks a committed record whose other stores are not all applied
/// yet.
///
/// Encoded as `<txn>\n<JSON [primary, [keys]]>`: the id first so that a
/// lookup can `ZSCAN ... MATCH <txn>\n*`, JSON after it because keys may
/// hold any byte. Scripts never parse it; they add and remove it whole, so
/// the host must encode the same entry the same way every time (keys in
/// the order locked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub txn: String,
    pub primary: String,
    /// What it locks (or only appends to) here, in the order locked.
    pub keys: Vec<Target>,
}

/// What one lock covers: a key whole, or one hash field or set member of
/// it. In an index entry, a key whole is its name, a part `[key, part]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "TargetJson", into = "TargetJson")]
pub struct Target {
    pub key: String,
    pub part: Option<String>,
}

impl Target {
    pub fn whole(key: &str) -> Target {
        Target {
            key: key.to_owned(),
            part: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TargetJson {
    Whole(String),
    Part(String, String),
}

impl From<TargetJson> for Target {
    fn from(t: TargetJson) -> Target {
        match t {
            TargetJson::Whole(key) => Target { key, part: None },
            TargetJson::Part(key, part) => Target {
                key,
                part: Some(part),
            },
        }
    }
}

impl From<Target> for TargetJson {
    fn from(t: Target) -> TargetJson {
        match t.part {
            None => TargetJson::Whole(t.key),
            Some(part) => TargetJson::Part(t.key, part),
        }
    }
}

impl IndexEntry {
    pub fn encode(&self) -> String {
        let rest = serde_json::to_string(&(&self.primary, &self.keys)).expect("strings serialize");
        format!("{}\n{rest}", self.txn)
    }

    pub fn decode(member: &str) -> Option<IndexEntry> {
        let (txn, rest) = member.split_once('\n')?;
        let (primary, keys) = serde_json::from_str(rest).ok()?;
        Some(IndexEntry {
            txn: txn.to_owned(),
            primary,
            keys,
        })
    }

    /// The same entry with only the targets at positions `at`, in that
    /// order: its part in one slot's index on a cluster.
    pub fn part(&self, at: impl IntoIterator<Item = usize>) -> IndexEntry {
        IndexEntry {
            txn: self.txn.clone(),
            primary: self.primary.clone(),
            keys: at.into_iter().map(|i| self.keys[i].clone()).collect(),
        }
    }

    /// The same entry with only the targets of `keys`, in its own order:
    /// what the scripts on those keys (one slot's, on a cluster) enter.
    pub fn of_keys<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> IndexEntry {
        let keys: std::collections::BTreeSet<&str> = keys.into_iter().collect();
        let at = self
            .keys
            .iter()
            .enumerate()
            .filter(|(_, t)| keys.contains(t.key.as_str()))
            .map(|(i, _)| i);
        self.part(at)
    }

    /// The `MATCH` pattern of every entry of `txn`, which must be a
    /// well-formed transaction id (no glob characters).
    pub fn pattern(txn: &str) -> String {
        format!("{txn}\n*")
    }
}
impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// `rs:{K}` when `K` has no braces, so that `K` and its metadata share a hash
/// slot by construction. A key with braces either has a hash tag of its own or
/// hashes as a whole in a way `{K}` would not reproduce; for those the meta key
/// carries a tag known to hash to `K`'s slot: `rs:{<tag of slot(K)>}:K`.
fn meta_key(data_key: &str) -> String {
    if data_key.contains(['{', '}']) {
        let tag = slot_tag(key_slot(data_key.as_bytes()));
        format!("{RESERVED_PREFIX}{{{tag}}}:{data_key}")
    } else {
        format!("{RESERVED_PREFIX}{{{data_key}}}")
    }
}

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The Redis Cluster hash slot of `key`, hash tags included.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16_xmodem(hashed) % SLOTS
}

/// The part of `key` Redis hashes: between the first `{` and the first `}`
/// after it, when that is not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A short brace-free tag that hashes to `slot`: the first base-36 numeral
/// (0, 1, 2, ...) that lands there. Deterministic, so meta keys already in
/// Redis keep their names across releases; the table is built once, on first
/// use, from about 160k checksums.
fn slot_tag(slot: u16) -> &'static str {
    static TABLE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = vec![String::new(); usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        for tag in (0u64..).map(base36) {
            let entry = &mut table[usize::from(crc16_xmodem(tag.as_bytes()) % SLOTS)];
            if entry.is_empty() {
                *entry = tag;
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        table
    });
    &table[usize::from(slot)]
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_redis_cluster_spec() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn meta_key_shares_the_data_key_slot() {
        let keys = [
            "inventory:stock:A1",
            "{orders}:stock:A1",
            "a}b",
            "a{b",
            "{}x{y}",
            "line\nbreak",
            "x{y}z{w}",
            "..//..",
        ];
        for k in keys {
            let meta = Key::Meta(k).encode();
            assert_eq!(
                key_slot(meta.as_bytes()),
                key_slot(k.as_bytes()),
                "{k:?} -> {meta:?}"
            );
            assert!(meta.starts_with(RESERVED_PREFIX));
        }
        assert_eq!(
            Key::Meta("inventory:stock:A1").encode(),
            "rs:{inventory:stock:A1}"
        );
    }

    #[test]
    fn index_entries_round_trip_whatever_the_keys() {
        let e = IndexEntry {
            txn: "0193-id".into(),
            primary: "orders".into(),
            keys: vec![
                Target::whole("a\nb"),
                Target::whole("{x}\"y"),
                Target::whole(""),
                Target {
                    key: "h".into(),
                    part: Some("f\n".into()),
                },
            ],
        };
        let encoded = e.encode();
        assert!(encoded.starts_with("0193-id\n"));
        assert_eq!(IndexEntry::decode(&encoded), Some(e));
        assert_eq!(IndexEntry::decode("no newline"), None);
    }

    #[test]
    fn slot_indexes_land_in_their_slot_and_match_their_pattern() {
        for slot in [0, 1, 777, 12182, SLOTS - 1] {
            let index = Key::SlotIndex(slot).encode();
            assert_eq!(key_slot(index.as_bytes()), slot, "{index}");
            assert!(index.starts_with("rs:{") && index.ends_with("}:locks"));
        }
        // No data key's lock table takes an index's name.
        assert_ne!(Key::Meta("locks").encode(), Key::SlotIndex(5).encode());
        assert_eq!(SLOT_INDEX_PATTERN, "rs:{*}:locks");
    }

    #[test]
    fn txn_record_key() {
        assert_eq!(Key::TxnRecord("abc").encode(), "rs:txn:abc");
    }
}
