//! What redstage keeps in Redis besides the data, and for how long:
//! decision records that never expire while a lock may point at them and
//! then shrink and expire; no record at all for read-only transactions;
//! lock table entries that exist only while a key is locked, with keys
//! deleted and created again under a transaction that read them staying
//! serializable; lookups that take only transaction ids and find a lock
//! wherever it is in the lock index.

use redstage::txn::types::Status;
use redstage_tests::{ParticipantSpec, Persistence, TestEnv, http, step};
use serde_json::{Value, json};

/// The orders environment with the register participant beside it.
fn env(extra: &str) -> TestEnv {
    TestEnv::start_with(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
            ParticipantSpec::example("register", "register", "orders", "register:"),
        ],
        extra,
        Persistence::None,
    )
}

fn order() -> Value {
    json!([
        step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1})),
        step(
            "payments",
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 3})
        ),
    ])
}

async fn seed(env: &TestEnv) {
    env.stock_and_fund("A1", 100, "alice", 1000).await;
}

/// Every `rs:txn:` record on every store, with its TTL in ms (-1: none).
fn records(env: &TestEnv) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for (store, _) in &env.servers {
        let mut conn = env.redis(store);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("rs:txn:*")
            .query(&mut conn)
            .expect("KEYS");
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("PTTL");
            out.push((format!("{store}: {key}"), ttl));
        }
    }
    out
}

/// A committed record whose other stores are not all applied never expires;
/// once they are, it shrinks and gets a TTL.
#[tokio::test]
async fn a_record_has_no_ttl_while_a_store_is_unapplied() {
    // Answered transactions (the seed) keep their records two leases only
    // (1.6 s), so the only one without a TTL, and then the only one kept
    // longer, is the crashed transaction's.
    let env = env(
        "[txn]\nlease_ms = 800\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n\
         answered_retention_s = 0\n",
    );
    seed(&env).await;
    let (mut host, unanswered) = env
        .held_at("after-decide", &json!({ "steps": order() }))
        .await;
    host.kill();
    assert!(unanswered.await.expect("task").is_err());
    let two_leases = 2 * env.config.txn.lease_ms as i64;
    let open: Vec<_> = records(&env)
        .into_iter()
        .filter(|(_, ttl)| *ttl == -1 || *ttl > two_leases)
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        open[0].1, -1,
        "a record the ledger still needs has a TTL: {open:?}"
    );

    let _survivor = env.spawn_host(None);
    assert!(env.leftovers().await.is_empty());
    let finished: Vec<_> = records(&env)
        .into_iter()
        .filter(|(_, ttl)| *ttl == -1 || *ttl > two_leases)
        .collect();
    let retention = env.config.txn.record_retention().as_millis() as i64;
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert!(
        finished[0].1 > 0 && finished[0].1 <= retention,
        "recovered, so kept record_retention_s: {finished:?}"
    );
}

/// With `answered_retention_s = 0`, nothing at all is left of transactions
/// that were answered, two leases after them (a committed record outlives
/// its finalization that long: see `TxnConfig::finalized_retention`): no
/// record, no lock table entry, no index entry. Read-only transactions
/// never leave a record. With the default, the records of answered
/// transactions expire after it.
#[tokio::test]
async fn answered_transactions_leave_nothing_past_their_retention() {
    let env = env("[txn]\nanswered_retention_s = 0\nlease_ms = 600\nstore_timeout_ms = 300\n");
    seed(&env).await;
    for _ in 0..5 {
        assert_eq!(env.run(order()).await.status, Status::Committed);
        let deposit = step(
            "payments",
            json!({"op": "deposit", "account": "bob", "amount": 1}),
        );
        assert_eq!(env.run(json!([deposit])).await.status, Status::Committed);
        let levels = step("inventory", json!({"op": "levels", "skus": ["A1"]}));
        let balances = step("payments", json!({"op": "balances", "accounts": ["alice"]}));
        assert_eq!(
            env.run(json!([levels.clone()])).await.status,
            Status::Committed
        );
        assert_eq!(
            env.run(json!([levels, balances])).await.status,
            Status::Committed
        );
    }
    assert!(
        records(&env)
            .iter()
            .all(|(_, ttl)| (0..=1200).contains(ttl)),
        "{:?}",
        records(&env)
    );
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_eq!(records(&env), Vec::<(String, i64)>::new());
    assert_eq!(env.leftovers().await, Vec::<String>::new());

    let env = self::env("");
    seed(&env).await;
    env.run(order()).await;
    env.run(json!([step(
        "payments",
        json!({"op": "deposit", "account": "bob", "amount": 1})
    )]))
    .await;
    env.run(json!([step(
        "inventory",
        json!({"op": "levels", "skus": ["A1"]})
    )]))
    .await;
    let answered = env.config.txn.answered_retention().as_millis() as i64;
    let kept = records(&env);
    assert_eq!(
        kept.len(),
        3,
        "the seed, the order and the deposit: {kept:?}"
    );
    assert!(
        kept.iter().all(|(_, ttl)| *ttl > 0 && *ttl <= answered),
        "{kept:?}"
    );
}

fn register(op: &str, key: &str, value: Option<&str>) -> Value {
    let mut input = json!({"op": op, "key": key});
    if let Some(v) = value {
        input["value"] = json!(v);
    }
    json!([step("register", input)])
}

/// A key's lock table entry exists only while it is locked, so keys created
/// and deleted leave nothing behind; and a transaction that read a key
/// holds it, so a delete and a re-create by others wait for it: nothing
/// they do can slip in between its read and its write.
#[tokio::test]
async fn keys_deleted_and_created_again_leave_no_trace_and_wait_for_their_reader() {
    let env = env("[txn]\nlease_ms = 4000\nstore_timeout_ms = 1000\n");
    for round in 0..3 {
        env.run(register("set", "k", Some(&round.to_string())))
            .await;
        env.run(register("delete", "k", None)).await;
    }
    let meta: Vec<String> = env
        .dump("orders")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("rs:{") || k == "rs:locks")
        .collect();
    assert_eq!(meta, Vec::<String>::new(), "metadata outlived its locks");

    // A bump that read 5 stalls between its read and its commit; another
    // host deletes the key, then creates it again.
    env.run(register("set", "k", Some("5"))).await;
    let host = env.spawn_host(Some("after-prepare:1000"));
    let addr = host.addr;
    let bump = tokio::spawn(async move {
        let body = json!({ "steps": register("bump", "k", None) }).to_string();
        http::post(addr, "/v1/transactions", body.as_bytes()).await
    });
    host.wait_for_point("after-prepare").await;
    let deleted = env.run(register("delete", "k", None)).await;
    let created = env.run(register("set", "k", Some("b"))).await;
    let (status, bumped) = bump.await.expect("the bump answers");
    assert_eq!(
        (status, bumped["status"].as_str()),
        (200, Some("committed")),
        "{bumped}"
    );
    assert_eq!(bumped["steps"][0]["output"]["was"], "5", "{bumped}");
    // The delete waited for the bump, so it saw the bump's write.
    assert_eq!(deleted.status, Status::Committed, "{deleted:?}");
    assert_eq!(deleted.steps[0].output["was"], "6", "{deleted:?}");
    assert_eq!(created.steps[0].output["was"], Value::Null, "{created:?}");
    assert_eq!(
        env.get("orders", "register:reg:k").await.as_deref(),
        Some("b")
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// Lookups take transaction ids only: a pattern is not one (and is not
/// matched against the lock index), and a lock is found wherever it is in
/// an index of many entries.
#[tokio::test]
async fn lookups_take_ids_only_and_scan_the_whole_lock_index() {
    let env = env("[txn]\nlease_ms = 60000\n");
    seed(&env).await;
    let api = http::serve(env.coordinator.clone()).await;
    // Many other entries, live for an hour: a lookup must look past them.
    let mut ledger = env.redis("ledger");
    let mut add = redis::cmd("ZADD");
    add.arg("rs:locks");
    for i in 0..50_000 {
        add.arg(i64::MAX / 2).arg(format!(
            "{i:08x}-0000-7000-8000-000000000000\n[\"orders\",[\"payments:x{i}\"]]"
        ));
    }
    add.query::<()>(&mut ledger).expect("ZADD");

    let (_host, _stuck) = env
        .held_at("after-prepare", &json!({ "steps": order() }))
        .await;
    let holders: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg("rs:locks")
        .arg("-inf")
        .arg(i64::MAX / 4)
        .query(&mut env.redis("orders"))
        .expect("ZRANGEBYSCORE");
    let id = holders[0].split('\n').next().expect("an id").to_owned();

    let (status, found) = http::get(api, &format!("/v1/transactions/{id}")).await;
    assert_eq!(
        (status, found["status"].as_str()),
        (200, Some("in_doubt")),
        "{found}"
    );
    for bad in ["*", "%2A", "no-such-transaction", "0193a1b2-*"] {
        let (status, found) = http::get(api, &format!("/v1/transactions/{bad}")).await;
        assert_eq!(status, 404, "{bad}: {found}");
        assert_eq!(
            found["error"]["code"], "unknown_transaction",
            "{bad}: {found}"
        );
    }
    let unknown = "01934f7a-0000-7000-8000-000000000000";
    let (status, _) = http::get(api, &format!("/v1/transactions/{unknown}")).await;
    assert_eq!(status, 404);
}

/// A store written by the first protocol keeps a metadata hash with a
/// version for every key it ever committed. Such a hash is dropped where a
/// transaction meets it, whichever way it holds the key; one that still
/// holds that protocol's lock stops the transaction with an error naming
/// it, nothing locked or written, until it is finished.
#[tokio::test]
async fn metadata_of_the_first_protocol_is_dropped_and_its_locks_named() {
    use redstage::store::Key;

    let env = env("");
    seed(&env).await;
    let meta = |account: &str| Key::Meta(&format!("payments:balance:{account}")).encode();
    let mut ledger = env.redis("ledger");
    for (account, fields) in [
        ("alice", vec![("ver", "7")]),
        ("shop", vec![("ver", "2")]),
        ("carol", vec![("ver", "3")]),
        (
            "dave",
            vec![
                ("ver", "4"),
                ("lock", "old-txn"),
                ("lease", "1"),
                ("primary", "ledger"),
            ],
        ),
    ] {
        let mut hset = redis::cmd("HSET");
        hset.arg(meta(account));
        for (field, value) in fields {
            hset.arg(field).arg(value);
        }
        hset.exec(&mut ledger).expect("HSET");
    }

    // Adjusted (an escrow transfer joins the keys' adjusters) and written
    // (a deposit locks exclusively): both commit, and the hashes are gone.
    let r = env.run(order()).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let r = env
        .run(json!([step(
            "payments",
            json!({"op": "deposit", "account": "carol", "amount": 5})
        )]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    for account in ["alice", "shop", "carol"] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(meta(account))
            .query(&mut ledger)
            .expect("EXISTS");
        assert!(!exists, "{account}'s old metadata is still there");
    }
    assert_eq!(
        env.get("ledger", "payments:balance:carol").await.as_deref(),
        Some("5")
    );

    // A key the first protocol still holds: a clear error, nothing applied.
    for input in [
        json!({"op": "deposit", "account": "dave", "amount": 5}),
        json!({"op": "transfer", "from": "alice", "to": "dave", "amount": 1}),
    ] {
        let e = env
            .coordinator
            .run(redstage_tests::request(json!([step("payments", input)])))
            .await
            .expect_err("a key held by the first protocol");
        assert_eq!(e.code(), "store_error", "{e}");
        let message = e.to_string();
        assert!(
            message.contains("old-txn") && message.contains("recover"),
            "{message}"
        );
    }
    env.coordinator.flush().await;
    assert_eq!(env.get("ledger", "payments:balance:dave").await, None);
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("997")
    );
    // Finished (here: removed by hand), it is in nobody's way; nothing of
    // the refused transactions is left.
    redis::cmd("DEL")
        .arg(meta("dave"))
        .exec(&mut ledger)
        .expect("DEL");
    assert!(
        env.leftovers().await.is_empty(),
        "{:?}",
        env.leftovers().await
    );
    let r = env
        .run(json!([step(
            "payments",
            json!({"op": "deposit", "account": "dave", "amount": 5})
        )]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
}
