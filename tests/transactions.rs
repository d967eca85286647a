//! End to end: orders across two real Redis instances, through the library
//! and through the HTTP API.

use redstage::config::Config;
use redstage::txn::TxnError;
use redstage::txn::types::Status;
use redstage_tests::{
    ParticipantSpec, Persistence, RedisServer, TestEnv, TlsFiles, Toolchain, components,
    config_text, http, request, step,
};
use serde_json::{Value, json};

fn restock(sku: &str, qty: i64) -> Value {
    step(
        "inventory",
        json!({"op": "restock", "sku": sku, "qty": qty}),
    )
}
fn deduct(sku: &str, qty: i64) -> Value {
    step("inventory", json!({"op": "deduct", "sku": sku, "qty": qty}))
}
fn deposit(account: &str, amount: i64) -> Value {
    step(
        "payments",
        json!({"op": "deposit", "account": account, "amount": amount}),
    )
}
fn transfer(from: &str, to: &str, amount: i64) -> Value {
    step(
        "payments",
        json!({"op": "transfer", "from": from, "to": to, "amount": amount}),
    )
}

/// Stock of A1 and 10, alice holds 100.
async fn stocked() -> TestEnv {
    let env = TestEnv::orders();
    let r = env
        .run(json!([restock("A1", 10), deposit("alice", 100)]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    env
}

#[tokio::test]
async fn two_store_order_commits_with_both_writes_visible() {
    let env = stocked().await;
    let r = env
        .run(json!([deduct("A1", 2), transfer("alice", "shop", 30)]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.steps[0].participant, "inventory");
    assert!(r.abort.is_none());
    // Plain Redis strings, readable by any client.
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("8")
    );
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("70")
    );
    assert_eq!(
        env.get("ledger", "payments:balance:shop").await.as_deref(),
        Some("30")
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    // And visible to the next transaction.
    let r = env
        .run(json!([
            step("inventory", json!({"op": "levels", "skus": ["A1"]})),
            step(
                "payments",
                json!({"op": "balances", "accounts": ["alice", "shop", "nobody"]})
            ),
        ]))
        .await;
    assert_eq!(r.steps[0].output, json!({"A1": 8}));
    assert_eq!(
        r.steps[1].output,
        json!({"alice": 70, "shop": 30, "nobody": 0})
    );
}

#[tokio::test]
async fn aborted_payment_leaves_everything_untouched() {
    let env = stocked().await;
    // Everything but the decision log, which records the abort.
    let state = || -> Vec<_> {
        ["orders", "ledger"]
            .iter()
            .flat_map(|s| env.dump_now(s))
            .filter(|(k, _)| !k.starts_with("rs:txn:"))
            .collect()
    };
    let before = state();
    let r = env
        .run(json!([deduct("A1", 2), transfer("alice", "shop", 500)]))
        .await;
    assert_eq!(r.status, Status::Aborted);
    let abort = r.abort.expect("abort reason");
    assert_eq!(abort.code, "insufficient_funds");
    assert_eq!(abort.step, Some(1));
    assert_eq!(abort.participant.as_deref(), Some("payments"));
    assert!(r.steps.is_empty());
    assert_eq!(before, state(), "an aborted order changed Redis");
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_business_abort_in_the_first_step_stops_the_order() {
    let env = stocked().await;
    let r = env
        .run(json!([deduct("A1", 11), transfer("alice", "shop", 1)]))
        .await;
    let abort = r.abort.expect("aborted");
    assert_eq!(
        (abort.code.as_str(), abort.step),
        ("insufficient_stock", Some(0))
    );
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("100")
    );
}

#[tokio::test]
async fn later_steps_see_earlier_writes() {
    let env = TestEnv::orders();
    let r = env
        .run(json!([
            deposit("bob", 5),
            step(
                "payments",
                json!({"op": "withdraw", "account": "bob", "amount": 5})
            ),
            restock("B2", 1),
            deduct("B2", 1),
        ]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(
        env.get("ledger", "payments:balance:bob").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        env.get("orders", "inventory:stock:B2").await.as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn malformed_input_aborts_with_bad_input() {
    let env = stocked().await;
    for input in [
        json!({"op": "teleport"}),
        json!({"op": "deduct", "sku": "A1"}),
        json!({"op": "deduct", "sku": "A1", "qty": 0}),
        json!({"op": "deduct", "sku": "A1", "qty": -3}),
        json!("not an object"),
    ] {
        let r = env.run(json!([step("inventory", input.clone())])).await;
        let abort = r.abort.unwrap_or_else(|| panic!("{input} was accepted"));
        assert_eq!(abort.code, "bad_input", "{input}");
        assert!(!abort.message.is_empty());
    }
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("10")
    );
}

#[tokio::test]
async fn unknown_participant_and_empty_transaction_are_rejected() {
    let env = TestEnv::orders();
    let err = env
        .coordinator
        .run(request(json!([step("shipping", json!({}))])))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TxnError::BadRequest {
                code: "unknown_participant",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("shipping") && err.to_string().contains("inventory"),
        "{err}"
    );
    let err = env.coordinator.run(request(json!([]))).await.unwrap_err();
    assert_eq!(err.code(), "empty_transaction");
}

#[tokio::test]
async fn http_api_runs_orders_and_explains_bad_requests() {
    let env = stocked().await;
    let addr = http::serve(env.coordinator.clone()).await;

    let body = json!({"steps": [deduct("A1", 1), transfer("alice", "shop", 10)], "idempotency_key": "o-1"});
    let (status, reply) = http::post(addr, "/v1/transactions", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "committed");
    assert_eq!(reply["steps"][1]["participant"], "payments");
    assert!(reply["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(reply.get("abort").is_none());

    let body = json!({"steps": [transfer("alice", "shop", 1000)]});
    let (status, reply) = http::post(addr, "/v1/transactions", body.to_string().as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(reply["status"], "aborted");
    assert_eq!(reply["abort"]["code"], "insufficient_funds");
    assert_eq!(reply["abort"]["step"], 0);

    let cases: [(&[u8], &str); 4] = [
        (b"{not json", "malformed_json"),
        (br#"{"steps": "nope"}"#, "malformed_json"),
        (br#"{"steps": []}"#, "empty_transaction"),
        (
            br#"{"steps": [{"participant": "nope", "input": {}}]}"#,
            "unknown_participant",
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = http::post(addr, "/v1/transactions", body).await;
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "{reply}"
        );
    }
    let (status, reply) = http::get(addr, "/v1/ready").await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("ready")));
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("90")
    );
}

#[tokio::test]
async fn concurrent_orders_on_one_account_lose_no_update() {
    let env = TestEnv::orders();
    env.run(json!([restock("A1", 1000), deposit("alice", 1000)]))
        .await;
    let orders = (0..40).map(|_| {
        let coordinator = env.coordinator.clone();
        tokio::spawn(async move {
            let steps = json!([deduct("A1", 1), transfer("alice", "shop", 3)]);
            coordinator.run(request(steps)).await.expect("ran")
        })
    });
    let mut committed = 0;
    for order in orders.collect::<Vec<_>>() {
        let r = order.await.expect("task");
        match r.status {
            Status::Committed => committed += 1,
            // Under this much contention a few may run out of attempts; that
            // must be a clean `conflict`, never a partial order.
            Status::Aborted => assert_eq!(r.abort.expect("reason").code, "conflict"),
        }
    }
    assert!(committed > 0, "no order got through");
    let stock = 1000 - committed;
    let shop = 3 * committed;
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await,
        Some(stock.to_string())
    );
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await,
        Some((1000 - shop).to_string())
    );
    assert_eq!(
        env.get("ledger", "payments:balance:shop").await,
        Some(shop.to_string())
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test]
async fn components_built_for_wasm32_wasip2_run_too() {
    let dir = components(Toolchain::Wasip2);
    let env = TestEnv::start(
        &["orders", "ledger"],
        &[
            ParticipantSpec {
                name: "inventory".into(),
                component: dir.join("inventory.wasm"),
                store: "orders".into(),
                prefix: "inventory:".into(),
            },
            ParticipantSpec {
                name: "payments".into(),
                component: dir.join("payments.wasm"),
                store: "ledger".into(),
                prefix: "payments:".into(),
            },
        ],
    );
    let r = env
        .run(json!([restock("A1", 3), deposit("alice", 9)]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let r = env
        .run(json!([deduct("A1", 1), transfer("alice", "shop", 9)]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(
        env.get("ledger", "payments:balance:shop").await.as_deref(),
        Some("9")
    );
}

/// The entries of compiled code under a compile cache folder: files named
/// by their hash alone (the cache's bookkeeping files have extensions).
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("cache dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(entries(&path));
        } else if path.extension().is_none() {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_restart_with_a_warm_cache_does_not_recompile() {
    let cache = tempfile::tempdir().expect("temp dir");
    let dir = cache.path().display().to_string();
    let env = TestEnv::orders_with(&format!("[cache]\ndir = {dir:?}\n"), Persistence::None);
    let counts = |host: &redstage::txn::Coordinator| {
        let cache = host.registry().runtime().cache().expect("a cache");
        (cache.compiled(), cache.hits())
    };
    assert_eq!(counts(&env.coordinator), (2, 0), "a cold cache compiles");
    assert_eq!(counts(&env.second_host()), (0, 2), "a warm one does not");

    // A restarted server says so in its log.
    let host = env.spawn_host(None);
    let log = host.stderr();
    let said = |needle: &str| log.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        said("loaded a compiled component from the cache"),
        2,
        "{log:?}"
    );
    assert_eq!(said("compiled a component"), 0, "{log:?}");
    drop(host);

    // A damaged entry is compiled again and replaced, not trusted.
    let entry = entries(cache.path()).pop().expect("a cache entry");
    std::fs::write(&entry, b"not machine code").expect("damage the entry");
    let host = env.second_host();
    assert_eq!(counts(&host), (1, 1));
    let r = host
        .run(request(json!([restock("A1", 1), deposit("alice", 1)])))
        .await;
    assert_eq!(r.expect("runs").status, Status::Committed);
    assert_eq!(counts(&env.second_host()), (0, 2), "the entry was replaced");
}

#[tokio::test]
async fn metrics_count_decisions_and_participant_calls() {
    let env = stocked().await;
    let api = http::serve(env.coordinator.clone()).await;
    let r = env
        .run(json!([deduct("A1", 1), transfer("alice", "shop", 5)]))
        .await;
    assert_eq!(r.status, Status::Committed);
    let r = env.run(json!([deduct("A1", 99)])).await;
    assert_eq!(r.status, Status::Aborted);
    let (status, text) = http::get(api, "/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("plain text");
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    // The seeding order, the order, the abort.
    assert_eq!(
        value(r#"redstage_transactions_total{status="committed"}"#),
        2.0
    );
    assert_eq!(
        value(r#"redstage_transactions_total{status="aborted",code="insufficient_stock"}"#),
        1.0
    );
    assert_eq!(value("redstage_transaction_duration_seconds_count"), 3.0);
    assert_eq!(
        value(r#"redstage_participant_calls_total{participant="inventory",call="execute"}"#),
        3.0
    );
    assert!(
        value(
            r#"redstage_participant_call_seconds_total{participant="inventory",call="instantiate"}"#
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_instance_pool_makes_steps_wait_not_fail() {
    // Two slots, transactions of two steps: each transaction needs the
    // whole pool, so they must take turns (and must not deadlock, each
    // holding one slot and waiting for the other).
    let env = TestEnv::orders_with(
        "[runtime]\ninstance_pool = 2\n[txn]\nsteps_max = 2\n",
        Persistence::None,
    );
    let r = env
        .run(json!([restock("A1", 100), deposit("alice", 100)]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let orders: Vec<_> = (0..8)
        .map(|_| {
            let host = env.coordinator.clone();
            tokio::spawn(async move {
                host.run(request(json!([
                    deduct("A1", 1),
                    transfer("alice", "shop", 1)
                ])))
                .await
                .expect("runs")
            })
        })
        .collect();
    for order in orders {
        let r = order.await.expect("order task");
        assert_eq!(r.status, Status::Committed, "{r:?}");
    }
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("92")
    );
}

/// The orders config on `servers` (`orders`, `ledger`), with `orders`
/// reached over TLS as `table` says (the keys after `url`).
fn tls_config(servers: &[(String, RedisServer)], table: &str) -> Config {
    let specs = [
        ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
        ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
    ];
    let orders = &servers[0].1;
    let url = orders.tls_url().expect("a TLS port");
    let text = config_text(servers, &specs, "").replacen(
        &format!("orders = {:?}\n", orders.url()),
        &format!("orders = {{ url = {url:?}{table} }}\n"),
        1,
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn a_store_reached_over_tls_with_a_client_certificate_runs_orders() {
    let tls = TlsFiles::generate();
    let servers = [
        (
            "orders".to_owned(),
            RedisServer::start_tls(Persistence::None, &tls.server()).expect("TLS redis"),
        ),
        (
            "ledger".to_owned(),
            RedisServer::start(Persistence::None).expect("redis"),
        ),
    ];
    let file = |name: &str| format!("{:?}", tls.path(name).display().to_string());
    let client = format!(
        ", tls_cert_file = {}, tls_key_file = {}",
        file("client.crt"),
        file("client.key")
    );
    let trusted = format!(", tls_ca_file = {}{client}", file("ca.crt"));
    let config = tls_config(&servers, &trusted);
    let coordinator = redstage::cli::coordinator(&config).expect("coordinator");
    assert_eq!(coordinator.check_durability().await, Vec::<String>::new());
    for steps in [
        json!([restock("A1", 10), deposit("alice", 100)]),
        json!([deduct("A1", 2), transfer("alice", "shop", 30)]),
    ] {
        let r = coordinator.run(request(steps)).await.expect("runs");
        assert_eq!(r.status, Status::Committed, "{r:?}");
    }
    coordinator.flush().await;
    // On the TLS server (read here through its plain port, for tools).
    let stock: Option<String> = redis::cmd("GET")
        .arg("inventory:stock:A1")
        .query(
            &mut redis::Client::open(servers[0].1.url())
                .and_then(|c| c.get_connection())
                .expect("plain port"),
        )
        .expect("GET");
    assert_eq!(stock.as_deref(), Some("8"));
    // A server signed by a CA not trusted, or a server that asks for a
    // client certificate that is not sent: the store is unavailable, named.
    let untrusted = format!(", tls_ca_file = {}{client}", file("other-ca.crt"));
    let anonymous = format!(", tls_ca_file = {}", file("ca.crt"));
    for table in [untrusted, anonymous] {
        let coordinator = redstage::cli::coordinator(&tls_config(&servers, &table)).expect("lazy");
        let store = coordinator
            .stores()
            .find(|s| s.name() == "orders")
            .expect("orders");
        let err = store.ping().await.expect_err(&table);
        assert!(err.to_string().contains("orders"), "{err}");
        let err = coordinator
            .run(request(json!([deduct("A1", 1)])))
            .await
            .expect_err("unavailable");
        assert_eq!(err.code(), "store_unavailable", "{table}: {err}");
    }
}

/// A key that holds another Redis type than the string a step declares (a
/// hash where a balance should be): reading it, adjusting it on its own
/// store (where the commit point checks it) and adjusting it in an order
/// across stores all abort with `wrong_type`, naming the key and the type
/// found; nothing changes, no lock is left, and a lookup of the id answers
/// the same abort. (Before, a read answered `503 store_error`, and an
/// adjustment `503 outcome_unknown` that the lookup then did not know.)
#[tokio::test]
async fn a_key_of_another_redis_type_aborts_with_wrong_type() {
    use redis::Commands;

    let env = stocked().await;
    let mut ledger = env.redis("ledger");
    let _: () = ledger
        .hset("payments:balance:bob", "owner", "bob")
        .expect("HSET");
    let reading = step(
        "payments",
        json!({"op": "transfer", "from": "bob", "to": "shop", "amount": 1, "read": true}),
    );
    let state = || async {
        let mut all = env.dump("orders").await;
        all.extend(env.dump("ledger").await);
        all.retain(|(k, _)| !k.starts_with("rs:txn:"));
        all
    };
    let before = state().await;
    for steps in [
        json!([transfer("bob", "shop", 1)]),
        json!([deduct("A1", 1), transfer("bob", "shop", 1)]),
        json!([reading]),
    ] {
        let r = env.run(steps.clone()).await;
        let abort = r.abort.clone().unwrap_or_else(|| panic!("{steps}: {r:?}"));
        assert_eq!(
            (abort.code.as_str(), abort.participant.as_deref()),
            ("wrong_type", Some("payments")),
            "{steps}: {abort:?}"
        );
        assert!(
            abort.message.contains("balance:bob") && abort.message.contains("hash"),
            "{abort:?}"
        );
        let found = env.coordinator.lookup(&r.id).await.expect("lookup");
        let found = found.unwrap_or_else(|| panic!("{steps}: the lookup knows nothing"));
        assert_eq!(found.abort.map(|a| a.code).as_deref(), Some("wrong_type"));
        assert_eq!(state().await, before, "{steps}: something changed");
        assert_eq!(env.leftovers().await, Vec::<String>::new(), "{steps}");
    }
}
