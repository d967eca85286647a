//! Where a system's Redis time goes, per transaction: which scripts and
//! commands each store runs for it, how many Redis commands each script
//! calls, and how long each runs inside Redis.
//!
//! One client runs the workload's transactions one at a time while every
//! store keeps every command in its slow log (threshold 0): a script's
//! entry gives its time inside Redis, its own calls come just before it
//! (`?:0` clients). What a transaction leaves for later (another store's
//! apply, records to finalize) runs before the next one starts, and
//! counts. One transaction at a time, so that while Redis runs a command
//! the client waits for it: the times are the commands' own, not those of
//! a server preempted by the machine's other work. The slow log costs a
//! fraction of a microsecond per command it keeps, which the times include:
//! compare them side by side, as a profile, not as absolute costs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stores::{Logged, Stores};
use crate::systems::{Driver, Ending, SystemKind, baselines};
use crate::workload::{Generator, Workload};

/// The stores, by index.
const STORES: [&str; 2] = ["orders", "ledger"];

/// Commands the bench itself sends around the run, left out.
const OWN: [&str; 2] = ["CONFIG", "SLOWLOG"];

/// One system's Redis time on one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub workload: Workload,
    pub system: SystemKind,
    /// Transactions run, and how many committed.
    pub txns: usize,
    pub committed: usize,
    /// By store, then by script or command, heaviest first.
    pub parts: Vec<Part>,
    /// Every part together: µs inside Redis per transaction.
    pub us_per_txn: f64,
}

/// A script, or a command sent by the client itself.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub store: &'static str,
    /// The script's name (`LOCK`, `COMMIT`, ...), or the command's.
    pub name: String,
    pub calls_per_txn: f64,
    /// Redis commands the script called, per call (0 for a command).
    pub commands_per_call: f64,
    pub us_per_call: f64,
    pub us_per_txn: f64,
}

/// The scripts a run may call, by SHA1: redstage's and the Lua baseline's.
fn script_names() -> BTreeMap<String, &'static str> {
    use redstage::store::scripts as s;
    [
        ("LOCK", s::LOCK),
        ("LOCK_ADJUSTED", s::LOCK_ADJUSTED),
        ("COMMIT_ADJUSTED", s::COMMIT_ADJUSTED),
        ("APPLY_ADJUSTED", s::APPLY_ADJUSTED),
        ("RENEW", s::RENEW),
        ("DECISION", s::DECISION),
        ("RESERVE", s::RESERVE),
        ("COMMIT", s::COMMIT),
        ("APPLY", s::APPLY),
        ("FINALIZE", s::FINALIZE),
        ("EXPIRED", s::EXPIRED),
        ("LOCK_COUNTS", s::LOCK_COUNTS),
        ("RESCORE", s::RESCORE),
        ("CLAIM", s::CLAIM),
        ("SETTLE_CLAIM", s::SETTLE_CLAIM),
        ("order script", baselines::ORDER_LUA),
        ("outbox script", baselines::OUTBOX_LUA),
        ("social script", baselines::SOCIAL_LUA),
        ("two-phase reserve", baselines::TWO_PHASE_RESERVE),
        ("two-phase commit", baselines::TWO_PHASE_COMMIT),
        ("two-phase apply", baselines::TWO_PHASE_APPLY),
    ]
    .into_iter()
    .map(|(name, code)| (s::sha(code), name))
    .collect()
}

/// Runs `txns` transactions of `workload` through `driver`, one at a time,
/// on freshly seeded stores, and reads back what each store ran.
pub async fn profile(
    stores: &Stores,
    driver: &Driver,
    coordinator: &redstage::txn::Coordinator,
    space: crate::workload::KeySpace,
    workload: Workload,
    txns: usize,
) -> anyhow::Result<Profile> {
    let system = driver.kind();
    stores.reset().await?;
    stores.seed(&space, system.placement()).await?;
    let mut worker = driver.worker(0).await?;
    let mut generator = Generator::new(workload, space, 1, 0);
    // One first, unlogged: it loads the scripts into the servers, and
    // redstage learns that its stores answer.
    worker.run(&generator.next_txn()).await?;
    coordinator.flush().await;
    // Every transaction logs a few dozen commands at most.
    let before = stores.log_everything(txns.max(1) * 100).await?;
    let mut committed = 0;
    for _ in 0..txns {
        let done = worker.run(&generator.next_txn()).await?;
        committed += usize::from(done.ending == Ending::Committed);
        // What it left for later runs now, not while the next one runs.
        coordinator.flush().await;
    }
    let logged = stores.logged(&before).await?;
    Ok(Profile {
        workload,
        system,
        txns,
        committed,
        us_per_txn: 0.0,
        parts: Vec::new(),
    }
    .tally(&logged, &script_names()))
}

impl Profile {
    fn tally(mut self, logged: &[Vec<Logged>; 2], names: &BTreeMap<String, &'static str>) -> Self {
        let per_txn = self.txns.max(1) as f64;
        for (store, entries) in STORES.iter().zip(logged) {
            // name -> (calls, commands inside, µs)
            let mut by_name: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
            let mut inside = 0;
            for entry in entries {
                if entry.in_script {
                    inside += 1;
                    continue;
                }
                let name = match &entry.sha {
                    Some(sha) => names.get(sha).map_or_else(
                        || format!("script {}", &sha[..sha.len().min(8)]),
                        |n| (*n).to_owned(),
                    ),
                    None if OWN.contains(&entry.command.as_str()) => {
                        inside = 0;
                        continue;
                    }
                    None => entry.command.clone(),
                };
                let part = by_name.entry(name).or_default();
                part.0 += 1;
                part.1 += std::mem::take(&mut inside);
                part.2 += entry.micros;
            }
            let mut parts: Vec<Part> = by_name
                .into_iter()
                .map(|(name, (calls, commands, micros))| Part {
                    store,
                    name,
                    calls_per_txn: calls as f64 / per_txn,
                    commands_per_call: commands as f64 / calls as f64,
                    us_per_call: micros as f64 / calls as f64,
                    us_per_txn: micros as f64 / per_txn,
                })
                .collect();
            parts.sort_by(|a, b| b.us_per_txn.total_cmp(&a.us_per_txn));
            self.parts.extend(parts);
        }
        self.us_per_txn = self.parts.iter().map(|p| p.us_per_txn).sum();
        self
    }
}

/// The profiles as a Markdown table.
pub fn table(profiles: &[Profile]) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "\nRedis time per transaction, by store and by script or command (one client; µs \
         inside Redis, from its slow log; a script's time includes the commands it calls)\n\n\
         | workload | system | store | script or command | calls/txn | commands/call | µs/call | µs/txn |\n\
         | --- | --- | --- | --- | --: | --: | --: | --: |\n",
    );
    for p in profiles {
        for part in &p.parts {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} |",
                p.workload,
                p.system,
                part.store,
                part.name,
                part.calls_per_txn,
                part.commands_per_call,
                part.us_per_call,
                part.us_per_txn
            );
        }
        let _ = writeln!(
            out,
            "| {} | {} | all | **total** ({} of {} committed) | | | | **{:.1}** |",
            p.workload, p.system, p.committed, p.txns, p.us_per_txn
        );
    }
    out
}
