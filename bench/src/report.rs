//! Rows, the table printed at the end (Markdown, so that it can be pasted
//! as it is), and the JSON report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::Cell;
use crate::stores::{Stats, Stores};
use crate::systems::SystemKind;
use crate::wasm::Calibration;
use crate::workload::{Audit, Workload};

/// Commands of the bench's own bookkeeping, left out of the counts.
const OWN_COMMANDS: &[&str] = &["info", "config|resetstat"];

/// The commands that run a script.
const SCRIPT_COMMANDS: &[&str] = &["evalsha", "eval", "evalsha_ro", "eval_ro"];

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    /// The command line that produced it.
    pub command: String,
    pub duration_s: f64,
    pub persistence: crate::options::Persistence,
    pub skus: usize,
    pub accounts: usize,
    /// One participant call, measured apart (see `wasm`).
    pub wasm: Calibration,
    pub rows: Vec<Row>,
    /// `--redis-time`'s profiles (then no rows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis_time: Vec<crate::redis_time::Profile>,
}

/// Where it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu: String,
    pub os: String,
    pub redis: String,
}

impl Machine {
    pub async fn probe(stores: &Stores) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|n| n.trim_matches('"').to_owned())
            .unwrap_or_else(|| std::env::consts::OS.into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            os,
            redis: stores.version().await.unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// What only redstage's cells measure.
#[derive(Debug, Clone, Copy)]
pub struct Redstage {
    /// Median of one participant call (see `wasm`).
    pub wasm_us_per_call: f64,
    /// Rounds of Redis calls waited for before answers, in the cell.
    pub round_trips: u64,
}

/// One cell's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: SystemKind,
    pub workload: Workload,
    pub concurrency: usize,
    pub committed: u64,
    /// Business aborts (insufficient stock or funds).
    pub aborted: u64,
    /// Transactions given up after losing every race.
    pub conflicts: u64,
    /// Re-runs after conflicts.
    pub retries: u64,
    /// Failures of the system or the stores.
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Committed transactions per second.
    pub txn_per_s: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Redis commands per committed transaction, every store together,
    /// commands run inside scripts included.
    pub cmds_per_txn: Option<f64>,
    /// The same, command by command.
    pub commands_per_txn: BTreeMap<String, f64>,
    /// Script calls (`EVALSHA`, `EVAL`) per committed transaction, every
    /// store together.
    pub scripts_per_txn: Option<f64>,
    /// CPU of the redis-server processes per committed transaction.
    pub redis_cpu_us_per_txn: Option<f64>,
    /// CPU of the bench process (clients, and redstage's coordinator and
    /// wasm) per committed transaction.
    pub host_cpu_us_per_txn: Option<f64>,
    /// Median of one participant call, for the systems that run them.
    pub wasm_us_per_call: Option<f64>,
    /// Rounds of Redis calls a transaction waited for before its answer
    /// (redstage's own count, calls of a round being in parallel).
    pub round_trips_per_txn: Option<f64>,
    /// Bytes of redstage's own keys left after the cell (`MEMORY USAGE`
    /// of every `rs:*` key), per committed transaction: the records of
    /// answered transactions, kept `txn.answered_retention_s`.
    pub kept_bytes_per_txn: Option<f64>,
    pub audit: Audit,
    /// The audit in words: "nothing", or what was lost.
    pub lost: String,
}

impl Row {
    pub fn new(
        system: SystemKind,
        workload: Workload,
        concurrency: usize,
        cell: &Cell,
        stats: &Stats,
        redstage: Option<Redstage>,
        audit: Audit,
    ) -> Row {
        let (wasm_us_per_call, round_trips) = match redstage {
            Some(r) => (Some(r.wasm_us_per_call), Some(r.round_trips)),
            None => (None, None),
        };
        let committed = cell.tally.committed;
        let per_txn = |x: f64| (committed > 0).then(|| x / committed as f64);
        let calls: BTreeMap<&String, u64> = stats
            .calls
            .iter()
            .filter(|(c, _)| !OWN_COMMANDS.contains(&c.as_str()))
            .map(|(c, n)| (c, *n))
            .collect();
        let total: u64 = calls.values().sum();
        Row {
            system,
            workload,
            concurrency,
            committed,
            aborted: cell.aborted,
            conflicts: cell.conflicts,
            retries: cell.retries,
            errors: cell.errors,
            first_error: cell.first_error.clone(),
            elapsed_s: cell.elapsed.as_secs_f64(),
            txn_per_s: cell.txn_per_s(),
            p50_ms: cell.latency_ms(0.5),
            p99_ms: cell.latency_ms(0.99),
            p999_ms: cell.latency_ms(0.999),
            cmds_per_txn: per_txn(total as f64),
            scripts_per_txn: per_txn(
                calls
                    .iter()
                    .filter(|(c, _)| SCRIPT_COMMANDS.contains(&c.as_str()))
                    .map(|(_, n)| n)
                    .sum::<u64>() as f64,
            ),
            commands_per_txn: calls
                .iter()
                .filter_map(|(c, n)| Some(((*c).clone(), per_txn(*n as f64)?)))
                .collect(),
            redis_cpu_us_per_txn: per_txn(stats.cpu_s * 1e6),
            host_cpu_us_per_txn: per_txn(cell.host_cpu_s * 1e6),
            wasm_us_per_call,
            round_trips_per_txn: round_trips.and_then(|n| {
                let decided = cell.tally.committed + cell.aborted + cell.conflicts;
                (decided > 0).then(|| n as f64 / decided as f64)
            }),
            kept_bytes_per_txn: per_txn(stats.memory_bytes as f64),
            audit,
            lost: audit.to_string(),
        }
    }
}

/// The report as Markdown: the machine, the main table, one participant
/// call, and what each system lost.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let _ = writeln!(
        out,
        "\n{} x {} CPUs, {}, Redis {} (persistence: {:?}); {} s per cell, {} SKUs, {} customers\n",
        m.cpu,
        m.cpus,
        m.os,
        m.redis,
        report.persistence,
        report.duration_s,
        report.skus,
        report.accounts
    );
    out += "| workload | clients | system | txn/s | p50 ms | p99 ms | p99.9 ms | aborts | conflicts | retries | RTs | scripts/txn | cmds/txn | redis CPU µs/txn | x Lua | bench CPU µs/txn | wasm µs/call | kept B/txn | lost |\n";
    out += "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n";
    for r in &report.rows {
        // Redis CPU against the Lua script's, same workload and clients.
        let lua = report.rows.iter().find(|l| {
            l.system == SystemKind::Lua
                && l.workload == r.workload
                && l.concurrency == r.concurrency
        });
        let vs_lua = match (
            r.redis_cpu_us_per_txn,
            lua.and_then(|l| l.redis_cpu_us_per_txn),
        ) {
            (Some(mine), Some(theirs)) if theirs > 0.0 => Some(mine / theirs),
            _ => None,
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.concurrency,
            r.system,
            r.txn_per_s,
            num(r.p50_ms, 2),
            num(r.p99_ms, 2),
            num(r.p999_ms, 2),
            r.aborted,
            r.conflicts,
            r.retries,
            num(r.round_trips_per_txn, 2),
            num(r.scripts_per_txn, 2),
            num(r.cmds_per_txn, 1),
            num(r.redis_cpu_us_per_txn, 0),
            num(vs_lua, 1),
            num(r.host_cpu_us_per_txn, 0),
            num(r.wasm_us_per_call, 1),
            num(r.kept_bytes_per_txn, 0),
            match r.errors {
                0 => r.lost.clone(),
                n => format!("{}; {n} errors", r.lost),
            },
        );
    }
    out += &calibration(&report.wasm);
    out += &losses(&report.rows);
    out
}

/// The calibration's lines: one participant call of each example.
pub fn calibration(w: &Calibration) -> String {
    let mut out = format!(
        "\nwasmtime alone, a fresh instance (store, instantiate, drop; nothing called), median of {}: {:.1} µs for the smallest component, {:.1} µs for inventory's\n",
        w.inventory.calls, w.floor.empty_us, w.floor.inventory_us
    );
    for (name, t) in w.timings() {
        let _ = writeln!(
            out,
            "\none {name} call, median of {}: {:.1} µs (instantiate {:.1}, declare {:.1}, execute {:.1}, drop {:.1}; p99 {:.1}); fresh instance overhead {:.1} µs; reused step {:.1} µs",
            t.calls,
            t.total_p50_us,
            t.instantiate_us,
            t.declare_us,
            t.execute_us,
            t.drop_us,
            t.total_p99_us,
            t.fresh_overhead_us,
            t.reused_step_us
        );
    }
    out
}

/// One line per system and workload that lost something.
fn losses(rows: &[Row]) -> String {
    let mut out =
        String::from("\nwhat each system lost (stock and money against what it acknowledged):\n");
    for system in SystemKind::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.system == system).collect();
        if mine.is_empty() {
            continue;
        }
        let lost: Vec<String> = mine
            .iter()
            .filter(|r| r.audit.lost())
            .map(|r| format!("{} x{}: {}", r.workload, r.concurrency, r.lost))
            .collect();
        let _ = match lost.is_empty() {
            true => writeln!(out, "  {system}: nothing, in {} cells", mine.len()),
            false => writeln!(out, "  {system}: {}", lost.join("; ")),
        };
    }
    out
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}
