//! Local `redis-server` processes, for the demo and the tests: started on a
//! free loopback port in a directory of their own, stopped on drop; and
//! local Redis Clusters made of them ([`RedisCluster`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` gets to answer `PING`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports tried before giving up on starting a server.
const PORT_TRIES: usize = 5;

/// `cluster-node-timeout` of cluster nodes: how long a peer may stay silent
/// before it is suspected to have failed, and so the floor of every
/// automatic failover. Redis's default, 15 s, would make each failover test
/// wait that long; 2 s is still far above a loaded machine's scheduling
/// hiccups, so healthy nodes are not failed over by mistake.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// How long a cluster gets to settle (every node agreeing on a full slot
/// map, every replica in sync): after creation, after a slot moved, after a
/// failover.
pub const CLUSTER_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failover is left to the cluster itself before
/// `CLUSTER FAILOVER TAKEOVER` forces it. Detection takes one node timeout
/// (plus gossip to reach a majority), the election about one second more
/// per replica rank; five node timeouts is ample.
const AUTO_FAILOVER_TIMEOUT: Duration = CLUSTER_NODE_TIMEOUT.saturating_mul(5);

/// The hash slots of a Redis Cluster, `0..CLUSTER_SLOTS`.
pub const CLUSTER_SLOTS: u16 = 16384;

/// `redis-cli --cluster create` refuses fewer masters: a failover needs a
/// majority of the masters to vote.
const MIN_MASTERS: usize = 3;

/// Keys moved by one `MIGRATE` while moving a slot (`redis-cli`'s default
/// pipeline is 10; bigger batches mean fewer round trips, each batch blocks
/// the source for its duration).
const MIGRATE_BATCH: usize = 100;

/// `MIGRATE`'s timeout, in milliseconds, for the transfer of one batch.
const MIGRATE_TIMEOUT_MS: u64 = 5000;

/// Connect, read and write timeout of the administrative commands a
/// [`RedisCluster`] sends, so that a hung node fails the call instead of
/// hanging the test.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between two looks at a cluster that is settling.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Persistence of an embedded server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk: a restart starts empty.
    None,
    /// Append-only file, fsync on every write: a restart keeps every
    /// acknowledged write.
    AofAlways,
}

/// A running `redis-server`, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    persistence: Persistence,
    /// Holds the server's files (AOF, logs) and is removed with it.
    dir: tempfile::TempDir,
    /// The port of the server this one replicates, if it is a replica.
    primary: Option<u16>,
    /// A second port, served over TLS, and its certificates.
    tls: Option<(u16, ServerTls)>,
    /// The cluster bus port, if it is a cluster node.
    cluster_port: Option<u16>,
    child: Option<Child>,
}

/// The certificates of a server that also listens over TLS, PEM files: its
/// own certificate and key, and the CA its clients' certificates must be
/// signed by (it asks every client for one).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot start redis-server ({0}); install it, e.g. `apt-get install redis-server`")]
    Spawn(std::io::Error),
    #[error("redis-server on port {port} did not come up: {message}")]
    NotReady { port: u16, message: String },
    #[error("redis-server on port {port}: {message}")]
    Command { port: u16, message: String },
    #[error("redis cluster: {0}")]
    Cluster(String),
}

impl RedisServer {
    /// Starts a server on a free port. Another process may take the port
    /// between our probe and the server's bind, so a few ports are tried.
    pub fn start(persistence: Persistence) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(persistence, None, None, false)
    }

    /// [`RedisServer::start`], also listening over TLS on a port of its own
    /// (see [`RedisServer::tls_url`]); the plain port stays, for tools.
    pub fn start_tls(
        persistence: Persistence,
        tls: &ServerTls,
    ) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(persistence, None, Some(tls), false)
    }

    /// Starts a node for a Redis Cluster, not yet part of any (see
    /// [`RedisCluster::start`]). Its cluster state is kept in `nodes.conf`
    /// in its directory, so that [`RedisServer::restart`] brings back the
    /// same node (same id, same ports) and it rejoins its cluster; with
    /// [`Persistence::None`] it comes back without its data.
    pub fn start_cluster_node(persistence: Persistence) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(persistence, None, None, true)
    }

    /// Starts a replica of `primary` and waits until it has synchronized.
    pub fn replica_of(
        primary: &RedisServer,
        persistence: Persistence,
    ) -> Result<RedisServer, EmbeddedError> {
        let replica = RedisServer::start_with(persistence, Some(primary.port), None, false)?;
        let started = Instant::now();
        loop {
            let info: String = redis::Client::open(replica.url())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c))
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                return Ok(replica);
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                return Err(EmbeddedError::NotReady {
                    port: replica.port,
                    message: format!("never synchronized with its primary: {info}"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes a replica a primary (`REPLICAOF NO ONE`), as a failover does.
    pub fn promote(&mut self) -> Result<(), EmbeddedError> {
        let not_ready = |e: redis::RedisError| EmbeddedError::NotReady {
            port: self.port,
            message: e.to_string(),
        };
        let mut conn = redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .map_err(not_ready)?;
        redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query::<()>(&mut conn)
            .map_err(not_ready)?;
        self.primary = None;
        Ok(())
    }

    fn start_with(
        persistence: Persistence,
        primary: Option<u16>,
        tls: Option<&ServerTls>,
        cluster: bool,
    ) -> Result<RedisServer, EmbeddedError> {
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let dir = tempfile::Builder::new()
                .prefix("redstage-redis-")
                .tempdir()
                .map_err(EmbeddedError::Spawn)?;
            let [port, tls_port, cluster_port] = free_ports().map_err(EmbeddedError::Spawn)?;
            let mut server = RedisServer {
                port,
                persistence,
                dir,
                primary,
                tls: tls.map(|tls| (tls_port, tls.clone())),
                // Set explicitly: the default, port + 10000, is past 65535
                // for most ephemeral ports.
                cluster_port: cluster.then_some(cluster_port),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ EmbeddedError::Spawn(_)) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one try"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn persistence(&self) -> Persistence {
        self.persistence
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL of the TLS port, if it has one.
    pub fn tls_url(&self) -> Option<String> {
        let (port, _) = self.tls.as_ref()?;
        Some(format!("rediss://127.0.0.1:{port}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster bus port, if it is a cluster node.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// The process id, for tests that signal it (SIGSTOP, SIGKILL).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (and so the same AOF).
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), EmbeddedError> {
        let aof = match self.persistence {
            Persistence::None => ["--appendonly", "no", "--appendfsync", "everysec"],
            Persistence::AofAlways => ["--appendonly", "yes", "--appendfsync", "always"],
        };
        let log: PathBuf = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        if let Some(primary) = self.primary {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        if let Some(bus_port) = self.cluster_port {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_port.to_string(),
            ])
            .arg("--cluster-config-file")
            .arg(self.dir.path().join("nodes.conf"))
            .args([
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
            ])
            // A master waits 5 s by default before a diskless full sync,
            // for more replicas to join it; that wait would be most of
            // a cluster's start.
            .args(["--repl-diskless-sync-delay", "0"]);
        }
        if let Some((port, tls)) = &self.tls {
            cmd.args(["--tls-port", &port.to_string(), "--tls-auth-clients", "yes"])
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file);
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--protected-mode", "no"])
            .args(aof)
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(EmbeddedError::Spawn)?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let started = Instant::now();
        loop {
            let reply = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match reply {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > STARTUP_TIMEOUT => {
                    return Err(EmbeddedError::NotReady {
                        port: self.port,
                        message: e.to_string(),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                return Err(EmbeddedError::NotReady {
                    port: self.port,
                    message: format!("exited with {status}: {}", log.trim()),
                });
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local Redis Cluster of [`RedisServer`]s, stopped on drop.
///
/// It is created by `redis-cli --cluster create`, as an operator would, and
/// every method that changes it returns only once the cluster has settled:
/// each live node says `cluster_state:ok`, all of them agree on who serves
/// which slot and who replicates whom, and every replica is in sync.
#[derive(Debug)]
pub struct RedisCluster {
    /// The live nodes; a master killed by
    /// [`RedisCluster::kill_master_and_failover`] leaves the list.
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas_per_master` replicas each,
    /// the slots spread evenly over the masters. `redis-cli` chooses which
    /// node becomes a master; [`RedisCluster::masters`] tells.
    pub fn start(
        masters: usize,
        replicas_per_master: usize,
        persistence: Persistence,
    ) -> Result<RedisCluster, EmbeddedError> {
        if masters < MIN_MASTERS {
            return Err(EmbeddedError::Cluster(format!(
                "{masters} masters asked, a cluster needs at least {MIN_MASTERS}"
            )));
        }
        let replicas = masters.checked_mul(replicas_per_master);
        let Some((replicas, count)) = replicas.and_then(|r| Some((r, r.checked_add(masters)?)))
        else {
            return Err(EmbeddedError::Cluster(format!(
                "{masters} masters with {replicas_per_master} replicas each is too many nodes"
            )));
        };
        let nodes = (0..count)
            .map(|_| RedisServer::start_cluster_node(persistence))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster { nodes };
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.addresses())
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                EmbeddedError::Cluster(format!(
                    "cannot run redis-cli ({e}); install it, e.g. `apt-get install redis-tools`"
                ))
            })?;
        if !output.status.success() {
            return Err(EmbeddedError::Cluster(format!(
                "`redis-cli --cluster create` exited with {}: {}{}",
                output.status,
                strip_ansi(&String::from_utf8_lossy(&output.stdout)),
                strip_ansi(&String::from_utf8_lossy(&output.stderr)),
            )));
        }
        // `redis-cli` returns once the nodes have met; which of them are
        // replicas spreads by gossip after that, and replicas still have
        // to synchronize.
        cluster.wait_settled(Some(replicas))?;
        // After a diskless full sync (all of them, here) a master streams
        // writes to the replica only once the replica has acknowledged the
        // sync, up to a second later, while its link already reads `up`: a
        // master killed in between takes those writes with it. A write the
        // replicas must then receive (`FLUSHALL`, harmless on a cluster
        // still empty) proves the streams flow.
        cluster.flushall()?;
        Ok(cluster)
    }

    /// Every node, as seeds: `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// The plain URL of each node, for talking to one node directly.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The live nodes, masters and replicas (e.g. for their pids).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The masters now, each with the slot ranges (inclusive) it serves,
    /// sorted by port: what each node says of itself (`CLUSTER NODES`), so
    /// a node that does not answer is left out. A slot being migrated is
    /// listed under its source until the move completes.
    pub fn masters(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let mut masters: Vec<(u16, Vec<(u16, u16)>)> = self
            .nodes
            .iter()
            .filter_map(|n| own_view(n.port).ok())
            .filter(|me| me.master)
            .map(|me| (me.port, me.slots))
            .collect();
        masters.sort();
        masters
    }

    /// The port of the master serving `slot` now, if any.
    pub fn port_of_slot(&self, slot: u16) -> Option<u16> {
        self.masters().into_iter().find_map(|(port, ranges)| {
            ranges
                .iter()
                .any(|&(first, last)| (first..=last).contains(&slot))
                .then_some(port)
        })
    }

    /// Moves `slot`, with its keys, to the master on `to_port`, the way
    /// `redis-cli --cluster reshard` does: the target is marked importing
    /// and the source migrating, so that clients running meanwhile are sent
    /// (`ASK`) to the target for keys the source no longer has; the keys
    /// move in batches (`MIGRATE`, atomic per batch); then every master is
    /// told the new owner, the target first: told first, the source would
    /// send clients (`MOVED`) to a target that still sends them back.
    /// Returns once the cluster has settled. On an error the slot may be
    /// left importing and migrating; calling again resumes the move.
    pub fn migrate_slot(&self, slot: u16, to_port: u16) -> Result<(), EmbeddedError> {
        if slot >= CLUSTER_SLOTS {
            return Err(EmbeddedError::Cluster(format!(
                "no slot {slot}: slots are 0 to {}",
                CLUSTER_SLOTS - 1
            )));
        }
        self.node(to_port)?;
        let target = own_view(to_port)?;
        if !target.master {
            return Err(EmbeddedError::Cluster(format!(
                "cannot move slot {slot} to port {to_port}: not a master"
            )));
        }
        let from_port = self.port_of_slot(slot).ok_or_else(|| {
            EmbeddedError::Cluster(format!("no master serves slot {slot} to move it from"))
        })?;
        if from_port == to_port {
            return Ok(());
        }
        let source = own_view(from_port)?;
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        admin_query::<()>(to_port, &setslot("IMPORTING", &source.id))?;
        admin_query::<()>(from_port, &setslot("MIGRATING", &target.id))?;
        loop {
            let keys: Vec<Vec<u8>> = admin_query(
                from_port,
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(MIGRATE_BATCH),
            )?;
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(to_port)
                .arg("")
                .arg(0)
                .arg(MIGRATE_TIMEOUT_MS)
                .arg("KEYS");
            for key in &keys {
                migrate.arg(key.as_slice());
            }
            // "OK", or "NOKEY" if they all expired meanwhile.
            admin_query::<redis::Value>(from_port, &migrate)?;
        }
        let owner = setslot("NODE", &target.id);
        admin_query::<()>(to_port, &owner)?;
        admin_query::<()>(from_port, &owner)?;
        for (port, _) in self.masters() {
            if port != to_port && port != from_port {
                admin_query::<()>(port, &owner)?;
            }
        }
        self.wait_settled(None)
    }

    /// Kills the master on `port` (SIGKILL, as a crash would) and waits
    /// until the cluster has promoted one of its replicas and settled again;
    /// returns the new master's port. Should the cluster not fail over by
    /// itself in time, the replica takes over by force (`CLUSTER FAILOVER
    /// TAKEOVER`). The killed node leaves [`RedisCluster::nodes`] (and
    /// [`RedisCluster::url`]); the others still know it, as failed.
    pub fn kill_master_and_failover(&mut self, port: u16) -> Result<u16, EmbeddedError> {
        self.node(port)?;
        let master = own_view(port)?;
        if !master.master {
            return Err(EmbeddedError::Cluster(format!(
                "port {port} is not a master"
            )));
        }
        // Checked before the kill: without a replica the kill would only
        // break the cluster.
        let replicas: Vec<u16> = cluster_nodes(port)?
            .into_iter()
            .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
            .map(|n| n.port)
            .filter(|p| self.nodes.iter().any(|n| n.port == *p))
            .collect();
        let Some(&first_replica) = replicas.first() else {
            return Err(EmbeddedError::Cluster(format!(
                "master on port {port} has no replica to fail over to"
            )));
        };
        if let Some(index) = self.nodes.iter().position(|n| n.port == port) {
            self.nodes.remove(index).kill();
        }
        let promoted = || {
            replicas
                .iter()
                .copied()
                .find(|&r| own_view(r).is_ok_and(|me| me.master))
        };
        let started = Instant::now();
        while promoted().is_none() && started.elapsed() < AUTO_FAILOVER_TIMEOUT {
            std::thread::sleep(POLL_INTERVAL);
        }
        if promoted().is_none() {
            tracing::warn!(
                port,
                replica = first_replica,
                "no automatic failover in {AUTO_FAILOVER_TIMEOUT:?}, forcing a takeover"
            );
            let takeover = admin_query::<()>(
                first_replica,
                redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"),
            );
            // It fails if a replica got promoted meanwhile after all.
            if let Err(e) = takeover
                && promoted().is_none()
            {
                return Err(e);
            }
        }
        self.wait_settled(None)?;
        // Settled means every slot is served, so also the dead master's.
        promoted().ok_or_else(|| {
            EmbeddedError::Cluster(format!(
                "none of the replicas {replicas:?} of port {port} was promoted"
            ))
        })
    }

    /// Empties every master (`FLUSHALL`), for tests that reuse a cluster;
    /// returns once the replicas are empty too.
    pub fn flushall(&self) -> Result<(), EmbeddedError> {
        for (port, _) in self.masters() {
            admin_query::<()>(port, &redis::cmd("FLUSHALL"))?;
        }
        self.wait_settled(None)
    }

    /// `127.0.0.1:port` of each node.
    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    fn node(&self, port: u16) -> Result<&RedisServer, EmbeddedError> {
        self.nodes.iter().find(|n| n.port == port).ok_or_else(|| {
            EmbeddedError::Cluster(format!("no live node of this cluster on port {port}"))
        })
    }

    /// Waits, up to [`CLUSTER_SETTLE_TIMEOUT`], until the cluster has
    /// settled (see [`RedisCluster::settled`]).
    fn wait_settled(&self, replicas: Option<usize>) -> Result<(), EmbeddedError> {
        let started = Instant::now();
        loop {
            match self.settled(replicas) {
                Ok(()) => return Ok(()),
                Err(why) if started.elapsed() > CLUSTER_SETTLE_TIMEOUT => {
                    return Err(EmbeddedError::Cluster(format!(
                        "not settled after {CLUSTER_SETTLE_TIMEOUT:?}: {why}"
                    )));
                }
                Err(_) => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Whether the cluster has settled, or why not: every live node says
    /// `cluster_state:ok` with all slots served; all of them see the same
    /// live nodes with the same roles and the same slot map, which covers
    /// every slot once; every replica is connected to its master and has
    /// received all the master had sent when asked just before; and, if
    /// given, there are that many replicas.
    fn settled(&self, replicas: Option<usize>) -> Result<(), String> {
        let live: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        let mut agreed: Option<(u16, Vec<NodeView>)> = None;
        for &port in &live {
            let info: String =
                admin_query(port, redis::cmd("CLUSTER").arg("INFO")).map_err(|e| e.to_string())?;
            for (field, want) in [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_assigned", CLUSTER_SLOTS.to_string()),
                ("cluster_slots_ok", CLUSTER_SLOTS.to_string()),
            ] {
                let got = info_field(&info, field);
                if got != Some(want.as_str()) {
                    return Err(format!("port {port} has {field}:{}", got.unwrap_or("?")));
                }
            }
            // Its view of the live nodes; the killed ones do not matter.
            let mut view: Vec<NodeView> = cluster_nodes(port)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|n| live.contains(&n.port))
                .map(|n| NodeView { myself: false, ..n })
                .collect();
            view.sort_by_key(|n| n.port);
            match &agreed {
                None => agreed = Some((port, view)),
                Some((first, seen)) if *seen != view => {
                    return Err(format!(
                        "ports {first} and {port} disagree: {seen:?} versus {view:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        let Some((_, view)) = agreed else {
            return Err("no live node".to_string());
        };
        if view.len() != live.len() {
            return Err(format!("{} live nodes, {} known", live.len(), view.len()));
        }
        if let Some(n) = view.iter().find(|n| n.failing) {
            return Err(format!("port {} is seen as failing", n.port));
        }
        let mut ranges: Vec<(u16, u16)> = view.iter().flat_map(|n| n.slots.clone()).collect();
        ranges.sort();
        let mut next = 0u32;
        for (first, last) in ranges {
            if u32::from(first) != next {
                return Err(format!("slot map has a gap or overlap at slot {next}"));
            }
            next = u32::from(last) + 1;
        }
        if next != u32::from(CLUSTER_SLOTS) {
            return Err(format!("slots from {next} on are not served"));
        }
        let followers: Vec<&NodeView> = view.iter().filter(|n| !n.master).collect();
        if let Some(want) = replicas
            && followers.len() != want
        {
            return Err(format!(
                "{} replicas instead of {want}: {view:?}",
                followers.len()
            ));
        }
        for replica in followers {
            let port = replica.port;
            let Some(master) = view
                .iter()
                .find(|m| Some(m.id.as_str()) == replica.master_id.as_deref())
            else {
                return Err(format!("replica on port {port} follows no live master"));
            };
            // The master's offset first: the replica must have all of it.
            let sent = repl_offset(&replication_info(master.port)?, "master_repl_offset")?;
            let info = replication_info(port)?;
            if info_field(&info, "master_link_status") != Some("up") {
                return Err(format!("replica on port {port} is not connected"));
            }
            let got = repl_offset(&info, "slave_repl_offset")?;
            if got < sent {
                return Err(format!(
                    "replica on port {port} has {got} bytes of {sent} from port {}",
                    master.port
                ));
            }
        }
        Ok(())
    }
}

/// One line of `CLUSTER NODES`: a node as another (or itself) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeView {
    id: String,
    port: u16,
    /// The line is the answering node's own.
    myself: bool,
    /// A master, as opposed to a replica.
    master: bool,
    /// Suspected (`fail?`) or agreed (`fail`) to have failed.
    failing: bool,
    /// The id of its master, if it is a replica.
    master_id: Option<String>,
    /// The slot ranges it serves, inclusive (slots being imported or
    /// migrated are listed apart in `CLUSTER NODES`, and left out here).
    slots: Vec<(u16, u16)>,
}

/// The cluster as the node on `port` sees it (`CLUSTER NODES`).
fn cluster_nodes(port: u16) -> Result<Vec<NodeView>, EmbeddedError> {
    let text: String = admin_query(port, redis::cmd("CLUSTER").arg("NODES"))?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            parse_node_line(line).ok_or_else(|| EmbeddedError::Command {
                port,
                message: format!("unexpected CLUSTER NODES line {line:?}"),
            })
        })
        .collect()
}

/// What the node on `port` says of itself.
fn own_view(port: u16) -> Result<NodeView, EmbeddedError> {
    cluster_nodes(port)?
        .into_iter()
        .find(|n| n.myself)
        .ok_or_else(|| EmbeddedError::Command {
            port,
            message: "CLUSTER NODES has no `myself` line".to_string(),
        })
}

/// Parses `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
/// <pong-recv> <config-epoch> <link-state> <slot>...`.
fn parse_node_line(line: &str) -> Option<NodeView> {
    let mut fields = line.split_whitespace();
    let (id, address, flags, master_id) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    // After ping-sent, pong-recv, config-epoch and link-state.
    let slots = fields.skip(4);
    let (host_port, _bus) = address.split_once('@')?;
    let (_host, port) = host_port.rsplit_once(':')?;
    let flags: Vec<&str> = flags.split(',').collect();
    let mut ranges = Vec::new();
    for slot in slots.filter(|s| !s.starts_with('[')) {
        let (first, last) = slot.split_once('-').unwrap_or((slot, slot));
        ranges.push((first.parse().ok()?, last.parse().ok()?));
    }
    Some(NodeView {
        id: id.to_string(),
        port: port.parse().ok()?,
        myself: flags.contains(&"myself"),
        master: flags.contains(&"master"),
        failing: flags.contains(&"fail") || flags.contains(&"fail?"),
        master_id: (master_id != "-").then(|| master_id.to_string()),
        slots: ranges,
    })
}

/// Sends one administrative command to the node on `port`, on a
/// connection of its own with [`ADMIN_TIMEOUT`]s.
fn admin_query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, EmbeddedError> {
    let failed = |e: redis::RedisError| {
        let name: Vec<String> = cmd
            .args_iter()
            .take(2)
            .filter_map(|arg| match arg {
                redis::Arg::Simple(arg) => Some(String::from_utf8_lossy(arg).into_owned()),
                _ => None,
            })
            .collect();
        EmbeddedError::Command {
            port,
            message: format!("{}: {e}", name.join(" ")),
        }
    };
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|c| c.get_connection_with_timeout(ADMIN_TIMEOUT))
        .map_err(failed)?;
    let timeout = Some(ADMIN_TIMEOUT);
    conn.set_read_timeout(timeout).map_err(failed)?;
    conn.set_write_timeout(timeout).map_err(failed)?;
    cmd.query(&mut conn).map_err(failed)
}

/// `INFO replication` of the node on `port`, errors as text (for
/// [`RedisCluster::settled`]).
fn replication_info(port: u16) -> Result<String, String> {
    admin_query(port, redis::cmd("INFO").arg("replication")).map_err(|e| e.to_string())
}

/// A replication offset (`field`) from `INFO replication`.
fn repl_offset(info: &str, field: &str) -> Result<u64, String> {
    info_field(info, field)
        .and_then(|offset| offset.parse().ok())
        .ok_or_else(|| format!("no {field} in {info}"))
}

/// The value of `field` in an `INFO`-style answer (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// `text` without its terminal colour codes (`redis-cli` colours its
/// output even into a pipe).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip up to and including the final byte of the sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `N` loopback ports nobody listens on right now, all different: they are
/// held together while probed.
fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}
