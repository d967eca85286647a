//! The shared test harness: real `redis-server` processes on free loopback
//! ports, the example components built once per test process, and a small
//! HTTP client for talking to a served API.
//!
//! Every test builds what it needs from here, so that there is one way to
//! start Redis, one way to configure redstage, and one place that knows
//! where the components come from.

pub mod browser;
pub mod cluster;
pub mod http;
mod process;
mod proxy;
pub mod python;
mod tls;

pub use process::{HostProcess, Launch, binary as redstage_binary, signal};
pub use proxy::Proxy;
pub use tls::TlsFiles;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use redstage::config::Config;
pub use redstage::embedded::{Persistence, RedisServer};
use redstage::store::Key;
use redstage::txn::Coordinator;
use redstage::txn::types::{Status, TxnRequest, TxnResponse};
use serde_json::{Value, json};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// How a participant component is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// `cargo build --target wasm32-unknown-unknown --release`, linked into
    /// a component by `wasm-component-ld` (`.cargo/config.toml`): the SDK's
    /// default, a component importing nothing but the contract's `console`.
    Sdk,
    /// `cargo component build --release`: the documented path for authors.
    CargoComponent,
    /// `cargo build --target wasm32-wasip2 --release`.
    Wasip2,
}

impl Toolchain {
    fn out_dir(self) -> PathBuf {
        let triple = match self {
            Toolchain::Sdk => "wasm32-unknown-unknown",
            Toolchain::CargoComponent => "wasm32-wasip1",
            Toolchain::Wasip2 => "wasm32-wasip2",
        };
        workspace().join("target").join(triple).join("release")
    }
}

/// The participant components the harness builds, by package name: the
/// examples, and the test-only components under `tests/components/` (the
/// hostile ones each named for what they do wrong). All of them in one cargo
/// invocation per toolchain.
pub const COMPONENTS: &[&str] = &[
    "inventory",
    "payments",
    "social",
    "orders",
    "oncall",
    "infinite-loop",
    "memory-bomb",
    "deep-recursion",
    "panics",
    "huge-output",
    "many-writes",
    "undeclared-write",
    "odd-keys",
    "wasi-access",
    "counter-v1",
    "counter-v2",
    "register",
    "legacy-counter",
    "slow",
    "static-counter",
    "chatty",
];

/// The file a component of [`COMPONENTS`] is built to, in `components()`'s
/// folder: cargo names it after the library, `-` becoming `_`.
pub fn component_file(package: &str) -> String {
    format!("{}.wasm", package.replace('-', "_"))
}

/// Builds every component of [`COMPONENTS`] with `toolchain`, once per test
/// process, and returns the folder holding `<name>.wasm`.
pub fn components(toolchain: Toolchain) -> &'static Path {
    static SDK: OnceLock<PathBuf> = OnceLock::new();
    static COMPONENT: OnceLock<PathBuf> = OnceLock::new();
    static WASIP2: OnceLock<PathBuf> = OnceLock::new();
    let cell = match toolchain {
        Toolchain::Sdk => &SDK,
        Toolchain::CargoComponent => &COMPONENT,
        Toolchain::Wasip2 => &WASIP2,
    };
    cell.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        match toolchain {
            Toolchain::Sdk => cmd.args(["build", "--target", "wasm32-unknown-unknown"]),
            Toolchain::CargoComponent => cmd.args(["component", "build"]),
            Toolchain::Wasip2 => cmd.args(["build", "--target", "wasm32-wasip2"]),
        };
        cmd.arg("--release");
        for package in COMPONENTS {
            cmd.args(["-p", package]);
        }
        cmd.current_dir(workspace());
        let status = cmd
            .status()
            .expect("run cargo to build the participant components");
        assert!(
            status.success(),
            "building the participant components failed: {cmd:?}"
        );
        toolchain.out_dir()
    })
}

/// The JavaScript payments participant (`examples/payments-js`), built by
/// its `build.sh` (npm and ComponentizeJS) once per test process.
pub fn js_payments() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = workspace().join("examples/payments-js/build.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            out.status.success(),
            "building the JavaScript participant failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        workspace().join("target/js/payments_js.wasm")
    })
}

/// A participant to configure: name, component, store, prefix.
#[derive(Debug, Clone)]
pub struct ParticipantSpec {
    pub name: String,
    pub component: PathBuf,
    pub store: String,
    pub prefix: String,
}

impl ParticipantSpec {
    /// One of the [`COMPONENTS`] (an example or a test component), built
    /// with `cargo component` (the builds of before the SDK's own, which
    /// must keep running unchanged).
    pub fn example(name: &str, example: &str, store: &str, prefix: &str) -> ParticipantSpec {
        ParticipantSpec::built(Toolchain::CargoComponent, name, example, store, prefix)
    }

    /// One of the [`COMPONENTS`], built with `toolchain`.
    pub fn built(
        toolchain: Toolchain,
        name: &str,
        example: &str,
        store: &str,
        prefix: &str,
    ) -> ParticipantSpec {
        ParticipantSpec {
            name: name.into(),
            component: components(toolchain).join(component_file(example)),
            store: store.into(),
            prefix: prefix.into(),
        }
    }
}

/// Real Redis stores and a coordinator over them.
#[derive(Debug)]
pub struct TestEnv {
    /// Store name -> its server, in the order given.
    pub servers: Vec<(String, RedisServer)>,
    pub config: Config,
    /// The same config as a file, for `redstage` processes.
    pub config_path: PathBuf,
    /// Holds the config file.
    _config_dir: tempfile::TempDir,
    pub coordinator: Arc<Coordinator>,
    /// Stores reached through a proxy (see [`TestEnv::start_proxied`]).
    proxies: Vec<(String, Proxy)>,
}

impl TestEnv {
    /// Starts one `redis-server` per store name; the first store keeps the
    /// transaction log.
    pub fn start(stores: &[&str], participants: &[ParticipantSpec]) -> TestEnv {
        TestEnv::start_with(stores, participants, "", Persistence::None)
    }

    /// [`TestEnv::start`] with `extra` TOML appended to the config (e.g. a
    /// `[txn]` table with short leases) and servers of the given persistence.
    pub fn start_with(
        stores: &[&str],
        participants: &[ParticipantSpec],
        extra: &str,
        persistence: Persistence,
    ) -> TestEnv {
        TestEnv::start_proxied(stores, participants, extra, persistence, &[])
    }

    /// [`TestEnv::start_with`], with the stores named in `proxied` reached
    /// through a [`Proxy`] each (see [`TestEnv::proxy`]).
    pub fn start_proxied(
        stores: &[&str],
        participants: &[ParticipantSpec],
        extra: &str,
        persistence: Persistence,
        proxied: &[&str],
    ) -> TestEnv {
        TestEnv::start_full(stores, participants, extra, persistence, proxied, &[])
    }

    /// [`TestEnv::start`], with `keys` (participant, key, value) set in
    /// the participants' tables: `reuse_steps`, `reuse_audit`.
    pub fn start_tuned(
        stores: &[&str],
        participants: &[ParticipantSpec],
        keys: &[(&str, &str, toml::Value)],
    ) -> TestEnv {
        TestEnv::start_full(stores, participants, "", Persistence::None, &[], keys)
    }

    fn start_full(
        stores: &[&str],
        participants: &[ParticipantSpec],
        extra: &str,
        persistence: Persistence,
        proxied: &[&str],
        keys: &[(&str, &str, toml::Value)],
    ) -> TestEnv {
        let servers: Vec<(String, RedisServer)> = stores
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    RedisServer::start(persistence).expect("start redis-server"),
                )
            })
            .collect();
        let proxies: Vec<(String, Proxy)> = servers
            .iter()
            .filter(|(name, _)| proxied.contains(&name.as_str()))
            .map(|(name, server)| (name.clone(), Proxy::start(server.port())))
            .collect();
        let mut text = config_text(&servers, participants, extra);
        if !keys.is_empty() {
            let mut table: toml::Table = toml::from_str(&text).expect("the config is TOML");
            for (participant, key, value) in keys {
                table["participants"][*participant]
                    .as_table_mut()
                    .expect("a configured participant")
                    .insert((*key).to_owned(), value.clone());
            }
            text = toml::to_string(&table).expect("a table is TOML");
        }
        for (name, proxy) in &proxies {
            let direct = format!(
                "{name} = {:?}\n",
                servers
                    .iter()
                    .find(|(n, _)| n == name)
                    .expect("server")
                    .1
                    .url()
            );
            text = text.replacen(&direct, &format!("{name} = {:?}\n", proxy.url()), 1);
        }
        let (config, config_dir, config_path, coordinator) = configure(&text);
        TestEnv {
            servers,
            config,
            config_path,
            _config_dir: config_dir,
            coordinator,
            proxies,
        }
    }

    /// The proxy in front of `store`.
    pub fn proxy(&self, store: &str) -> &Proxy {
        &self
            .proxies
            .iter()
            .find(|(n, _)| n == store)
            .expect("a proxied store")
            .1
    }

    /// Another coordinator on the same stores, as a second host would be.
    pub fn second_host(&self) -> Arc<Coordinator> {
        Arc::new(redstage::cli::coordinator(&self.config).expect("build the coordinator"))
    }

    /// Starts the `redstage serve` binary on this environment's config.
    /// With `fault`, the named fault point is armed (see `txn::faults`).
    pub fn spawn_host(&self, fault: Option<&str>) -> HostProcess {
        HostProcess::start(&self.config_path, fault)
    }

    /// A host armed at fault `point` (see [`HostProcess::wait_for_point`]),
    /// once the request `body`, posted to it on a task of its own, stopped
    /// there; and that task, which answers only if the host goes on.
    pub async fn held_at(
        &self,
        point: &str,
        body: &Value,
    ) -> (
        HostProcess,
        tokio::task::JoinHandle<std::io::Result<(u16, Value)>>,
    ) {
        let host = self.spawn_host(Some(point));
        let (addr, body) = (host.addr, body.to_string());
        let request = tokio::spawn(async move {
            http::try_request(addr, "POST", "/v1/transactions", body.as_bytes()).await
        });
        host.wait_for_point(point).await;
        (host, request)
    }

    /// A `redstage serve` on this config as `launch` says, or what it
    /// printed when it refused to start.
    pub fn launch_host(&self, launch: &Launch) -> Result<HostProcess, Vec<String>> {
        HostProcess::try_launch(&self.config_path, launch)
    }

    /// The classic order: inventory on `orders`, payments on `ledger`.
    pub fn orders() -> TestEnv {
        TestEnv::orders_with("", Persistence::None)
    }

    /// [`TestEnv::orders`] with `extra` config and servers of the given
    /// persistence.
    pub fn orders_with(extra: &str, persistence: Persistence) -> TestEnv {
        TestEnv::start_with(
            &["orders", "ledger"],
            &[
                ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
                ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
            ],
            extra,
            persistence,
        )
    }

    /// [`TestEnv::orders`] with a deploy folder (returned, removed when
    /// dropped) and `extra` config right after its `folder` key, so that
    /// it may go on with keys of `[deploy]`.
    pub fn orders_with_folder(extra: &str) -> (TestEnv, tempfile::TempDir) {
        let folder = tempfile::tempdir().expect("temp dir");
        let env = TestEnv::orders_with(
            &format!(
                "[deploy]\nfolder = {:?}\n{extra}",
                folder.path().display().to_string()
            ),
            Persistence::None,
        );
        (env, folder)
    }

    pub fn server(&self, store: &str) -> &RedisServer {
        &self
            .servers
            .iter()
            .find(|(n, _)| n == store)
            .expect("known store")
            .1
    }

    pub fn server_mut(&mut self, store: &str) -> &mut RedisServer {
        &mut self
            .servers
            .iter_mut()
            .find(|(n, _)| n == store)
            .expect("known store")
            .1
    }

    /// A plain Redis connection to a store, as any other application has.
    pub fn redis(&self, store: &str) -> redis::Connection {
        redis::Client::open(self.server(store).url())
            .and_then(|c| c.get_connection())
            .expect("connect to redis")
    }

    /// `GET key` on a store, once the key is settled (see
    /// [`TestEnv::settle_key`]).
    pub async fn get(&self, store: &str, key: &str) -> Option<String> {
        self.settle_key(store, key).await;
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.redis(store))
            .expect("GET")
    }

    /// Waits (up to [`SETTLE_TIMEOUT`]) until no transaction holds `key`: a
    /// committed transaction answers before its other stores apply, so a
    /// plain read right after an answer may still see the old value for a
    /// moment (while a transaction reading it would roll it forward).
    pub async fn settle_key(&self, store: &str, key: &str) {
        let meta = Key::Meta(key).encode();
        let started = std::time::Instant::now();
        while started.elapsed() < SETTLE_TIMEOUT {
            let locked: bool = redis::cmd("EXISTS")
                .arg(&meta)
                .query(&mut self.redis(store))
                .expect("EXISTS");
            if !locked {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits (up to [`SETTLE_TIMEOUT`]) until no lock is held on any store.
    pub async fn settle(&self) {
        let started = std::time::Instant::now();
        while started.elapsed() < SETTLE_TIMEOUT && !self.unfinished().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Every key on a store with its type and content, sorted, once settled:
    /// what a test compares to prove nothing else changed.
    pub async fn dump(&self, store: &str) -> Vec<(String, String)> {
        self.settle().await;
        self.dump_now(store)
    }

    /// [`TestEnv::dump`] as it is right now. A host may still be finishing
    /// or expiring its own keys, so a key listed and gone before it is read
    /// is left out rather than read as empty.
    pub fn dump_now(&self, store: &str) -> Vec<(String, String)> {
        let mut conn = self.redis(store);
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).expect("KEYS");
        keys.sort();
        keys.into_iter()
            .filter_map(|k| {
                let kind: String = redis::cmd("TYPE").arg(&k).query(&mut conn).expect("TYPE");
                let content = match kind.as_str() {
                    "none" => None,
                    "string" => redis::cmd("GET")
                        .arg(&k)
                        .query::<Option<String>>(&mut conn)
                        .expect("GET"),
                    "hash" => {
                        let mut fields: Vec<(String, String)> = redis::cmd("HGETALL")
                            .arg(&k)
                            .query(&mut conn)
                            .expect("HGETALL");
                        fields.sort();
                        (!fields.is_empty()).then(|| format!("{fields:?}"))
                    }
                    "zset" => {
                        let members: Vec<String> = redis::cmd("ZRANGE")
                            .arg(&k)
                            .arg(0)
                            .arg(-1)
                            .query(&mut conn)
                            .expect("ZRANGE");
                        (!members.is_empty()).then(|| format!("{members:?}"))
                    }
                    other => Some(format!("<{other}>")),
                };
                content.map(|content| (k, content))
            })
            .collect()
    }

    /// Keys of redstage's that say a transaction is unfinished, after
    /// waiting for in-flight applies to settle: any lock, any lock index
    /// entry, on any store. Empty when everything is settled.
    pub async fn leftovers(&self) -> Vec<String> {
        self.settle().await;
        self.unfinished()
    }

    /// Transaction ids holding locks on any store, from the lock indexes,
    /// sorted, each once.
    pub fn lock_holders(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .servers
            .iter()
            .flat_map(|(store, _)| {
                let entries: Vec<String> = redis::cmd("ZRANGE")
                    .arg(Key::LockIndex.encode())
                    .arg(0)
                    .arg(-1)
                    .query(&mut self.redis(store))
                    .expect("ZRANGE");
                entries
            })
            .map(|e| e.split('\n').next().expect("txn id").to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// [`TestEnv::leftovers`] as they are right now.
    pub fn unfinished(&self) -> Vec<String> {
        self.servers
            .iter()
            .flat_map(|(store, _)| {
                self.dump_now(store).into_iter().filter_map(move |(k, v)| {
                    let unfinished = k.starts_with("rs:{") || k == "rs:locks";
                    unfinished.then(|| format!("{store}: {k} = {v}"))
                })
            })
            .collect()
    }

    /// Stocks `qty` of `sku` and deposits `amount` to `account`, in one
    /// transaction of the example participants that must commit.
    pub async fn stock_and_fund(&self, sku: &str, qty: i64, account: &str, amount: i64) {
        let r = self
            .run(json!([
                step(
                    "inventory",
                    json!({"op": "restock", "sku": sku, "qty": qty})
                ),
                step(
                    "payments",
                    json!({"op": "deposit", "account": account, "amount": amount})
                ),
            ]))
            .await;
        assert_eq!(r.status, Status::Committed, "stocking and funding: {r:?}");
    }

    /// Runs a transaction given as `[{"participant":..,"input":..}, ...]`,
    /// and waits for what it still applies after its answer.
    pub async fn run(&self, steps: Value) -> TxnResponse {
        let response = self
            .coordinator
            .run(request(steps))
            .await
            .expect("transaction ran");
        self.coordinator.flush().await;
        response
    }
}

/// The config `text`, parsed, written to a file in a folder of its own
/// (for `redstage` processes), and a coordinator on it.
pub(crate) fn configure(text: &str) -> (Config, tempfile::TempDir, PathBuf, Arc<Coordinator>) {
    let config = Config::parse(text).expect("valid test config");
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config_path = config_dir.path().join("redstage.toml");
    std::fs::write(&config_path, text).expect("write the config");
    let coordinator = Arc::new(redstage::cli::coordinator(&config).expect("build the coordinator"));
    (config, config_dir, config_path, coordinator)
}

/// The wall time one participant call may take in a test's config (the
/// default is 200 ms), unless the test sets `[limits]` itself.
pub const TEST_CALL_TIME_MS: i64 = 2000;

/// How long a test waits for answered transactions to finish applying
/// before it looks at raw Redis.
pub const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A transaction request from a JSON list of steps.
pub fn request(steps: Value) -> TxnRequest {
    serde_json::from_value(json!({ "steps": steps })).expect("well-formed request")
}

/// A step.
pub fn step(participant: &str, input: Value) -> Value {
    json!({"participant": participant, "input": input})
}

/// Where test hosts keep compiled components, unless a test's own `[cache]`
/// says otherwise: shared by every test, so each component version is
/// compiled once per machine rather than once per host.
pub fn shared_cache_dir() -> PathBuf {
    workspace().join("target/redstage-test-cache")
}

/// The config text for `servers` and `participants`, with `extra` TOML
/// appended. The first server keeps the log.
pub fn config_text(
    servers: &[(String, RedisServer)],
    participants: &[ParticipantSpec],
    extra: &str,
) -> String {
    let mut config = toml::Table::new();
    config.insert("log_store".into(), servers[0].0.clone().into());
    // Stores without persistence cannot pass the durability check; the
    // tests that are about durability start durable ones.
    let durable = servers
        .iter()
        .all(|(_, s)| s.persistence() == Persistence::AofAlways);
    if !durable && !extra.contains("durability") {
        config.insert("durability".into(), "unsafe".into());
    }
    let stores: toml::Table = servers
        .iter()
        .map(|(name, server)| (name.clone(), server.url().into()))
        .collect();
    config.insert("stores".into(), stores.into());
    let participants: toml::Table = participants
        .iter()
        .map(|p| {
            let table = toml::Table::from_iter([
                (
                    "component".to_owned(),
                    p.component.display().to_string().into(),
                ),
                ("store".to_owned(), p.store.clone().into()),
                ("prefix".to_owned(), p.prefix.clone().into()),
            ]);
            (p.name.clone(), table.into())
        })
        .collect();
    config.insert("participants".into(), participants.into());
    // Calls are bounded by wall time, which a test machine busy with a
    // whole suite (and its builds) stretches: the tests of the time limit
    // set it themselves.
    if !extra.contains("[limits]") {
        let limits =
            toml::Table::from_iter([("call_time_ms".to_owned(), TEST_CALL_TIME_MS.into())]);
        config.insert("limits".into(), limits.into());
    }
    if !extra.contains("[cache]") {
        let dir = shared_cache_dir().display().to_string();
        let cache = toml::Table::from_iter([("dir".to_owned(), dir.into())]);
        config.insert("cache".into(), cache.into());
    }
    toml::to_string(&config).expect("a table is TOML") + extra
}
