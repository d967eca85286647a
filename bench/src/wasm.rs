//! The cost of one participant call, measured around the host's public
//! runtime API: `Component::instantiate`, then `declare`, then `execute`,
//! then dropping the instance: what the coordinator does for each step of
//! each transaction.
//!
//! The host keeps no counter of time spent in wasm, so the bench times calls
//! of its own on the same compiled components, before the cells run (a quiet
//! machine: a floor for what a call costs under load). The criterion
//! micro-benchmark (`benches/participant_call.rs`) uses the same calls.
//!
//! Two figures come out of it besides the parts: the overhead of a fresh
//! instance (instantiate + drop, what `reuse_steps` saves), and a reused
//! step (`declare` + `execute` on an instance that served steps before, as
//! a participant with `reuse_steps` runs, audits off).
//!
//! And a floor for the first: what wasmtime itself costs for a fresh
//! instance on the host's engine and pool (a store, instantiate, drop,
//! nothing called), for the smallest component there is and for the
//! inventory participant.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use redstage::runtime::{Component, Entry, GuestAbort, ReusePolicy, guest};
use redstage::txn::Coordinator;
use serde::Serialize;

use crate::measure::percentile;
use crate::workload::Workload;

/// Calls made before timing starts: the first ones fault in the code pages.
const WARM_UP_CALLS: usize = 50;

/// An input and the snapshot its `execute` gets, as the coordinator would
/// hand them over.
#[derive(Debug, Clone)]
pub struct Sample {
    pub participant: &'static str,
    pub input: Vec<u8>,
    pub snapshot: Vec<Entry>,
}

/// An order's inventory step: deduct 2 of a SKU that has 1000.
pub fn inventory_sample() -> Sample {
    Sample {
        participant: "inventory",
        input: br#"{"op":"deduct","sku":"sku7","qty":2}"#.to_vec(),
        snapshot: vec![entry("stock:sku7", "1000")],
    }
}

/// An order's payment step: move 30 from a customer to a merchant.
pub fn payments_sample() -> Sample {
    Sample {
        participant: "payments",
        input: br#"{"op":"transfer","from":"c1","to":"m1","amount":30}"#.to_vec(),
        snapshot: vec![entry("balance:c1", "1000000"), entry("balance:m1", "0")],
    }
}

/// An outbox order's third step: place a new order.
pub fn orders_sample() -> Sample {
    Sample {
        participant: "orders",
        input: br#"{"op":"place","order":"o7","customer":"c1","sku":"sku7","qty":2,"total":30}"#
            .to_vec(),
        snapshot: vec![Entry {
            key: "order:{o7}".to_owned(),
            kind: guest::Kind::Hash,
            target: guest::Target::Whole,
            value: guest::Value::Fields(Vec::new()),
        }],
    }
}

/// A follow: u1 starts following u2.
pub fn social_sample() -> Sample {
    let member = |key: &str, member: &str| Entry {
        key: key.to_owned(),
        kind: guest::Kind::Set,
        target: guest::Target::Member(member.to_owned()),
        value: guest::Value::Present(false),
    };
    Sample {
        participant: "social",
        input: br#"{"op":"follow","user":"u1","target":"u2"}"#.to_vec(),
        snapshot: vec![
            member("following:{u1}", "u2"),
            member("followers:{u2}", "u1"),
        ],
    }
}

fn entry(key: &str, value: &str) -> Entry {
    Entry {
        key: key.to_owned(),
        kind: guest::Kind::String,
        target: guest::Target::Whole,
        value: guest::Value::Bytes(Some(value.as_bytes().to_vec())),
    }
}

/// The parts of one call.
#[derive(Debug, Clone, Copy)]
pub struct CallTimes {
    pub instantiate: Duration,
    pub declare: Duration,
    pub execute: Duration,
    /// Dropping the instance (its store, memories and stack).
    pub drop: Duration,
}

impl CallTimes {
    pub fn total(&self) -> Duration {
        self.instantiate + self.declare + self.execute + self.drop
    }

    /// What a fresh instance costs apart from the calls.
    pub fn fresh_overhead(&self) -> Duration {
        self.instantiate + self.drop
    }
}

/// One participant call: instantiate, declare, execute, and drop the
/// instance, as a step does. A business abort or a trap is an error here:
/// the samples are meant to succeed.
pub async fn call(component: &Component, sample: &Sample) -> anyhow::Result<CallTimes> {
    let refused = |a: GuestAbort| anyhow!("{}: {}", a.code, a.message);
    let started = Instant::now();
    let mut instance = component.instantiate().await?;
    let instantiated = Instant::now();
    instance.declare(&sample.input).await?.map_err(refused)?;
    let declared = Instant::now();
    instance
        .execute(&sample.input, &sample.snapshot)
        .await?
        .map_err(refused)?;
    let executed = Instant::now();
    drop(instance);
    Ok(CallTimes {
        instantiate: instantiated - started,
        declare: declared - instantiated,
        execute: executed - declared,
        drop: executed.elapsed(),
    })
}

/// Medians of `calls` calls of one participant, in µs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CallTiming {
    pub calls: usize,
    pub instantiate_us: f64,
    pub declare_us: f64,
    pub execute_us: f64,
    pub drop_us: f64,
    /// Median and p99 of the whole call.
    pub total_p50_us: f64,
    pub total_p99_us: f64,
    /// Median of instantiate + drop, call by call.
    pub fresh_overhead_us: f64,
    /// Median of declare + execute on a reused instance.
    pub reused_step_us: f64,
}

/// What wasmtime alone costs for a fresh instance (a `Store`,
/// instantiate, drop; nothing called) on the runtime's engine and pool,
/// medians in µs: the floor under `fresh_overhead_us`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Floor {
    /// [`EMPTY_COMPONENT`]: one page of memory and nothing else.
    pub empty_us: f64,
    /// The inventory participant's component, its imports left unlinked.
    pub inventory_us: f64,
}

/// The smallest component: one core module with one page of memory,
/// instantiated, nothing exported. In the binary format, written out by
/// hand (the host's wasmtime is built without the text format).
const EMPTY_COMPONENT: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, // a component (version 13, layer 1)
    0x01, 0x0d, // a core module section of 13 bytes:
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, //   a core module (version 1)
    0x05, 0x03, 0x01, 0x00, 0x01, //   with one memory of at least 1 page
    0x02, 0x04, 0x01, 0x00, 0x00, 0x00, // one core instance: module 0, no arguments
];

/// What one call of each example participant costs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Calibration {
    /// wasmtime alone, for the same pool.
    pub floor: Floor,
    pub inventory: CallTiming,
    pub payments: CallTiming,
    /// The examples of typed data, where the coordinator has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orders: Option<CallTiming>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub social: Option<CallTiming>,
}

impl Calibration {
    /// Median µs per participant call of a workload's transactions (0 for
    /// a participant that was not timed).
    pub fn per_call_us(&self, workload: Workload) -> f64 {
        let p50 = |t: Option<CallTiming>| t.map_or(0.0, |t| t.total_p50_us);
        match workload {
            Workload::Social => p50(self.social),
            Workload::Outbox => {
                (self.inventory.total_p50_us + self.payments.total_p50_us + p50(self.orders)) / 3.0
            }
            Workload::Transfer => self.payments.total_p50_us,
            _ => (self.inventory.total_p50_us + self.payments.total_p50_us) / 2.0,
        }
    }

    /// Each participant timed, by name.
    pub fn timings(&self) -> Vec<(&'static str, &CallTiming)> {
        let mut all = vec![("inventory", &self.inventory), ("payments", &self.payments)];
        all.extend(self.orders.as_ref().map(|t| ("orders", t)));
        all.extend(self.social.as_ref().map(|t| ("social", t)));
        all
    }
}

/// Times `calls` calls of each participant the coordinator has loaded,
/// and wasmtime's floor (the inventory component read from `components`).
pub async fn calibrate(
    coordinator: &Coordinator,
    components: &Path,
    calls: usize,
) -> anyhow::Result<Calibration> {
    let engine = coordinator.registry().runtime().engine();
    let inventory = components.join("inventory.wasm");
    let inventory =
        std::fs::read(&inventory).with_context(|| format!("reading {}", inventory.display()))?;
    let floor = Floor {
        empty_us: wasmtime_alone(engine, EMPTY_COMPONENT, calls).await?,
        inventory_us: wasmtime_alone(engine, &inventory, calls).await?,
    };
    let mut timing = [CallTiming::default(); 2];
    for (slot, sample) in timing
        .iter_mut()
        .zip([inventory_sample(), payments_sample()])
    {
        let participant = coordinator
            .registry()
            .get(sample.participant)
            .with_context(|| format!("no participant `{}`", sample.participant))?;
        *slot = time_calls(&participant.component, &sample, calls).await?;
    }
    let mut optional = [None, None];
    for (slot, sample) in optional.iter_mut().zip([orders_sample(), social_sample()]) {
        if let Some(participant) = coordinator.registry().get(sample.participant) {
            *slot = Some(time_calls(&participant.component, &sample, calls).await?);
        }
    }
    let [orders, social] = optional;
    Ok(Calibration {
        floor,
        inventory: timing[0],
        payments: timing[1],
        orders,
        social,
    })
}

pub async fn time_calls(
    component: &Component,
    sample: &Sample,
    calls: usize,
) -> anyhow::Result<CallTiming> {
    for _ in 0..WARM_UP_CALLS {
        call(component, sample).await?;
    }
    let mut parts: [Vec<u32>; 6] = Default::default();
    for _ in 0..calls.max(1) {
        let t = call(component, sample).await?;
        for (v, d) in parts.iter_mut().zip([
            t.instantiate,
            t.declare,
            t.execute,
            t.drop,
            t.total(),
            t.fresh_overhead(),
        ]) {
            v.push(nanos(d));
        }
    }
    let mut reused = reused_steps(component, sample, calls).await?;
    for v in parts.iter_mut().chain([&mut reused]) {
        v.sort_unstable();
    }
    let us = |v: &[u32], q: f64| percentile(v, q).unwrap_or(0) as f64 / 1000.0;
    Ok(CallTiming {
        calls: calls.max(1),
        instantiate_us: us(&parts[0], 0.5),
        declare_us: us(&parts[1], 0.5),
        execute_us: us(&parts[2], 0.5),
        drop_us: us(&parts[3], 0.5),
        total_p50_us: us(&parts[4], 0.5),
        total_p99_us: us(&parts[4], 0.99),
        fresh_overhead_us: us(&parts[5], 0.5),
        reused_step_us: us(&reused, 0.5),
    })
}

/// Median µs of `calls` fresh instances of `bytes` made and dropped by
/// wasmtime alone on `engine`: a store with nothing in it but a far epoch
/// deadline, no limiter, no epoch callback, no bindings; every import a
/// trap.
async fn wasmtime_alone(
    engine: &wasmtime::Engine,
    bytes: &[u8],
    calls: usize,
) -> anyhow::Result<f64> {
    let component = wasmtime::component::Component::new(engine, bytes)
        .map_err(|e| anyhow!("compiling a component for the floor: {e:#}"))?;
    let mut linker = wasmtime::component::Linker::<()>::new(engine);
    linker
        .define_unknown_imports_as_traps(&component)
        .map_err(|e| anyhow!("{e:#}"))?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| anyhow!("{e:#}"))?;
    let mut times = Vec::with_capacity(calls.max(1));
    for i in 0..WARM_UP_CALLS + calls.max(1) {
        let started = Instant::now();
        let mut store = wasmtime::Store::new(engine, ());
        // The engine counts epochs; a new store's deadline is the current
        // one, which a component that runs code to instantiate would hit.
        store.set_epoch_deadline(u64::from(u32::MAX));
        pre.instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow!("{e:#}"))?;
        drop(store);
        if i >= WARM_UP_CALLS {
            times.push(nanos(started.elapsed()));
        }
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.5).unwrap_or(0) as f64 / 1000.0)
}

fn nanos(d: Duration) -> u32 {
    d.as_nanos().min(u32::MAX as u128) as u32
}

/// `declare` + `execute` of `calls` steps on one reused instance (the
/// component with `reuse_steps` unbounded and no audits), in ns.
async fn reused_steps(
    component: &Component,
    sample: &Sample,
    calls: usize,
) -> anyhow::Result<Vec<u32>> {
    let policy = ReusePolicy {
        steps: u32::MAX,
        audit: 0.0,
    };
    let reusing = component.with_reuse(sample.participant, policy);
    let mut times = Vec::with_capacity(calls);
    for i in 0..WARM_UP_CALLS + calls.max(1) {
        let mut instance = reusing.instantiate().await?;
        anyhow::ensure!(
            i == 0 || instance.reused(),
            "{}: its instance was not kept for reuse",
            sample.participant
        );
        let started = Instant::now();
        let refused = |a: GuestAbort| anyhow!("{}: {}", a.code, a.message);
        instance.declare(&sample.input).await?.map_err(refused)?;
        instance
            .execute(&sample.input, &sample.snapshot)
            .await?
            .map_err(refused)?;
        if i >= WARM_UP_CALLS {
            times.push(nanos(started.elapsed()));
        }
    }
    Ok(times)
}
