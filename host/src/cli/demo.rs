//! `redstage demo`: an order across two Redis instances, with its event in
//! an outbox, shown step by step.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::config::Config;
use crate::txn::Coordinator;
use crate::txn::types::{Status, TxnRequest, TxnResponse};

pub async fn run(
    config: Option<PathBuf>,
    components: PathBuf,
    cluster: bool,
) -> anyhow::Result<ExitCode> {
    // Local servers, kept alive until the demo ends: dropping them stops
    // them.
    let mut running: Vec<Box<dyn std::any::Any>> = Vec::new();
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => local(cluster, &components, &mut running)?,
    };
    let coordinator = super::coordinator(&config)?;
    super::check_durability(&coordinator).await?;
    for name in ["inventory", "payments", "orders"] {
        if coordinator.registry().get(name).is_none() {
            bail!("the demo needs a participant named `{name}`");
        }
    }

    println!("\n# stock the shelf and fund alice");
    submit(
        &coordinator,
        json!([
            step("inventory", json!({"op":"restock","sku":"A1","qty":10})),
            step(
                "payments",
                json!({"op":"deposit","account":"alice","amount":100})
            )
        ]),
    )
    .await?;
    let before = levels(&coordinator).await?;
    println!("\n# before: {before}");

    println!("\n# order o1: 2 x A1 for 30, paid by alice -> commits on both stores");
    let first = submit(&coordinator, order("o1", 2, 30)).await?;
    println!("\n# order o2: 1 x A1 for 500, alice cannot pay -> aborts, nothing changes");
    let second = submit(&coordinator, order("o2", 1, 500)).await?;

    let after = levels(&coordinator).await?;
    println!("\n# after: {after}");
    // The outbox: the event of the committed order, none of the other.
    let orders = coordinator
        .stores()
        .find(|s| s.name() == "orders")
        .context("the demo needs a store named `orders`")?;
    let events: Vec<Value> = orders
        .stream_head(OUTBOX, 10)
        .await?
        .into_iter()
        .map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .map(|(f, v)| (f, Value::String(v)))
                    .collect(),
            )
        })
        .collect();
    println!(
        "\n# events in `{OUTBOX}`: {}",
        serde_json::to_string(&events)?
    );
    // What the host still owes after its answers (releasing the last
    // read's locks), before the servers stop.
    coordinator.flush().await;
    if first.status != Status::Committed || second.status != Status::Aborted {
        bail!("the demo did not go as planned");
    }
    Ok(ExitCode::SUCCESS)
}

/// Two local stores (`orders` on a Redis Cluster with `cluster`), started
/// here and pushed to `running`, and the config of the examples on them.
#[cfg(feature = "embedded")]
fn local(
    cluster: bool,
    components: &std::path::Path,
    running: &mut Vec<Box<dyn std::any::Any>>,
) -> anyhow::Result<Config> {
    use crate::embedded::{Persistence, RedisCluster, RedisServer};
    let mut urls = Vec::new();
    for store in ["orders", "ledger"] {
        // Durable, as every store must be: see store::durability.
        if cluster && store == "orders" {
            let started = RedisCluster::start(3, 0, Persistence::AofAlways)?;
            println!(
                "started a local Redis Cluster of 3 masters for store `{store}` \
                 (appendonly yes, appendfsync always): {}",
                started.url()
            );
            urls.push(started.url());
            running.push(Box::new(started));
            continue;
        }
        let server = RedisServer::start(Persistence::AofAlways)?;
        println!(
            "started a local redis-server on 127.0.0.1:{} for store `{store}` \
             (appendonly yes, appendfsync always)",
            server.port()
        );
        urls.push(server.url());
        running.push(Box::new(server));
    }
    let config = toml::to_string(&example_config(&urls[0], &urls[1], components)?)?;
    if cluster {
        println!("\n# the config\n{config}");
    }
    Ok(Config::parse(&config)?)
}

/// Without the `embedded` feature there is no starting local servers.
#[cfg(not(feature = "embedded"))]
fn local(
    _cluster: bool,
    _components: &std::path::Path,
    _running: &mut Vec<Box<dyn std::any::Any>>,
) -> anyhow::Result<Config> {
    bail!(
        "this build of redstage cannot start local Redis servers (it was built without the \
         `embedded` feature): pass --config naming your stores, or build it with \
         `cargo build --release -p redstage-host --features embedded` (as scripts/demo.sh does)"
    )
}

/// The config of the examples: inventory on store `orders` (which keeps
/// the log, unless it is a Redis Cluster, which cannot: then `ledger`
/// does) at `orders`, payments on `ledger`, and orders and social on
/// `orders` where `components` holds them, their components in
/// `components`; everything else default. A table, for callers that set
/// more before they parse it.
pub fn example_config(
    orders: &str,
    ledger: &str,
    components: &std::path::Path,
) -> anyhow::Result<toml::Table> {
    let table = |pairs: Vec<(&str, toml::Value)>| -> toml::Table {
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    };
    let participant = |name: &str, store: &str| -> anyhow::Result<toml::Value> {
        let path = components.join(format!("{name}.wasm"));
        let path = path.canonicalize().with_context(|| {
            format!(
                "no component at {} (build the examples first)",
                path.display()
            )
        })?;
        Ok(table(vec![
            ("component", path.display().to_string().into()),
            ("store", store.into()),
            ("prefix", format!("{name}:").into()),
        ])
        .into())
    };
    let stores = table(vec![("orders", orders.into()), ("ledger", ledger.into())]);
    let mut participants = table(vec![
        ("inventory", participant("inventory", "orders")?),
        ("payments", participant("payments", "ledger")?),
    ]);
    // The examples of typed data, where they were built.
    for name in ["orders", "social"] {
        if components.join(format!("{name}.wasm")).exists() {
            participants.insert(name.to_owned(), participant(name, "orders")?);
        }
    }
    Ok(table(vec![
        (
            "log_store",
            match orders.starts_with(crate::store::cluster::SCHEME) {
                true => "ledger".into(),
                false => "orders".into(),
            },
        ),
        ("stores", stores.into()),
        ("participants", participants.into()),
    ]))
}

fn step(participant: &str, input: Value) -> Value {
    json!({"participant": participant, "input": input})
}

/// The stream the `orders` participant announces orders on.
const OUTBOX: &str = "orders:events";

/// An order of three steps: stock, payment, and the order recorded with
/// its event in the outbox.
fn order(id: &str, qty: u64, amount: u64) -> Value {
    json!([
        step("inventory", json!({"op":"deduct","sku":"A1","qty":qty})),
        step(
            "payments",
            json!({"op":"transfer","from":"alice","to":"shop","amount":amount})
        ),
        step(
            "orders",
            json!({"op":"place","order":id,"customer":"alice","sku":"A1","qty":qty,"total":amount})
        ),
    ])
}

async fn submit(coordinator: &Coordinator, steps: Value) -> anyhow::Result<TxnResponse> {
    let request: TxnRequest = serde_json::from_value(json!({ "steps": steps }))?;
    println!("> {}", serde_json::to_string(&request)?);
    let response = coordinator.run(request).await?;
    println!("< {}", serde_json::to_string(&response)?);
    Ok(response)
}

/// Stock of A1 and the balances of alice and shop, read in one transaction.
async fn levels(coordinator: &Coordinator) -> anyhow::Result<Value> {
    let response = submit(
        coordinator,
        json!([
            step("inventory", json!({"op":"levels","skus":["A1"]})),
            step(
                "payments",
                json!({"op":"balances","accounts":["alice","shop"]})
            ),
        ]),
    )
    .await?;
    Ok(json!({"stock": response.steps[0].output, "balances": response.steps[1].output}))
}
