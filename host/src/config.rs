//! The service configuration: one TOML file naming the stores, the log store
//! and the participants. Every path in it is relative to the file.
//!
//! ```toml
//! listen = "127.0.0.1:7878"
//! log_store = "orders"                 # where idempotency keys live
//! durability = "checked"               # or "unsafe" (see store::durability)
//! [stores]
//! orders = "redis://127.0.0.1:6379"
//! [stores.ledger]                      # a store whose writes wait for replicas
//! url = "redis://127.0.0.1:6380"
//! wait_replicas = 1
//! [participants.inventory]
//! component = "path/to/inventory.wasm"
//! store = "orders"
//! prefix = "inventory:"
//! reuse_steps = 0                       # steps per instance (optional; 0: fresh per step)
//! [participants.inventory.limits]       # this participant's own (optional)
//! call_time_ms = 50
//! [limits]                              # every participant call (optional)
//! call_time_ms = 200
//! [txn]                                 # the protocol's bounds (optional)
//! lease_ms = 5000
//! [cache]                               # compiled components (optional)
//! dir = "/var/cache/redstage"
//! [deploy]                              # participants deployed at run time (optional)
//! folder = "participants"
//! [[auth.tokens]]                       # bearer tokens (optional; see api::auth)
//! name = "shop"
//! token_env = "REDSTAGE_SHOP_TOKEN"
//! scopes = ["submit"]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::auth::AuthConfig;
use crate::runtime::{CallLimits, LimitOverrides, RuntimeSettings};
use crate::store::durability::{Durability, Replication};
use crate::store::keys::RESERVED_PREFIX;

/// What the names of the environment variables that set config values
/// start with (see [`Config::parse_with`]).
pub const ENV_PREFIX: &str = "REDSTAGE_";

/// The config's top-level keys and sections: the first level of a
/// variable's path must be one of them.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "log_store",
    "durability",
    "stores",
    "participants",
    "limits",
    "txn",
    "cache",
    "deploy",
    "runtime",
    "auth",
];

/// Sets `path` in `table` to `value` (see [`Config::parse_with`]), making
/// the tables on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: &str) -> Result<(), String> {
    let (leaf, parents) = path.split_last().expect("a path has a level");
    let mut at = table;
    for (i, key) in parents.iter().enumerate() {
        let next = at
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next.as_table_mut().ok_or_else(|| {
            format!(
                "`{}` is a value, not a table to set keys in",
                path[..=i].join(".")
            )
        })?;
    }
    let typed = match at.get(leaf) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_owned()),
        _ => toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned())),
    };
    at.insert(leaf.clone(), typed);
    Ok(())
}

/// The address `serve` listens on when the config names none.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The store that keeps idempotency keys, and the decision records of
    /// transactions that touch it or span stores. With one store, that one
    /// by default.
    #[serde(default)]
    pub log_store: String,
    /// Whether every store must keep acknowledged writes across a crash
    /// (see `store::durability`); checked at start unless `unsafe`.
    #[serde(default)]
    pub durability: Durability,
    /// Store name -> Redis URL (`redis://`, `redis://user:pass@host:port/db`,
    /// `rediss://` for TLS, `redis+cluster://[user:pass@]host:port,host:port`
    /// for a Redis Cluster's seed nodes), or a table with the URL and the
    /// replicas its writes wait for.
    pub stores: BTreeMap<String, StoreConfig>,
    #[serde(default)]
    pub participants: BTreeMap<String, ParticipantConfig>,
    /// Limits on every participant call, unless a participant overrides them.
    #[serde(default)]
    pub limits: CallLimits,
    #[serde(default)]
    pub txn: TxnConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub deploy: DeployConfig,
    /// The instance pool every participant call runs in.
    #[serde(default)]
    pub runtime: RuntimeSettings,
    /// Bearer tokens and their scopes (see `api::auth`).
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}

/// One store: its URL, or a table with the URL and replication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "toml::Value", into = "StoreTable")]
pub struct StoreConfig {
    pub url: String,
    /// `WAIT` for replicas after every write, if set.
    pub replication: Option<Replication>,
    /// Certificates for a `rediss://` URL, if not the system's.
    pub tls: StoreTls,
}

/// The certificates of a store reached over TLS (`rediss://`): the CA that
/// signed the server's certificate (else the system's roots are trusted),
/// and the client's own certificate and key when the server asks for one
/// (`tls-auth-clients`). Paths are relative to the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The table form of a store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct StoreTable {
    url: String,
    /// Replicas every write must reach before it counts (0: none).
    #[serde(default)]
    wait_replicas: u32,
    /// How long a write waits for them before it fails.
    #[serde(default = "default_wait_timeout_ms")]
    wait_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_key_file: Option<PathBuf>,
}

fn default_wait_timeout_ms() -> u64 {
    1_000
}

impl TryFrom<toml::Value> for StoreConfig {
    type Error = String;

    fn try_from(value: toml::Value) -> Result<StoreConfig, String> {
        let table: StoreTable = match value {
            toml::Value::String(url) => return Ok(StoreConfig::from(url.as_str())),
            toml::Value::Table(_) => value.try_into().map_err(|e: toml::de::Error| {
                format!(
                    "{}; a store is a URL or a table {{url, wait_replicas, wait_timeout_ms, \
                     tls_ca_file, tls_cert_file, tls_key_file}}",
                    e.message()
                )
            })?,
            other => {
                return Err(format!(
                    "a store is a URL (\"redis://host:port\") or a table {{url = ..., wait_replicas = ...}}, not {}",
                    other.type_str()
                ));
            }
        };
        let tls = StoreTls {
            ca_file: table.tls_ca_file,
            cert_file: table.tls_cert_file,
            key_file: table.tls_key_file,
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err("tls_cert_file and tls_key_file go together".into());
        }
        if tls != StoreTls::default() && !table.url.starts_with("rediss://") {
            return Err(format!(
                "tls_* files are for a rediss:// URL, not {}",
                table.url
            ));
        }
        Ok(StoreConfig {
            url: table.url,
            replication: (table.wait_replicas > 0).then_some(Replication {
                replicas: table.wait_replicas,
                timeout_ms: table.wait_timeout_ms,
            }),
            tls,
        })
    }
}

impl From<StoreConfig> for StoreTable {
    fn from(store: StoreConfig) -> StoreTable {
        StoreTable {
            url: store.url,
            wait_replicas: store.replication.map_or(0, |r| r.replicas),
            wait_timeout_ms: store
                .replication
                .map_or(default_wait_timeout_ms(), |r| r.timeout_ms),
            tls_ca_file: store.tls.ca_file,
            tls_cert_file: store.tls.cert_file,
            tls_key_file: store.tls.key_file,
        }
    }
}

impl From<&str> for StoreConfig {
    fn from(url: &str) -> StoreConfig {
        StoreConfig {
            url: url.to_owned(),
            replication: None,
            tls: StoreTls::default(),
        }
    }
}

/// One participant: which component, on which store, in which namespaces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    pub component: PathBuf,
    pub store: String,
    /// Every key the participant names is stored under `prefix + key`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Instead of `prefix`: the participant names keys in full, and each
    /// must start with one of these (an existing layout, `stock:` and
    /// `reserved:` say, kept as it is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
    /// Keys of the global `[limits]` this participant's calls run under
    /// instead (a tighter bound for an untrusted one, a looser one for a
    /// participant that needs it); every key left out keeps the global value.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// Steps one instance may serve (see `runtime::reuse`); 0, the default:
    /// a fresh instance per step, the guarantee that no state of one step
    /// is visible to another.
    #[serde(default)]
    pub reuse_steps: u32,
    /// The fraction of reused steps also run on a fresh instance and
    /// compared (0 to 1).
    #[serde(default = "crate::participants::folder::default_reuse_audit")]
    pub reuse_audit: f64,
}

impl ParticipantConfig {
    /// The participant's reuse settings.
    pub fn reuse(&self) -> crate::runtime::ReusePolicy {
        crate::runtime::ReusePolicy {
            steps: self.reuse_steps,
            audit: self.reuse_audit,
        }
    }
}

/// Bounds of the protocol itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxnConfig {
    /// How long a lock holds before anyone may resolve it. Longer than any
    /// healthy prepare-to-commit interval; shorter than users will wait.
    pub lease_ms: u64,
    /// Runs of one transaction (the first and the re-runs after conflicts)
    /// before it aborts with `conflict`.
    pub attempts_max: u32,
    /// First backoff after a conflict; doubles per attempt, with full jitter.
    pub backoff_base_ms: u64,
    /// Cap on one backoff.
    pub backoff_max_ms: u64,
    /// Bound on one Redis operation; past it the store counts as unavailable.
    pub store_timeout_ms: u64,
    /// How long a decision is kept once nothing needs it for recovery, when
    /// its client may not know it: an `outcome_unknown` answer, a
    /// transaction finished by recovery, a recovery's `aborted` fence, an
    /// idempotency outcome. Must exceed any lease by far: a coordinator that
    /// stalled past its fence must still find it.
    pub record_retention_s: u64,
    /// How long the outcome of a transaction that was answered stays
    /// readable by id (`GET /v1/transactions/{id}`); 0 keeps none of an
    /// abort, and a commit's for two leases only (see
    /// [`TxnConfig::finalized_retention`]). The records of answered
    /// transactions cost memory for this long (see the README), read-only
    /// transactions never have one.
    pub answered_retention_s: u64,
    /// How long a transaction may wait, all told, for locks held by others
    /// to be released before it gives up with `conflict`.
    pub lock_wait_ms: u64,
    /// Steps in one transaction.
    pub steps_max: usize,
    /// How long a request holds its idempotency key before a retry may take
    /// it over. Longer than any transaction runs (attempts and backoff
    /// included); a request still running past it can no longer commit.
    pub idempotency_lease_ms: u64,
    /// How long a retry waits for a first request still running, before it
    /// answers `in_flight`.
    pub idempotency_wait_ms: u64,
    /// Pause between recovery sweeps in `serve`: the longest an expired lock
    /// waits for recovery when no transaction meets it.
    pub sweep_interval_ms: u64,
    /// Transactions one host runs at once; one more is answered
    /// `503 overloaded` at once, before it touches Redis. Bounds the memory
    /// and the queue of a flood.
    pub in_flight_max: usize,
    /// How long a transaction waits for instance slots
    /// (`runtime.instance_pool`) before it is answered `503 overloaded`,
    /// having touched nothing.
    pub slot_wait_ms: u64,
    /// How long `serve`, told to stop (SIGTERM, Ctrl-C), lets the
    /// transactions in flight finish before it exits; whatever is still
    /// running then is left to recovery.
    pub shutdown_grace_ms: u64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            lease_ms: 5_000,
            attempts_max: 10,
            backoff_base_ms: 2,
            backoff_max_ms: 200,
            store_timeout_ms: 2_000,
            record_retention_s: 7 * 24 * 3600,
            answered_retention_s: 600,
            lock_wait_ms: 10_000,
            steps_max: 64,
            idempotency_lease_ms: 30_000,
            idempotency_wait_ms: 10_000,
            sweep_interval_ms: 1_000,
            in_flight_max: 1_024,
            slot_wait_ms: 1_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl TxnConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }
    pub fn record_retention(&self) -> Duration {
        Duration::from_secs(self.record_retention_s)
    }
    pub fn answered_retention(&self) -> Duration {
        Duration::from_secs(self.answered_retention_s)
    }
    /// How long a committed record is kept once every store has applied it
    /// and its client was answered: `answered_retention_s`, but at least two
    /// leases. A host that read a lock or a marker of the transaction an
    /// instant before it was finalized may still be about to fence it; it
    /// fences only within half a lease of its read (see `txn::recovery`), so
    /// it finds the record rather than nothing, even if it stalls for a
    /// lease and a half more, and never writes `aborted` over a commit.
    pub fn finalized_retention(&self) -> Duration {
        self.answered_retention().max(2 * self.lease())
    }
    pub fn lock_wait(&self) -> Duration {
        Duration::from_millis(self.lock_wait_ms)
    }
    pub fn idempotency_lease(&self) -> Duration {
        Duration::from_millis(self.idempotency_lease_ms)
    }
    pub fn idempotency_wait(&self) -> Duration {
        Duration::from_millis(self.idempotency_wait_ms)
    }
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms)
    }
    pub fn slot_wait(&self) -> Duration {
        Duration::from_millis(self.slot_wait_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Participants deployed at run time (see `participants::folder`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// A folder of `NAME.wasm` + `NAME.toml` participants: loaded at start,
    /// watched for changes, and written by deploys. Without it, only the
    /// participants of this file exist and deploys are refused.
    pub folder: Option<PathBuf>,
    /// How often `serve` looks for changes in the folder.
    pub poll_ms: u64,
    /// The largest component a deploy accepts. Guards memory and compile
    /// time against an oversized upload.
    pub component_bytes_max: usize,
    /// Versions of each participant kept in the folder for rollbacks, the
    /// current one included (see `participants::folder`). Bounds the
    /// folder's size.
    pub versions_max: usize,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            folder: None,
            poll_ms: 1_000,
            component_bytes_max: 16 << 20,
            versions_max: 5,
        }
    }
}

impl DeployConfig {
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// Where compiled components are kept (see `runtime::CompileCache`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Without the cache every start compiles every component.
    pub enabled: bool,
    /// The folder; by default `$XDG_CACHE_HOME/redstage`, else
    /// `$HOME/.cache/redstage`, else no cache.
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
        }
    }
}

impl CacheConfig {
    /// The folder to use, if any.
    pub fn folder(&self) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        self.dir.clone().or_else(|| {
            let xdg = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from);
            let home = || std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"));
            xdg.filter(|p| p.is_absolute())
                .or_else(home)
                .map(|base| base.join("redstage"))
        })
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and checks `path`, with the values the environment
    /// sets (see [`Config::parse_with`]); component paths come back
    /// absolute.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse_with(&text, std::env::vars()).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in config.participants.values_mut() {
            p.component = base.join(&p.component);
        }
        let tls_files = config.stores.values_mut().flat_map(|s| {
            [
                &mut s.tls.ca_file,
                &mut s.tls.cert_file,
                &mut s.tls.key_file,
            ]
        });
        for dir in [&mut config.cache.dir, &mut config.deploy.folder]
            .into_iter()
            .chain(tls_files)
            .flatten()
        {
            *dir = base.join(&*dir);
        }
        Ok(config)
    }

    /// Parses and checks a config text (paths left as written).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, std::iter::empty())
    }

    /// [`Config::parse`], with any value set by the variables among `vars`
    /// named `REDSTAGE_` and the value's path upper-cased, levels joined by
    /// `__`: `REDSTAGE_TXN__LEASE_MS=3000`,
    /// `REDSTAGE_STORES__LEDGER=redis://:secret@host:6379`. Variables whose
    /// first level is no section or key of the config are not for it. A
    /// value replaces a string of the file as it is; otherwise it is read
    /// as a TOML value (`3000`, `true`, `["read"]`), and taken as a string
    /// if it is none.
    pub fn parse_with(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::new(),
            message,
        };
        let vars: Vec<(String, Vec<String>, String)> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let path = name.strip_prefix(ENV_PREFIX)?;
                let path: Vec<String> = path.split("__").map(str::to_lowercase).collect();
                TOP_LEVEL_KEYS
                    .contains(&path[0].as_str())
                    .then_some((name, path, value))
            })
            .collect();
        // Without variables, straight from the text: errors keep their line.
        let config: Config = if vars.is_empty() {
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
            for (name, path, value) in &vars {
                set_path(&mut table, path, value)
                    .map_err(|m| ConfigError::Invalid(format!("{name}: {m}")))?;
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let names: Vec<&str> = vars.iter().map(|(n, ..)| n.as_str()).collect();
                    parse_error(format!("{e} (with values from {})", names.join(", ")))
                })?
        };
        let mut config = config;
        if config.log_store.is_empty() {
            let mut stores = config.stores.keys();
            config.log_store = match (stores.next(), stores.next()) {
                (Some(only), None) => only.clone(),
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "log_store names the store that keeps decisions and idempotency keys; \
                         with {} stores it must be given: one of {}",
                        config.stores.len(),
                        config.stores.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            };
        }
        config.check()?;
        Ok(config)
    }

    /// The limits participant `name`'s calls run under: the global
    /// `[limits]`, with the keys of its own `limits` table replaced.
    pub fn limits_of(&self, name: &str, p: &ParticipantConfig) -> Result<CallLimits, ConfigError> {
        p.limits
            .apply(&self.limits)
            .map_err(|m| ConfigError::Invalid(format!("[participants.{name}.limits]: {m}")))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.stores.contains_key(&self.log_store) {
            return invalid(format!("log_store `{}` is not in [stores]", self.log_store));
        }
        if self.stores[&self.log_store]
            .url
            .starts_with(crate::store::cluster::SCHEME)
        {
            return invalid(format!(
                "log_store `{}` is a Redis Cluster: the log store keeps decision records and \
                 idempotency keys, written in one script with a transaction's commit point, so \
                 it must be a single Redis (with replicas if it needs them); a cluster store can \
                 hold any participant's data",
                self.log_store
            ));
        }
        let fits = |what: &str, limits: &CallLimits| {
            let (memory, table) = (
                self.runtime.memory_slot_bytes,
                self.runtime.table_slot_elements,
            );
            if limits.memory_bytes_max > memory || limits.table_elements_max > table {
                return invalid(format!(
                    "{what}: memory_bytes_max and table_elements_max must fit the instance pool's \
                     slots (runtime.memory_slot_bytes = {memory}, runtime.table_slot_elements = \
                     {table}); raise those to grant more"
                ));
            }
            Ok(())
        };
        fits("[limits]", &self.limits)?;
        if (self.runtime.instance_pool as usize) < self.txn.steps_max {
            return invalid(format!(
                "runtime.instance_pool ({}) must hold txn.steps_max ({}) instances: a transaction \
                 reserves one per step",
                self.runtime.instance_pool, self.txn.steps_max
            ));
        }
        for (name, p) in &self.participants {
            crate::participants::folder::check_name(name)
                .map_err(|e| ConfigError::Invalid(format!("[participants.{name:?}]: {e}")))?;
            fits(
                &format!("[participants.{name}.limits]"),
                &self.limits_of(name, p)?,
            )?;
            p.reuse()
                .check()
                .map_err(|m| ConfigError::Invalid(format!("[participants.{name}]: {m}")))?;
            let others = self.participants.iter().map(|(n, q)| {
                (
                    n.as_str(),
                    q.store.as_str(),
                    namespaces(&q.prefix, &q.prefixes),
                )
            });
            self.check_placement(name, &p.store, (&p.prefix, &p.prefixes), others)
                .map_err(ConfigError::Invalid)?;
        }
        if self.txn.attempts_max == 0
            || self.txn.lease_ms == 0
            || self.txn.steps_max == 0
            || self.txn.in_flight_max == 0
        {
            return invalid(
                "txn.attempts_max, txn.lease_ms, txn.steps_max and txn.in_flight_max must be \
                 positive"
                    .into(),
            );
        }
        if self.txn.record_retention_s * 1000 < 100 * self.txn.lease_ms {
            return invalid("txn.record_retention_s must be at least 100 leases".into());
        }
        if self.txn.lease_ms < 2 * self.txn.store_timeout_ms {
            return invalid(format!(
                "txn.lease_ms ({}) must be at least twice txn.store_timeout_ms ({}): a \
                 coordinator holding locks may wait that long for its read-and-lock round and \
                 again for its commit point, and a shorter lease lets others fence it off meanwhile",
                self.txn.lease_ms, self.txn.store_timeout_ms
            ));
        }
        if self.txn.answered_retention_s > self.txn.record_retention_s {
            return invalid(
                "txn.answered_retention_s must not exceed txn.record_retention_s".into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// Whether participant `name` may live on `store` in its namespaces
    /// (its `prefix`, or its `prefixes`), next to `others` (name, store,
    /// namespaces; `name` itself is skipped): the store must exist, and
    /// each prefix must be non-empty, clear of redstage's own keys and of
    /// every other participant's on the store, so that no participant can
    /// reach another's keys. One of `prefix` and `prefixes` is given, not
    /// both.
    pub fn check_placement<'a>(
        &self,
        name: &str,
        store: &str,
        (prefix, prefixes): (&str, &[String]),
        others: impl IntoIterator<Item = (&'a str, &'a str, Vec<&'a str>)>,
    ) -> Result<(), String> {
        if !self.stores.contains_key(store) {
            return Err(format!(
                "participant `{name}`: store `{store}` is not in [stores]"
            ));
        }
        if prefix.is_empty() == prefixes.is_empty() {
            return Err(format!(
                "participant `{name}`: give it a `prefix` (its keys are named relative to it) or \
                 `prefixes` (its keys are named in full, each within one of them), not both and \
                 not neither: it confines the participant's keys"
            ));
        }
        let own = namespaces(prefix, prefixes);
        let others: Vec<_> = others.into_iter().collect();
        for prefix in &own {
            if prefix.is_empty() {
                return Err(format!(
                    "participant `{name}`: a prefix must not be empty (it confines the participant's keys)"
                ));
            }
            if prefix.starts_with(RESERVED_PREFIX) || RESERVED_PREFIX.starts_with(prefix) {
                return Err(format!(
                    "participant `{name}`: prefix `{prefix}` overlaps `{RESERVED_PREFIX}`, reserved for redstage's own keys"
                ));
            }
            for (other, other_store, other_prefixes) in &others {
                for other_prefix in other_prefixes {
                    let overlap =
                        other_prefix.starts_with(prefix) || prefix.starts_with(other_prefix);
                    if *other != name && *other_store == store && overlap {
                        return Err(format!(
                            "participants `{name}` and `{other}` share store `{store}` with \
                             overlapping prefixes `{prefix}` and `{other_prefix}`: one could read \
                             and write the other's keys"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The prefixes a participant's keys live under: its `prefix`, or its
/// `prefixes`.
pub fn namespaces<'a>(prefix: &'a str, prefixes: &'a [String]) -> Vec<&'a str> {
    if prefix.is_empty() {
        prefixes.iter().map(String::as_str).collect()
    } else {
        vec![prefix]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        log_store = "orders"
        [stores]
        orders = "redis://127.0.0.1:6379"
        ledger = "redis://127.0.0.1:6380"
    "#;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_only_store_keeps_the_log_unless_told_otherwise() {
        let one = Config::parse("[stores]\nmain = \"redis://127.0.0.1:6379\"\n").unwrap();
        assert_eq!(one.log_store, "main");
        let two = "[stores]\na = \"redis://127.0.0.1:6379\"\nb = \"redis://127.0.0.1:6380\"\n";
        let err = Config::parse(two).unwrap_err().to_string();
        assert!(err.contains("log_store") && err.contains("a, b"), "{err}");
        let named = Config::parse(&format!("log_store = \"b\"\n{two}")).unwrap();
        assert_eq!(named.log_store, "b");
    }

    #[test]
    fn the_environment_sets_any_value() {
        let config = Config::parse_with(
            BASE,
            env(&[
                ("REDSTAGE_TXN__LEASE_MS", "6000"),
                ("REDSTAGE_STORES__LEDGER", "redis://:s3cret@10.0.0.2:6380"),
                ("REDSTAGE_STORES__ORDERS", "123456"),
                ("REDSTAGE_DURABILITY", "unsafe"),
                ("REDSTAGE_LIMITS__CALL_TIME_MS", "50"),
                (
                    "REDSTAGE_AUTH__TOKENS",
                    r#"[{name = "a", token_env = "T", scopes = ["read"]}]"#,
                ),
                // Not config values: another program's, or no key of it.
                ("REDSTAGE_TOKEN", "x"),
                ("REDSTAGE_FAULT", "after-decide"),
                ("OTHER_TXN__LEASE_MS", "1"),
            ]),
        )
        .expect("valid");
        assert_eq!(config.txn.lease_ms, 6000);
        assert_eq!(config.stores["ledger"].url, "redis://:s3cret@10.0.0.2:6380");
        // The file had a string there: a string it stays.
        assert_eq!(config.stores["orders"].url, "123456");
        assert_eq!(config.durability, Durability::Unsafe);
        assert_eq!(config.limits.call_time_ms, 50);
        assert_eq!(config.auth.tokens[0].token_env.as_deref(), Some("T"));
    }

    #[test]
    fn a_bad_value_from_the_environment_is_named() {
        let err = Config::parse_with(BASE, env(&[("REDSTAGE_TXN__LEASE_MS", "soon")]))
            .expect_err("not a number");
        let message = err.to_string();
        assert!(message.contains("REDSTAGE_TXN__LEASE_MS"), "{message}");
        let err = Config::parse_with(BASE, env(&[("REDSTAGE_LOG_STORE__X", "y")]))
            .expect_err("not a table");
        assert!(err.to_string().contains("REDSTAGE_LOG_STORE__X"), "{err}");
    }

    fn with(participants: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{BASE}\n{participants}"))
    }

    #[test]
    fn parses_the_documented_example() {
        let c = with(
            "[participants.inventory]\ncomponent = \"i.wasm\"\nstore = \"orders\"\nprefix = \"inventory:\"",
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.participants["inventory"].prefix, "inventory:");
        assert_eq!(c.txn, TxnConfig::default());
    }

    #[test]
    fn participant_limits_fall_back_to_the_global_ones_key_by_key() {
        let c = with(
            "[limits]\ncall_time_ms = 100\nwrites_max = 10\n\
             [participants.a]\ncomponent = \"a.wasm\"\nstore = \"orders\"\nprefix = \"a:\"\n\
             [participants.a.limits]\nwrites_max = 3\n\
             [participants.b]\ncomponent = \"b.wasm\"\nstore = \"orders\"\nprefix = \"b:\"\n",
        )
        .unwrap();
        let a = c.limits_of("a", &c.participants["a"]).unwrap();
        assert_eq!((a.call_time_ms, a.writes_max), (100, 3));
        assert_eq!(a.keys_max, CallLimits::default().keys_max);
        let b = c.limits_of("b", &c.participants["b"]).unwrap();
        assert_eq!(b, c.limits);
    }

    #[test]
    fn rejects_unusable_configs() {
        let p = |store: &str, prefix: &str| {
            format!("component = \"x.wasm\"\nstore = \"{store}\"\nprefix = \"{prefix}\"\n")
        };
        let cases = [
            format!("[participants.a]\n{}", p("nowhere", "a:")),
            format!("[participants.a]\n{}", p("orders", "")),
            format!("[participants.a]\n{}", p("orders", "rs:x")),
            format!("[participants.a]\n{}", p("orders", "r")),
            format!(
                "[participants.a]\n{}[participants.b]\n{}",
                p("orders", "a:"),
                p("orders", "a:b")
            ),
            "[participants.a]\nstore = \"orders\"\nprefix = \"a:\"".to_string(),
            "typo = 1".to_string(),
            format!(
                "[participants.a]\n{}[participants.a.limits]\nmemory_max = 1",
                p("orders", "a:")
            ),
            format!(
                "[participants.a]\n{}[participants.a.limits]\ncall_time_ms = -1",
                p("orders", "a:")
            ),
            // Limits that do not fit the instance pool's slots, a pool
            // smaller than a transaction.
            "[limits]\nmemory_bytes_max = 134217728".to_string(),
            format!(
                "[participants.a]\n{}[participants.a.limits]\ntable_elements_max = 30000",
                p("orders", "a:")
            ),
            "[runtime]\ninstance_pool = 8".to_string(),
        ];
        for case in cases {
            assert!(with(&case).is_err(), "accepted:\n{case}");
        }
        let err = with(&format!(
            "[participants.a]\n{}[participants.a.limits]\nmemory_max = 1",
            p("orders", "a:")
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[participants.a.limits]") && err.contains("memory_max"),
            "{err}"
        );
        // The same prefix on different stores is fine.
        with(&format!(
            "[participants.a]\n{}[participants.b]\n{}",
            p("orders", "a:"),
            p("ledger", "a:")
        ))
        .unwrap();
    }

    #[test]
    fn a_cluster_holds_data_but_not_the_log() {
        let cluster = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001";
        let c = Config::parse(&format!(
            "log_store = \"orders\"\n[stores]\norders = \"redis://127.0.0.1:6379\"\n\
             shop = \"{cluster}\"\n"
        ))
        .unwrap();
        assert_eq!(c.stores["shop"].url, cluster);
        let err = Config::parse(&format!(
            "log_store = \"shop\"\n[stores]\nshop = \"{cluster}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("must be a single Redis"), "{err}");
    }
}
