//! Stores that are a Redis Cluster (`redis+cluster://`).
//!
//! A cluster refuses any script whose keys lie in more than one hash slot,
//! so a transaction's work on a cluster store is split by slot: one lock,
//! reserve or apply script per slot, the slots of one phase in parallel.
//! Each slot keeps its own lock index ([`Key::SlotIndex`]) next to the
//! lock table entries it lists, so that an index entry moves with its keys
//! when the slot migrates to another master. Decision records and
//! idempotency keys never live on a cluster store: the primary of a
//! transaction is always a single Redis (see `txn::plan`), so the commit
//! point stays one script.
//!
//! Splitting by slot keeps the store's all-or-nothing promises: a lock
//! that meets a conflict in one slot releases what it took in the others
//! before answering, and an apply is per key anyway (a key whose lock is
//! gone is left alone), so a slot that fails keeps its locks for recovery
//! to roll forward like any other store.
//!
//! The client follows `MOVED` and `ASK` by itself while slots migrate. The
//! sweep and the lock counts find the slots that have an index by `SCAN`
//! on every master, which costs a pass over each master's keys: they run
//! every `txn.sweep_interval_ms`, not per transaction.

use std::collections::{BTreeMap, BTreeSet};

use redis::Value;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::keys::{SLOT_INDEX_PATTERN, key_slot};
use super::{Key, Store, StoreError};

/// The URL scheme of a cluster store.
pub const SCHEME: &str = "redis+cluster://";

/// Keys `SCAN` looks at per call on one master.
const SCAN_COUNT: usize = 1000;

/// The seed nodes of a `redis+cluster://[user:password@]host:port[,host:port...]`
/// URL, each as a `redis://` URL with the credentials.
pub fn seeds(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("a cluster URL starts with {SCHEME}"))?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
    if hosts.contains(['/', '?']) {
        return Err(format!(
            "{SCHEME} takes seed nodes only (host:port,host:port): a cluster has one database \
             and no options, not `{hosts}`"
        ));
    }
    hosts
        .split(',')
        .map(|host| {
            if host.is_empty() || !host.contains(':') {
                return Err(format!("seed node `{host}` of {url:?} is not host:port"));
            }
            Ok(match auth {
                Some(auth) => format!("redis://{auth}@{host}"),
                None => format!("redis://{host}"),
            })
        })
        .collect()
}

/// The keys of one script call: where they are in the caller's list, and
/// the lock index they are entered in.
pub(super) struct Group {
    pub index: Key<'static>,
    /// In increasing order.
    pub at: Vec<usize>,
}

impl Store {
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, super::Conn::Cluster(_))
    }

    /// `keys` split into the calls that may run them: one for a single
    /// Redis, one per slot (in slot order, keys in their order) on a
    /// cluster.
    pub(super) fn groups<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Vec<Group> {
        if !self.is_cluster() {
            return vec![Group {
                index: Key::LockIndex,
                at: (0..keys.into_iter().count()).collect(),
            }];
        }
        let mut slots: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.into_iter().enumerate() {
            slots.entry(key_slot(key.as_bytes())).or_default().push(i);
        }
        slots
            .into_iter()
            .map(|(slot, at)| Group {
                index: Key::SlotIndex(slot),
                at,
            })
            .collect()
    }

    /// Every lock index of this store that may hold entries: the one of a
    /// single Redis, or those a `SCAN` of every master finds on a cluster.
    pub(super) async fn indexes(&self) -> Result<Vec<Key<'static>>, StoreError> {
        if !self.is_cluster() {
            return Ok(vec![Key::LockIndex]);
        }
        let mut slots = BTreeSet::new();
        for (host, port) in self.masters().await? {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(SLOT_INDEX_PATTERN)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .arg("TYPE")
                    .arg("zset");
                let reply = self.on_node(scan, &host, port).await?;
                let (next, found): (u64, Vec<Vec<u8>>) = redis::from_redis_value(reply)
                    .map_err(|e| self.protocol(&format!("unexpected SCAN reply: {e}")))?;
                slots.extend(found.iter().map(|k| key_slot(k)));
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(slots.into_iter().map(Key::SlotIndex).collect())
    }

    /// The address of every master of the cluster, from `CLUSTER SLOTS`.
    pub(super) async fn masters(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let reply: Value = self.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut masters = BTreeSet::new();
        let Value::Array(ranges) = reply else {
            return Err(self.protocol("CLUSTER SLOTS did not answer an array"));
        };
        for range in ranges {
            let master = match range {
                Value::Array(items) => items.into_iter().nth(2),
                _ => None,
            };
            let node: Option<(String, u16)> = match master {
                Some(Value::Array(node)) => match node.as_slice() {
                    [host, Value::Int(port), ..] => {
                        self.string(host).ok().zip(u16::try_from(*port).ok())
                    }
                    _ => None,
                },
                _ => None,
            };
            let node = node.ok_or_else(|| self.protocol("unreadable CLUSTER SLOTS entry"))?;
            masters.insert(node);
        }
        Ok(masters.into_iter().collect())
    }

    /// Runs `cmd` on one node of the cluster, named by address.
    pub(super) async fn on_node(
        &self,
        cmd: redis::Cmd,
        host: &str,
        port: u16,
    ) -> Result<Value, StoreError> {
        let super::Conn::Cluster(conn) = &self.conn else {
            return self.query(&cmd).await;
        };
        let mut conn = conn.clone();
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let reply = self.bounded(conn.route_command(cmd, routing)).await?;
        if let Value::ServerError(e) = reply {
            return Err(self.protocol(&format!("{host}:{port} answered {e:?}")));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_give_seed_nodes_with_their_credentials() {
        assert_eq!(
            seeds("redis+cluster://10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]
        );
        assert_eq!(
            seeds("redis+cluster://app:s3cret@h1:7000,h2:7000/").unwrap(),
            ["redis://app:s3cret@h1:7000", "redis://app:s3cret@h2:7000"]
        );
        for bad in [
            "redis://h:1",
            "redis+cluster://",
            "redis+cluster://h1:7000,",
            "redis+cluster://h1",
            "redis+cluster://h1:7000/2",
        ] {
            assert!(seeds(bad).is_err(), "{bad}");
        }
    }
}
