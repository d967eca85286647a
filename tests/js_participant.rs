//! A participant written in JavaScript (`examples/payments-js`, built by
//! ComponentizeJS), deployed over the HTTP API to a real `serve` and run in
//! one transaction with a Rust participant (`inventory`): the same orders,
//! aborts and bad inputs as with the Rust `payments`, and the same stores'
//! contents afterwards.

use redstage_tests::http::request;
use redstage_tests::{ParticipantSpec, Persistence, TestEnv, js_payments};
use serde_json::{Value, json};

fn step(participant: &str, input: Value) -> Value {
    json!({"participant": participant, "input": input})
}

async fn submit(addr: std::net::SocketAddr, steps: Value) -> Value {
    let body = json!({ "steps": steps }).to_string();
    let (status, reply) = request(addr, "POST", "/v1/transactions", body.as_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn a_javascript_participant_runs_in_one_transaction_with_a_rust_one() {
    let folder = tempfile::tempdir().expect("temp dir");
    let env = TestEnv::start_with(
        &["orders", "ledger"],
        &[ParticipantSpec::example(
            "inventory",
            "inventory",
            "orders",
            "inventory:",
        )],
        &format!(
            "[deploy]\nfolder = {:?}\n",
            folder.path().display().to_string()
        ),
        Persistence::None,
    );
    let host = env.spawn_host(None);
    let component = std::fs::read(js_payments()).expect("the built component");
    // Deployed with the default limits, which it runs within.
    let query = "/v1/participants/payments?store=ledger&prefix=payments:";
    let (status, deployed) = request(host.addr, "PUT", query, &component).await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["contract"], "0.2.1", "{deployed}");

    let stocked = submit(
        host.addr,
        json!([
            step(
                "inventory",
                json!({"op": "restock", "sku": "A1", "qty": 10})
            ),
            step(
                "payments",
                json!({"op": "deposit", "account": "alice", "amount": 100})
            ),
        ]),
    )
    .await;
    assert_eq!(stocked["status"], "committed", "{stocked}");
    assert_eq!(stocked["steps"][1]["output"], json!({"alice": 100}));

    // An order: escrow adjustments from JavaScript, next to Rust's.
    let order = |qty: i64, amount: i64, read: bool| {
        json!([
            step(
                "inventory",
                json!({"op": "deduct", "sku": "A1", "qty": qty})
            ),
            step(
                "payments",
                json!({"op": "transfer", "from": "alice", "to": "shop", "amount": amount, "read": read})
            ),
        ])
    };
    let placed = submit(host.addr, order(2, 30, false)).await;
    assert_eq!(placed["status"], "committed", "{placed}");
    assert_eq!(
        placed["steps"][1]["output"],
        json!({"amount": 30, "from": "alice", "to": "shop"})
    );
    // The same order reading and setting the balances.
    let read = submit(host.addr, order(1, 20, true)).await;
    assert_eq!(read["steps"][1]["output"], json!({"alice": 50, "shop": 50}));

    // The participant's own abort, from either path, applies nothing.
    for read in [false, true] {
        let refused = submit(host.addr, order(1, 500, read)).await;
        assert_eq!(refused["status"], "aborted", "{refused}");
        assert_eq!(refused["abort"]["participant"], "payments");
        assert_eq!(refused["abort"]["code"], "insufficient_funds", "{refused}");
    }
    let bad = submit(
        host.addr,
        json!([step(
            "payments",
            json!({"op": "transfer", "from": "a", "to": "a", "amount": 1})
        )]),
    )
    .await;
    assert_eq!(bad["abort"]["code"], "bad_input", "{bad}");
    assert_eq!(
        bad["abort"]["message"],
        "`from` and `to` must differ (both are `a`)"
    );

    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("7")
    );
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("50")
    );
    assert_eq!(
        env.get("ledger", "payments:balance:shop").await.as_deref(),
        Some("50")
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}
