//! One cell: `concurrency` clients running transactions back to back until
//! the duration is over, each latency kept (a sorted vector gives exact
//! percentiles; a few hundred thousand samples are a few MB at most).

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::systems::{Driver, Ending};
use crate::workload::{Generator, KeySpace, Tally, Workload};

/// A client that meets this many errors stops early: the stores are gone,
/// and spinning on them measures nothing.
const ERRORS_MAX: u64 = 100;

/// What one cell's clients did, together.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub tally: Tally,
    /// Business aborts: nothing changed.
    pub aborted: u64,
    /// Gave up after losing every race.
    pub conflicts: u64,
    /// Store or system failures.
    pub errors: u64,
    /// The first such failure, to show.
    pub first_error: Option<String>,
    /// Re-runs after a conflict, every transaction together.
    pub retries: u64,
    /// From the first start to the last client's end.
    pub elapsed: Duration,
    /// Latency of every transaction that reached an outcome, sorted.
    pub latencies_us: Vec<u32>,
    /// CPU time of this process (clients, coordinator and wasm alike).
    pub host_cpu_s: f64,
}

impl Cell {
    fn merge(&mut self, other: Cell) {
        self.tally.merge(&other.tally);
        self.aborted += other.aborted;
        self.conflicts += other.conflicts;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.retries += other.retries;
        self.latencies_us.extend(other.latencies_us);
    }

    pub fn txn_per_s(&self) -> f64 {
        self.tally.committed as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency, in ms (`q` = 0.99 for p99).
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        percentile(&self.latencies_us, q).map(|us| us as f64 / 1000.0)
    }
}

/// The nearest-rank `q` quantile of sorted samples.
pub fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub async fn run_cell(
    driver: &Driver,
    workload: Workload,
    space: &KeySpace,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Cell> {
    let mut workers = Vec::with_capacity(concurrency);
    for client in 0..concurrency {
        workers.push(driver.worker(client).await?);
    }
    let cpu_before = process_cpu_s();
    let start = Instant::now();
    let deadline = start + duration;
    let clients = workers.into_iter().enumerate().map(|(client, mut worker)| {
        let mut generator = Generator::new(workload, *space, concurrency, client);
        tokio::spawn(async move {
            let mut cell = Cell::default();
            while Instant::now() < deadline && cell.errors < ERRORS_MAX {
                let txn = generator.next_txn();
                let started = Instant::now();
                let result = worker.run(&txn).await;
                let latency_us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                let done = match result {
                    Ok(done) => done,
                    Err(e) => {
                        cell.errors += 1;
                        cell.first_error.get_or_insert_with(|| format!("{e:#}"));
                        continue;
                    }
                };
                cell.latencies_us.push(latency_us);
                cell.retries += u64::from(done.retries);
                match done.ending {
                    Ending::Committed => cell.tally.add(&txn),
                    Ending::Aborted => cell.aborted += 1,
                    Ending::Conflict => cell.conflicts += 1,
                }
            }
            cell
        })
    });
    let mut total = Cell::default();
    for part in join_all(clients).await {
        total.merge(part?);
    }
    total.elapsed = start.elapsed();
    total.host_cpu_s = process_cpu_s() - cpu_before;
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// User + system CPU seconds of this process so far (0 where /proc is
/// missing).
fn process_cpu_s() -> f64 {
    // Linux reports these in USER_HZ, which is 100 on every mainstream
    // architecture.
    const TICKS_PER_S: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS_PER_S
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 0.5), Some(500));
        assert_eq!(percentile(&samples, 0.99), Some(990));
        assert_eq!(percentile(&samples, 0.999), Some(999));
        assert_eq!(percentile(&samples, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
