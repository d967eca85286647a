//! What a store must promise before a decision written to it may be
//! acknowledged, and the check of it.
//!
//! A `committed` answer is only as good as the Redis that holds the
//! decision and the writes. Each store must keep every acknowledged write
//! across a crash, one of two ways:
//!
//! | store setting                                   | survives                             |
//! |-------------------------------------------------|--------------------------------------|
//! | `appendonly yes` + `appendfsync always`         | a crash or restart of the server     |
//! | `wait_replicas = N` in its config (`WAIT N`)    | the loss of the primary, once a replica that acknowledged is promoted |
//!
//! and must never evict (`maxmemory-policy noeviction`): an evicted lock or
//! record would let a half-applied transaction look undecided. The host
//! reads each store's settings at start (and for `/v1/ready`) and refuses
//! weaker ones, naming what to set, unless the config says
//! `durability = "unsafe"` (eviction is refused even then).

use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Replicas every write to a store must reach before it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct Replication {
    /// `WAIT` for this many replicas after every write.
    pub replicas: u32,
    /// How long to wait for them; fewer in time fails the operation.
    pub timeout_ms: u64,
}

/// Whether the host holds stores to the durability rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Refuse to start on a store that could lose an acknowledged write.
    #[default]
    Checked,
    /// Run on whatever the stores do, and say so: a crash of a store may
    /// lose transactions that were answered `committed`.
    Unsafe,
}

/// A store's persistence and eviction settings, as it reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub appendonly: String,
    pub appendfsync: String,
    pub maxmemory_policy: String,
}

impl Store {
    /// Reads the settings that decide durability (`CONFIG GET`), of the
    /// server, or of one cluster node.
    pub async fn settings(&self, node: Option<&(String, u16)>) -> Result<Settings, StoreError> {
        let mut get = redis::cmd("CONFIG");
        get.arg("GET")
            .arg("appendonly")
            .arg("appendfsync")
            .arg("maxmemory-policy");
        let pairs: std::collections::HashMap<String, String> = match node {
            Some((host, port)) => redis::from_redis_value(self.on_node(get, host, *port).await?)
                .map_err(|e| self.protocol(&format!("unexpected CONFIG GET reply: {e}")))?,
            None => self.query(&get).await?,
        };
        let field = |name: &str| {
            pairs
                .get(name)
                .cloned()
                .ok_or_else(|| StoreError::Protocol {
                    store: self.name.clone(),
                    message: format!("CONFIG GET did not return `{name}`"),
                })
        };
        Ok(Settings {
            appendonly: field("appendonly")?,
            appendfsync: field("appendfsync")?,
            maxmemory_policy: field("maxmemory-policy")?,
        })
    }

    /// Checks this store against the rules (every master of a cluster);
    /// the error says what to set, and where.
    pub async fn check_durability(&self, durability: Durability) -> Result<(), String> {
        let unreadable = |e: StoreError| match e {
            StoreError::Unavailable { .. } => format!(
                "{e}: the store cannot be reached, so nothing can run on it; check its URL \
                 and that it runs"
            ),
            StoreError::Protocol { .. } if durability == Durability::Unsafe => format!(
                "{e}; cannot read its eviction policy (CONFIG GET), which is checked even \
                 with durability = \"unsafe\" (an evicted lock or record leaves a \
                 transaction half applied). Allow CONFIG GET to this user"
            ),
            StoreError::Protocol { .. } => format!(
                "{e}; cannot check its persistence settings (CONFIG GET), so a decision \
                 written there may not survive a crash. Allow CONFIG GET, or set \
                 durability = \"unsafe\" to run without the check"
            ),
        };
        if !self.is_cluster() {
            let settings = self.settings(None).await.map_err(unreadable)?;
            return judge(&self.name, &settings, self.replication.as_ref(), durability);
        }
        for node in self.masters().await.map_err(unreadable)? {
            let settings = self.settings(Some(&node)).await.map_err(unreadable)?;
            judge(&self.name, &settings, self.replication.as_ref(), durability)
                .map_err(|e| format!("{e} (cluster master {}:{})", node.0, node.1))?;
        }
        Ok(())
    }
}

/// Whether `settings` keep an acknowledged write of store `name`.
pub fn judge(
    name: &str,
    settings: &Settings,
    replication: Option<&Replication>,
    durability: Durability,
) -> Result<(), String> {
    if settings.maxmemory_policy != "noeviction" {
        return Err(format!(
            "store `{name}` has maxmemory-policy {}: Redis may evict a lock or a decision \
             record and leave a transaction half applied. Set `maxmemory-policy noeviction` \
             (CONFIG SET maxmemory-policy noeviction, and in redis.conf)",
            settings.maxmemory_policy
        ));
    }
    let fsynced = settings.appendonly == "yes" && settings.appendfsync == "always";
    let replicated = replication.is_some_and(|r| r.replicas > 0);
    if fsynced || replicated || durability == Durability::Unsafe {
        return Ok(());
    }
    Err(format!(
        "store `{name}` has appendonly {} and appendfsync {}: a crash may lose a decision \
         that was already answered `committed`. Set `appendonly yes` and `appendfsync \
         always` on it (CONFIG SET, and in redis.conf), or give it replicas to wait for \
         ([stores.{name}] url = \"...\", wait_replicas = 1), or set durability = \"unsafe\" \
         to run without this guarantee",
        settings.appendonly, settings.appendfsync
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(appendonly: &str, appendfsync: &str, policy: &str) -> Settings {
        Settings {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            maxmemory_policy: policy.into(),
        }
    }

    #[test]
    fn only_fsync_always_or_replicas_pass() {
        let wait = Replication {
            replicas: 1,
            timeout_ms: 100,
        };
        let checked = Durability::Checked;
        assert!(judge("s", &settings("yes", "always", "noeviction"), None, checked).is_ok());
        assert!(
            judge(
                "s",
                &settings("no", "everysec", "noeviction"),
                Some(&wait),
                checked
            )
            .is_ok()
        );
        for (aof, fsync) in [("yes", "everysec"), ("yes", "no"), ("no", "always")] {
            let err = judge("s", &settings(aof, fsync, "noeviction"), None, checked).unwrap_err();
            assert!(err.contains("appendfsync always"), "{err}");
        }
        let unsafe_ = Durability::Unsafe;
        assert!(
            judge(
                "s",
                &settings("no", "everysec", "noeviction"),
                None,
                unsafe_
            )
            .is_ok()
        );
    }

    #[test]
    fn eviction_is_refused_whatever_else() {
        for durability in [Durability::Checked, Durability::Unsafe] {
            let err = judge(
                "s",
                &settings("yes", "always", "allkeys-lru"),
                None,
                durability,
            )
            .unwrap_err();
            assert!(err.contains("noeviction"), "{err}");
        }
    }
}
