//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};

use crate::systems::SystemKind;

/// The persistence of the stores the bench starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// Nothing on disk.
    None,
    /// appendonly yes, appendfsync always.
    Aof,
}
use crate::workload::{KeySpace, Workload};

/// redstage against a single Lua script, WATCH/MULTI, naive staging and a
/// hand-written two-phase commit, on the same Redis processes and the same
/// keys, in one run.
///
/// For each workload, each concurrency and each system: committed txn/s,
/// p50/p99/p99.9 latency, aborts and retries, Redis commands per committed
/// transaction (INFO commandstats, script-internal calls included), the wasm
/// cost of one participant call, and an audit of stock and money (what each
/// system lost). Prints a table; writes JSON and an SVG chart.
#[derive(Debug, Clone, Parser)]
#[command(name = "redstage-bench", version, args_override_self = true)]
pub struct Options {
    /// Two Redis URLs, `orders;ledger` or `orders,ledger`. Every key on
    /// them is deleted (FLUSHALL) before each cell. Without this, two local
    /// redis-server processes are started on free ports and stopped at the
    /// end. Either may be a Redis Cluster (`redis+cluster://host:port,...`,
    /// separated from the other by `;`); then only redstage runs, the
    /// baselines need one Redis.
    #[arg(long, value_parser = parse_stores)]
    pub stores: Option<Stores>,
    /// Starts a local Redis Cluster of three masters for `orders` (and a
    /// redis-server for `ledger`) instead of two redis-servers: a
    /// functional check of cluster stores on one machine, not a scale
    /// claim. Only redstage runs.
    #[arg(long)]
    pub cluster: bool,
    /// How long each cell runs: `3s`, `500ms`.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent clients, one cell for each value.
    #[arg(long, value_delimiter = ',', action = ArgAction::Set, default_value = "1,4,16,64")]
    pub concurrency: Vec<usize>,
    /// `order`: inventory deduct on `orders` + payment on `ledger`;
    /// `transfer`: one payment, one store; `hot`: orders all paying `shop`;
    /// `shop`: orders from 100 customers to 10 merchants; `flash`: orders
    /// all taking the same SKU and paying `shop`; `outbox`: `order` with
    /// the order recorded and announced in a stream; `social`: follows,
    /// unfollows and messages among the customers, a few popular (lua and
    /// redstage only).
    #[arg(
        long,
        value_delimiter = ',',
        action = ArgAction::Set,
        default_value = "order,shop,transfer,hot,flash,outbox,social"
    )]
    pub workloads: Vec<Workload>,
    /// The stores' persistence, when the bench starts them: `none`, or
    /// `aof` (appendonly yes, appendfsync always: what redstage requires of
    /// stores that keep acknowledged decisions). Every system runs on the
    /// same servers either way.
    #[arg(long, default_value = "none")]
    pub persistence: Persistence,
    /// The systems to compare.
    #[arg(
        long,
        value_delimiter = ',',
        action = ArgAction::Set,
        default_value = "redstage,redstage-locking,redstage-http,lua,watch,naive,two-phase"
    )]
    pub systems: Vec<SystemKind>,
    /// The JSON report.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
    /// The chart: throughput and p99 against concurrency.
    #[arg(long, default_value = "bench.svg")]
    pub svg: PathBuf,
    /// Folder with inventory.wasm and payments.wasm (build them with
    /// `cargo build --release --target wasm32-unknown-unknown -p inventory -p
    /// payments`).
    #[arg(long, default_value = "target/wasm32-unknown-unknown/release")]
    pub components: PathBuf,
    /// SKUs in stock.
    #[arg(long, default_value_t = 1000)]
    pub skus: usize,
    /// Customer accounts (and as many merchants, paid by `order`).
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// redstage's `txn.answered_retention_s`: how long the record of an
    /// answered transaction stays readable by id, and so what `kept
    /// B/txn` counts (0: nothing is kept).
    #[arg(long, default_value_t = 600)]
    pub answered_retention_s: u64,
    /// Participant calls timed, per component, for the wasm cost.
    #[arg(long, default_value_t = 2000)]
    pub wasm_calls: usize,
    /// Only time the participant calls (the calibration line), print them
    /// and stop: no cells, no report files.
    #[arg(long)]
    pub calibrate_only: bool,
    /// Instead of the throughput cells: where each system's Redis time
    /// goes per transaction of each workload, by store and by script or
    /// command (how many Redis commands each script calls, and µs inside
    /// Redis), from the stores' slow logs while one client runs
    /// `--redis-time-txns` transactions.
    #[arg(long)]
    pub redis_time: bool,
    /// Transactions per workload and system for `--redis-time`.
    #[arg(long, default_value_t = 500)]
    pub redis_time_txns: usize,
}

impl Options {
    /// Every cell, in run order: systems side by side within each
    /// (workload, concurrency), so they meet the same machine conditions.
    pub fn cells(&self) -> Vec<(Workload, usize, SystemKind)> {
        let mut cells = Vec::new();
        for &workload in &self.workloads {
            for &concurrency in &self.concurrency {
                for &system in self.systems.iter().filter(|s| s.runs(workload)) {
                    cells.push((workload, concurrency, system));
                }
            }
        }
        cells
    }

    pub fn key_space(&self, workload: Workload) -> KeySpace {
        workload.space(self.skus, self.accounts)
    }
}

/// The `--stores` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stores(pub Vec<String>);

/// `orders;ledger`, or `orders,ledger` when neither is a cluster (whose URL
/// lists its seed nodes with commas).
fn parse_stores(text: &str) -> Result<Stores, String> {
    let urls: Vec<String> = match text.contains(';') {
        true => text.split(';').map(str::to_owned).collect(),
        false => text.split(',').map(str::to_owned).collect(),
    };
    if urls.len() != 2 || urls.iter().any(String::is_empty) {
        return Err(format!(
            "--stores takes two URLs, `orders,ledger` (or `orders;ledger` when one is a \
             redis+cluster:// URL); got `{text}`"
        ));
    }
    Ok(Stores(urls))
}

/// `3s`, `250ms`, `1.5s`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration: write `3s` or `500ms`");
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (text.strip_suffix('s').unwrap_or(text), 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !(value.is_finite() && value > 0.0) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one() {
        let options = Options::parse_from([
            "redstage-bench",
            "--out",
            "a.json",
            "--concurrency",
            "1,2",
            "--out",
            "b.json",
            "--concurrency",
            "8",
            "--stores",
            "redis://127.0.0.1:1,redis://127.0.0.1:2",
        ]);
        assert_eq!(
            options.stores,
            Some(Stores(vec![
                "redis://127.0.0.1:1".into(),
                "redis://127.0.0.1:2".into()
            ]))
        );
        assert_eq!(options.out, PathBuf::from("b.json"));
        assert_eq!(options.concurrency, [8]);
    }

    #[test]
    fn a_cluster_store_is_set_apart_by_a_semicolon() {
        let cluster = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001";
        let stores = parse_stores(&format!("{cluster};redis://127.0.0.1:2")).unwrap();
        assert_eq!(stores.0, [cluster, "redis://127.0.0.1:2"]);
        assert!(parse_stores("redis://a:1").is_err());
        assert!(parse_stores(&format!("{cluster};")).is_err());
    }

    #[test]
    fn cells_put_systems_side_by_side() {
        let options = Options::parse_from([
            "redstage-bench",
            "--concurrency",
            "1,2",
            "--workloads",
            "order",
            "--systems",
            "lua,naive",
        ]);
        assert_eq!(
            options.cells(),
            [
                (Workload::Order, 1, SystemKind::Lua),
                (Workload::Order, 1, SystemKind::Naive),
                (Workload::Order, 2, SystemKind::Lua),
                (Workload::Order, 2, SystemKind::Naive),
            ]
        );
    }
}
