//! A store on a real Redis Cluster (3 masters, 3 replicas), next to a single
//! Redis that keeps the log, and coordinators over them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redstage::config::Config;
pub use redstage::embedded::RedisCluster;
use redstage::store::keys::key_slot;
use redstage::txn::Coordinator;

use crate::{
    HostProcess, ParticipantSpec, Persistence, RedisServer, SETTLE_TIMEOUT, config_text, configure,
};

/// The name of the cluster store in [`ClusterEnv`]'s config.
pub const CLUSTER_STORE: &str = "shop";
/// The name of the single Redis that keeps the log.
pub const LOG_STORE: &str = "log";

#[derive(Debug)]
pub struct ClusterEnv {
    pub cluster: RedisCluster,
    /// The log store, first and only entry.
    pub servers: Vec<(String, RedisServer)>,
    pub config: Config,
    pub config_path: PathBuf,
    _config_dir: tempfile::TempDir,
    pub coordinator: Arc<Coordinator>,
}

impl ClusterEnv {
    /// A cluster of 3 masters with `replicas` replicas each as store
    /// [`CLUSTER_STORE`], a single Redis as [`LOG_STORE`]; `store` is the
    /// cluster store's config table beyond its URL (e.g. `wait_replicas`),
    /// `extra` TOML appended to the config.
    pub fn start(
        participants: &[ParticipantSpec],
        replicas: usize,
        store: toml::Table,
        extra: &str,
    ) -> ClusterEnv {
        let cluster =
            RedisCluster::start(3, replicas, Persistence::None).expect("start a Redis Cluster");
        let log = RedisServer::start(Persistence::None).expect("start redis-server");
        let servers = vec![(LOG_STORE.to_owned(), log)];
        let text = config_text(&servers, participants, extra);
        let mut config: toml::Table = text.parse().expect("the harness writes TOML");
        let mut table = store;
        table.insert("url".into(), cluster.url().into());
        config["stores"]
            .as_table_mut()
            .expect("a stores table")
            .insert(CLUSTER_STORE.into(), table.into());
        let text = toml::to_string(&config).expect("a table is TOML");
        let (config, config_dir, config_path, coordinator) = configure(&text);
        ClusterEnv {
            cluster,
            servers,
            config,
            config_path,
            _config_dir: config_dir,
            coordinator,
        }
    }

    /// Starts the `redstage serve` binary on this environment's config,
    /// with the fault point `fault` armed (see `txn::faults`).
    pub fn spawn_host(&self, fault: Option<&str>) -> HostProcess {
        HostProcess::start(&self.config_path, fault)
    }

    /// Another coordinator on the same stores, as a second host would be.
    pub fn second_host(&self) -> Arc<Coordinator> {
        Arc::new(redstage::cli::coordinator(&self.config).expect("build the coordinator"))
    }

    /// `GET key` on the cluster, from the master that serves its slot (no
    /// slot may be migrating meanwhile).
    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.node_of(key))
            .expect("GET")
    }

    /// A plain connection to the master that serves `key`'s slot.
    pub fn node_of(&self, key: &str) -> redis::Connection {
        connect(self.master_of(key))
    }

    /// The master serving `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.cluster
            .port_of_slot(key_slot(key.as_bytes()))
            .expect("every slot is served")
    }

    /// Keys of redstage's that say a transaction is unfinished, on every
    /// master and on the log store: locks, lock table entries, lock index
    /// entries.
    pub fn unfinished(&self) -> Vec<String> {
        let masters = self.cluster.masters().into_iter().map(|(port, _)| port);
        let log = std::iter::once(self.servers[0].1.port());
        masters
            .chain(log)
            .flat_map(|port| {
                let mut conn = connect(port);
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("rs:*")
                    .query(&mut conn)
                    .expect("KEYS");
                keys.into_iter()
                    .filter(|k| k.starts_with("rs:{") || k == "rs:locks")
                    .map(move |k| format!("{port}: {k}"))
            })
            .collect()
    }

    /// [`ClusterEnv::unfinished`] once everything had time to settle: the
    /// answered transactions' applies, then sweeps (for locks left by a
    /// failure, once their leases are over).
    pub async fn leftovers(&self) -> Vec<String> {
        self.coordinator.flush().await;
        let lease = Duration::from_millis(self.config.txn.lease_ms);
        let started = Instant::now();
        while started.elapsed() < SETTLE_TIMEOUT + lease && !self.unfinished().is_empty() {
            self.coordinator.sweep().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.unfinished()
    }
}

fn connect(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection())
        .expect("connect to a node")
}
