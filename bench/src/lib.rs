//! redstage-bench: redstage against the ways people already move stock and
//! money on Redis, side by side in one run, on the same Redis processes and
//! the same keys.
//!
//! # What runs
//!
//! ```text
//!  system         how one transaction runs                        where the keys are
//!  -------------  ----------------------------------------------  -------------------------
//!  redstage       Coordinator::run (library): declare, read,      inventory on `orders`,
//!                 execute the wasm participants, 2PC / 1PC        payments on `ledger`
//!  redstage-http  the same, as POST /v1/transactions over a       same
//!                 keep-alive HTTP/1.1 connection per client
//!  lua            one EVALSHA doing all the business logic        all on `orders`: the floor
//!                                                                 no distributed protocol beats
//!  watch          WATCH, MGET, check, MULTI/SET/EXEC; retried      all on `orders`
//!                 whenever EXEC answers nil
//!  naive          GET, SET temp keys, SET a lock key (no checks), inventory on `orders`,
//!                 RENAME temp keys over the data, DEL the lock    payments on `ledger`
//!  two-phase      by hand: reserve the stock (lease, index), the  inventory on `orders`,
//!                 commit point and payment, deduct or release     payments on `ledger`
//! ```
//!
//! And `redstage-floor` (see [`floor`]): the parts of an order alone,
//! served over HTTP for `scripts/wrk.sh`.
//!
//! Every system runs the same business logic on the same key space: deduct
//! the stock if there is enough, move the money if the balance covers it,
//! else abort and change nothing.
//!
//! # One cell
//!
//! A cell is one (workload, concurrency, system). Before it: `FLUSHALL` on
//! every store, the same stock and balances seeded, `CONFIG RESETSTAT`.
//! During it: `concurrency` clients, each running transactions back to back
//! for `--duration`, drawn from a generator seeded by (workload,
//! concurrency, client), so every system sees the same sequence. After it:
//! `INFO commandstats` and `INFO cpu` on every store, then an audit of the
//! stock and the money against what the clients were told committed
//! ([`workload::Audit`]): a system that loses updates shows it there.
//!
//! # Layout
//!
//! - [`options`]: the command line.
//! - [`workload`]: workloads, key space, seeding, the audit.
//! - [`stores`]: the Redis processes: start, flush, seed, statistics.
//! - [`systems`]: the five ways of running a transaction.
//! - [`measure`]: one cell: clients, latencies, counts.
//! - [`wasm`]: the cost of one participant call, measured apart.
//! - [`floor`]: `redstage-floor`, an order's parts alone over HTTP.
//! - [`report`]: rows, the table, the JSON file.
//! - [`chart`]: the SVG of throughput and p99 against concurrency.

pub mod chart;
pub mod floor;
pub mod measure;
pub mod options;
pub mod redis_time;
pub mod report;
pub mod stores;
pub mod systems;
pub mod wasm;
pub mod workload;

use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use options::Options;
use report::{Machine, Report, Row};
use stores::Stores;
use systems::{Driver, SystemKind};

/// Runs every cell the options ask for and returns the report (also
/// printed, and written to `--out` and `--svg`).
pub async fn run(options: Options, command: String) -> anyhow::Result<Report> {
    let urls = options.stores.as_ref().map_or(&[][..], |s| &s.0[..]);
    let stores = Stores::open(urls, options.persistence, options.cluster).await?;
    for (name, url) in ["orders", "ledger"].iter().zip(stores.urls()) {
        eprintln!("store `{name}`: {url}");
    }
    let mut options = options;
    if (0..2).any(|i| stores.is_cluster(i)) {
        let (kept, left): (Vec<SystemKind>, Vec<SystemKind>) =
            options.systems.iter().partition(|s| s.runs_on_a_cluster());
        if !left.is_empty() {
            eprintln!(
                "a store is a Redis Cluster: leaving out {left:?}, which need every key on one \
                 Redis"
            );
        }
        anyhow::ensure!(
            !kept.is_empty(),
            "no system asked for runs on a Redis Cluster"
        );
        options.systems = kept;
    }
    let coordinator = Arc::new(
        redstage::cli::coordinator(&systems::library::config(stores.urls(), &options)?)
            .context("loading the inventory and payments components")?,
    );
    eprintln!(
        "timing {} participant calls of each component",
        options.wasm_calls
    );
    let wasm = wasm::calibrate(&coordinator, &options.components, options.wasm_calls).await?;
    if options.calibrate_only {
        print!("{}", report::calibration(&wasm));
        return Ok(Report {
            machine: Machine::probe(&stores).await,
            command,
            duration_s: 0.0,
            persistence: options.persistence,
            skus: options.skus,
            accounts: options.accounts,
            wasm,
            rows: Vec::new(),
            redis_time: Vec::new(),
        });
    }
    let http = match options.systems.contains(&SystemKind::RedstageHttp) {
        true => Some(systems::http::serve(coordinator.clone()).await?),
        false => None,
    };

    // `--redis-time`: a profile of each workload and system instead of
    // the cells; printed, and written to `--out` (no chart).
    let mut rows = Vec::new();
    let mut profiles = Vec::new();
    if options.redis_time {
        profiles = redis_time(&options, &stores, &coordinator, http).await?;
    } else {
        let cells = options.cells();
        let progress = progress_bar(cells.len() as u64);
        for (workload, concurrency, system) in cells {
            progress.set_message(format!("{workload} x{concurrency} {system}"));
            let driver = Driver::new(system, &stores, &coordinator, http).await?;
            let row = run_cell(
                &stores,
                &driver,
                &coordinator,
                &options,
                workload,
                concurrency,
                &wasm,
            )
            .await?;
            rows.push(row);
            progress.inc(1);
        }
        progress.finish_and_clear();
    }

    let report = Report {
        machine: Machine::probe(&stores).await,
        command,
        duration_s: match options.redis_time {
            true => 0.0,
            false => options.duration.as_secs_f64(),
        },
        persistence: options.persistence,
        skus: options.skus,
        accounts: options.accounts,
        wasm,
        rows,
        redis_time: profiles,
    };
    std::fs::write(&options.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", options.out.display()))?;
    if options.redis_time {
        print!("{}", redis_time::table(&report.redis_time));
        eprintln!("wrote {}", options.out.display());
        return Ok(report);
    }
    print!("{}", report::table(&report));
    std::fs::write(&options.svg, chart::svg(&report))
        .with_context(|| format!("writing {}", options.svg.display()))?;
    eprintln!(
        "wrote {} and {}",
        options.out.display(),
        options.svg.display()
    );
    Ok(report)
}

/// A profile of each workload and system the options ask for (see
/// [`redis_time`]).
async fn redis_time(
    options: &Options,
    stores: &Stores,
    coordinator: &Arc<redstage::txn::Coordinator>,
    http: Option<std::net::SocketAddr>,
) -> anyhow::Result<Vec<redis_time::Profile>> {
    let mut profiles = Vec::new();
    for &workload in &options.workloads {
        for &system in options.systems.iter().filter(|s| s.runs(workload)) {
            eprintln!("profiling {workload} {system}");
            let driver = Driver::new(system, stores, coordinator, http).await?;
            let space = options.key_space(workload);
            profiles.push(
                redis_time::profile(
                    stores,
                    &driver,
                    coordinator,
                    space,
                    workload,
                    options.redis_time_txns,
                )
                .await?,
            );
        }
    }
    Ok(profiles)
}

/// One cell: reset, seed, run, measure, audit.
async fn run_cell(
    stores: &Stores,
    driver: &Driver,
    coordinator: &redstage::txn::Coordinator,
    options: &Options,
    workload: workload::Workload,
    concurrency: usize,
    wasm: &wasm::Calibration,
) -> anyhow::Result<Row> {
    let system = driver.kind();
    let space = options.key_space(workload);
    let placement = system.placement();
    stores.reset().await?;
    stores.seed(&space, placement).await?;
    stores.reset_stats().await?;
    let before = stores.stats().await?;
    let round_trips = coordinator.metrics().round_trips();
    let cell = measure::run_cell(driver, workload, &space, concurrency, options.duration).await?;
    // What redstage still owes after its answers (other stores' applies,
    // records to finalize) counts in the cell's Redis figures and must be
    // done before the audit reads the data back.
    coordinator.flush().await;
    let redstage = system.runs_wasm().then(|| report::Redstage {
        wasm_us_per_call: wasm.per_call_us(workload),
        round_trips: coordinator.metrics().round_trips() - round_trips,
    });
    let mut after = stores.stats().await?;
    after.memory_bytes = stores.kept_bytes().await?;
    let levels = stores.levels(workload, &space, placement).await?;
    let leftovers = stores.leftovers().await?;
    let audit = workload::Audit::new(workload, &space, &levels, &cell.tally, leftovers);

    Ok(Row::new(
        system,
        workload,
        concurrency,
        &cell,
        &after.since(&before),
        redstage,
        audit,
    ))
}

fn progress_bar(cells: u64) -> ProgressBar {
    let bar = ProgressBar::new(cells);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells  {msg}  (eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
