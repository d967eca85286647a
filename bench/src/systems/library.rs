//! redstage through the library: `Coordinator::run` with the example
//! participants, inventory on `orders` and payments on `ledger`.

use anyhow::Context;
use redstage::cli::demo::example_config;
use redstage::config::Config;
use redstage::txn::types::{Status, StepRequest, TxnRequest, TxnResponse};
use redstage::txn::{CONFLICT, Coordinator};
use serde_json::json;

use super::{Done, Ending};
use crate::options::{Options, Persistence};
use crate::workload::{Social, Txn};

/// The config of the bench's coordinator: two stores, the example
/// participants from `--components` (inventory and payments; orders and
/// social where built), the retention of answered records
/// from the options, defaults for everything else, and no compile cache
/// (the components are compiled once per run).
pub fn config(urls: &[String], options: &Options) -> anyhow::Result<Config> {
    let mut config = example_config(&urls[0], &urls[1], &options.components).context(
        "build the components with `cargo build --release --target wasm32-unknown-unknown -p inventory -p payments -p orders -p social`",
    )?;
    // Without persistence the stores cannot keep a decision through a
    // crash, and the host would refuse them: say so instead.
    let durability = match options.persistence {
        Persistence::None => "unsafe",
        Persistence::Aof => "checked",
    };
    config.insert("durability".into(), durability.into());
    let retention = i64::try_from(options.answered_retention_s)?;
    let txn = toml::Table::from_iter([("answered_retention_s".to_owned(), retention.into())]);
    config.insert("txn".into(), txn.into());
    let cache = toml::Table::from_iter([("enabled".to_owned(), false.into())]);
    config.insert("cache".into(), cache.into());
    Ok(Config::parse(&toml::to_string(&config)?)?)
}

/// The request for `txn`: an inventory deduct step when it has an item,
/// then a payments transfer, then the order placed when it is an outbox
/// order; with `read`, the first two reading (and locking) their keys
/// instead of adjusting them. A social operation is one `social` step.
pub fn request(txn: &Txn, read: bool) -> TxnRequest {
    if let Some(social) = &txn.social {
        let input = match social {
            Social::Follow { user, target } => {
                json!({"op": "follow", "user": user, "target": target})
            }
            Social::Unfollow { user, target } => {
                json!({"op": "unfollow", "user": user, "target": target})
            }
            Social::Message { from, to } => {
                json!({"op": "message", "from": from, "to": to, "text": "hi"})
            }
        };
        return TxnRequest {
            steps: vec![StepRequest {
                participant: "social".into(),
                input,
            }],
            idempotency_key: None,
        };
    }
    let mut steps = Vec::with_capacity(3);
    if let Some((sku, qty)) = &txn.item {
        steps.push(StepRequest {
            participant: "inventory".into(),
            input: json!({"op": "deduct", "sku": sku, "qty": qty, "read": read}),
        });
    }
    steps.push(StepRequest {
        participant: "payments".into(),
        input: json!({
            "op": "transfer", "from": txn.from, "to": txn.to, "amount": txn.amount, "read": read
        }),
    });
    if let (Some(order), Some((sku, qty))) = (&txn.order, &txn.item) {
        steps.push(StepRequest {
            participant: "orders".into(),
            input: json!({
                "op": "place", "order": order, "customer": txn.from, "sku": sku, "qty": qty,
                "total": txn.amount
            }),
        });
    }
    TxnRequest {
        steps,
        idempotency_key: None,
    }
}

pub async fn run(coordinator: &Coordinator, txn: &Txn, read: bool) -> anyhow::Result<Done> {
    let response = coordinator.run(request(txn, read)).await?;
    Ok(done(&response))
}

/// What a response says, whichever way it came.
pub fn done(response: &TxnResponse) -> Done {
    let ending = match (&response.status, &response.abort) {
        (Status::Committed, _) => Ending::Committed,
        (Status::Aborted, Some(abort)) if abort.code == CONFLICT => Ending::Conflict,
        (Status::Aborted, _) => Ending::Aborted,
    };
    Done {
        ending,
        retries: response.attempts.saturating_sub(1),
    }
}
