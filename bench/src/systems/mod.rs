//! The five ways of running one transaction, each behind the same two
//! calls: [`Driver::worker`] gives a client its own state (a connection for
//! WATCH, an HTTP connection), [`Worker::run`] runs one transaction.

pub mod baselines;
pub mod http;
pub mod library;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use redstage::txn::Coordinator;
use serde::Serialize;

use crate::stores::Stores;
use crate::workload::{Placement, Txn, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// redstage through the library.
    Redstage,
    /// The same, with the examples reading (and locking) every key, as
    /// participants of contract 0.1.0 do: no adjustments.
    RedstageLocking,
    /// redstage through its HTTP API.
    RedstageHttp,
    /// One EVALSHA with all keys on one Redis.
    Lua,
    /// WATCH/MULTI/EXEC optimistic retry on one Redis.
    Watch,
    /// Temp keys, an unchecked lock key and RENAME, across the stores.
    Naive,
    /// The fewest commands of a two-phase commit across the stores, by
    /// hand, for these workloads only.
    TwoPhase,
}

impl SystemKind {
    pub const ALL: [SystemKind; 7] = [
        SystemKind::Redstage,
        SystemKind::RedstageLocking,
        SystemKind::RedstageHttp,
        SystemKind::Lua,
        SystemKind::Watch,
        SystemKind::Naive,
        SystemKind::TwoPhase,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Redstage => "redstage",
            SystemKind::RedstageLocking => "redstage-locking",
            SystemKind::RedstageHttp => "redstage-http",
            SystemKind::Lua => "lua",
            SystemKind::Watch => "watch",
            SystemKind::Naive => "naive",
            SystemKind::TwoPhase => "two-phase",
        }
    }

    /// Whether it can run with a store on a Redis Cluster: redstage, whose
    /// scripts each touch one slot; not the baselines, whose scripts and
    /// transactions span keys of any slot.
    pub fn runs_on_a_cluster(self) -> bool {
        matches!(
            self,
            SystemKind::Redstage | SystemKind::RedstageLocking | SystemKind::RedstageHttp
        )
    }

    /// Where the system keeps stock and balances: across both stores, or
    /// all on `orders` for the single-Redis baselines.
    pub fn placement(self) -> Placement {
        match self {
            SystemKind::Lua | SystemKind::Watch => Placement {
                inventory: 0,
                payments: 0,
            },
            _ => Placement {
                inventory: 0,
                payments: 1,
            },
        }
    }

    /// Whether it runs `workload`: WATCH, the naive staging and the
    /// hand-written two-phase commit only move stock and money (`outbox`
    /// and `social` write hashes, sets and streams, which they were never
    /// written for).
    pub fn runs(self, workload: Workload) -> bool {
        !matches!(
            self,
            SystemKind::Watch | SystemKind::Naive | SystemKind::TwoPhase
        ) || !matches!(workload, Workload::Outbox | Workload::Social)
    }

    /// Whether its business logic runs as wasm participants.
    pub fn runs_wasm(self) -> bool {
        matches!(
            self,
            SystemKind::Redstage | SystemKind::RedstageLocking | SystemKind::RedstageHttp
        )
    }
}

impl fmt::Display for SystemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Committed,
    /// A business "no" (insufficient stock or funds): nothing changed.
    Aborted,
    /// Gave up after losing every race (redstage's `conflict`, WATCH past
    /// its bound).
    Conflict,
}

/// One transaction's outcome and how many times it was re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub ending: Ending,
    pub retries: u32,
}

impl Done {
    fn first_try(ending: Ending) -> Done {
        Done { ending, retries: 0 }
    }
}

/// A system, ready to hand out workers.
#[derive(Debug)]
pub enum Driver {
    /// The coordinator, and whether the examples read every key.
    Redstage(Arc<Coordinator>, bool),
    Http(SocketAddr),
    Lua(baselines::Lua),
    Watch(baselines::Watch),
    Naive(baselines::Naive),
    TwoPhase(baselines::TwoPhase),
}

/// One client's state for a system.
#[derive(Debug)]
pub enum Worker {
    Redstage(Arc<Coordinator>, bool),
    Http(http::Client),
    Lua(baselines::Lua),
    Watch(baselines::WatchWorker),
    Naive(baselines::NaiveWorker),
    TwoPhase(baselines::TwoPhaseWorker),
}

impl Driver {
    /// `http` is where the API is served, needed by `redstage-http` only.
    pub async fn new(
        kind: SystemKind,
        stores: &Stores,
        coordinator: &Arc<Coordinator>,
        http: Option<SocketAddr>,
    ) -> anyhow::Result<Driver> {
        Ok(match kind {
            SystemKind::Redstage => Driver::Redstage(coordinator.clone(), false),
            SystemKind::RedstageLocking => Driver::Redstage(coordinator.clone(), true),
            SystemKind::RedstageHttp => {
                Driver::Http(http.ok_or_else(|| anyhow::anyhow!("the API is not served"))?)
            }
            SystemKind::Lua => Driver::Lua(baselines::Lua::new(stores)),
            SystemKind::Watch => Driver::Watch(baselines::Watch::new(stores)),
            SystemKind::Naive => Driver::Naive(baselines::Naive::new(stores)),
            SystemKind::TwoPhase => Driver::TwoPhase(baselines::TwoPhase::new(stores)),
        })
    }

    pub fn kind(&self) -> SystemKind {
        match self {
            Driver::Redstage(_, false) => SystemKind::Redstage,
            Driver::Redstage(_, true) => SystemKind::RedstageLocking,
            Driver::Http(_) => SystemKind::RedstageHttp,
            Driver::Lua(_) => SystemKind::Lua,
            Driver::Watch(_) => SystemKind::Watch,
            Driver::Naive(_) => SystemKind::Naive,
            Driver::TwoPhase(_) => SystemKind::TwoPhase,
        }
    }

    /// State for client number `client`.
    pub async fn worker(&self, client: usize) -> anyhow::Result<Worker> {
        Ok(match self {
            Driver::Redstage(c, read) => Worker::Redstage(c.clone(), *read),
            Driver::Http(addr) => Worker::Http(http::Client::connect(*addr).await?),
            Driver::Lua(lua) => Worker::Lua(lua.clone()),
            Driver::Watch(watch) => Worker::Watch(watch.worker().await?),
            Driver::Naive(naive) => Worker::Naive(naive.worker(client)),
            Driver::TwoPhase(two) => Worker::TwoPhase(two.worker(client)),
        })
    }
}

impl Worker {
    /// Runs `txn` to an outcome. An error is a failure of the system or the
    /// stores, counted apart.
    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        match self {
            Worker::Redstage(coordinator, read) => library::run(coordinator, txn, *read).await,
            Worker::Http(client) => client.run(txn).await,
            Worker::Lua(lua) => lua.run(txn).await,
            Worker::Watch(watch) => watch.run(txn).await,
            Worker::Naive(naive) => naive.run(txn).await,
            Worker::TwoPhase(two) => two.run(txn).await,
        }
    }
}
