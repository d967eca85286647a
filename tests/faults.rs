//! The fault suite: hosts killed at every fault point, Redis stores stopped
//! and killed under load, a stalled host fenced off by another. After each,
//! recovery must leave every order applied on both stores or on neither, no
//! lock or staged value behind, and a status that agrees everywhere.

use std::time::{Duration, Instant};

use std::sync::Arc;

use redstage::config::Config;
use redstage::txn::types::{LookupStatus, Status};
use redstage::txn::{Coordinator, TxnError};
use redstage_tests::{
    HostProcess, ParticipantSpec, Persistence, RedisServer, TestEnv, http, request, signal, step,
};
use serde_json::{Value, json};

/// Short leases and frequent sweeps, so recovery happens within a test.
const FAST: &str = "[txn]\nlease_ms = 800\nsweep_interval_ms = 100\nstore_timeout_ms = 400\n";

/// How long recovery may take before a test gives up on it.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Stock and funds no run can use up: a load runs as many orders as the
/// machine allows in its time, and an order refused for want of stock would
/// end it early.
const STOCK: i64 = 1_000_000;
const FUNDS: i64 = STOCK * PRICE;
const PRICE: i64 = 3;

fn orders_env(persistence: Persistence) -> TestEnv {
    TestEnv::orders_with(FAST, persistence)
}

fn orders_env_with(config: &str) -> TestEnv {
    TestEnv::orders_with(config, Persistence::None)
}

/// One order: 1 x A1 for PRICE, paid by alice to shop.
fn order() -> Value {
    json!([
        step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1})),
        step(
            "payments",
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": PRICE})
        ),
    ])
}

/// The same order reading the stock and the balances (exclusive locks), as
/// one written before escrow would: for the tests that need one host to
/// meet another's locks (escrow adjusters do not block each other).
fn locking_order() -> Value {
    json!([
        step(
            "inventory",
            json!({"op": "deduct", "sku": "A1", "qty": 1, "read": true})
        ),
        step(
            "payments",
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": PRICE, "read": true})
        ),
    ])
}

async fn seed(env: &TestEnv) {
    env.stock_and_fund("A1", STOCK, "alice", FUNDS).await;
}

async fn int(env: &TestEnv, store: &str, key: &str) -> i64 {
    env.get(store, key)
        .await
        .map_or(0, |v| v.parse().expect("integer value"))
}

/// The orders applied, checked to be whole: every unit of stock that left
/// was paid for, and no money appeared or vanished.
async fn orders_applied(env: &TestEnv) -> i64 {
    let sold = STOCK - int(env, "orders", "inventory:stock:A1").await;
    let alice = int(env, "ledger", "payments:balance:alice").await;
    let shop = int(env, "ledger", "payments:balance:shop").await;
    assert_eq!(alice + shop, FUNDS, "money was created or lost");
    assert_eq!(
        shop,
        sold * PRICE,
        "stock and payments disagree: {sold} sold, {shop} paid"
    );
    assert!(alice >= 0 && sold >= 0);
    sold
}

/// Waits until no lock or staged value is left on any store.
async fn settled(env: &TestEnv) {
    let started = Instant::now();
    loop {
        let left = env.leftovers().await;
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "recovery left {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_order(addr: std::net::SocketAddr) -> (u16, Value) {
    post(addr, order()).await
}

async fn post(addr: std::net::SocketAddr, steps: Value) -> (u16, Value) {
    let body = json!({ "steps": steps }).to_string();
    http::post(addr, "/v1/transactions", body.as_bytes()).await
}

/// An order sent to a host that is going to be killed before it answers.
async fn post_order_unanswered(addr: std::net::SocketAddr) {
    post_unanswered(addr, order()).await
}

async fn post_unanswered(addr: std::net::SocketAddr, steps: Value) {
    let body = json!({ "steps": steps }).to_string();
    let reply = http::try_request(addr, "POST", "/v1/transactions", body.as_bytes()).await;
    assert!(reply.is_err(), "a killed host answered: {reply:?}");
}

#[tokio::test]
async fn crash_at_every_fault_point_then_recover() {
    // (point, whether the order must end up applied)
    let points = [
        ("prepare-partial", false),
        ("after-prepare", false),
        ("after-decide", true),
        ("commit-partial", true),
        ("before-reply", true),
    ];
    for (point, applied) in points {
        let env = orders_env(Persistence::None);
        seed(&env).await;
        let mut host = env.spawn_host(Some(point));
        let addr = host.addr;
        let request = tokio::spawn(post_order_unanswered(addr));
        host.wait_for_point(point).await;
        let in_doubt = env.lock_holders();
        host.kill();
        request.await.expect("the connection dies with the host");

        // A host that comes back sweeps what the dead one left.
        let survivor = env.spawn_host(None);
        settled(&env).await;
        assert_eq!(orders_applied(&env).await, i64::from(applied), "{point}");
        for id in &in_doubt {
            let (status, found) = http::get(survivor.addr, &format!("/v1/transactions/{id}")).await;
            assert_eq!(status, 200, "{point}: {found}");
            let expected = if applied { "committed" } else { "aborted" };
            assert_eq!(found["status"], expected, "{point}: {found}");
        }
        // And the next order goes through on both stores.
        let (status, reply) = post_order(survivor.addr).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("committed")),
            "{point}: {reply}"
        );
        assert_eq!(
            orders_applied(&env).await,
            i64::from(applied) + 1,
            "{point}"
        );
        println!("fault point {point}: recovered, in doubt: {in_doubt:?}");
    }
}

#[tokio::test]
async fn recover_command_finishes_a_crashed_commit() {
    let env = orders_env(Persistence::None);
    seed(&env).await;
    let mut host = env.spawn_host(Some("after-decide"));
    let request = tokio::spawn(post_order_unanswered(host.addr));
    host.wait_for_point("after-decide").await;
    let in_doubt = env.lock_holders();
    assert_eq!(in_doubt.len(), 1, "one transaction holds locks");
    host.kill();
    request.await.expect("the connection dies with the host");
    assert_eq!(
        decided(&env.coordinator, &in_doubt[0]).await,
        LookupStatus::Committed
    );

    let out = std::process::Command::new(redstage_tests::workspace().join("target/debug/redstage"))
        .arg("recover")
        .arg("--config")
        .arg(&env.config_path)
        .args(["--wait", "10"])
        .output()
        .expect("run redstage recover");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert!(
        out.status.success(),
        "{summary} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary["remaining"], 0);
    // One resolution finishes the transaction on every store its record
    // lists; whether the sweep then still finds an entry of it elsewhere
    // depends on timing, so only "at least one" is certain.
    assert!(
        summary["resolved"].as_u64() >= Some(1),
        "the crashed commit: {summary}"
    );
    assert!(env.leftovers().await.is_empty());
    assert_eq!(orders_applied(&env).await, 1);

    // `redstage status` tells it, and tells an unknown id apart.
    let status = |id: &str| {
        std::process::Command::new(redstage_tests::workspace().join("target/debug/redstage"))
            .args(["status", "--config"])
            .arg(&env.config_path)
            .arg(id)
            .output()
            .expect("run redstage status")
    };
    let out = status(&in_doubt[0]);
    assert!(out.status.success(), "{out:?}");
    let found: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(found["status"], "committed", "{found}");
    assert_eq!(status("no-such-id").status.code(), Some(2));
}

/// Runs orders from `clients` tasks for `duration`; returns (committed,
/// failed) counts. Failures must be clean errors or aborts, never a hang.
async fn load(env: &TestEnv, clients: usize, duration: Duration) -> (usize, usize) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let coordinator = env.coordinator.clone();
            let bound = env.config.txn.store_timeout() * 4 + Duration::from_secs(5);
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match coordinator.run(request(order())).await {
                        Ok(r) if r.status == Status::Committed => ok += 1,
                        Ok(r) => {
                            assert_eq!(r.abort.expect("reason").code, "conflict");
                            failed += 1;
                        }
                        Err(e) => {
                            assert!(
                                ["store_unavailable", "outcome_unknown", "store_error"]
                                    .contains(&e.code()),
                                "{e}"
                            );
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    assert!(
                        started.elapsed() < bound,
                        "a transaction hung for {:?}",
                        started.elapsed()
                    );
                }
                (ok, failed)
            })
        })
        .collect();
    let mut total = (0, 0);
    for t in tasks {
        let (ok, failed) = t.await.expect("client task");
        total.0 += ok;
        total.1 += failed;
    }
    total
}

#[tokio::test]
async fn store_stopped_past_the_lease_then_resumed() {
    let env = orders_env(Persistence::None);
    seed(&env).await;
    let ledger = env.server("ledger").pid().expect("running");
    let run = load(&env, 4, Duration::from_secs(4));
    let chaos = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        signal(ledger, "STOP");
        // Meanwhile, a transaction on the other store alone goes on.
        let r = env
            .run(json!([step(
                "inventory",
                json!({"op": "restock", "sku": "B2", "qty": 1})
            )]))
            .await;
        assert_eq!(
            r.status,
            Status::Committed,
            "orders-only work stops with the ledger: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await; // well past the lease
        signal(ledger, "CONT");
    };
    let ((committed, failed), ()) = tokio::join!(run, chaos);
    // Let the background sweep of a host finish what the stall left.
    let _host = env.spawn_host(None);
    settled(&env).await;
    let unacknowledged = unknown_commits(&env, committed).await;
    assert!(failed > 0, "the stop should have failed some orders");
    println!(
        "store stopped: {committed} committed, {failed} failed cleanly ({unacknowledged} of them \
         committed all the same)"
    );
}

/// Orders that committed although their client saw an error
/// (`outcome_unknown`): the difference between what Redis holds (checked
/// whole) and what was acknowledged, which must never be negative.
async fn unknown_commits(env: &TestEnv, acknowledged: usize) -> i64 {
    let applied = orders_applied(env).await;
    assert!(
        applied >= acknowledged as i64,
        "an acknowledged order was lost: {applied} < {acknowledged}"
    );
    applied - acknowledged as i64
}

/// Each store in turn, the log store (which holds the decisions) included.
#[tokio::test]
async fn store_killed_and_restarted_with_aof_mid_run() {
    for store in ["ledger", "orders"] {
        kill_and_restart_mid_run(store).await;
    }
}

async fn kill_and_restart_mid_run(store: &str) {
    let mut env = orders_env(Persistence::AofAlways);
    seed(&env).await;
    let coordinator = env.coordinator.clone();
    let run = {
        let env = &env;
        async move { load(env, 4, Duration::from_secs(4)).await }
    };
    let kill = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let pid = env.server(store).pid().expect("running");
        signal(pid, "KILL");
    };
    let ((committed, failed), ()) = tokio::join!(run, kill);
    env.server_mut(store)
        .restart()
        .expect("restart the store with its AOF");
    let r = coordinator
        .run(request(order()))
        .await
        .expect("runs after the restart");
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let _host = env.spawn_host(None);
    settled(&env).await;
    let applied = orders_applied(&env).await;
    assert!(
        applied > committed as i64,
        "acknowledged orders survive the restart: {applied} <= {committed}"
    );
    assert!(failed > 0, "the kill should have failed some orders");
    println!(
        "{store} killed: {committed} committed before, {failed} failed cleanly, {applied} applied in all"
    );
}

/// The decision recorded for transaction `id`, which must have one.
async fn decided(host: &Coordinator, id: &str) -> LookupStatus {
    host.lookup(id)
        .await
        .expect("lookup")
        .expect("a record")
        .status
}

#[tokio::test]
async fn a_stalled_host_is_fenced_and_commits_nothing_rolled_back() {
    let env = orders_env(Persistence::None);
    seed(&env).await;
    // Host A stalls for 3 s after locking both stores (leases: 400 ms).
    let host_a: HostProcess = env.spawn_host(Some("after-prepare:3000"));
    let first = tokio::spawn(post(host_a.addr, locking_order()));
    host_a.wait_for_point("after-prepare").await;
    host_a.pause();
    let stalled = env.lock_holders();
    assert_eq!(stalled.len(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await; // past the lease

    // Host B meets the expired locks, aborts A's transaction and goes on.
    let host_b = env.second_host();
    let r = host_b.run(request(locking_order())).await.expect("B runs");
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(
        decided(&host_b, &stalled[0]).await,
        LookupStatus::Aborted,
        "B must have decided A's fate"
    );

    host_a.resume();
    let (status, reply) = first.await.expect("A answers once resumed");
    assert_eq!(status, 200, "{reply}");
    // A's first attempt was rolled back; whatever A answers comes from a
    // later attempt with a new id.
    assert_ne!(reply["id"].as_str(), Some(stalled[0].as_str()), "{reply}");
    settled(&env).await;
    let expected = 1 + i64::from(reply["status"] == "committed");
    assert_eq!(orders_applied(&env).await, expected, "{reply}");
    assert_eq!(
        decided(&host_b, &stalled[0]).await,
        LookupStatus::Aborted,
        "A overturned its own rollback"
    );
}

/// The id of a transaction whose outcome the host could not confirm.
fn unknown_id(result: Result<redstage::txn::types::TxnResponse, TxnError>) -> String {
    match result {
        Err(TxnError::OutcomeUnknown { id, .. }) => id,
        other => panic!("expected outcome_unknown, got {other:?}"),
    }
}

/// A commit whose reply is lost (held back past the store timeout) is
/// answered `outcome_unknown` with its id, never "nothing applied": it was
/// applied. A lookup of the id tells, and the order is applied once.
#[tokio::test]
async fn a_lost_commit_reply_is_outcome_unknown_and_the_lookup_tells() {
    let env = TestEnv::start_proxied(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ],
        FAST,
        Persistence::None,
        &["orders", "ledger"],
    );
    seed(&env).await;
    let commit = redstage::store::scripts::sha(redstage::store::scripts::COMMIT);
    let late = env.config.txn.store_timeout() * 2;

    // One store: a deposit commits in one script on the ledger (run once
    // first, so that the server knows the script and the held reply is the
    // commit's own).
    let deposit = json!([step(
        "payments",
        json!({"op": "deposit", "account": "carol", "amount": 5})
    )]);
    env.run(deposit.clone()).await;
    env.proxy("ledger").delay_reply_to(&commit, late);
    let id = unknown_id(env.coordinator.run(request(deposit)).await);
    assert!(env.proxy("ledger").fired());
    tokio::time::sleep(late).await;
    assert_eq!(
        decided(&env.coordinator, &id).await,
        LookupStatus::Committed
    );
    assert_eq!(int(&env, "ledger", "payments:balance:carol").await, 10);

    // Two stores: the commit point on the ledger, where the order writes
    // two keys against the inventory's one. It only adjusts them, so it
    // holds no lock there: the commit point of that shape, run once first
    // as the deposit was.
    let commit = redstage::store::scripts::sha(redstage::store::scripts::COMMIT_ADJUSTED);
    env.run(order()).await;
    env.proxy("ledger").delay_reply_to(&commit, late);
    let id = unknown_id(env.coordinator.run(request(order())).await);
    tokio::time::sleep(late).await;
    assert_eq!(
        decided(&env.coordinator, &id).await,
        LookupStatus::Committed
    );
    // The inventory is rolled forward by recovery (the coordinator never
    // heard that it committed).
    let _host = env.spawn_host(None);
    settled(&env).await;
    assert_eq!(
        orders_applied(&env).await,
        2,
        "the first order, and this one once"
    );
}

/// A host that dies after its decision costs others nothing like its lease:
/// whoever meets one of its locks reads the decision and rolls it forward.
#[tokio::test]
async fn decided_locks_are_finished_on_sight_not_after_their_lease() {
    // A lease far longer than the transactions' patience.
    let env = TestEnv::orders_with(
        "[txn]\nlease_ms = 120000\nlock_wait_ms = 5000\n",
        Persistence::None,
    );
    seed(&env).await;
    let mut host = env.spawn_host(Some("after-decide"));
    let request_task = tokio::spawn(post_unanswered(host.addr, locking_order()));
    host.wait_for_point("after-decide").await;
    let crashed = env.lock_holders();
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    host.kill();
    request_task
        .await
        .expect("the connection dies with the host");

    let r = env
        .coordinator
        .run(request(locking_order()))
        .await
        .expect("runs");
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(orders_applied(&env).await, 2, "both orders, whole");
    assert_eq!(
        decided(&env.coordinator, &crashed[0]).await,
        LookupStatus::Committed
    );
}

/// Hosts sharing stores may keep different log stores: a lock names the
/// store holding its decision, and recovery reads it there.
#[tokio::test]
async fn recovery_reads_the_decision_where_the_lock_says() {
    let env = orders_env(Persistence::None);
    seed(&env).await;
    let mut host = env.spawn_host(Some("commit-partial"));
    let request_task = tokio::spawn(post_order_unanswered(host.addr));
    host.wait_for_point("commit-partial").await;
    let crashed = env.lock_holders();
    host.kill();
    request_task
        .await
        .expect("the connection dies with the host");

    let mut config: Config = env.config.clone();
    config.log_store = "ledger".into();
    let other = Arc::new(redstage::cli::coordinator(&config).expect("a coordinator"));
    let started = Instant::now();
    while !env.unfinished().is_empty() {
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "{:?}",
            env.unfinished()
        );
        other.sweep().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(orders_applied(&env).await, 1, "rolled forward, not back");
    assert_eq!(decided(&other, &crashed[0]).await, LookupStatus::Committed);
}

/// Three stores: inventory on `orders`, the payer on `ledger`, the payee on
/// `vault`, so that a commit can be cut between the other stores' applies.
fn three_store_env() -> TestEnv {
    TestEnv::start_with(
        &["orders", "ledger", "vault"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
            ParticipantSpec::example("vault", "payments", "vault", "vault:"),
        ],
        FAST,
        Persistence::None,
    )
}

fn three_store_order() -> Value {
    json!([
        step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1})),
        step(
            "payments",
            json!({"op": "withdraw", "account": "alice", "amount": PRICE})
        ),
        step(
            "vault",
            json!({"op": "deposit", "account": "shop", "amount": PRICE})
        ),
    ])
}

/// Orders applied on three stores, checked to be whole.
async fn three_store_orders_applied(env: &TestEnv) -> i64 {
    let sold = STOCK - int(env, "orders", "inventory:stock:A1").await;
    let paid = FUNDS - int(env, "ledger", "payments:balance:alice").await;
    let received = int(env, "vault", "vault:balance:shop").await;
    assert_eq!(paid, sold * PRICE, "stock and payer disagree");
    assert_eq!(received, paid, "payer and payee disagree");
    sold
}

/// A host that answered `committed` and died before its other stores all
/// applied: the answer holds, recovery applies the rest.
#[tokio::test]
async fn crash_after_the_answer_then_recover() {
    for point in ["after-answer", "apply-partial"] {
        let env = three_store_env();
        env.stock_and_fund("A1", STOCK, "alice", FUNDS).await;
        let mut host = env.spawn_host(Some(point));
        let body = json!({ "steps": three_store_order() }).to_string();
        let (status, reply) = http::post(host.addr, "/v1/transactions", body.as_bytes()).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("committed")),
            "{point}: {reply}"
        );
        host.wait_for_point(point).await;
        host.kill();
        let _survivor = env.spawn_host(None);
        settled(&env).await;
        assert_eq!(three_store_orders_applied(&env).await, 1, "{point}");
        let id = reply["id"].as_str().expect("an id");
        assert_eq!(
            decided(&env.coordinator, id).await,
            LookupStatus::Committed,
            "{point}"
        );
        println!("fault point {point}: the answered order recovered whole");
    }
}

/// Once `committed` is answered, every transaction that starts afterwards
/// sees its writes on every store, even while the coordinator has not
/// applied them yet: a reader meeting its lock rolls it forward.
#[tokio::test]
async fn an_acknowledged_commit_is_visible_while_other_stores_lag() {
    let env = orders_env(Persistence::None);
    seed(&env).await;
    // The coordinator answers, then stalls 3 s before applying the ledger.
    let host = env.spawn_host(Some("after-answer:3000"));
    let body = json!({ "steps": order() }).to_string();
    for n in 1..=3 {
        let (status, reply) = http::post(host.addr, "/v1/transactions", body.as_bytes()).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("committed")),
            "{reply}"
        );
        // Read right after the answer, from another host, across both stores.
        let r = env
            .coordinator
            .run(request(json!([
                step("inventory", json!({"op": "levels", "skus": ["A1"]})),
                step(
                    "payments",
                    json!({"op": "balances", "accounts": ["alice", "shop"]})
                ),
            ])))
            .await
            .expect("reads");
        assert_eq!(r.status, Status::Committed, "{r:?}");
        assert_eq!(r.steps[0].output["A1"], STOCK - n, "{r:?}");
        assert_eq!(r.steps[1].output["shop"], n * PRICE, "{r:?}");
        assert_eq!(r.steps[1].output["alice"], FUNDS - n * PRICE, "{r:?}");
    }
    settled(&env).await;
    assert_eq!(orders_applied(&env).await, 3);
}

/// The sweep resolves what it can even when hundreds of expired entries in
/// front of it fail every time (here: locks that name a store this host
/// does not know): those go to the back of the line.
#[tokio::test]
async fn the_sweep_does_not_starve_behind_entries_that_always_fail() {
    let env = orders_env(Persistence::None);
    seed(&env).await;
    // Expired entries, older than anything real, that no host can resolve.
    let mut ledger = env.redis("ledger");
    for i in 0..600 {
        let entry = format!(
            "{:08x}-dead-7000-8000-000000000000\n[\"nowhere\",[\"payments:x{i}\"]]",
            i
        );
        redis::cmd("ZADD")
            .arg("rs:locks")
            .arg(1)
            .arg(entry)
            .query::<()>(&mut ledger)
            .expect("ZADD");
    }
    // And a real transaction whose host died holding locks.
    let mut host = env.spawn_host(Some("after-prepare"));
    let request_task = tokio::spawn(post_order_unanswered(host.addr));
    host.wait_for_point("after-prepare").await;
    host.kill();
    request_task
        .await
        .expect("the connection dies with the host");
    tokio::time::sleep(env.config.txn.lease() + Duration::from_millis(100)).await;

    let started = Instant::now();
    loop {
        let report = env.coordinator.sweep().await;
        let real_left = env.unfinished().iter().any(|l| l.contains("rs:{"));
        if !real_left {
            break;
        }
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "the real lock starved: {report:?}"
        );
    }
    assert_eq!(orders_applied(&env).await, 0);
}

/// The log store replicated with `wait_replicas`: after its primary is
/// killed and the replica promoted, every acknowledged decision is there.
/// Without `wait_replicas` (and without an fsynced AOF) the host refuses to
/// start, so that the losing setup cannot be configured by accident.
#[tokio::test]
async fn a_promoted_replica_keeps_every_acknowledged_decision_with_wait() {
    let primary = RedisServer::start(Persistence::None).expect("primary");
    let mut replica = RedisServer::replica_of(&primary, Persistence::None).expect("replica");
    let ledger = RedisServer::start(Persistence::AofAlways).expect("ledger");
    let config = |orders: &str, wait: bool| {
        let store = if wait {
            format!(
                "[stores.orders]\nurl = {orders:?}\nwait_replicas = 1\nwait_timeout_ms = 2000\n"
            )
        } else {
            format!("[stores.orders]\nurl = {orders:?}\n")
        };
        let participants: String = [
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ]
        .iter()
        .map(|p| {
            format!(
                "[participants.{}]\ncomponent = {:?}\nstore = {:?}\nprefix = {:?}\n",
                p.name,
                p.component.display().to_string(),
                p.store,
                p.prefix
            )
        })
        .collect();
        format!(
            "log_store = \"orders\"\n{store}[stores.ledger]\nurl = {:?}\n{participants}[cache]\n\
             dir = {:?}\n{FAST}",
            ledger.url(),
            redstage_tests::shared_cache_dir().display().to_string(),
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("redstage.toml");

    // Without replicas to wait for, the primary may lose what it answered.
    std::fs::write(&path, config(&primary.url(), false)).expect("write");
    let refused = HostProcess::try_start(&path, None).expect_err("refuses to start");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("store `orders`") && l.contains("wait_replicas")),
        "{refused:?}"
    );
    // With them, it starts.
    std::fs::write(&path, config(&primary.url(), true)).expect("write");
    drop(HostProcess::start(&path, None));

    let coordinator = Arc::new(
        redstage::cli::coordinator(&Config::load(&path).expect("config")).expect("coordinator"),
    );
    let seeded = coordinator
        .run(request(json!([
            step(
                "inventory",
                json!({"op": "restock", "sku": "A1", "qty": STOCK})
            ),
            step(
                "payments",
                json!({"op": "deposit", "account": "alice", "amount": FUNDS})
            ),
        ])))
        .await
        .expect("seed");
    assert_eq!(seeded.status, Status::Committed);
    let mut primary = primary;
    let (acknowledged, _failed) = {
        let load = orders_until(&coordinator, Duration::from_secs(3));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            primary.kill();
            replica.promote().expect("promote the replica");
        };
        tokio::join!(load, kill).0
    };
    // Whatever the old host still owes goes to the dead primary; recovery
    // by the new one finishes it.
    drop(coordinator);

    // A host configured for the new primary finishes what was in flight.
    // (The promoted server has no replica of its own yet: writes to it
    // cannot wait for one.)
    std::fs::write(&path, config(&replica.url(), false)).expect("write");
    let after = Arc::new(
        redstage::cli::coordinator(&Config::load(&path).expect("config")).expect("coordinator"),
    );
    let read = |server: &RedisServer, key: &str| -> i64 {
        redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("GET").arg(key).query::<Option<i64>>(&mut c))
            .expect("GET")
            .unwrap_or(0)
    };
    let entries = |server: &RedisServer| -> Vec<String> {
        redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("ZRANGE")
                    .arg("rs:locks")
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query(&mut c)
            })
            .expect("ZRANGE")
    };
    let locks = |server: &RedisServer| -> usize {
        redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("ZCARD").arg("rs:locks").query(&mut c))
            .expect("ZCARD")
    };
    let started = Instant::now();
    while locks(&replica) + locks(&ledger) > 0 {
        let report = after.sweep().await;
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "recovery did not finish: {report:?}; left: {:?} {:?}",
            entries(&replica),
            entries(&ledger)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sold = STOCK - read(&replica, "inventory:stock:A1");
    let shop = read(&ledger, "payments:balance:shop");
    let alice = read(&ledger, "payments:balance:alice");
    assert_eq!(alice + shop, FUNDS, "money was created or lost");
    assert_eq!(
        shop,
        sold * PRICE,
        "stock and payments disagree after the failover"
    );
    let committed = acknowledged.len() as i64;
    assert!(
        sold >= committed,
        "an acknowledged order was lost in the failover: {sold} < {committed}"
    );
    // Their outcomes survived with them: a retry gets the first answer and
    // applies nothing.
    for (key, first) in acknowledged
        .iter()
        .step_by(acknowledged.len().div_ceil(20).max(1))
    {
        let again = after.run(keyed_order(key)).await.expect("a retry");
        assert_eq!(&again, first, "{key}");
    }
    after.flush().await;
    assert_eq!(
        STOCK - read(&replica, "inventory:stock:A1"),
        sold,
        "a retry applied again"
    );
    println!("failover: {committed} acknowledged, {sold} applied on the promoted replica");
}

/// An order with an idempotency key: its decision lives on the log store.
fn keyed_order(key: &str) -> redstage::txn::types::TxnRequest {
    redstage::txn::types::TxnRequest {
        idempotency_key: Some(key.to_owned()),
        ..request(order())
    }
}

/// Orders with idempotency keys from 4 clients until `duration` is over:
/// the acknowledged ones (key and response), and how many failed.
async fn orders_until(
    coordinator: &Arc<Coordinator>,
    duration: Duration,
) -> (Vec<(String, redstage::txn::types::TxnResponse)>, usize) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..4)
        .map(|client| {
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                let (mut acknowledged, mut failed) = (Vec::new(), 0);
                for n in 0.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let key = format!("order-{client}-{n}");
                    match coordinator.run(keyed_order(&key)).await {
                        Ok(r) if r.status == Status::Committed => acknowledged.push((key, r)),
                        Ok(_) | Err(_) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acknowledged, failed)
            })
        })
        .collect();
    let mut total = (Vec::new(), 0);
    for t in tasks {
        let (acknowledged, failed) = t.await.expect("client");
        total.0.extend(acknowledged);
        total.1 += failed;
    }
    total
}

/// A decision the log store's master holds but its replica does not (the
/// replica is stopped and cut off, the commit's `WAIT` timed out, the
/// order answered `outcome_unknown`) is
/// neither answered nor acted on: a keyed retry and a sweep on a second
/// host see it on the master, and must not answer `committed` from it or
/// roll the ledger forward with it, for the failover that follows loses it.
/// The master is killed, the replica (stopped meanwhile, so it never got the
/// decision) promoted, and once recovery and retries are done every order
/// is applied on both stores or on neither, and a committed answer was
/// applied exactly once.
#[tokio::test]
async fn a_decision_not_yet_replicated_is_never_acted_on() {
    let master = RedisServer::start(Persistence::None).expect("master");
    let mut replica = RedisServer::replica_of(&master, Persistence::None).expect("replica");
    let ledger = RedisServer::start(Persistence::None).expect("ledger");
    let lease = "[txn]\nlease_ms = 3000\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n\
                 idempotency_lease_ms = 1500\nidempotency_wait_ms = 200\n";
    let config = |orders: &str, wait: bool| {
        let wait = if wait {
            "wait_replicas = 1\nwait_timeout_ms = 300\n"
        } else {
            ""
        };
        let participants: String = [
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ]
        .iter()
        .map(|p| {
            format!(
                "[participants.{}]\ncomponent = {:?}\nstore = {:?}\nprefix = {:?}\n",
                p.name,
                p.component.display().to_string(),
                p.store,
                p.prefix
            )
        })
        .collect();
        format!(
            "log_store = \"orders\"\ndurability = \"unsafe\"\n[stores.orders]\nurl = {orders:?}\n\
             {wait}[stores.ledger]\nurl = {:?}\n{participants}[cache]\ndir = {:?}\n{lease}",
            ledger.url(),
            redstage_tests::shared_cache_dir().display().to_string(),
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("redstage.toml");
    std::fs::write(&path, config(&master.url(), true)).expect("write");
    let coordinator = |path: &std::path::Path| {
        Arc::new(
            redstage::cli::coordinator(&Config::load(path).expect("config")).expect("coordinator"),
        )
    };
    let second = coordinator(&path);
    let seeded = second
        .run(request(json!([
            step(
                "inventory",
                json!({"op": "restock", "sku": "A1", "qty": STOCK})
            ),
            step(
                "payments",
                json!({"op": "deposit", "account": "alice", "amount": FUNDS})
            ),
        ])))
        .await
        .expect("seed");
    assert_eq!(seeded.status, Status::Committed, "{seeded:?}");

    // The first host stalls once it holds its locks; meanwhile the replica
    // stops, so that the commit point's WAIT times out.
    let mut first = HostProcess::start(&path, Some("after-prepare:1000"));
    let body = json!({"idempotency_key": "k1", "steps": order()}).to_string();
    let addr = first.addr;
    let answer = tokio::spawn(async move {
        http::try_request(addr, "POST", "/v1/transactions", body.as_bytes()).await
    });
    first.wait_for_point("after-prepare").await;
    // Stopped, and cut off: a stopped process's socket still takes what the
    // master sends, and would apply it once resumed.
    signal(replica.pid().expect("pid"), "STOP");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .exec(
            &mut redis::Client::open(master.url())
                .and_then(|c| c.get_connection())
                .expect("connect"),
        )
        .expect("CLIENT KILL");
    let (status, body) = answer.await.expect("task").expect("an answer");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("outcome_unknown")),
        "{body}"
    );
    first.kill();

    // The decision is on the master only. A lookup, a retry and a sweep on
    // another host must not take it for durable. (A host that has written
    // nothing yet: its WAIT after a read would return at once.)
    drop(second);
    let second = coordinator(&path);
    let mut answers = Vec::new();
    let id = body["error"]["id"].as_str().expect("the id").to_owned();
    let lookup = second.lookup(&id).await;
    answers.push(format!("lookup: {lookup:?}"));
    assert!(
        lookup.is_err(),
        "a lookup answered from an unreplicated decision: {lookup:?}"
    );
    let retry = second.run(keyed_order("k1")).await;
    answers.push(format!("{retry:?}"));
    // Past the lease: the sweep finds the order's locks on the ledger.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    second.sweep().await;
    second.flush().await;

    // Failover: the master dies, the replica takes over without the
    // decision.
    let mut master = master;
    master.kill();
    signal(replica.pid().expect("pid"), "CONT");
    replica.promote().expect("promote");
    drop(second);
    std::fs::write(&path, config(&replica.url(), false)).expect("write");
    let after = coordinator(&path);
    let started = Instant::now();
    let committed = loop {
        after.sweep().await;
        let retry = after.run(keyed_order("k1")).await;
        answers.push(format!("{retry:?}"));
        if let Ok(r) = &retry
            && r.status == Status::Committed
        {
            break r.clone();
        }
        assert!(
            started.elapsed() < RECOVERY_TIMEOUT,
            "no retry committed: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    after.flush().await;
    let read = |server: &RedisServer, key: &str| -> i64 {
        redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("GET").arg(key).query::<Option<i64>>(&mut c))
            .expect("GET")
            .unwrap_or(0)
    };
    let locks = |server: &RedisServer| -> usize {
        redis::Client::open(server.url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("ZCARD").arg("rs:locks").query(&mut c))
            .expect("ZCARD")
    };
    let started = Instant::now();
    while locks(&replica) + locks(&ledger) > 0 {
        after.sweep().await;
        assert!(started.elapsed() < RECOVERY_TIMEOUT, "{answers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sold = STOCK - read(&replica, "inventory:stock:A1");
    let shop = read(&ledger, "payments:balance:shop");
    let alice = read(&ledger, "payments:balance:alice");
    assert_eq!(
        alice + shop,
        FUNDS,
        "money was created or lost: {answers:?}"
    );
    assert_eq!(
        (sold, shop),
        (1, PRICE),
        "the order committed as {} was not applied once on both stores: {answers:?}",
        committed.id
    );
}

/// A transaction of twenty steps of about 250 ms each, on two stores,
/// outlives its one-second lease several times over while another host
/// sweeps: it commits at its first attempt, because its host renews its
/// leases while it runs; so does the same transaction when it only reads.
/// (With leases that are never renewed, the sweeping host takes every
/// attempt for dead and fences it, until the transaction gives up.)
#[tokio::test]
async fn a_slow_transaction_within_its_limits_keeps_its_leases() {
    let env = TestEnv::start_with(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("slow_a", "slow", "orders", "a:"),
            ParticipantSpec::example("slow_b", "slow", "ledger", "b:"),
        ],
        "[txn]\nlease_ms = 1000\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n\
         [limits]\ncall_time_ms = 2000\n",
        Persistence::None,
    );
    // How many turns take about 250 ms here: doubled until one step takes
    // over 300 ms, then scaled.
    let mut probe = 1_000_000u64;
    let turns = loop {
        let started = Instant::now();
        let r = env
            .run(json!([step(
                "slow_a",
                json!({"key": "probe", "turns": probe})
            )]))
            .await;
        assert_eq!(r.status, Status::Committed, "{r:?}");
        let took = started.elapsed().as_secs_f64();
        if took > 0.3 {
            break (probe as f64 * 0.250 / took) as u64;
        }
        probe *= 2;
    };

    let _sweeper = env.spawn_host(None);
    for write in [true, false] {
        let steps: Vec<Value> = (0..20)
            .map(|i| {
                let participant = ["slow_a", "slow_b"][i % 2];
                step(
                    participant,
                    json!({"key": "n", "turns": turns, "write": write}),
                )
            })
            .collect();
        let started = Instant::now();
        let r = env.run(Value::Array(steps)).await;
        let took = started.elapsed();
        assert_eq!(r.status, Status::Committed, "write: {write}: {r:?}");
        assert_eq!(r.attempts, 1, "write: {write}: {r:?}");
        assert!(
            took > Duration::from_millis(1200),
            "the steps were not slow ({took:?}): the test proves nothing"
        );
        // Each step sees the writes of the steps before it; reading only,
        // the ten increments of the first run.
        assert_eq!(
            r.steps.last().map(|s| s.output["n"].clone()),
            Some(json!(10))
        );
    }
    assert_eq!(env.get("orders", "a:n").await.as_deref(), Some("10"));
    assert_eq!(env.get("ledger", "b:n").await.as_deref(), Some("10"));
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// A host that stalls for three leases holding an order's locks (a pause of
/// its process, a long step: here the `after-prepare` fault point, after it
/// locked both stores and before its commit point) while another host
/// sweeps: its leases are renewed meanwhile, so the sweeping host leaves it
/// alone, and the order commits at its first attempt.
#[tokio::test]
async fn a_host_that_stalls_holding_locks_keeps_them() {
    let env = TestEnv::orders_with(
        "[txn]\nlease_ms = 1000\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n",
        Persistence::None,
    );
    seed(&env).await;
    let _sweeper = env.spawn_host(None);
    let stalled = env.spawn_host(Some("after-prepare:3000"));
    let (status, body) = post(stalled.addr, locking_order()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["attempts"].as_u64()),
        (Some("committed"), Some(1)),
        "{body}"
    );
    assert_eq!(orders_applied(&env).await, 1);
    settled(&env).await;
}

/// A reader's shared lock broken while it reads (as recovery breaks a
/// reader's lock once its lease is over by the store's clock, which a
/// clock step or a failover to a node whose clock is ahead can bring
/// early): the read-only transaction notices when it releases its locks,
/// and reads again instead of answering a snapshot a writer may have come
/// into.
#[tokio::test]
async fn a_reader_whose_lock_was_broken_reads_again() {
    use redstage::store::{IndexEntry, Key, Store};

    let env = TestEnv::start_with(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("slow_a", "slow", "orders", "a:"),
            ParticipantSpec::example("slow_b", "slow", "ledger", "b:"),
        ],
        "[limits]\ncall_time_ms = 5000\n",
        Persistence::None,
    );
    let reader = json!([
        step("slow_a", json!({"key": "n", "turns": 1, "write": false})),
        step(
            "slow_b",
            json!({"key": "n", "turns": 300_000_000u64, "write": false})
        ),
    ]);
    let coordinator = env.coordinator.clone();
    let read = tokio::spawn(async move { coordinator.run(request(reader)).await });
    // Its lock on `orders`, found in the lock index while its last step spins.
    let mut redis = env.redis("orders");
    let started = Instant::now();
    let entry = loop {
        let entries: Vec<String> = redis::cmd("ZRANGE")
            .arg(Key::LockIndex.encode())
            .arg(0)
            .arg(-1)
            .query(&mut redis)
            .expect("ZRANGE");
        if let Some(e) = entries.first() {
            break IndexEntry::decode(e).expect("an entry");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no lock taken");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Broken as recovery breaks a reader's lock.
    let store = Store::connect(
        "orders",
        &env.server("orders").url().as_str().into(),
        Duration::from_secs(5),
    )
    .expect("a store");
    let targets = [(None, redstage::store::Mode::Shared)];
    let lock = [redstage::store::KeyWork {
        key: "a:n",
        kind: redstage::store::Kind::String,
        targets: &targets,
        reads: &[],
        ops: &[],
    }];
    let held = store
        .apply(&entry.txn, None, &lock)
        .await
        .expect("break the lock");
    assert_eq!(held, 1, "the reader did not hold a:n");
    let r = read.await.expect("task").expect("a decision");
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert!(r.attempts >= 2, "it answered on a broken lock: {r:?}");
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// A transfer on one store, which only adjusts its keys, locks nothing
/// before its commit point: the only trace it leaves is the record that
/// commit point writes. Its COMMIT request is held up in the network past
/// the lease (the proxy delivers it four seconds late), so the client gets
/// `outcome_unknown`. A lookup answers `in_doubt` while the transaction may
/// still be running, then fences it and answers `aborted` (`recovered`);
/// the COMMIT that arrives after changes nothing, and the answer stands.
/// (Before, the lookup answered 404 throughout, and the late COMMIT then
/// transferred: a client that resent after the 404 paid twice.)
#[tokio::test]
async fn a_commit_held_up_in_the_network_is_fenced_by_a_lookup() {
    let env = TestEnv::start_proxied(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ],
        "[txn]\nlease_ms = 1000\nstore_timeout_ms = 400\n",
        Persistence::None,
        &["ledger"],
    );
    seed(&env).await;
    // A transfer only adjusts balances: the commit point of that shape.
    let commit = redstage::store::scripts::sha(redstage::store::scripts::COMMIT_ADJUSTED);
    let late = Duration::from_secs(4);
    env.proxy("ledger").delay_request(&commit, late);
    let armed = Instant::now();
    let transfer = json!([step(
        "payments",
        json!({"op": "transfer", "from": "alice", "to": "shop", "amount": PRICE})
    )]);
    let id = match env.coordinator.run(request(transfer)).await {
        Err(TxnError::OutcomeUnknown { id, .. }) => id,
        other => panic!("the commit was not held up: {other:?}"),
    };
    let other = env.second_host();
    let found = other.lookup(&id).await.expect("lookup").expect("known");
    assert_eq!(found.status, LookupStatus::InDoubt, "{found:?}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let found = other.lookup(&id).await.expect("lookup").expect("known");
    assert_eq!(found.status, LookupStatus::Aborted, "{found:?}");
    assert_eq!(
        found.abort.as_ref().map(|a| a.code.as_str()),
        Some("recovered")
    );

    // The COMMIT arrives, and finds its transaction fenced.
    tokio::time::sleep((late + Duration::from_millis(500)).saturating_sub(armed.elapsed())).await;
    assert!(env.proxy("ledger").fired());
    assert_eq!(
        other.lookup(&id).await.expect("lookup").map(|l| l.status),
        Some(LookupStatus::Aborted)
    );
    assert_eq!(int(&env, "ledger", "payments:balance:shop").await, 0);
    assert_eq!(int(&env, "ledger", "payments:balance:alice").await, FUNDS);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// With `answered_retention_s = 0`, a committed order's record is dropped
/// soon after its stores applied it. A sweeping host that read the order's
/// expired lock and marker just before (its host stalled after answering,
/// past the lease) and acts on them a second later must not take the
/// missing record for "never decided" and write `aborted` for an order that
/// committed. (Before, it did, and the lookup answered `aborted` for days.)
#[tokio::test]
async fn a_record_finalized_under_a_sweep_is_never_taken_for_undecided() {
    let env = orders_env_with(&format!("{FAST}answered_retention_s = 0\n"));
    seed(&env).await;
    let _sweeper = env.spawn_host(Some("sweep-entry:1000"));
    // The order's own host does not sweep: it would roll its order forward
    // itself, before the other host gets to it.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("redstage.toml");
    let config = std::fs::read_to_string(&env.config_path).expect("read the config");
    let config = config.replace("sweep_interval_ms = 100", "sweep_interval_ms = 600000");
    std::fs::write(&path, config).expect("write the config");
    let first = HostProcess::start(&path, Some("after-answer:1500"));
    let (status, body) = post_order(first.addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "committed", "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let found = env.coordinator.lookup(&id).await.expect("lookup");
    assert_ne!(
        found.as_ref().map(|l| &l.status),
        Some(&LookupStatus::Aborted),
        "a committed order looks up as aborted: {found:?}"
    );
    assert_eq!(orders_applied(&env).await, 1);
    settled(&env).await;
}
