//! Every Redis key redstage reads or writes is named here, and only here.

use std::fmt;

/// The namespace redstage keeps its own keys in. Participant prefixes may not
/// overlap it, so no participant can name a lock, a version or a txn record.
pub const RESERVED_PREFIX: &str = "rs:";

/// A Redis key of redstage's layout (see the module essay in `store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A participant's data: `prefix + relative key`, a plain Redis string.
    Data(&'a str),
    /// The metadata hash of a data key: `ver`, and while locked `lock`,
    /// `lease`, `primary`, `staged`, `op`. Always in the data key's hash slot.
    Meta(&'a str),
    /// The decision record of one transaction, on the log store.
    TxnRecord(&'a str),
    /// The claim, then the outcome, of one client idempotency key, on the
    /// log store.
    Idempotency(&'a str),
    /// Every lock on a store, as `txn \n data key` scored by lease deadline:
    /// what the recovery sweep walks.
    LockIndex,
}

impl Key<'_> {
    /// The key's bytes as sent to Redis.
    pub fn encode(&self) -> String {
        match self {
            Key::Data(k) => (*k).to_owned(),
            Key::Meta(k) => meta_key(k),
            Key::TxnRecord(id) => format!("{RESERVED_PREFIX}txn:{id}"),
            Key::Idempotency(k) => format!("{RESERVED_PREFIX}idem:{k}"),
            Key::LockIndex => format!("{RESERVED_PREFIX}locks"),
        }
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
    fn txn_record_key() {
        assert_eq!(Key::TxnRecord("abc").encode(), "rs:txn:abc");
    }
}
