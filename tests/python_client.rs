//! The Python client (`clients/python`) against real `redstage serve`
//! processes and real Redis: its suite, and three faults set up here around
//! an order it places (`clients/python/tests/test_scenarios.py`), each then
//! checked in Redis: the order applied once, never twice.

use redstage_tests::python::{assert_passed, spawn_pytest};
use redstage_tests::{Launch, ParticipantSpec, Persistence, TestEnv};
use serde_json::Value;

/// Short leases, so that a dead host's claim and locks are over quickly.
const FAST: &str = "[txn]\nlease_ms = 800\nsweep_interval_ms = 100\nstore_timeout_ms = 400\nidempotency_lease_ms = 1500\nidempotency_wait_ms = 500\n";

fn env(extra: &str, proxied: &[&str]) -> TestEnv {
    TestEnv::start_proxied(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ],
        extra,
        Persistence::None,
        proxied,
    )
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_passes_its_suite() {
    let env = env("", &[]);
    let host = env.spawn_host(None);
    let pytest = spawn_pytest(
        &["tests/test_client.py"],
        &[("REDSTAGE_TEST_SERVERS", url(host.addr))],
    );
    let passed = tokio::task::spawn_blocking(move || assert_passed(pytest));
    passed.await.expect("pytest finished");
}

/// Runs scenario `name` of test_scenarios.py against `servers` while
/// `during` does its part, and returns the outcome the test reported.
async fn scenario(name: &str, servers: &[String], during: impl AsyncFnOnce()) -> Value {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let pytest = spawn_pytest(
        &["tests/test_scenarios.py", "-k", name],
        &[
            ("REDSTAGE_TEST_SERVERS", servers.join(",")),
            ("REDSTAGE_TEST_SCENARIO", name.to_owned()),
            ("REDSTAGE_TEST_OUT", out.path().display().to_string()),
        ],
    );
    during().await;
    let passed = tokio::task::spawn_blocking(move || assert_passed(pytest));
    passed.await.expect("pytest finished");
    serde_json::from_slice(&std::fs::read(out.path()).expect("the scenario's outcome"))
        .expect("JSON outcome")
}

/// 10 of A1 and 100 for alice; each scenario's order takes 2 for 30.
async fn seed(env: &TestEnv) {
    env.stock_and_fund("A1", 10, "alice", 100).await;
}

/// The orders applied, checked to be whole (stock and money moved together).
async fn orders_applied(env: &TestEnv) -> i64 {
    env.settle().await;
    let int = |store: &'static str, key: &'static str| async move {
        env.get(store, key)
            .await
            .map_or(0, |v| v.parse::<i64>().expect("integer"))
    };
    let taken = 10 - int("orders", "inventory:stock:A1").await;
    let (alice, shop) = (
        int("ledger", "payments:balance:alice").await,
        int("ledger", "payments:balance:shop").await,
    );
    assert_eq!(alice + shop, 100, "money appeared or vanished");
    assert_eq!(taken * 15, shop, "stock and payments moved apart");
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    taken / 2
}

#[tokio::test(flavor = "multi_thread")]
async fn overloaded_is_retried_after_retry_after() {
    let env = env("[txn]\nin_flight_max = 1\n", &[]);
    seed(&env).await;
    let host = env
        .launch_host(&Launch {
            fault: Some("before-reply:1500"),
            ..Launch::default()
        })
        .expect("serve");
    let outcome = scenario("overloaded", &[url(host.addr)], async || {}).await;
    assert_eq!(outcome["status"], "committed");
    assert_eq!(orders_applied(&env).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_store_is_resolved_by_lookup_and_applied_once() {
    // The client's key makes the log store (orders) the commit point; its
    // reply is held past the store timeout.
    let env = env(FAST, &["orders"]);
    seed(&env).await;
    let host = env.spawn_host(None);
    // The order only adjusts the stock there: the commit point of that
    // shape.
    let commit = redstage::store::scripts::sha(redstage::store::scripts::COMMIT_ADJUSTED);
    env.proxy("orders")
        .delay_reply_to(&commit, env.config.txn.store_timeout() * 3);
    let outcome = scenario("stalled_store", &[url(host.addr)], async || {}).await;
    assert!(
        env.proxy("orders").fired(),
        "the commit's reply was not held"
    );
    assert_eq!(outcome["status"], "committed");
    assert_eq!(orders_applied(&env).await, 1, "{outcome}");
}

/// A host killed holding the order, before its decision and after it: the
/// client resends to the other host with the same key, and the order is
/// applied once.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_mid_request_applies_nothing_twice() {
    for point in ["after-prepare", "before-reply"] {
        let env = env(FAST, &[]);
        seed(&env).await;
        let mut doomed = env.spawn_host(Some(point));
        let other = env.spawn_host(None);
        let servers = [url(doomed.addr), url(other.addr)];
        let outcome = scenario("killed_host", &servers, async || {
            doomed.wait_for_point(point).await;
            doomed.kill();
        })
        .await;
        assert_eq!(outcome["status"], "committed", "{point}");
        assert_eq!(orders_applied(&env).await, 1, "{point}: {outcome}");
    }
}
