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
//! 3. runs the hand-written two-phase commit's three script calls
//!    ([`crate::systems::baselines::TWO_PHASE_RESERVE`], `_COMMIT`,
//!    `_APPLY`) with the keys and amounts the participants' writes name:
//!    reserve the stock on `orders`, decide and pay on `ledger`, deduct on
//!    `orders`;
//! 4. answers the outcome and the participants' outputs as JSON.
//!
//! `scripts/wrk.sh` runs the same `wrk` against it as against `serve`, on
//! the same Redis servers, and reports its CPU per order next to `serve`'s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redis::Script;
use redis::aio::MultiplexedConnection;
use redstage::runtime::{CallLimits, Component, Outcome, Runtime, guest};
use serde::Deserialize;

use crate::systems::baselines::{TWO_PHASE_APPLY, TWO_PHASE_COMMIT, TWO_PHASE_RESERVE};

/// The keys' prefixes, as `scripts/wrk.sh` configures the participants.
const INVENTORY_PREFIX: &str = "inventory:";
const PAYMENTS_PREFIX: &str = "payments:";
/// The reservations' index, lease and records' lifetime (recovery is not
/// part of the floor).
const INDEX: &str = "floor:index";
const LEASE_MS: u64 = 30_000;
const RECORD_TTL_MS: u64 = 600_000;

struct Floor {
    inventory: Component,
    payments: Component,
    orders: MultiplexedConnection,
    ledger: MultiplexedConnection,
    scripts: [Script; 3],
    /// Names this process's transactions apart from an earlier run's on
    /// the same Redis (whose records may still stand).
    run: u64,
    next: AtomicU64,
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
        orders: connect(orders).await?,
        ledger: connect(ledger).await?,
        scripts: [TWO_PHASE_RESERVE, TWO_PHASE_COMMIT, TWO_PHASE_APPLY].map(Script::new),
        run: fastrand::u64(..),
        next: AtomicU64::new(0),
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
    let mut stock = None;
    let mut payment = None;
    let mut outputs = Vec::with_capacity(request.steps.len());
    for step in &request.steps {
        let input = serde_json::to_vec(&step.input)?;
        let (component, prefix) = match step.participant.as_str() {
            "inventory" => (&floor.inventory, INVENTORY_PREFIX),
            "payments" => (&floor.payments, PAYMENTS_PREFIX),
            other => bail!("no participant `{other}`"),
        };
        let outcome = call(component, &input).await?;
        let adjusted = adjustments(&outcome, prefix);
        match adjusted.as_slice() {
            [(key, delta)] if *delta < 0 => stock = Some((key.clone(), -delta)),
            [(from, out), (to, _)] if *out < 0 => payment = Some((from.clone(), to.clone(), -out)),
            _ => bail!("`{}` wrote what an order does not", step.participant),
        }
        outputs.push((
            &step.participant,
            redstage::txn::types::output_json(&outcome.output),
        ));
    }
    let ((stock, qty), (from, to, amount)) = stock.zip(payment).context("not an order")?;
    let id = format!(
        "{:x}-{}",
        floor.run,
        floor.next.fetch_add(1, Ordering::Relaxed)
    );
    let [reserve, commit, apply] = &floor.scripts;
    let (mut orders, mut ledger) = (floor.orders.clone(), floor.ledger.clone());
    let reservations = format!("floor:res:{stock}");
    let reserved: String = reserve
        .key(&stock)
        .key(&reservations)
        .key(INDEX)
        .arg(&id)
        .arg(qty)
        .arg(LEASE_MS)
        .invoke_async(&mut orders)
        .await?;
    let committed = reserved == "ok" && {
        let decided: String = commit
            .key(&from)
            .key(&to)
            .key(format!("floor:txn:{id}"))
            .arg(amount)
            .arg(RECORD_TTL_MS)
            .invoke_async(&mut ledger)
            .await?;
        decided == "ok"
    };
    if reserved == "ok" {
        let _: i64 = apply
            .key(&stock)
            .key(&reservations)
            .key(INDEX)
            .arg(&id)
            .arg(if committed { "1" } else { "" })
            .invoke_async(&mut orders)
            .await?;
    }
    let steps: Vec<_> = outputs
        .into_iter()
        .map(|(participant, output)| serde_json::json!({"participant": participant, "output": output}))
        .collect();
    let status = if committed { "committed" } else { "aborted" };
    Ok(serde_json::to_vec(
        &serde_json::json!({"id": id, "status": status, "attempts": 1, "steps": steps}),
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

/// The step's adjustments, as (Redis key, delta), in the order written.
fn adjustments(outcome: &Outcome, prefix: &str) -> Vec<(String, i64)> {
    outcome
        .writes
        .iter()
        .filter_map(|w| match &w.op {
            guest::Op::Adjust(b) => Some((format!("{prefix}{}", w.key), b.delta)),
            _ => None,
        })
        .collect()
}
