//! The durability check: a host refuses stores that could lose a decision
//! it acknowledged (no fsynced AOF and no replicas to wait for), refuses
//! eviction always, says so when told to run unsafe, and takes itself out
//! of rotation (`/v1/ready`) when a store's settings change under it.

use std::time::Duration;

use redstage::txn::types::Status;
use redstage_tests::{HostProcess, Persistence, TestEnv, http, request, step};
use serde_json::json;

/// The config of `env`, as a host would be started with it, with its
/// `durability` line replaced by `durability` (none: the default,
/// "checked").
fn config_with(
    env: &TestEnv,
    durability: Option<&str>,
    dir: &tempfile::TempDir,
) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&env.config_path).expect("read the config");
    let mut text: String = text
        .lines()
        .filter(|l| !l.starts_with("durability"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(d) = durability {
        text = format!("durability = {d:?}\n{text}");
    }
    let path = dir.path().join("redstage.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

fn config_set(env: &TestEnv, store: &str, key: &str, value: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut env.redis(store))
        .expect("CONFIG SET");
}

#[tokio::test]
async fn a_host_refuses_stores_that_could_lose_a_commit() {
    let env = TestEnv::orders_with("", Persistence::None);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_with(&env, None, &dir);
    let refused = HostProcess::try_start(&path, None).expect_err("refuses to serve");
    let said = refused.join("\n");
    for needle in [
        "store `orders`",
        "store `ledger`",
        "appendfsync always",
        "wait_replicas",
        "durability = \"unsafe\"",
    ] {
        assert!(said.contains(needle), "{needle:?} missing from: {said}");
    }
    // `run` refuses too, before anything is applied.
    let out = std::process::Command::new(redstage_tests::workspace().join("target/debug/redstage"))
        .args(["run", "--config"])
        .arg(&path)
        .arg(json!({"steps": [step("payments", json!({"op": "deposit", "account": "a", "amount": 1}))]}).to_string())
        .output()
        .expect("run redstage run");
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(env.get("ledger", "payments:balance:a").await, None);

    // With an fsynced AOF on every store, the same config serves.
    for store in ["orders", "ledger"] {
        config_set(&env, store, "appendonly", "yes");
        config_set(&env, store, "appendfsync", "always");
    }
    let host = HostProcess::try_start(&path, None).expect("serves on durable stores");
    let (status, body) = http::get(host.addr, "/v1/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn eviction_is_refused_even_when_durability_is_unsafe() {
    let env = TestEnv::orders_with("", Persistence::None);
    config_set(&env, "ledger", "maxmemory-policy", "allkeys-lru");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_with(&env, Some("unsafe"), &dir);
    let refused = HostProcess::try_start(&path, None).expect_err("refuses to serve");
    let said = refused.join("\n");
    assert!(
        said.contains("store `ledger`") && said.contains("noeviction"),
        "{said}"
    );
}

#[tokio::test]
async fn unsafe_serves_and_says_so() {
    let env = TestEnv::orders_with("", Persistence::None);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_with(&env, Some("unsafe"), &dir);
    let host = HostProcess::try_start(&path, None).expect("serves");
    assert!(
        host.wait_for(
            "not required to keep acknowledged writes",
            Duration::from_secs(5)
        )
        .await,
        "{:?}",
        host.stderr()
    );
}

#[tokio::test]
async fn ready_says_when_a_store_stops_being_durable() {
    let env = TestEnv::orders_with("", Persistence::AofAlways);
    let host = env.spawn_host(None);
    let (status, body) = http::get(host.addr, "/v1/ready").await;
    assert_eq!(status, 200, "{body}");

    config_set(&env, "ledger", "appendfsync", "everysec");
    let (status, body) = http::get(host.addr, "/v1/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["stores"][0]["store"], "ledger", "{body}");
    assert!(
        body["stores"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("appendfsync everysec")),
        "{body}"
    );

    config_set(&env, "ledger", "appendfsync", "always");
    let (status, body) = http::get(host.addr, "/v1/ready").await;
    assert_eq!(status, 200, "{body}");
}

/// A store whose writes must reach a replica, with none connected: every
/// transaction that needs it fails cleanly, applying nothing and leaving
/// no lock behind.
#[tokio::test]
async fn writes_no_replica_acknowledges_fail_cleanly() {
    let env = TestEnv::orders_with("", Persistence::None);
    let text = std::fs::read_to_string(&env.config_path).expect("read");
    let url = env.server("ledger").url();
    let text = text.replacen(&format!("ledger = {url:?}\n"), "", 1)
        + &format!("[stores.ledger]\nurl = {url:?}\nwait_replicas = 1\nwait_timeout_ms = 100\n");
    let config = redstage::config::Config::parse(&text).expect("a valid config");
    let coordinator = redstage::cli::coordinator(&config).expect("a coordinator");
    let order = json!([
        step("inventory", json!({"op": "restock", "sku": "A1", "qty": 5})),
        step(
            "payments",
            json!({"op": "deposit", "account": "alice", "amount": 5})
        ),
    ]);
    let err = coordinator
        .run(request(order))
        .await
        .expect_err("no replica acknowledges");
    assert_eq!(err.code(), "store_unavailable", "{err}");
    assert!(err.to_string().contains("replicas"), "{err}");
    coordinator.flush().await;
    assert_eq!(env.get("orders", "inventory:stock:A1").await, None);
    assert_eq!(env.get("ledger", "payments:balance:alice").await, None);
    assert_eq!(env.leftovers().await, Vec::<String>::new());

    // The store without the requirement goes on alone.
    let r = coordinator
        .run(request(json!([step(
            "inventory",
            json!({"op": "restock", "sku": "A1", "qty": 5})
        )])))
        .await
        .expect("runs");
    assert_eq!(r.status, Status::Committed);
}
