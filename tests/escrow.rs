//! Adjustments (escrow, contract 0.2.0): bounded increments that concurrent
//! transactions make without waiting for each other. Many deducts racing for
//! little stock never oversell, and every one that fails says so with the
//! participant's own abort; a crash with reservations in flight leaves the
//! bound holding and no reservation behind; a participant of contract 0.1.0
//! runs next to one of 0.2.0, in one transaction.

use std::time::{Duration, Instant};

use redstage::txn::types::Status;
use redstage_tests::{ParticipantSpec, Persistence, TestEnv, http, request, step};
use serde_json::{Value, json};

fn env(extra: &str) -> TestEnv {
    TestEnv::start_with(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
            ParticipantSpec::example("legacy", "legacy-counter", "orders", "legacy:"),
        ],
        extra,
        Persistence::None,
    )
}

fn deduct(qty: i64) -> Value {
    step(
        "inventory",
        json!({"op": "deduct", "sku": "sale", "qty": qty}),
    )
}

fn pay(amount: i64) -> Value {
    step(
        "payments",
        json!({"op": "transfer", "from": "alice", "to": "shop", "amount": amount}),
    )
}

/// Until a live host's sweep has settled everything a dead one left
/// (`what` says where the test is, should it not within 20 s).
async fn swept(env: &TestEnv, what: &str) {
    let _survivor = env.spawn_host(None);
    let started = Instant::now();
    while !env.unfinished().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {:?}",
            env.unfinished()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn int(env: &TestEnv, store: &str, key: &str) -> i64 {
    env.get(store, key)
        .await
        .map_or(0, |v| v.parse().expect("an integer"))
}

/// Stock for 50 units, and 16 clients on two hosts ordering 1 to 3 units at
/// once until it runs out: what commits takes exactly what leaves the
/// stock, which ends at zero or above; everything else aborts with the
/// participant's `insufficient_stock`, never a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_deducts_never_oversell() {
    const STOCK: i64 = 50;
    let env = env("");
    env.stock_and_fund("sale", STOCK, "alice", 1_000_000).await;
    let hosts = [env.coordinator.clone(), env.second_host()];
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let host = hosts[c % 2].clone();
            tokio::spawn(async move {
                let (mut taken, mut paid, mut refused) = (0, 0, 0);
                for n in 0..12 {
                    let qty = 1 + (c + n) as i64 % 3;
                    let r = host
                        .run(request(json!([deduct(qty), pay(qty * 10)])))
                        .await
                        .expect("a decision");
                    match r.status {
                        Status::Committed => {
                            taken += qty;
                            paid += qty * 10;
                        }
                        Status::Aborted => {
                            let abort = r.abort.expect("why");
                            assert_eq!(
                                (
                                    abort.code.as_str(),
                                    abort.step,
                                    abort.participant.as_deref()
                                ),
                                ("insufficient_stock", Some(0), Some("inventory")),
                                "{abort:?}"
                            );
                            refused += 1;
                        }
                    }
                }
                (taken, paid, refused)
            })
        })
        .collect();
    let (mut taken, mut paid, mut refused) = (0, 0, 0);
    for task in tasks {
        let (t, p, r) = task.await.expect("client");
        taken += t;
        paid += p;
        refused += r;
    }
    for host in &hosts {
        host.flush().await;
    }
    let left = int(&env, "orders", "inventory:stock:sale").await;
    assert!(left >= 0, "oversold: {left} left");
    assert_eq!(
        STOCK - left,
        taken,
        "stock taken and orders committed disagree"
    );
    assert_eq!(int(&env, "ledger", "payments:balance:shop").await, paid);
    assert!(
        refused > 0,
        "the stock never ran out: the test raced nothing"
    );
    assert!(left < 3, "{left} left although orders were refused");
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    println!("escrow: {taken} taken in orders, {refused} refused, {left} left");
}

/// The last unit reserved by a host that dies: while its reservation is in
/// flight, no one else can take the unit (the bound holds whatever that
/// host's transaction turns out to be); once recovery settles it, the unit
/// is sold exactly once, and nothing of the reservation is left.
#[tokio::test]
async fn a_crash_with_a_reservation_in_flight_keeps_the_bound() {
    // (fault point, whether the crashed order commits)
    for (point, commits) in [("after-prepare", false), ("after-decide", true)] {
        let env = env("[txn]\nlease_ms = 800\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n");
        env.stock_and_fund("sale", 1, "alice", 100).await;
        let body = json!({"steps": [deduct(1), pay(10)]});
        let (mut host, unanswered) = env.held_at(point, &body).await;
        host.kill();
        assert!(
            unanswered.await.expect("task").is_err(),
            "{point}: answered"
        );

        // The reservation holds the unit.
        let r = env.run(json!([deduct(1), pay(10)])).await;
        assert_eq!(r.status, Status::Aborted, "{point}: {r:?}");
        assert_eq!(r.abort.expect("why").code, "insufficient_stock", "{point}");

        // Recovery settles it; then the unit is sold once in all.
        swept(&env, point).await;
        let r = env.run(json!([deduct(1), pay(10)])).await;
        assert_eq!(r.status == Status::Committed, !commits, "{point}: {r:?}");
        assert_eq!(
            int(&env, "orders", "inventory:stock:sale").await,
            0,
            "{point}"
        );
        assert_eq!(
            int(&env, "ledger", "payments:balance:shop").await,
            10,
            "{point}"
        );
        assert_eq!(
            int(&env, "ledger", "payments:balance:alice").await,
            90,
            "{point}"
        );
        assert_eq!(env.leftovers().await, Vec::<String>::new(), "{point}");
    }
}

/// A 0.1.0 component (no adjustments) loads, is listed as such, and runs in
/// one transaction with 0.2.0 participants that adjust.
#[tokio::test]
async fn contract_0_1_and_0_2_participants_share_a_transaction() {
    let env = env("");
    env.stock_and_fund("sale", 5, "alice", 100).await;
    let api = http::serve(env.coordinator.clone()).await;
    let (_, listing) = http::get(api, "/v1/participants").await;
    let contract = |name: &str| {
        listing["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["contract"].clone())
    };
    assert_eq!(contract("legacy"), Some(json!("0.1.0")), "{listing}");
    assert_eq!(contract("inventory"), Some(json!("0.3.0")), "{listing}");

    for n in 1..=2 {
        let r = env
            .run(json!([step("legacy", json!("orders")), deduct(1), pay(10)]))
            .await;
        assert_eq!(r.status, Status::Committed, "{r:?}");
        assert_eq!(r.steps[0].output, json!(n), "{r:?}");
        assert_eq!(r.steps[1].output, json!({"sku": "sale", "taken": 1}));
    }
    assert_eq!(int(&env, "orders", "legacy:count:orders").await, 2);
    assert_eq!(int(&env, "orders", "inventory:stock:sale").await, 3);
    assert_eq!(int(&env, "ledger", "payments:balance:shop").await, 20);
    // An escrow abort in the same transaction rolls the 0.1.0 write back.
    let r = env
        .run(json!([step("legacy", json!("orders")), deduct(9), pay(10)]))
        .await;
    assert_eq!(r.abort.expect("why").code, "insufficient_stock");
    assert_eq!(int(&env, "orders", "legacy:count:orders").await, 2);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// A step that reads a key and another that adjusts it in one transaction:
/// the key is held exclusively, and the adjustment is applied to the value
/// read, bound checked.
#[tokio::test]
async fn an_adjustment_of_a_key_read_in_the_same_transaction_applies_to_it() {
    let env = env("");
    env.run(json!([step(
        "inventory",
        json!({"op": "restock", "sku": "sale", "qty": 2})
    )]))
    .await;
    let levels = step("inventory", json!({"op": "levels", "skus": ["sale"]}));
    let r = env.run(json!([deduct(1), levels.clone()])).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(
        r.steps[1].output,
        json!({"sale": 1}),
        "the read sees the deduct"
    );
    let r = env.run(json!([levels, deduct(2)])).await;
    assert_eq!(r.abort.expect("why").code, "insufficient_stock");
    assert_eq!(int(&env, "orders", "inventory:stock:sale").await, 1);
}

/// A transaction that only adjusts reads nothing: its steps run before it
/// locks, the other stores reserve as they lock, and the primary adjusts
/// its keys in the commit point itself. So an order waits for two round
/// trips and a transfer on one store for one, and a refusal on either side
/// (stock reserved on `orders`, funds checked by the commit point on
/// `ledger`) is the participant's own abort, with nothing changed or left.
#[tokio::test]
async fn adjusting_only_takes_two_round_trips_across_stores_and_one_on_one() {
    let env = env("");
    env.stock_and_fund("sale", 5, "alice", 100).await;
    let trips = || env.coordinator.metrics().round_trips();

    let before = trips();
    let r = env.run(json!([deduct(1), pay(10)])).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(trips() - before, 2, "round trips of an order");
    let before = trips();
    let r = env.run(json!([pay(10)])).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(trips() - before, 1, "round trips of a transfer");

    for (steps, code, participant) in [
        (
            json!([deduct(9), pay(10)]),
            "insufficient_stock",
            "inventory",
        ),
        (
            json!([deduct(1), pay(1000)]),
            "insufficient_funds",
            "payments",
        ),
        (json!([pay(1000)]), "insufficient_funds", "payments"),
    ] {
        let r = env.run(steps).await;
        let abort = r.abort.expect("why");
        assert_eq!(
            (abort.code.as_str(), abort.participant.as_deref()),
            (code, Some(participant)),
            "{abort:?}"
        );
    }
    env.coordinator.flush().await;
    assert_eq!(int(&env, "orders", "inventory:stock:sale").await, 4);
    assert_eq!(int(&env, "ledger", "payments:balance:alice").await, 80);
    assert_eq!(int(&env, "ledger", "payments:balance:shop").await, 20);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// The primary's keys of a transaction that only adjusts are not locked
/// before its commit point, but a lock there is still in its way: a
/// transfer that reads the balances holds them, its host dies, and an
/// adjusting transfer of the same accounts waits until recovery has rolled
/// the dead one back, then commits on the values it left.
#[tokio::test]
async fn a_commit_point_that_adjusts_waits_for_a_lock_on_its_keys() {
    let env = env("[txn]\nlease_ms = 800\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n");
    env.stock_and_fund("sale", 5, "alice", 100).await;
    let reading = step(
        "payments",
        json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 40, "read": true}),
    );
    let (mut host, unanswered) = env
        .held_at("after-prepare", &json!({"steps": [reading]}))
        .await;
    host.kill();
    assert!(unanswered.await.expect("task").is_err(), "answered");
    assert!(!env.unfinished().is_empty(), "the dead host holds no lock");

    let r = env.run(json!([deduct(1), pay(10)])).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert!(r.attempts >= 2, "it never met the lock: {r:?}");
    env.coordinator.flush().await;
    assert_eq!(int(&env, "ledger", "payments:balance:alice").await, 90);
    assert_eq!(int(&env, "ledger", "payments:balance:shop").await, 10);
    assert_eq!(int(&env, "orders", "inventory:stock:sale").await, 4);
    // The dead host's index entry is the sweep's to remove.
    swept(&env, "after the order").await;
}

/// Reservations with more digits than Lua's `..` keeps (14): each
/// adjuster's own reservation, kept as text in the adjusters' hash, must
/// come back exactly when it leaves, or the sums that bound everyone else
/// drift. Two transactions reserve 123,456,789,012,345 each on one key; the
/// first to apply leaves exactly the second's reservation behind, and the
/// last takes the lock table with it.
#[tokio::test]
async fn reservations_of_fifteen_digits_are_released_exactly() {
    use redis::Commands;
    use redstage::store::{Bounded, IndexEntry, Key, KeyWork, Kind, Mode, Op, Store, Target};

    let env = env("");
    let store = Store::connect(
        "orders",
        &env.server("orders").url().as_str().into(),
        Duration::from_secs(5),
    )
    .expect("a store");
    let key = "big:sku";
    let mut redis = env.redis("orders");
    let _: () = redis.set(key, 1_000_000_000_000_000_i64).expect("SET");
    let take = vec![Op::Adjust {
        part: None,
        steps: vec![Bounded {
            delta: -123_456_789_012_345,
            lower: Some(0),
            upper: None,
        }],
    }];
    let targets = [(None, Mode::Adjust)];
    let work = [KeyWork {
        key,
        kind: Kind::String,
        targets: &targets,
        reads: &[],
        ops: &take,
    }];
    let entry = |txn: &str| IndexEntry {
        txn: txn.to_owned(),
        primary: "ledger".to_owned(),
        keys: vec![Target::whole(key)],
    };
    for txn in ["t1", "t2"] {
        store
            .lock(txn, Duration::from_secs(60), &entry(txn), &work, true, 1024)
            .await
            .expect("lock and reserve");
    }
    let table = Key::Meta(key).encode();
    let neg = |redis: &mut redis::Connection| -> Option<String> {
        redis.hget(&table, "neg").expect("HGET")
    };
    assert_eq!(neg(&mut redis).as_deref(), Some("-246913578024690"));
    store
        .apply("t1", Some(&entry("t1").encode()), &work)
        .await
        .expect("apply t1");
    assert_eq!(neg(&mut redis).as_deref(), Some("-123456789012345"));
    store
        .apply("t2", Some(&entry("t2").encode()), &work)
        .await
        .expect("apply t2");
    let exists: bool = redis.exists(&table).expect("EXISTS");
    assert!(!exists, "the last adjuster takes the lock table with it");
    let left: i64 = redis.get(key).expect("GET");
    assert_eq!(left, 1_000_000_000_000_000 - 2 * 123_456_789_012_345);
}

/// Values that `INCRBY` refuses, written by another application: "007",
/// "-0", "+5", " 5", "1e3" and a 25-digit number. An adjustment of one
/// aborts with `not_an_integer` before anything changes, wherever the key
/// is checked: the commit point of a transfer alone (one store), the lock
/// that reserves an order's stock, the commit point of an order's payment,
/// and the host itself when the key is also read. (A script that took them
/// for integers would decide, then fail in `INCRBY` with the decision
/// written and the deltas unapplied.)
#[tokio::test]
async fn values_incrby_refuses_abort_adjustments_with_nothing_applied() {
    use redis::Commands;

    let env = env("");
    env.stock_and_fund("sale", 5, "alice", 100).await;
    let deduct_read = step(
        "inventory",
        json!({"op": "deduct", "sku": "sale", "qty": 1, "read": true}),
    );
    let pay_read = step(
        "payments",
        json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 10, "read": true}),
    );
    let cases = [
        (
            "orders",
            "inventory:stock:sale",
            "5",
            "inventory",
            vec![
                json!([deduct(1)]),
                json!([deduct(1), pay(10)]),
                json!([deduct_read.clone(), pay(10)]),
            ],
        ),
        (
            "ledger",
            "payments:balance:alice",
            "100",
            "payments",
            vec![
                json!([pay(10)]),
                json!([deduct(1), pay(10)]),
                json!([pay_read.clone(), deduct(1)]),
            ],
        ),
    ];
    for bad in ["007", "-0", "+5", " 5", "1e3", "1234567890123456789012345"] {
        for (store, key, good, participant, transactions) in &cases {
            let mut redis = env.redis(store);
            let _: () = redis.set(*key, bad).expect("SET");
            let refused: redis::RedisResult<i64> = redis.incr(*key, 0);
            assert!(refused.is_err(), "INCRBY takes {bad:?}: the test is wrong");
            // Everything but the receipts of aborted transactions.
            let state = || async {
                let mut all = env.dump("orders").await;
                all.extend(env.dump("ledger").await);
                all.retain(|(k, _)| !k.starts_with("rs:txn:"));
                all
            };
            let before = state().await;
            for steps in transactions {
                let r = env.run(steps.clone()).await;
                let abort = r.abort.as_ref().unwrap_or_else(|| panic!("{bad:?}: {r:?}"));
                // A step that reads the value itself finds it no integer
                // either (the SDK applies the same rule).
                let codes = ["not_an_integer", "bad_value"];
                assert!(
                    codes.contains(&abort.code.as_str())
                        && abort.participant.as_deref() == Some(*participant),
                    "{bad:?} {steps}: {abort:?}"
                );
                assert_eq!(before, state().await, "{bad:?} {steps}: something changed");
                assert_eq!(env.leftovers().await, Vec::<String>::new(), "{bad:?}");
            }
            let _: () = redis.set(*key, *good).expect("SET");
        }
    }
    // The same transactions commit on the values restored.
    let r = env.run(json!([deduct(1), pay(10)])).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
}
