//! The parts of an order alone, served over HTTP: what any coordinator that
//! runs these participants over HTTP with these libraries pays per order,
//! before anything of redstage's own (plans, locks, records, recovery,
//! limits, logs, metrics).
//!
//! `POST /v1/transactions` takes the body `serve` takes for an order (an
//! inventory step and a payments step, as `bench/wrk/orders.lua` posts it)
//! and, per order:
//!
//! 1. parses it (the same `serde_json` types as `serve`);
//! 2. runs each step on a fresh instance of its participant, through the
//!    host's runtime (instantiate, `declare`, `execute` with the snapshot
//!    that adjusted keys get, which is empty; drop), the same calls the
//!    bench's calibration times;
//! 3. runs the bench's hand-written two-phase commit
//!    ([`crate::systems::baselines::TwoPhase`], three script calls) on the
//!    SKU, accounts and amounts the participants' writes name: reserve the
//!    stock on `orders`, decide and pay on `ledger`, deduct on `orders`;
//! 4. answers the outcome and the participants' outputs as JSON.
//!
//! `scripts/wrk.sh` runs the same `wrk` against it as against `serve`, on
//! the same Redis servers, and reports its CPU per order next to `serve`'s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, anyhow, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redstage::runtime::{CallLimits, Component, Outcome, Runtime, guest};
use serde::Deserialize;

use crate::systems::Ending;
use crate::systems::baselines::TwoPhase;
use crate::workload::Txn;

struct Floor {
    inventory: Component,
    payments: Component,
    two_phase: TwoPhase,
    /// Each order is a two-phase client of its own, numbered from here: a
    /// start drawn per process, so that a second run on the same Redis
    /// does not meet the first one's records.
    first_client: usize,
    next: AtomicUsize,
}

#[derive(Deserialize)]
struct Request {
    steps: Vec<StepRequest>,
}

#[derive(Deserialize)]
struct StepRequest {
    participant: String,
    input: serde_json::Value,
}

/// Serves the floor on `listen` until the process ends.
pub async fn serve(
    listen: SocketAddr,
    orders: &str,
    ledger: &str,
    components: &Path,
) -> anyhow::Result<()> {
    let runtime = Runtime::new().map_err(|e| anyhow!("{e}"))?;
    let load = |name: &str| -> anyhow::Result<Component> {
        let path = components.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        runtime
            .load(&bytes, CallLimits::default())
            .map_err(|e| anyhow!("{name}: {e}"))
    };
    let connect = |url: &str| {
        let url = url.to_owned();
        async move {
            let client = redis::Client::open(url.as_str())?;
            client
                .get_multiplexed_async_connection()
                .await
                .with_context(|| format!("connecting to {url}"))
        }
    };
    let floor = Arc::new(Floor {
        inventory: load("inventory")?,
        payments: load("payments")?,
        two_phase: TwoPhase::over([connect(orders).await?, connect(ledger).await?]),
        first_client: fastrand::usize(..),
        next: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route("/v1/transactions", axum::routing::post(order))
        .with_state(floor);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("the parts of an order alone, on http://{listen}");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn order(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    match run(&floor, &body).await {
        Ok(answer) => ([("content-type", "application/json")], answer).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    }
}

async fn run(floor: &Floor, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let request: Request = serde_json::from_slice(body)?;
    let mut item = None;
    let mut payment = None;
    let mut outputs = Vec::with_capacity(request.steps.len());
    for step in &request.steps {
        let input = serde_json::to_vec(&step.input)?;
        let component = match step.participant.as_str() {
            "inventory" => &floor.inventory,
            "payments" => &floor.payments,
            other => bail!("no participant `{other}`"),
        };
        let outcome = call(component, &input).await?;
        let adjusted = adjustments(&outcome);
        let named = |key: &str, kind: &str| {
            key.strip_prefix(kind)
                .map(str::to_owned)
                .with_context(|| format!("`{key}` is not a {kind} key"))
        };
        match (step.participant.as_str(), adjusted.as_slice()) {
            ("inventory", [(stock, delta)]) if *delta < 0 => {
                item = Some((named(stock, "stock:")?, -delta));
            }
            ("payments", [(from, out), (to, _)]) if *out < 0 => {
                payment = Some((named(from, "balance:")?, named(to, "balance:")?, -out));
            }
            _ => bail!("`{}` wrote what an order does not", step.participant),
        }
        outputs.push((
            &step.participant,
            redstage::txn::types::output_json(&outcome.output),
        ));
    }
    let (item, (from, to, amount)) = item.zip(payment).context("not an order")?;
    let txn = Txn {
        item: Some(item),
        from,
        to,
        amount,
        order: None,
        social: None,
    };
    let client = floor
        .first_client
        .wrapping_add(floor.next.fetch_add(1, Ordering::Relaxed));
    let done = floor.two_phase.worker(client).run(&txn).await?;
    let steps: Vec<_> = outputs
        .into_iter()
        .map(|(participant, output)| serde_json::json!({"participant": participant, "output": output}))
        .collect();
    let status = match done.ending {
        Ending::Committed => "committed",
        _ => "aborted",
    };
    Ok(serde_json::to_vec(
        &serde_json::json!({"id": client.to_string(), "status": status, "attempts": 1, "steps": steps}),
    )?)
}

/// One step on a fresh instance: instantiate, `declare`, `execute`, drop.
async fn call(component: &Component, input: &[u8]) -> anyhow::Result<Outcome> {
    let refused = |a: guest::Abort| anyhow!("{}: {}", a.code, a.message);
    let mut instance = component.instantiate().await?;
    instance.declare(input).await?.map_err(refused)?;
    let outcome = instance.execute(input, &[]).await?.map_err(refused)?;
    Ok(outcome)
}

/// The step's adjustments, as (the participant's key, delta), in the
/// order written.
fn adjustments(outcome: &Outcome) -> Vec<(&str, i64)> {
    outcome
        .writes
        .iter()
        .filter_map(|w| match &w.op {
            guest::Op::Adjust(b) => Some((w.key.as_str(), b.delta)),
            _ => None,
        })
        .collect()
}
