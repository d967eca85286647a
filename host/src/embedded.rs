//! Local `redis-server` processes, for the demo and the tests: started on a
//! free loopback port in a directory of their own, stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh `redis-server` gets to answer `PING`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports tried before giving up on starting a server.
const PORT_TRIES: usize = 5;

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
}

impl RedisServer {
    /// Starts a server on a free port. Another process may take the port
    /// between our probe and the server's bind, so a few ports are tried.
    pub fn start(persistence: Persistence) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(persistence, None, None)
    }

    /// [`RedisServer::start`], also listening over TLS on a port of its own
    /// (see [`RedisServer::tls_url`]); the plain port stays, for tools.
    pub fn start_tls(
        persistence: Persistence,
        tls: &ServerTls,
    ) -> Result<RedisServer, EmbeddedError> {
        RedisServer::start_with(persistence, None, Some(tls))
    }

    /// Starts a replica of `primary` and waits until it has synchronized.
    pub fn replica_of(
        primary: &RedisServer,
        persistence: Persistence,
    ) -> Result<RedisServer, EmbeddedError> {
        let replica = RedisServer::start_with(persistence, Some(primary.port), None)?;
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
    ) -> Result<RedisServer, EmbeddedError> {
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let dir = tempfile::Builder::new()
                .prefix("redstage-redis-")
                .tempdir()
                .map_err(EmbeddedError::Spawn)?;
            let mut server = RedisServer {
                port: free_port().map_err(EmbeddedError::Spawn)?,
                persistence,
                dir,
                primary,
                tls: match tls {
                    Some(tls) => Some((free_port().map_err(EmbeddedError::Spawn)?, tls.clone())),
                    None => None,
                },
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

/// A loopback port nobody listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
