//! The `redstage` command line.
//!
//! Three kinds of commands:
//!
//! - against the stores, from a config file (`--config`, or
//!   `$REDSTAGE_CONFIG`): `serve`, `check`, `run`, `status`, `recover`,
//!   `demo`;
//! - for participant authors, on their own: `new` and `call`;
//! - against a running server, over its HTTP API (`--server URL`, or
//!   `$REDSTAGE_SERVER`; a token with `--token`, or `$REDSTAGE_TOKEN`):
//!   `submit`, `get`, `list`, `locks`, `resolve`, `participants`, `deploy`
//!   (see `remote`, through the one API client, `client`).
//!
//! Errors reach the user through `anyhow` with the cause chain; logs go to
//! stderr through `tracing` (`RUST_LOG=debug` for more).

pub mod call;
pub mod client;
pub mod demo;
pub mod new;
mod remote;

use std::future::IntoFuture;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::txn::Coordinator;
use crate::txn::types::{Status, TxnRequest};

/// Atomic, serializable transactions across Redis stores, with participants
/// as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "redstage", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs (on stderr) are written: `text` for people, `json` (one
    /// object per line, with the request's span) for log pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The server the commands that talk to one use (submit, get, list,
    /// locks, resolve, participants, deploy).
    #[arg(
        long,
        global = true,
        env = "REDSTAGE_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// The bearer token those commands send, if the server requires tokens:
    /// `read` scope to look, `submit` or `deploy` to act.
    #[arg(long, global = true, env = "REDSTAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// See [`Cli`]'s `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The config file of the commands that read one.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The TOML config: stores, log store, participants, limits.
    #[arg(long, env = "REDSTAGE_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (see GET /openapi.json), with the background
    /// recovery sweep.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Listen here instead of the config's `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Listen on a non-loopback address without any `[[auth.tokens]]`,
        /// so that anyone who reaches the port may deploy participants.
        #[arg(long)]
        insecure: bool,
    },
    /// Check a config as `serve` would start from it, without serving: load
    /// it (with the values the environment sets), compile every participant
    /// (each is reported with its contract and digest), read the tokens,
    /// ping every store and run the durability check. Prints a JSON
    /// summary.
    ///
    /// Exit status: 0 when all is well, 1 naming the first thing that is not.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run one transaction and print its outcome as JSON.
    ///
    /// Exit status: 0 committed, 2 aborted, 1 error (nothing applied, or the
    /// outcome is unknown: the message says which).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// The transaction: {"steps":[{"participant":"...","input":{...}}]}
        transaction: String,
    },
    /// Print what is known of a transaction: committed, aborted or in doubt,
    /// as `GET /v1/transactions/{id}` answers it, read from the stores
    /// (no component is compiled).
    ///
    /// Exit status: 0 known, 2 unknown (never ran, or its record is past
    /// txn.record_retention_s), 1 error.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The transaction id, as a response or an `outcome_unknown` error
        /// named it.
        id: String,
    },
    /// Finish in-doubt transactions by the protocol's rules: roll forward
    /// what committed, fence and roll back what has no decision. Prints a
    /// JSON report per transaction: its stores, whether its decision was
    /// found or made, and the action on each store.
    ///
    /// Without ID: every transaction with a lock whose lease has run out,
    /// sweeping until nothing is left (with --wait, also waiting for live
    /// leases to run out, up to that many seconds). Exit status 0 when no
    /// lock remains, 2 otherwise.
    ///
    /// With ID: that transaction now, lease or not (a read-only one's
    /// locks are left while its lease runs). Exit status 0 resolved, 2
    /// unknown, 1 a store failed.
    Recover {
        #[command(flatten)]
        config: ConfigArg,
        /// Seconds to wait for live leases to expire (without ID).
        #[arg(long, default_value_t = 0, conflicts_with = "id")]
        wait: u64,
        /// Say what would be done, and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// One transaction to resolve now.
        id: Option<String>,
    },
    /// Run a transaction on the server (POST /v1/transactions) and print
    /// its answer. The transaction is JSON
    /// ({"steps":[{"participant":...,"input":...}],"idempotency_key":...}),
    /// given as the argument, read from a file with --file, or from stdin
    /// (no argument, or `-`).
    ///
    /// Exit status: 0 committed, 2 aborted, 1 an error answer (printed).
    Submit {
        /// A file holding the transaction.
        #[arg(long, conflicts_with = "transaction")]
        file: Option<PathBuf>,
        /// The transaction as JSON, or `-` for stdin.
        transaction: Option<String>,
    },
    /// Look a transaction up on the server (GET /v1/transactions/{id}).
    ///
    /// Exit status: 0 known, 2 unknown, 1 an error answer.
    Get {
        /// The transaction id.
        id: String,
    },
    /// List transactions that hold locks or records (GET /v1/transactions),
    /// following the pages up to --limit rows.
    ///
    /// Exit status: 0, or 1 an error answer.
    List {
        /// Only these: in_doubt, committed, aborted.
        #[arg(long)]
        state: Option<String>,
        /// The transaction a request with this idempotency key ran.
        #[arg(long, conflicts_with = "cursor")]
        idempotency_key: Option<String>,
        /// Rows to print, at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Go on from a `next_cursor` printed before.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// List locked keys, with their mode, holder and lease (GET /v1/locks),
    /// following the pages up to --limit rows.
    ///
    /// Exit status: 0, or 1 an error answer.
    Locks {
        /// Only this store's.
        #[arg(long)]
        store: Option<String>,
        /// Rows to print, at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Go on from a `next_cursor` printed before.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Finish one transaction now on the server, by the protocol's rules
    /// (POST /v1/transactions/{id}/resolve): roll it forward if it
    /// committed, else fence it and roll it back. Prints what was done.
    ///
    /// Exit status: 0 resolved, 2 unknown, 1 an error answer.
    Resolve {
        /// The transaction id.
        id: String,
    },
    /// List the server's participants (GET /v1/participants), or show one
    /// with its versions and deploy history (GET /v1/participants/{name}).
    ///
    /// Exit status: 0, 2 unknown participant, 1 an error answer.
    Participants {
        /// One participant.
        name: Option<String>,
    },
    /// Deploy a participant component to the server: it is compiled and
    /// checked there, written to the server's deploy folder, and used by
    /// every transaction that starts afterwards. Prints the new version.
    /// With --rollback NAME, makes the version before the current one
    /// current again instead.
    ///
    /// Exit status: 0 deployed, 1 refused (the message says why).
    Deploy {
        /// Make participant NAME's previous version current again.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["store", "prefix", "limits", "reuse_steps", "reuse_audit", "name", "component"])]
        rollback: Option<String>,
        /// The store the participant's keys live on.
        #[arg(long, required_unless_present = "rollback")]
        store: Option<String>,
        /// The prefix of its keys on that store.
        #[arg(long, required_unless_present = "rollback")]
        prefix: Option<String>,
        /// Limits to override, as JSON: '{"call_time_ms":50}'.
        #[arg(long)]
        limits: Option<String>,
        /// Steps one instance may serve (0: a fresh instance per step).
        #[arg(long)]
        reuse_steps: Option<u32>,
        /// The fraction of reused steps audited on a fresh instance.
        #[arg(long)]
        reuse_audit: Option<f64>,
        /// Seconds to wait for the whole deploy, the server's compile
        /// included.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        /// The participant's name.
        #[arg(required_unless_present = "rollback")]
        name: Option<String>,
        /// The component (.wasm) file.
        #[arg(required_unless_present = "rollback")]
        component: Option<PathBuf>,
    },
    /// Run the order demo: inventory and payments on two Redis instances,
    /// one order committed, one aborted for insufficient funds.
    ///
    /// Without --config it starts two local redis-server processes and
    /// stops them at the end.
    Demo {
        /// Use the stores and participants of this config (which must have
        /// participants `inventory` and `payments`).
        #[arg(long, conflicts_with = "components")]
        config: Option<PathBuf>,
        /// Folder with inventory.wasm and payments.wasm.
        #[arg(long, default_value = "target/wasm32-unknown-unknown/release")]
        components: PathBuf,
        /// Put `orders` on a local Redis Cluster of three masters (and the
        /// log on `ledger`) instead of a redis-server.
        #[arg(long, conflicts_with = "config")]
        cluster: bool,
    },
    /// Create a participant crate from the built-in template: Cargo.toml
    /// (the SDK, a cdylib, a release profile tuned for size), the linker
    /// setting for wasm32-unknown-unknown, src/lib.rs with declare, execute
    /// and native tests, and a README with the commands that test, build,
    /// call and deploy it.
    New {
        /// The participant's name (and the crate's).
        name: String,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the SDK at this path (a checkout's guest-sdk/) rather
        /// than on the published crate.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Run one step of a participant component on its own, as the host
    /// would (the same runtime, limits and checks): `declare` with the
    /// input, then `execute` on a snapshot of the declared keys. Prints the
    /// access set, the snapshot, the writes, the output or the abort, what
    /// the participant printed, and the time of each phase, as JSON (or
    /// readable, with --pretty).
    ///
    /// Exit status: 0 the step answered, 1 it aborted (a business "no" or
    /// `bad_input`), 2 it failed (a trap, a broken limit, a bad abort
    /// code), 3 nothing ran (the component does not load, a bad argument,
    /// the store cannot be read).
    Call {
        /// The component (.wasm) file.
        component: PathBuf,
        /// The step's input, as JSON: '{"op":"deduct","sku":"A1","qty":2}'.
        #[arg(long)]
        input: String,
        /// The values of the keys, as JSON: '{"stock:A1":"10"}' (a key not
        /// given does not exist; null says so too; {"base64":"..."} for
        /// bytes). Only declared keys reach the participant.
        #[arg(long, conflicts_with = "store")]
        snapshot: Option<String>,
        /// Read the declared keys from this Redis instead (GET only:
        /// nothing is written): redis://host:port
        #[arg(long, requires = "prefix")]
        store: Option<String>,
        /// The participant's key prefix on --store, e.g. `inventory:`.
        #[arg(long, requires = "store")]
        prefix: Option<String>,
        /// Limits to override, as JSON: '{"call_time_ms":50}' (the
        /// defaults of [limits] otherwise).
        #[arg(long)]
        limits: Option<String>,
        /// Print a readable summary instead of JSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (what `serve` answers at
    /// GET /openapi.json), e.g. to generate a client.
    Openapi,
}

impl Cli {
    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let remote = remote::Remote {
            server: self.server,
            token: self.token,
        };
        match self.command {
            Command::Serve {
                config,
                listen,
                insecure,
            } => serve(config.config, listen, insecure).await,
            Command::Check { config } => check(config.config).await,
            Command::Run {
                config,
                transaction,
            } => run(config.config, &transaction).await,
            Command::Status { config, id } => status(config.config, &id).await,
            Command::Recover {
                config,
                wait,
                dry_run,
                id,
            } => recover(config.config, wait, dry_run, id.as_deref()).await,
            Command::Submit { file, transaction } => {
                remote.submit(file, transaction.as_deref()).await
            }
            Command::Get { id } => remote.get(&id).await,
            Command::List {
                state,
                idempotency_key,
                limit,
                cursor,
            } => {
                let filter = [("state", state), ("idempotency_key", idempotency_key)];
                remote.list("transactions", &filter, limit, cursor).await
            }
            Command::Locks {
                store,
                limit,
                cursor,
            } => {
                remote
                    .list("locks", &[("store", store)], limit, cursor)
                    .await
            }
            Command::Resolve { id } => remote.resolve(&id).await,
            Command::Participants { name } => remote.participants(name.as_deref()).await,
            Command::Deploy {
                rollback: Some(name),
                timeout_s,
                ..
            } => remote.rollback(&name, timeout_s).await,
            Command::Deploy {
                store,
                prefix,
                limits,
                reuse_steps,
                reuse_audit,
                timeout_s,
                name,
                component,
                ..
            } => {
                let (Some(store), Some(prefix), Some(name), Some(component)) =
                    (store, prefix, name, component)
                else {
                    unreachable!("clap requires them without --rollback")
                };
                let manifest = [
                    ("store", Some(store)),
                    ("prefix", Some(prefix)),
                    ("limits", limits),
                    ("reuse_steps", reuse_steps.map(|n| n.to_string())),
                    ("reuse_audit", reuse_audit.map(|f| f.to_string())),
                ];
                remote.deploy(&name, &manifest, &component, timeout_s).await
            }
            Command::Demo {
                config,
                components,
                cluster,
            } => demo::run(config, components, cluster).await,
            Command::New {
                name,
                dir,
                sdk_path,
            } => new::run(&name, dir, sdk_path),
            Command::Call {
                component,
                input,
                snapshot,
                store,
                prefix,
                limits,
                pretty,
            } => {
                call::run(call::Call {
                    component,
                    input,
                    snapshot,
                    store,
                    prefix,
                    limits,
                    pretty,
                })
                .await
            }
            Command::Openapi => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(crate::api::openapi::served())?
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Refuses stores that could lose an acknowledged decision (see
/// `store::durability`), or says that the config runs without the check.
pub async fn check_durability(coordinator: &Coordinator) -> anyhow::Result<()> {
    let problems = coordinator.check_durability().await;
    if !problems.is_empty() {
        anyhow::bail!(
            "refusing to run: a store is unreachable or could lose committed \
             transactions:\n  - {}",
            problems.join("\n  - ")
        );
    }
    if coordinator.durability() == crate::store::durability::Durability::Unsafe {
        tracing::warn!(
            "durability = \"unsafe\": stores are not required to keep acknowledged writes; \
             a crash of a store may lose transactions that were answered `committed`"
        );
    }
    Ok(())
}

/// Loads a config and builds the coordinator it describes.
pub fn coordinator(config: &Config) -> anyhow::Result<Coordinator> {
    use crate::runtime::{CompileCache, Runtime};
    let cache = config
        .cache
        .folder()
        .and_then(|dir| CompileCache::open(&dir));
    let runtime =
        Runtime::with(config.runtime.clone(), cache).context("starting the WebAssembly runtime")?;
    let registry = crate::participants::Registry::load(&runtime, config)?;
    Ok(Coordinator::new(config, Arc::new(registry))?)
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

async fn serve(
    path: PathBuf,
    listen: Option<std::net::SocketAddr>,
    insecure: bool,
) -> anyhow::Result<ExitCode> {
    let config = load(&path)?;
    let addr = listen.unwrap_or(config.listen);
    let tokens = crate::api::auth::Tokens::from_config(&config.auth)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if tokens.is_empty() && !addr.ip().is_loopback() {
        if !insecure {
            anyhow::bail!(
                "refusing to listen on {addr} without any [[auth.tokens]]: anyone who reaches \
                 it could run transactions and deploy participants. Configure tokens, listen on \
                 a loopback address, or pass --insecure"
            );
        }
        tracing::warn!(%addr, "--insecure: listening without tokens; every route is open");
    }
    let coordinator = Arc::new(coordinator(&config)?);
    check_durability(&coordinator).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let sweeper = tokio::spawn(sweep_forever(
        coordinator.clone(),
        config.txn.sweep_interval(),
    ));
    let watcher = tokio::spawn(watch_folder(
        coordinator.registry().clone(),
        config.deploy.poll(),
    ));
    // Told to stop: no longer ready, no new connections, and the requests
    // in flight get `shutdown_grace_ms` to finish.
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let draining = coordinator.clone();
    let server = axum::serve(
        listener,
        crate::api::router(coordinator.clone(), Arc::new(tokens)),
    )
    .with_graceful_shutdown(async move {
        shutdown().await;
        draining.drain();
        let _ = stopping.send(true);
    });
    let grace = config.txn.shutdown_grace();
    let grace_over = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server.into_future() => served?,
        () = grace_over => tracing::warn!(
            in_flight = coordinator.in_flight(),
            "txn.shutdown_grace_ms is over: exiting with transactions in flight; recovery will \
             finish or roll back what they locked"
        ),
    }
    sweeper.abort();
    watcher.abort();
    // What answered transactions still owe (other stores' applies) is
    // finished by recovery if cut short, but need not be left to it.
    let owed = coordinator.flush();
    if tokio::time::timeout(2 * config.txn.store_timeout(), owed)
        .await
        .is_err()
    {
        tracing::warn!("stopped before every store applied; recovery will finish it");
    }
    Ok(ExitCode::SUCCESS)
}

/// The background recovery sweep of `serve`. The sweep logs each
/// transaction it resolves; what it could not, it says here.
async fn sweep_forever(coordinator: Arc<Coordinator>, interval: std::time::Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let report = coordinator.sweep().await;
        if report.failed > 0 {
            tracing::warn!(
                failed = report.failed,
                resolved = report.resolved,
                remaining = %report.remaining,
                "the recovery sweep could not resolve everything; it tries again"
            );
        }
    }
}

/// The deploy-folder watch of `serve`: loads what other hosts deployed, or
/// an operator copied in, and drops what was removed.
async fn watch_folder(registry: Arc<crate::participants::Registry>, interval: std::time::Duration) {
    if !registry.has_folder() {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        let registry = registry.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || registry.scan()).await {
            tracing::error!(error = %e, "the deploy folder scan failed");
        }
    }
}

async fn status(path: PathBuf, id: &str) -> anyhow::Result<ExitCode> {
    let config = load(&path)?;
    let coordinator = inspector(&config)?;
    match coordinator.lookup(id).await? {
        Some(found) => {
            println!("{}", serde_json::to_string_pretty(&found)?);
            Ok(ExitCode::SUCCESS)
        }
        None if !crate::txn::is_txn_id(id) => {
            eprintln!("redstage: {id:?} is not a transaction id (ids are UUIDs)");
            Ok(ExitCode::from(2))
        }
        None => {
            eprintln!("redstage: no record and no lock of transaction {id}");
            Ok(ExitCode::from(2))
        }
    }
}

/// A coordinator over the stores of `config` with no participant loaded:
/// for the commands that only read and finish what is in the stores, which
/// need no component compiled.
fn inspector(config: &Config) -> anyhow::Result<Coordinator> {
    let runtime = crate::runtime::Runtime::with(config.runtime.clone(), None)
        .context("starting the WebAssembly runtime")?;
    let registry = crate::participants::Registry::unloaded(&runtime, config);
    Ok(Coordinator::new(config, Arc::new(registry))?)
}

async fn recover(
    path: PathBuf,
    wait_s: u64,
    dry_run: bool,
    id: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = load(&path)?;
    let coordinator = inspector(&config)?;
    let by = format!("`redstage recover` on {}", crate::txn::resolve::host());
    if let Some(id) = id {
        let Some(resolution) = coordinator.resolve(id, &by, dry_run).await? else {
            eprintln!("redstage: no record and no lock of transaction {id}");
            return Ok(ExitCode::from(2));
        };
        println!("{}", serde_json::to_string_pretty(&resolution)?);
        return Ok(match resolution.failed() {
            true => ExitCode::FAILURE,
            false => ExitCode::SUCCESS,
        });
    }
    if dry_run {
        let plan = coordinator.sweep_plan(&by).await?;
        let report = serde_json::json!({"transactions": plan, "dry_run": true});
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait_s);
    let mut total = crate::txn::SweepReport::default();
    loop {
        let report = coordinator.sweep_as(&by).await;
        let progress = report.resolved > 0;
        for resolution in report.transactions {
            match total
                .transactions
                .iter_mut()
                .find(|r| r.id == resolution.id)
            {
                Some(known) => known.merge(resolution),
                None => total.transactions.push(resolution),
            }
        }
        total.resolved = total.transactions.len();
        total.failed = report.failed;
        total.remaining = report.remaining;
        if report.remaining.is_none_left() || (!progress && tokio::time::Instant::now() >= deadline)
        {
            break;
        }
        if !progress {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    println!("{}", serde_json::to_string_pretty(&total)?);
    Ok(match total.remaining.is_none_left() {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(2),
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let config = load(&path)?;
    let tokens = crate::api::auth::Tokens::from_config(&config.auth)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let coordinator = coordinator(&config)?;
    let participants = coordinator.registry().all();
    // Every component compiled and passed its checks: say so, with what
    // was loaded, before anything about the stores.
    let components: Vec<serde_json::Value> = participants
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "contract": p.component.contract(),
                "digest": p.version.digest,
                "source": p.version.source,
                "store": p.store,
            })
        })
        .collect();
    let mut summary = serde_json::json!({
        "status": "ok",
        "components": components,
        "participants": participants.iter().map(|p| &p.name).collect::<Vec<_>>(),
        "stores": coordinator.stores().map(|s| s.name()).collect::<Vec<_>>(),
        "tokens": tokens.len(),
        "durability": coordinator.durability(),
    });
    let mut failed = None;
    for store in coordinator.stores() {
        if let Err(e) = store.ping().await {
            failed = Some(anyhow::Error::new(e).context(format!("store `{}`", store.name())));
            break;
        }
    }
    if failed.is_none() {
        failed = check_durability(&coordinator).await.err();
    }
    if let Some(e) = &failed {
        summary["status"] = "error".into();
        summary["error"] = format!("{e:#}").into();
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn run(path: PathBuf, transaction: &str) -> anyhow::Result<ExitCode> {
    let config = load(&path)?;
    let coordinator = coordinator(&config)?;
    check_durability(&coordinator).await?;
    let request: TxnRequest = serde_json::from_str(transaction)
        .context("the transaction is not valid JSON of the form {\"steps\":[{\"participant\":...,\"input\":...}]}")?;
    let response = coordinator.run(request).await?;
    coordinator.flush().await;
    println!("{}", serde_json::to_string_pretty(&response)?);
    Ok(match response.status {
        Status::Committed => ExitCode::SUCCESS,
        Status::Aborted => ExitCode::from(2),
    })
}
