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

/// The keys of one side of a twin scenario: its data keys, their lock
/// tables, its lock index, its decision record and idempotency key.
struct Side {
    data: Vec<String>,
    tables: Vec<String>,
    index: String,
    record: String,
    claim: String,
}

impl Side {
    fn new(tag: &str, scenario: usize, n: usize) -> Side {
        let name = |what: &str| format!("{tag}{scenario}:{what}");
        Side {
            data: (0..n).map(|i| name(&format!("k{i}"))).collect(),
            tables: (0..n)
                .map(|i| format!("rs:{{{}}}", name(&format!("k{i}"))))
                .collect(),
            index: name("index"),
            record: name("record"),
            claim: name("claim"),
        }
    }

    /// KEYS of a script on data keys: each key and its table, in pairs.
    fn pairs(&self) -> Vec<String> {
        self.data
            .iter()
            .zip(&self.tables)
            .flat_map(|(d, t)| [d.clone(), t.clone()])
            .collect()
    }

    /// Everything the scripts may change, with key names and server times
    /// (leases, scores) left out, so that two sides compare.
    fn state(&self, redis: &mut redis::Connection) -> Vec<String> {
        let mut out = Vec::new();
        let keys = self.data.iter().chain(&self.tables);
        for key in keys.chain([&self.record, &self.claim]) {
            let kind: String = redis::cmd("TYPE").arg(key).query(redis).unwrap();
            let mut items: Vec<String> = match kind.as_str() {
                "string" => vec![redis::cmd("GET").arg(key).query(redis).unwrap()],
                "hash" => {
                    let map: std::collections::BTreeMap<String, String> =
                        redis::cmd("HGETALL").arg(key).query(redis).unwrap();
                    map.into_iter().map(|(f, v)| format!("{f}={v}")).collect()
                }
                _ => Vec::new(),
            };
            items.insert(0, kind);
            out.push(timeless(&items.join(" ")));
        }
        let mut members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.index)
            .arg(0)
            .arg(-1)
            .query(redis)
            .unwrap();
        members.sort();
        out.extend(members);
        out
    }
}

/// `text` with every run of 12 digits or more (a time in ms) as `T`.
fn timeless(text: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in text.chars().chain(['\n']) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        out += if digits.len() >= 12 { "T" } else { &digits };
        digits.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// Runs `code` as redstage sends it.
fn eval(
    redis: &mut redis::Connection,
    code: &str,
    keys: &[String],
    args: &[String],
) -> redis::Value {
    let script = redis::Script::new(&redstage::store::scripts::lean(code));
    let mut call = script.prepare_invoke();
    for k in keys {
        call.key(k);
    }
    for a in args {
        call.arg(a);
    }
    call.invoke(redis).expect("the script runs")
}

fn again(reply: &redis::Value) -> bool {
    matches!(reply, redis::Value::BulkString(b) if b == b"again")
}

/// One twin scenario: the same state set up on both sides, the script for
/// adjusted strings run on one side and the general script on the other.
/// When the first answers `again`, it changed nothing, and `fallback` says
/// whether that was expected; otherwise it answered as the general script,
/// left the same state and woke the waiters of as many keys.
fn twin(
    redis: &mut redis::Connection,
    (scenario, n): (usize, usize),
    setup: impl Fn(&mut redis::Connection, &Side),
    fast: impl Fn(&mut redis::Connection, &Side) -> redis::Value,
    general: impl Fn(&mut redis::Connection, &Side) -> redis::Value,
    same: impl Fn(&redis::Value, &redis::Value) -> bool,
    fallback: bool,
) {
    let (f, g) = (Side::new("f", scenario, n), Side::new("g", scenario, n));
    setup(redis, &f);
    setup(redis, &g);
    let before = f.state(redis);
    let woken = publishes(redis);
    let answer = fast(redis, &f);
    let woken = [woken, publishes(redis)];
    let reference = general(redis, &g);
    let woken = [woken[1] - woken[0], publishes(redis) - woken[1]];
    if again(&answer) {
        assert!(fallback, "scenario {scenario}: again, where {reference:?}");
        assert_eq!(
            f.state(redis),
            before,
            "scenario {scenario}: again, after a change"
        );
    } else {
        assert!(
            !fallback,
            "scenario {scenario}: {answer:?}, where again was expected"
        );
        assert!(
            same(&answer, &reference),
            "scenario {scenario}: {answer:?} against {reference:?}"
        );
        assert_eq!(f.state(redis), g.state(redis), "scenario {scenario}");
        assert_eq!(woken[0], woken[1], "scenario {scenario}: keys woken");
    }
}

/// How many `PUBLISH` (a key's waiters woken) the server has run.
fn publishes(redis: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(redis).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// A lock table as fields and values (`*`: the table is a string, as the
/// second protocol kept it).
fn table(redis: &mut redis::Connection, key: &str, fields: &[(&str, &str)]) {
    if let [("*", v)] = fields {
        let _: () = redis::cmd("SET").arg(key).arg(v).query(redis).unwrap();
    } else if !fields.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(key);
        for (f, v) in fields {
            hset.arg(f).arg(v);
        }
        let _: () = hset.query(redis).unwrap();
    }
}

/// A data key's value (`#`: a hash instead of a string; none: absent).
fn value(redis: &mut redis::Connection, key: &str, v: Option<&str>) {
    match v {
        Some("#") => {
            let _: () = redis::cmd("HSET")
                .arg(key)
                .arg("f")
                .arg("1")
                .query(redis)
                .unwrap();
        }
        Some(v) => {
            let _: () = redis::cmd("SET").arg(key).arg(v).query(redis).unwrap();
        }
        None => {}
    }
}

const OTHER: &[(&str, &str)] = &[
    ("w", "a0"),
    ("t:other", "1700000000000\tledger\t-3"),
    ("n", "1"),
    ("neg", "-3"),
    ("pos", "0"),
];

/// The scripts for strings adjusted whole (escrow's commonest shape) do
/// exactly what the general scripts do when nothing is in the way, and
/// change nothing, answering `again`, whenever anything is: every state a
/// key can be found in, run side by side with the general script on a twin
/// key.
#[test]
fn the_scripts_for_adjusted_strings_do_what_the_general_ones_do_or_nothing() {
    use redstage::store::commit_bounds;
    use redstage::store::scripts::{
        APPLY, APPLY_ADJUSTED, COMMIT, COMMIT_ADJUSTED, LOCK, LOCK_ADJUSTED,
    };
    let server = redstage_tests::RedisServer::start(Persistence::None).expect("redis-server");
    let mut redis = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    let redis = &mut redis;
    let tag = |v: &redis::Value| match v {
        redis::Value::Array(items) => items.first().cloned(),
        other => Some(other.clone()),
    };
    let same_tag = |a: &redis::Value, b: &redis::Value| tag(a) == tag(b);
    let same = |a: &redis::Value, b: &redis::Value| a == b;

    // LOCK: per key (its value, its table, the reservation), then whether
    // the call was delivered before, and whether `again` is expected.
    type Key<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let locks: Vec<(Vec<Key>, bool, bool)> = vec![
        (vec![(Some("100"), &[], "-5:0:")], false, false),
        (vec![(Some("100"), OTHER, "-5:0:;-2:0:")], false, false),
        (vec![(None, &[], "5::")], false, false),
        (vec![(Some("x"), &[], "")], false, false),
        (
            vec![(Some("100"), &[], "-5:0:"), (Some("1"), OTHER, "1::10")],
            false,
            false,
        ),
        (vec![(Some("100"), &[("w", "a1")], "-5:0:")], false, true),
        (
            vec![(
                Some("100"),
                &[("w", "x0\tother\t1700000000000\tledger")],
                "-5:0:",
            )],
            false,
            true,
        ),
        (
            vec![(Some("100"), &[("w", "s0\tother\t1700000000000\t")], "-5:0:")],
            false,
            true,
        ),
        (vec![(Some("x"), &[], "-5:0:")], false, true),
        (vec![(Some("4"), OTHER, "-2:0:")], false, true),
        (vec![(Some("9007199254740990"), &[], "5::")], false, true),
        (vec![(Some("#"), &[], "-5:0:")], false, true),
        (
            vec![(Some("100"), &[("lock", "other")], "-5:0:")],
            false,
            true,
        ),
        (vec![(Some("100"), &[("*", "other")], "-5:0:")], false, true),
        (
            vec![(
                Some("100"),
                &[("#", "1"), ("p:f", "x0\tother\t1\t")],
                "-5:0:",
            )],
            false,
            true,
        ),
        (vec![(Some("100"), &[("ver", "3")], "-5:0:")], false, true),
        (vec![(Some("100"), &[], "-5:0:")], true, true),
        (
            vec![
                (Some("100"), &[], "-5:0:"),
                (Some("100"), &[("w", "a1")], "1::"),
            ],
            false,
            true,
        ),
    ];
    for (i, (keys, delivered, fallback)) in locks.iter().enumerate() {
        let setup = |redis: &mut redis::Connection, s: &Side| {
            for ((v, t, _), (d, m)) in keys.iter().zip(s.data.iter().zip(&s.tables)) {
                value(redis, d, *v);
                table(redis, m, t);
            }
            if *delivered {
                let _: () = redis::cmd("ZADD")
                    .arg(&s.index)
                    .arg(1)
                    .arg("entry")
                    .query(redis)
                    .unwrap();
            }
        };
        let head = |s: &Side| {
            let mut keys = s.pairs();
            keys.push(s.index.clone());
            keys
        };
        let args = ["txn", "30000", "ledger", "entry"].map(String::from);
        twin(
            redis,
            (i, keys.len()),
            setup,
            |redis, s| {
                let mut a = args.to_vec();
                a.extend(keys.iter().map(|(_, _, steps)| steps.to_string()));
                eval(redis, LOCK_ADJUSTED, &head(s), &a)
            },
            |redis, s| {
                let mut a = args.to_vec();
                a.extend(["".into(), "100".into()]);
                for (_, _, steps) in keys {
                    a.extend(["string", "1", "w", "", "a", steps, "0", "0"].map(String::from));
                }
                eval(redis, LOCK, &head(s), &a)
            },
            same_tag,
            *fallback,
        );
    }

    // COMMIT, free: a payment's two keys (or more), with a marker or not,
    // a claim or not, a record already there or not.
    struct Commit<'a> {
        keys: Vec<Key<'a>>,
        marker: &'a str,
        claim: Option<&'a str>,
        decided: bool,
        fallback: bool,
    }
    let pay = |from: Key<'static>, to: Key<'static>| Commit {
        keys: vec![from, to],
        marker: "",
        claim: None,
        decided: false,
        fallback: false,
    };
    let free = (Some("100"), &[][..], "-5:0:");
    let commits = vec![
        Commit {
            keys: vec![],
            marker: "marker",
            ..pay(free, free)
        },
        pay(free, (None, &[], "5::")),
        pay(
            (Some("100"), OTHER, "-5:0:"),
            (Some("0"), &[("w", "a1")], "5::"),
        ),
        Commit {
            marker: "marker",
            ..pay(free, (Some("7"), &[], "5::"))
        },
        Commit {
            claim: Some("owner"),
            ..pay(free, (Some("7"), &[], "5::"))
        },
        Commit {
            claim: Some("someone else"),
            ..pay(free, (Some("7"), &[], "5::"))
        },
        Commit {
            decided: true,
            ..pay(free, (Some("7"), &[], "5::"))
        },
        Commit {
            fallback: true,
            ..pay((Some("7"), OTHER, "-5:0:"), (Some("0"), &[], "5::"))
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("0"), &[("w", "x0\tother\t1\tledger")], "5::"))
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("0"), &[("#", "1")], "5::"))
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("x"), &[], "5::"))
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("#"), &[], "5::"))
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("0"), &[("lock", "other")], "5::"))
        },
        // Steps summed up into two bounds: within them, at them, beyond.
        pay(
            (Some("100"), &[], "-50:0:;-40:0:;20:0:"),
            (Some("0"), &[], "5::;5::20"),
        ),
        pay(
            (Some("93"), OTHER, "-50:0:;-40:0:;20:0:"),
            (Some("5"), &[], "5::10"),
        ),
        Commit {
            fallback: true,
            ..pay((Some("3"), &[], "-5:0:"), free)
        },
        Commit {
            fallback: true,
            ..pay((Some("80"), &[], "-50:0:;-40:0:;20:0:"), free)
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("6"), &[], "5::10"))
        },
        pay((Some("9007199254740990"), &[], "-5::"), free),
        Commit {
            fallback: true,
            ..pay(free, (Some("9007199254740990"), &[], "5::"))
        },
        Commit {
            fallback: true,
            ..pay(free, (Some("-9007199254740990"), &[], "-5::"))
        },
    ];
    for (i, c) in commits.iter().enumerate() {
        let setup = |redis: &mut redis::Connection, s: &Side| {
            for ((v, t, _), (d, m)) in c.keys.iter().zip(s.data.iter().zip(&s.tables)) {
                value(redis, d, *v);
                table(redis, m, t);
            }
            if c.decided {
                let _: () = redis::cmd("SET")
                    .arg(&s.record)
                    .arg("aborted")
                    .query(redis)
                    .unwrap();
            }
            if let Some(owner) = c.claim {
                let claim = json!({"state": "pending", "owner": owner}).to_string();
                let _: () = redis::cmd("SET")
                    .arg(&s.claim)
                    .arg(claim)
                    .query(redis)
                    .unwrap();
            }
        };
        let head = |s: &Side| {
            let idempotency = if c.claim.is_some() {
                &s.claim
            } else {
                &s.record
            };
            let mut keys = vec![s.record.clone(), s.index.clone(), idempotency.clone()];
            keys.extend(s.pairs());
            keys
        };
        let owner = if c.claim.is_some() { "owner" } else { "" };
        let args = [
            "txn",
            "committed",
            "0",
            c.marker,
            "30000",
            owner,
            "outcome",
            "60000",
        ]
        .map(String::from);
        twin(
            redis,
            (100 + i, c.keys.len()),
            setup,
            |redis, s| {
                let mut a = args.to_vec();
                for (_, _, steps) in &c.keys {
                    let bounds = commit_bounds(&parse_steps(steps));
                    a.extend(bounds.expect("steps a commit point takes whole"));
                }
                eval(redis, COMMIT_ADJUSTED, &head(s), &a)
            },
            |redis, s| {
                let mut a = args.to_vec();
                a.push("free".into());
                for (_, _, steps) in &c.keys {
                    a.extend(
                        ["string", "1", "w", "", "a", "", "0", "1", "adj", "1", steps]
                            .map(String::from),
                    );
                }
                eval(redis, COMMIT, &head(s), &a)
            },
            same,
            c.fallback,
        );
    }

    // APPLY: batches of transactions, each with its keys (the value, the
    // table, its adjustments or none); whether `again` is expected.
    struct Applied {
        txns: Vec<(&'static str, &'static str)>,
        value: Option<&'static str>,
        table: Vec<(String, String)>,
        fallback: bool,
    }
    let held = |txns: &[(&str, &str)], w: &str| {
        let mut table: Vec<(String, String)> = vec![("w".into(), w.into())];
        let (mut neg, mut pos) = (0, 0);
        for (txn, reserved) in txns {
            let r: i64 = reserved.parse().unwrap();
            (neg, pos) = (neg + r.min(0), pos + r.max(0));
            table.push((
                format!("t:{txn}"),
                format!("1700000000000\tledger\t{reserved}"),
            ));
        }
        table.extend([
            ("n".into(), txns.len().to_string()),
            ("neg".into(), neg.to_string()),
            ("pos".into(), pos.to_string()),
        ]);
        table
    };
    let applies = vec![
        Applied {
            txns: vec![("t1", "-5:0:")],
            value: Some("100"),
            table: held(&[("t1", "-5")], "a0"),
            fallback: false,
        },
        Applied {
            txns: vec![("t1", "-5:0:"), ("t2", "")],
            value: Some("100"),
            table: held(&[("t1", "-5"), ("t2", "-2")], "a1"),
            fallback: false,
        },
        Applied {
            txns: vec![("t1", "-5:0:"), ("t2", "-2:0:"), ("t1", "-5:0:")],
            value: Some("100"),
            table: held(&[("t1", "-5"), ("t2", "-2"), ("t3", "4")], "a0"),
            fallback: false,
        },
        Applied {
            txns: vec![("t1", "3::")],
            value: None,
            table: held(&[("t1", "3")], "a1"),
            fallback: false,
        },
        Applied {
            txns: vec![("t9", "-5:0:")],
            value: Some("100"),
            table: held(&[("t1", "-5")], "a0"),
            fallback: false,
        },
        Applied {
            txns: vec![("t1", "-5:0:")],
            value: Some("x"),
            table: held(&[("t1", "-5")], "a0"),
            fallback: true,
        },
        Applied {
            txns: vec![("t1", "-5:0:")],
            value: Some("#"),
            table: held(&[("t1", "-5")], "a0"),
            fallback: true,
        },
        Applied {
            txns: vec![("t1", "-5:0:")],
            value: Some("100"),
            table: vec![("w".into(), "x0\tt1\t1\tledger".into())],
            fallback: true,
        },
        Applied {
            txns: vec![("t1", "-5:0:")],
            value: Some("100"),
            table: vec![("lock".into(), "t1".into())],
            fallback: true,
        },
    ];
    for (i, a) in applies.iter().enumerate() {
        let setup = |redis: &mut redis::Connection, s: &Side| {
            value(redis, &s.data[0], a.value);
            let fields: Vec<(&str, &str)> = a
                .table
                .iter()
                .map(|(f, v)| (f.as_str(), v.as_str()))
                .collect();
            table(redis, &s.tables[0], &fields);
            for (txn, _) in &a.txns {
                let _: () = redis::cmd("ZADD")
                    .arg(&s.index)
                    .arg(1)
                    .arg(format!("e:{txn}"))
                    .query(redis)
                    .unwrap();
            }
        };
        let call = |s: &Side, block: &dyn Fn(&str) -> Vec<String>| {
            let mut keys = vec![s.index.clone()];
            let mut args = vec![a.txns.len().to_string()];
            for (txn, steps) in &a.txns {
                keys.extend(s.pairs());
                args.extend([txn.to_string(), format!("e:{txn}"), "1".into()]);
                args.extend(block(steps));
            }
            (keys, args)
        };
        twin(
            redis,
            (200 + i, 1),
            setup,
            |redis, s| {
                let (keys, args) = call(s, &|steps| vec![steps.to_string()]);
                eval(redis, APPLY_ADJUSTED, &keys, &args)
            },
            |redis, s| {
                let (keys, args) = call(s, &|steps| {
                    let mut b = ["string", "1", "w", "", "a", "", "0"]
                        .map(String::from)
                        .to_vec();
                    match steps {
                        "" => b.push("0".into()),
                        steps => b.extend(["1", "adj", "1", steps].map(String::from)),
                    }
                    b
                });
                eval(redis, APPLY, &keys, &args)
            },
            same,
            a.fallback,
        );
    }
}

/// Adjustments written as the scripts take them, `delta:lower:upper;...`.
fn parse_steps(steps: &str) -> Vec<redstage::store::Bounded> {
    let bound = |b: &str| (!b.is_empty()).then(|| b.parse().expect("a bound"));
    steps
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut parts = s.split(':');
            let mut next = || parts.next().expect("delta:lower:upper");
            redstage::store::Bounded {
                delta: next().parse().expect("a delta"),
                lower: bound(next()),
                upper: bound(next()),
            }
        })
        .collect()
}
