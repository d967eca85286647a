//! `redstage serve` as a separate process, to be killed or stopped the way
//! a crashing or stalling host would be.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redstage::txn::faults::FAULT_ENV;

/// How long a request gets to reach an armed fault point.
pub const FAULT_POINT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a host gets to start serving.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The `redstage` binary with fault points compiled in, built once per
/// test process.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "redstage-host",
                "--features",
                "failpoints,embedded",
                "--bin",
                "redstage",
            ])
            .current_dir(crate::workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the redstage binary failed");
        crate::workspace().join("target/debug/redstage")
    })
}

/// How [`HostProcess::try_launch`] starts a host.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// The fault point to arm (see `redstage::txn::faults`).
    pub fault: Option<&'a str>,
    /// Listen on every interface rather than on loopback only (the host is
    /// still reached over loopback).
    pub all_interfaces: bool,
    /// More arguments for `serve`.
    pub args: &'a [&'a str],
    /// More environment variables.
    pub envs: &'a [(&'a str, &'a str)],
}

/// A running `redstage serve`, killed on drop.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Everything the host printed to stderr so far.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl HostProcess {
    pub fn start(config: &Path, fault: Option<&str>) -> HostProcess {
        HostProcess::try_start(config, fault)
            .unwrap_or_else(|stderr| panic!("redstage did not start: {stderr:?}"))
    }

    /// Starts a host that may refuse to: its stderr if it exits instead of
    /// serving.
    pub fn try_start(config: &Path, fault: Option<&str>) -> Result<HostProcess, Vec<String>> {
        let launch = Launch {
            fault,
            ..Launch::default()
        };
        HostProcess::try_launch(config, &launch)
    }

    /// [`HostProcess::try_start`], as `launch` says.
    pub fn try_launch(config: &Path, launch: &Launch) -> Result<HostProcess, Vec<String>> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listen = match launch.all_interfaces {
            true => SocketAddr::from(([0, 0, 0, 0], port)),
            false => addr,
        };
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen.to_string())
            .args(launch.args);
        cmd.env("RUST_LOG", "info").env_remove(FAULT_ENV);
        if let Some(fault) = launch.fault {
            cmd.env(FAULT_ENV, fault);
        }
        cmd.envs(launch.envs.iter().copied());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redstage");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("lock").push(line);
            }
        });
        let mut host = HostProcess {
            child,
            addr,
            stderr,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if host.exited() {
                // Let the reader thread take in the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(host.stderr());
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "redstage did not start: {:?}",
                host.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(host)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the host printed to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until the host printed a line containing `needle`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_n(needle, 1, timeout).await
    }

    /// Waits until the host reached fault point `point` (its name, or
    /// `name:ms`), and panics with what it printed if it does not within
    /// [`FAULT_POINT_TIMEOUT`].
    pub async fn wait_for_point(&self, point: &str) {
        let name = point.split(':').next().unwrap_or(point);
        let reached = format!("reached fault point {name}");
        if !self.wait_for(&reached, FAULT_POINT_TIMEOUT).await {
            panic!("{point}: never reached; {:?}", self.stderr());
        }
    }

    /// Waits until the host printed `n` lines containing `needle`.
    pub async fn wait_for_n(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.stderr().iter().filter(|l| l.contains(needle)).count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// SIGKILL: the host dies at once, wherever it is.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `timeout`) for the host to exit on its own: its exit
    /// status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Whether the process has exited (and was reaped).
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGSTOP: the host freezes, holding whatever it holds.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT: the host goes on as if nothing happened.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if !self.exited() {
            // A stopped process gets SIGKILL too, but resume it first so
            // that nothing is left stopped should the kill race its exit.
            self.resume();
            self.kill();
        }
    }
}

/// Sends a signal to a process (also used on redis-server).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
