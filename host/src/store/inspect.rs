//! Reading the protocol's own keys for operators: lock index entries, the
//! lock table entries of their keys, decision records and idempotency
//! claims, for the listings of the API and for `redstage recover`.
//!
//! Nothing here writes, and nothing here asks Redis for a whole keyspace or
//! a whole index in one command: every read is one `SCAN`, `ZSCAN` or
//! `ZRANGE` page of at most [`PAGE_COUNT`] elements, or a read of named
//! keys. A listing walks such pages with a cursor of its own (see
//! `txn::inspect`), so that no call of it holds Redis for longer than one
//! page does, however large the store.
//!
//! ```text
//!  what                      read with                      pages by
//!  ------------------------  -----------------------------  ----------------------
//!  lock index entries        ZSCAN rs:locks (single Redis)  the ZSCAN cursor
//!                            SCAN rs:{*}:locks per master,  the SCAN cursor, one
//!                            then ZRANGE of each index      master at a time
//!  decision records          SCAN rs:txn:* + MGET           the SCAN cursor
//!  how a key is held         HMGET rs:{K}                   (named keys)
//!  an idempotency claim      GET rs:idem:<key>              (a named key)
//!  a stream's first entries  XRANGE key - + COUNT n         (a named key)
//! ```

use futures::future::join_all;
use redis::Value;

use super::keys::{IndexEntry, Key, SLOT_INDEX_PATTERN, Target};
use super::{Mode, Store, StoreError};

/// Elements one `SCAN`, `ZSCAN` or `ZRANGE` call of a listing looks at, at
/// most. Small enough that no call holds Redis for long (a `SCAN` of 256
/// keys takes tens of microseconds), large enough that a listing of a
/// quiet store is a handful of calls.
pub const PAGE_COUNT: usize = 256;

/// A lock index entry as it stands, with its score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The entry, or its raw member when it cannot be read.
    pub entry: Result<IndexEntry, String>,
    /// When its lease ends, in milliseconds by the store's clock (the
    /// entry's score in the index).
    pub deadline_ms: i64,
}

/// How one transaction holds one target right now, read from the key's lock
/// table (its lock entry and, in adjust mode, its adjuster field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub mode: Mode,
    /// Whether another transaction waits for the key (see `scripts`).
    pub waited: bool,
    /// When this holder's lease ends, in milliseconds by the store's clock.
    pub deadline_ms: i64,
    /// The store holding its decision; empty for a read-only transaction.
    pub primary: String,
}

impl Store {
    /// The store's clock, in milliseconds since the Unix epoch (`TIME`):
    /// what leases are measured by.
    pub async fn now_ms(&self) -> Result<i64, StoreError> {
        let (s, us): (i64, i64) = self.query(&redis::cmd("TIME")).await?;
        Ok(s * 1000 + us / 1000)
    }

    /// How many parts a walk of this store's lock indexes has: one for a
    /// single Redis (its index), one per master for a Redis Cluster (whose
    /// slot indexes are found by `SCAN` on each master).
    pub async fn index_parts(&self) -> Result<usize, StoreError> {
        if self.is_cluster() {
            Ok(self.masters().await?.len())
        } else {
            Ok(1)
        }
    }

    /// One page of lock index entries of part `part` (see
    /// [`Store::index_parts`]) from `cursor` (0 to start), and the cursor of
    /// the next page (0 when this was the last).
    pub async fn index_page(
        &self,
        part: usize,
        cursor: u64,
    ) -> Result<(u64, Vec<Indexed>), StoreError> {
        if !self.is_cluster() {
            return self.zscan(&Key::LockIndex.encode(), cursor, None).await;
        }
        let masters = self.masters().await?;
        let Some((host, port)) = masters.get(part) else {
            return Ok((0, Vec::new()));
        };
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(SLOT_INDEX_PATTERN)
            .arg("COUNT")
            .arg(PAGE_COUNT)
            .arg("TYPE")
            .arg("zset");
        let reply = self.on_node(scan, host, *port).await?;
        let (next, indexes): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)
            .map_err(|e| self.protocol(&format!("unexpected SCAN reply: {e}")))?;
        let mut found = Vec::new();
        for index in indexes {
            found.extend(self.zrange_all(&index).await?);
        }
        Ok((next, found))
    }

    /// Every entry of the sorted set `index`, [`PAGE_COUNT`] per call.
    async fn zrange_all(&self, index: &[u8]) -> Result<Vec<Indexed>, StoreError> {
        let mut found = Vec::new();
        loop {
            let mut range = redis::cmd("ZRANGE");
            range
                .arg(index)
                .arg(found.len())
                .arg(found.len() + PAGE_COUNT - 1)
                .arg("WITHSCORES");
            let page: Vec<Vec<u8>> = self.query(&range).await?;
            let got = page.len() / 2;
            found.extend(self.scored(page)?);
            if got < PAGE_COUNT {
                return Ok(found);
            }
        }
    }

    /// One `ZSCAN` page of the sorted set `index`, its members matching
    /// `pattern` if given.
    async fn zscan(
        &self,
        index: &str,
        cursor: u64,
        pattern: Option<&str>,
    ) -> Result<(u64, Vec<Indexed>), StoreError> {
        let mut scan = redis::cmd("ZSCAN");
        scan.arg(index).arg(cursor);
        if let Some(pattern) = pattern {
            scan.arg("MATCH").arg(pattern);
        }
        scan.arg("COUNT").arg(PAGE_COUNT);
        let (next, page): (u64, Vec<Vec<u8>>) = self.query(&scan).await?;
        Ok((next, self.scored(page)?))
    }

    /// `member, score, member, score, ...` as entries.
    pub(super) fn scored(&self, flat: Vec<Vec<u8>>) -> Result<Vec<Indexed>, StoreError> {
        flat.chunks(2)
            .map(|pair| {
                let [member, score] = pair else {
                    return Err(self.protocol("a sorted set member without its score"));
                };
                let member = String::from_utf8_lossy(member).into_owned();
                let deadline_ms = std::str::from_utf8(score)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| self.protocol("a lock index score that is not a number"))?
                    as i64;
                let entry = IndexEntry::decode(&member).ok_or(member);
                Ok(Indexed { entry, deadline_ms })
            })
            .collect()
    }

    /// Every lock index entry of `txn` (a well-formed transaction id) here,
    /// with its deadline: every index, page by page.
    pub async fn entries_of(&self, txn: &str) -> Result<Vec<Indexed>, StoreError> {
        let mut found = Vec::new();
        let pattern = IndexEntry::pattern(txn);
        for index in self.indexes().await? {
            let mut cursor = 0;
            loop {
                let (next, page) = self.zscan(&index.encode(), cursor, Some(&pattern)).await?;
                found.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }

    /// Which of `txns` hold locks here, by one walk of every index,
    /// [`PAGE_COUNT`] entries per call; with the entries found.
    pub async fn entries_of_any(
        &self,
        txns: &std::collections::BTreeSet<&str>,
    ) -> Result<Vec<Indexed>, StoreError> {
        let mut found = Vec::new();
        for part in 0..self.index_parts().await? {
            let mut cursor = 0;
            loop {
                let (next, page) = self.index_page(part, cursor).await?;
                found.extend(page.into_iter().filter(|i| {
                    i.entry
                        .as_ref()
                        .is_ok_and(|e| txns.contains(e.txn.as_str()))
                }));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(found)
    }

    /// One page of decision records (`SCAN` of `rs:txn:*` from `cursor`),
    /// each as its transaction id and its record, and the next cursor. A
    /// record that expired between the two reads is left out.
    pub async fn record_page(
        &self,
        cursor: u64,
    ) -> Result<(u64, Vec<(String, Vec<u8>)>), StoreError> {
        let prefix = Key::TxnRecord("").encode();
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(PAGE_COUNT)
            .arg("TYPE")
            .arg("string");
        let (next, keys): (u64, Vec<String>) = self.query(&scan).await?;
        if keys.is_empty() {
            return Ok((next, Vec::new()));
        }
        let mut get = redis::cmd("MGET");
        get.arg(&keys);
        let values: Vec<Option<Vec<u8>>> = self.query(&get).await?;
        let found = keys
            .into_iter()
            .zip(values)
            .filter_map(|(key, value)| {
                let txn = key.strip_prefix(&prefix)?.to_owned();
                Some((txn, value?))
            })
            .collect();
        Ok((next, found))
    }

    /// The decision records of `txns`, in order (none where there is none).
    pub async fn records(&self, txns: &[&str]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if txns.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = txns.iter().map(|t| Key::TxnRecord(t).encode()).collect();
        if self.is_cluster() {
            // Records never live on a cluster; keys of other slots cannot
            // share an MGET there.
            let reads = join_all(keys.iter().map(|k| async move {
                let mut get = redis::cmd("GET");
                get.arg(k);
                self.query::<Option<Vec<u8>>>(&get).await
            }));
            return reads.await.into_iter().collect();
        }
        let mut get = redis::cmd("MGET");
        get.arg(&keys);
        self.query(&get).await
    }

    /// How each `(target, txn)` is held right now: `None` where `txn` no
    /// longer holds the target, where it only appends to it (appends take
    /// no lock), or where its lock table is not one this protocol reads.
    pub async fn holds(&self, pairs: &[(&Target, &str)]) -> Result<Vec<Option<Hold>>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        if !self.is_cluster() {
            return self.holds_in(pairs).await;
        }
        // A key's lock table shares its slot; other keys may not.
        let each = join_all(
            pairs
                .iter()
                .map(|pair| self.holds_in(std::slice::from_ref(pair))),
        );
        let mut holds = Vec::with_capacity(pairs.len());
        for hold in each.await {
            holds.extend(hold?);
        }
        Ok(holds)
    }

    /// [`Store::holds`] in one pipeline (keys of one node): the target's
    /// lock entry and its adjuster field for `txn`, of the key's lock table
    /// (see `scripts`).
    async fn holds_in(&self, pairs: &[(&Target, &str)]) -> Result<Vec<Option<Hold>>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (target, txn) in pairs {
            let (lock, adjusters) = match &target.part {
                Some(part) => (format!("p:{part}"), format!("A{}:{part}:", part.len())),
                None => ("w".to_owned(), String::new()),
            };
            pipe.cmd("HMGET")
                .arg(Key::Meta(&target.key).encode())
                .arg(lock)
                .arg(format!("{adjusters}t:{txn}"));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Value> = self.bounded(pipe.query_async(&mut conn)).await?;
        Ok(pairs
            .iter()
            .zip(replies)
            .map(|((_, txn), reply)| match reply {
                Value::Array(fields) => match &fields[..] {
                    [Value::BulkString(lock), adjuster] => hold(lock, adjuster, txn),
                    _ => None,
                },
                _ => None,
            })
            .collect())
    }

    /// The first `max` entries of the stream `key` (none if it does not
    /// exist), each as its fields and values, oldest first: what a reader
    /// of an outbox sees.
    pub async fn stream_head(
        &self,
        key: &str,
        max: usize,
    ) -> Result<Vec<Vec<(String, String)>>, StoreError> {
        let mut range = redis::cmd("XRANGE");
        range.arg(key).arg("-").arg("+").arg("COUNT").arg(max);
        let entries: Vec<(String, Vec<(String, String)>)> = self.query(&range).await?;
        Ok(entries.into_iter().map(|(_, fields)| fields).collect())
    }

    /// What the idempotency key `key` holds on this store: the claim of a
    /// request still running, or its outcome.
    pub async fn idempotency(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(Key::Idempotency(key).encode());
        self.query(&get).await
    }

    /// The lock index entry whose lease ends first, on any index; for
    /// `/metrics`. On a cluster, the first of each slot index is read.
    pub async fn first_entry(&self) -> Result<Option<Indexed>, StoreError> {
        let mut first: Option<Indexed> = None;
        for index in self.indexes().await? {
            let mut range = redis::cmd("ZRANGE");
            range.arg(index.encode()).arg(0).arg(0).arg("WITHSCORES");
            let page: Vec<Vec<u8>> = self.query(&range).await?;
            for found in self.scored(page)? {
                if first
                    .as_ref()
                    .is_none_or(|f| found.deadline_ms < f.deadline_ms)
                {
                    first = Some(found);
                }
            }
        }
        Ok(first)
    }
}

/// How `txn` holds a key, from its lock table entry `meta` and (in adjust
/// mode) its field of the key's adjusters.
fn hold(meta: &[u8], adjuster: &Value, txn: &str) -> Option<Hold> {
    let meta = std::str::from_utf8(meta).ok()?;
    let mode = match meta.as_bytes().first()? {
        b'x' => Mode::Exclusive,
        b's' => Mode::Shared,
        b'a' => Mode::Adjust,
        _ => return None,
    };
    let waited = meta.as_bytes().get(1) == Some(&b'1');
    let (deadline, primary) = if mode == Mode::Adjust {
        let Value::BulkString(field) = adjuster else {
            return None;
        };
        let field = std::str::from_utf8(field).ok()?;
        let mut parts = field.split('\t');
        (parts.next()?.to_owned(), parts.next()?.to_owned())
    } else {
        let fields: Vec<&str> = meta.split('\t').skip(1).collect();
        let holder = fields.chunks(3).find(|h| h.first() == Some(&txn))?;
        (holder.get(1)?.to_string(), holder.get(2)?.to_string())
    };
    Some(Hold {
        mode,
        waited,
        deadline_ms: deadline.parse().ok()?,
        primary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_read_from_every_kind_of_lock_table_entry() {
        let none = Value::Nil;
        let x = hold(b"x0\tT1\t1000\torders", &none, "T1").unwrap();
        assert_eq!(
            (x.mode, x.waited, x.deadline_ms, x.primary.as_str()),
            (Mode::Exclusive, false, 1000, "orders")
        );
        assert_eq!(hold(b"x0\tT1\t1000\torders", &none, "T2"), None);
        let shared = b"s1\tT1\t1000\t\tT2\t2000\tledger";
        let s = hold(shared, &none, "T2").unwrap();
        assert_eq!(
            (s.mode, s.waited, s.deadline_ms, s.primary.as_str()),
            (Mode::Shared, true, 2000, "ledger")
        );
        assert_eq!(hold(shared, &none, "T1").unwrap().primary, "");
        let adjuster = Value::BulkString(b"3000\torders\t-2".to_vec());
        let a = hold(b"a0", &adjuster, "T3").unwrap();
        assert_eq!((a.mode, a.deadline_ms), (Mode::Adjust, 3000));
        assert_eq!(hold(b"a0", &none, "T3"), None);
    }
}
