//! Idempotency keys and lookups by id: a request repeated with the same
//! `idempotency_key` answers the first outcome and applies nothing twice,
//! whether the first finished, is still running, or died on the way; and
//! `GET /v1/transactions/{id}` tells committed, aborted and in-doubt apart.

use std::time::Duration;

use redstage::txn::types::{Status, TxnRequest, TxnResponse};
use redstage::txn::{Coordinator, TxnError};
use redstage_tests::{Persistence, TestEnv, http, request, step};
use serde_json::{Value, json};

/// Short leases, so that a dead host's claim and locks end within a test.
const FAST: &str = "[txn]\nlease_ms = 400\nsweep_interval_ms = 100\nstore_timeout_ms = 200\nidempotency_lease_ms = 800\n";

fn env(extra: &str) -> TestEnv {
    TestEnv::orders_with(extra, Persistence::None)
}

/// Funds alice with 100 and stocks 10 of A1.
async fn seed(env: &TestEnv) {
    env.stock_and_fund("A1", 10, "alice", 100).await;
}

/// One order: 1 x A1 for 30, paid by alice to shop.
fn order() -> Value {
    json!([
        step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1})),
        step(
            "payments",
            json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 30})
        ),
    ])
}

fn keyed(steps: Value, key: &str) -> TxnRequest {
    TxnRequest {
        idempotency_key: Some(key.to_owned()),
        ..request(steps)
    }
}

async fn run_keyed(host: &Coordinator, steps: Value, key: &str) -> TxnResponse {
    host.run(keyed(steps, key))
        .await
        .expect("the transaction ran to a decision")
}

/// (stock of A1, alice, shop)
async fn state(env: &TestEnv) -> (Option<String>, Option<String>, Option<String>) {
    (
        env.get("orders", "inventory:stock:A1").await,
        env.get("ledger", "payments:balance:alice").await,
        env.get("ledger", "payments:balance:shop").await,
    )
}

/// The one transaction holding locks.
fn lock_holder(env: &TestEnv) -> String {
    let holders = env.lock_holders();
    assert_eq!(holders.len(), 1, "{holders:?}");
    holders[0].clone()
}

fn after_orders(n: i64) -> (Option<String>, Option<String>, Option<String>) {
    (
        Some((10 - n).to_string()),
        Some((100 - 30 * n).to_string()),
        (n > 0).then(|| (30 * n).to_string()),
    )
}

#[tokio::test]
async fn a_repeated_request_answers_the_first_outcome_and_applies_once() {
    let env = env("");
    seed(&env).await;
    let first = run_keyed(&env.coordinator, order(), "order-1").await;
    assert_eq!(first.status, Status::Committed, "{first:?}");
    // Again, from the same host and from another one.
    let again = run_keyed(&env.coordinator, order(), "order-1").await;
    let elsewhere = run_keyed(&env.second_host(), order(), "order-1").await;
    assert_eq!(again, first);
    assert_eq!(elsewhere, first);
    assert_eq!(state(&env).await, after_orders(1));

    // A different key is a different order.
    let second = run_keyed(&env.coordinator, order(), "order-2").await;
    assert_eq!(second.status, Status::Committed, "{second:?}");
    assert_ne!(second.id, first.id);
    assert_eq!(state(&env).await, after_orders(2));

    // Through HTTP, the same.
    let addr = http::serve(env.coordinator.clone()).await;
    let body = json!({"steps": order(), "idempotency_key": "order-1"}).to_string();
    let (status, reply) = http::post(addr, "/v1/transactions", body.as_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["id"], first.id.as_str(), "{reply}");
    assert_eq!(state(&env).await, after_orders(2));

    // The same key for another request is a client bug, not a retry.
    let other = json!([step(
        "payments",
        json!({"op": "deposit", "account": "alice", "amount": 1})
    )]);
    let err = env
        .coordinator
        .run(keyed(other, "order-1"))
        .await
        .expect_err("a reused key is rejected");
    assert_eq!(err.code(), "idempotency_key_reused", "{err}");
    assert_eq!(state(&env).await, after_orders(2));
    assert!(env.leftovers().await.is_empty());
}

#[tokio::test]
async fn a_business_abort_is_the_answer_to_every_retry() {
    let env = env("");
    seed(&env).await;
    let too_much = json!([step(
        "payments",
        json!({"op": "withdraw", "account": "alice", "amount": 500})
    )]);
    let first = run_keyed(&env.coordinator, too_much.clone(), "big").await;
    assert_eq!(first.status, Status::Aborted);
    assert_eq!(
        first.abort.as_ref().expect("abort").code,
        "insufficient_funds"
    );
    // Funds arrive; the retry still answers the first outcome rather than
    // running again.
    let r = env
        .run(json!([step(
            "payments",
            json!({"op": "deposit", "account": "alice", "amount": 1000})
        )]))
        .await;
    assert_eq!(r.status, Status::Committed);
    let retry = run_keyed(&env.coordinator, too_much, "big").await;
    assert_eq!(retry, first);
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("1100")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_from_two_hosts_apply_once() {
    const DUPLICATES: usize = 8;
    let env = env("");
    seed(&env).await;
    let hosts = [env.coordinator.clone(), env.second_host()];
    let tasks: Vec<_> = (0..DUPLICATES)
        .map(|i| {
            let host = hosts[i % 2].clone();
            tokio::spawn(async move { run_keyed(&host, order(), "dup").await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("duplicate task"));
    }
    assert_eq!(replies[0].status, Status::Committed, "{:?}", replies[0]);
    for r in &replies {
        assert_eq!(r, &replies[0], "every duplicate answers the one outcome");
    }
    assert_eq!(state(&env).await, after_orders(1));
    assert!(env.leftovers().await.is_empty());
}

#[tokio::test]
async fn a_retry_waits_for_the_first_request_still_in_flight() {
    let env = env(FAST);
    seed(&env).await;
    // The first request stalls 1.5 s after locking (its claim lease, 800 ms,
    // runs out meanwhile: a retry may take over, and the first then must
    // not commit).
    let host = env.spawn_host(Some("after-prepare:1500"));
    let body = json!({"steps": order(), "idempotency_key": "slow"}).to_string();
    let first =
        tokio::spawn(
            async move { http::post(host.addr, "/v1/transactions", body.as_bytes()).await },
        );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let retry = run_keyed(&env.coordinator, order(), "slow").await;
    let (status, first) = first.await.expect("the first request answers");
    assert_eq!(status, 200, "{first}");
    assert_eq!(retry.status, Status::Committed, "{retry:?}");
    // Either the first committed and the retry waited for it, or the retry
    // took the claim over and the first was superseded: one order either way.
    if first["status"] == "committed" {
        assert_eq!(first["id"], retry.id.as_str(), "{first}");
    } else {
        assert_eq!(first["abort"]["code"], "superseded", "{first}");
    }
    assert_eq!(state(&env).await, after_orders(1));
}

#[tokio::test]
async fn a_retry_past_the_wait_bound_is_told_the_request_is_in_flight() {
    let env = env("[txn]\nidempotency_wait_ms = 200\n");
    seed(&env).await;
    let _first = env
        .held_at(
            "after-prepare",
            &json!({"steps": order(), "idempotency_key": "stuck"}),
        )
        .await;
    let err = env
        .coordinator
        .run(keyed(order(), "stuck"))
        .await
        .expect_err("the first request holds the key");
    assert!(matches!(err, TxnError::InFlight { .. }), "{err}");
    assert_eq!(err.code(), "in_flight");
    // HTTP says 409.
    let api = http::serve(env.coordinator.clone()).await;
    let body = json!({"steps": order(), "idempotency_key": "stuck"}).to_string();
    let (status, reply) = http::post(api, "/v1/transactions", body.as_bytes()).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (409, Some("in_flight")),
        "{reply}"
    );
}

#[tokio::test]
async fn a_retry_after_a_crash_applies_the_order_once() {
    // Killed before the decision: the retry runs the order again. Killed
    // after it: the retry answers the committed outcome the dead host wrote.
    for (point, same_id) in [("after-prepare", false), ("after-decide", true)] {
        let env = env(FAST);
        seed(&env).await;
        let (mut host, first) = env
            .held_at(
                point,
                &json!({"steps": order(), "idempotency_key": "crash"}),
            )
            .await;
        let holder = lock_holder(&env);
        host.kill();
        assert!(
            first.await.expect("task").is_err(),
            "{point}: a killed host answered"
        );

        let retry = run_keyed(&env.coordinator, order(), "crash").await;
        assert_eq!(retry.status, Status::Committed, "{point}: {retry:?}");
        assert_eq!(
            holder == retry.id,
            same_id,
            "{point}: {holder} vs {}",
            retry.id
        );
        // The sweep of a live host cleans up what the dead one left.
        let _survivor = env.spawn_host(None);
        let started = std::time::Instant::now();
        while !env.leftovers().await.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{:?}",
                env.leftovers().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(state(&env).await, after_orders(1), "{point}");
    }
}

#[tokio::test]
async fn bad_idempotency_keys_are_rejected() {
    let env = env("");
    for key in [String::new(), "k".repeat(257)] {
        let err = env
            .coordinator
            .run(keyed(order(), &key))
            .await
            .expect_err("rejected");
        assert_eq!(err.code(), "bad_idempotency_key", "{err}");
    }
    assert!(env.dump("orders").await.is_empty());
}

#[tokio::test]
async fn lookups_tell_committed_aborted_in_doubt_and_unknown_apart() {
    let env = env(FAST);
    seed(&env).await;
    let api = http::serve(env.coordinator.clone()).await;
    let lookup =
        |id: String| async move { http::get(api, &format!("/v1/transactions/{id}")).await };

    let committed = env.run(order()).await;
    assert_eq!(committed.status, Status::Committed);
    let (status, found) = lookup(committed.id.clone()).await;
    assert_eq!(
        (status, found["status"].as_str()),
        (200, Some("committed")),
        "{found}"
    );

    let aborted = env
        .run(json!([step(
            "inventory",
            json!({"op": "deduct", "sku": "A1", "qty": 99})
        )]))
        .await;
    assert_eq!(aborted.status, Status::Aborted);
    let (status, found) = lookup(aborted.id.clone()).await;
    assert_eq!(
        (status, found["status"].as_str()),
        (200, Some("aborted")),
        "{found}"
    );
    assert_eq!(found["abort"]["code"], "insufficient_stock", "{found}");

    let (status, found) = lookup("no-such-transaction".into()).await;
    assert_eq!(status, 404, "{found}");
    assert_eq!(found["error"]["code"], "unknown_transaction", "{found}");

    // A host stopped between prepare and decision: in doubt while its locks
    // are held, aborted once another host's sweep resolves them.
    let (host, _stuck) = env
        .held_at("after-prepare", &json!({ "steps": order() }))
        .await;
    let id = lock_holder(&env);
    let (status, found) = lookup(id.clone()).await;
    assert_eq!(
        (status, found["status"].as_str()),
        (200, Some("in_doubt")),
        "{found}"
    );
    drop(host);
    let started = std::time::Instant::now();
    loop {
        env.coordinator.sweep().await;
        let (_, found) = lookup(id.clone()).await;
        if found["status"] == "aborted" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.leftovers().await.is_empty());
    assert_eq!(state(&env).await, after_orders(1));
}

/// The orders environment with the log store (which keeps idempotency keys)
/// behind a proxy.
fn proxied_env(extra: &str) -> TestEnv {
    TestEnv::start_proxied(
        &["orders", "ledger"],
        &[
            redstage_tests::ParticipantSpec::example(
                "inventory",
                "inventory",
                "orders",
                "inventory:",
            ),
            redstage_tests::ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ],
        extra,
        Persistence::None,
        &["orders"],
    )
}

fn deduct(qty: i64) -> Value {
    json!([step(
        "inventory",
        json!({"op": "deduct", "sku": "A1", "qty": qty})
    )])
}

/// A business abort is answered only once it is stored under the key: if
/// storing it fails, the answer is an error that applied nothing, so that a
/// retry which then runs (and may commit) never contradicts an answer the
/// client already had.
#[tokio::test]
async fn an_abort_is_answered_only_once_it_is_stored() {
    let env = proxied_env(FAST);
    seed(&env).await;
    env.proxy("orders").cut_at(&redstage::store::scripts::sha(
        redstage::store::scripts::SETTLE_CLAIM,
    ));
    let first = env.coordinator.run(keyed(deduct(20), "too-many")).await;
    let err = first.expect_err("the abort could not be stored, so it is not the answer");
    assert_eq!(err.code(), "store_unavailable", "{err}");

    // Enough stock now: a retry may run the request again and commit it.
    env.run(json!([step(
        "inventory",
        json!({"op": "restock", "sku": "A1", "qty": 20})
    )]))
    .await;
    let started = std::time::Instant::now();
    let retry = loop {
        match env.coordinator.run(keyed(deduct(20), "too-many")).await {
            Err(TxnError::InFlight { .. }) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the claim never ended"
                );
            }
            other => break other.expect("the retry runs"),
        }
    };
    assert_eq!(retry.status, Status::Committed, "{retry:?}");
    let again = run_keyed(&env.coordinator, deduct(20), "too-many").await;
    assert_eq!(
        again, retry,
        "every later retry answers what the first answer was"
    );
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("10")
    );
}

/// A claim that was made but whose reply was lost does not hold the key
/// for its whole lease: it is asked again, or released as soon as the log
/// store answers.
#[tokio::test]
async fn a_lost_claim_reply_does_not_block_retries() {
    // A lease far longer than a retry is willing to wait.
    let env = proxied_env(
        "[txn]\nlease_ms = 400\nstore_timeout_ms = 200\nidempotency_lease_ms = 60000\n\
         idempotency_wait_ms = 2000\n",
    );
    seed(&env).await;
    env.proxy("orders").delay_reply_to(
        &redstage::store::scripts::sha(redstage::store::scripts::CLAIM),
        Duration::from_millis(700),
    );
    let first = env.coordinator.run(keyed(order(), "lost-reply")).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let retry = run_keyed(&env.coordinator, order(), "lost-reply").await;
    assert_eq!(retry.status, Status::Committed, "{retry:?}");
    match first {
        Ok(first) => assert_eq!(first, retry, "the retry answers the first outcome"),
        Err(e) => assert_eq!(e.code(), "store_unavailable", "{e}"),
    }
    assert_eq!(state(&env).await, after_orders(1));
}

/// A different request with the same key, while the first still runs, is
/// refused as a reused key at once; nor can it take the key over once the
/// first request's claim lease has run out.
#[tokio::test]
async fn a_different_request_cannot_take_over_a_pending_key() {
    let env = env(FAST);
    seed(&env).await;
    let _first = env
        .held_at(
            "after-prepare",
            &json!({"steps": order(), "idempotency_key": "mine"}),
        )
        .await;
    let other = json!([step(
        "payments",
        json!({"op": "deposit", "account": "mallory", "amount": 1})
    )]);
    let err = env
        .coordinator
        .run(keyed(other.clone(), "mine"))
        .await
        .expect_err("a different request");
    assert_eq!(err.code(), "idempotency_key_reused", "{err}");
    // Past the first request's claim lease.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let err = env
        .coordinator
        .run(keyed(other, "mine"))
        .await
        .expect_err("still a different request");
    assert_eq!(err.code(), "idempotency_key_reused", "{err}");
    assert_eq!(env.get("ledger", "payments:balance:mallory").await, None);
}

/// A first request that wakes up after a retry took its claim over answers
/// `superseded` whatever it was about to say: an abort, or a read.
#[tokio::test]
async fn a_superseded_request_says_so_on_every_path() {
    // (the path, its steps, where it stalls: before its commit point, or
    // after it read)
    for (name, steps, point) in [
        ("abort", deduct(99), "after-prepare"),
        (
            "read",
            json!([step("inventory", json!({"op": "levels", "skus": ["A1"]}))]),
            "prepare-partial",
        ),
    ] {
        let env = env(FAST);
        seed(&env).await;
        // The first request stalls before its decision, past its claim
        // lease.
        let host = env.spawn_host(Some(&format!("{point}:2000")));
        let key = format!("slow-{name}");
        let body = json!({"steps": steps, "idempotency_key": key}).to_string();
        let addr = host.addr;
        let first =
            tokio::spawn(
                async move { http::post(addr, "/v1/transactions", body.as_bytes()).await },
            );
        host.wait_for_point(point).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let retry = run_keyed(&env.coordinator, steps.clone(), &key).await;
        let (status, first) = first.await.expect("the first request answers");
        assert_eq!(status, 200, "{name}: {first}");
        assert_eq!(first["status"], "aborted", "{name}: {first}");
        assert_eq!(first["abort"]["code"], "superseded", "{name}: {first}");
        // And the key keeps the retry's outcome.
        let again = run_keyed(&env.coordinator, steps, &key).await;
        assert_eq!(again, retry, "{name}");
    }
}

/// A keyed retry whose first request's host died does not wait out the
/// claim's lease (`txn.idempotency_lease_ms`, here far past the retry's
/// wait): once the first transaction's leases end, the retry fences it and
/// runs; once recovery (here, an operator's resolve) rolled it back, the
/// retry runs at once. While the first may still run, `409 in_flight` says
/// with `Retry-After` when a retry can succeed: when its leases end.
#[tokio::test]
async fn a_retry_takes_over_from_a_dead_first_request_once_it_can_no_longer_commit() {
    // Leases end within the retry's wait: the retry fences and runs.
    let env = env(
        "[txn]\nlease_ms = 800\nstore_timeout_ms = 300\nidempotency_lease_ms = 60000\n\
         idempotency_wait_ms = 5000\n",
    );
    seed(&env).await;
    let body = json!({"steps": order(), "idempotency_key": "dead"});
    let (mut host, first) = env.held_at("after-prepare", &body).await;
    let owner = lock_holder(&env);
    host.kill();
    assert!(
        first.await.expect("task").is_err(),
        "a killed host answered"
    );
    let retry = run_keyed(&env.coordinator, order(), "dead").await;
    assert_eq!(retry.status, Status::Committed, "{retry:?}");
    assert_ne!(retry.id, owner);
    let found = env.coordinator.lookup(&owner).await.expect("lookup");
    let abort = found.and_then(|f| f.abort).expect("the first is aborted");
    assert_eq!(abort.code, "recovered", "{abort:?}");
    assert!(
        abort.message.contains("a retry of idempotency key `dead`"),
        "{abort:?}"
    );
    assert_eq!(state(&env).await, after_orders(1));

    // Leases far past the wait: told when to come back, then let in at once
    // once the first is rolled back.
    let env = self::env(
        "[txn]\nlease_ms = 30000\nidempotency_lease_ms = 60000\nidempotency_wait_ms = 1000\n",
    );
    seed(&env).await;
    let body = json!({"steps": order(), "idempotency_key": "dead"});
    let (mut host, first) = env.held_at("after-prepare", &body).await;
    let owner = lock_holder(&env);
    host.kill();
    assert!(
        first.await.expect("task").is_err(),
        "a killed host answered"
    );
    let api = http::serve(env.coordinator.clone()).await;
    let (status, head, reply) = http::request_with(
        api,
        &[],
        "POST",
        "/v1/transactions",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (409, &json!("in_flight")),
        "{reply}"
    );
    let retry_after: u64 = http::header(&head, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(
        (2..=30).contains(&retry_after),
        "the first's leases end in at most 30 s: {retry_after}"
    );
    let resolved = env
        .coordinator
        .resolve(&owner, "a test", false)
        .await
        .expect("resolve")
        .expect("known");
    assert!(resolved.made, "{resolved:?}");
    let retry = run_keyed(&env.coordinator, order(), "dead").await;
    assert_eq!(retry.status, Status::Committed, "{retry:?}");
    assert_eq!(state(&env).await, after_orders(1));
}
