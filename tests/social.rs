//! Contract 0.3.0 end to end, with the `social` and `orders` examples
//! against real Redis: follows and unfollows raced from many clients (and a
//! host SIGKILLed among them, on a single Redis and on a cluster with the
//! users on different masters) keep `following` and `followers` symmetric
//! and every counter equal to what it counts; messages appear once per
//! committed transaction; the outbox of an order killed at every fault
//! point holds exactly the committed orders; a key of another type aborts
//! `wrong_type`; a write keeps a key's TTL; a whole read past
//! `read_items_max` is refused by name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use redstage::txn::types::Status;
use redstage_tests::cluster::{CLUSTER_STORE, ClusterEnv};
use redstage_tests::{HostProcess, ParticipantSpec, Persistence, TestEnv, Toolchain, http, step};
use serde_json::{Value, json};

/// Short leases and frequent sweeps, so recovery happens within a test.
const FAST: &str = "[txn]\nlease_ms = 800\nsweep_interval_ms = 100\nstore_timeout_ms = 400\n";

const USERS: [&str; 6] = ["ann", "bob", "cat", "dan", "eve", "fay"];

/// The abort codes of the social participant's own rules, and the host's
/// give-up after conflicts: what a race may answer besides `committed`.
const EXPECTED_ABORTS: [&str; 4] = [
    "already_following",
    "not_following",
    "not_a_follower",
    "conflict",
];

fn social(store: &str) -> ParticipantSpec {
    ParticipantSpec::built(Toolchain::Sdk, "social", "social", store, "social:")
}

fn key(what: &str, user: &str) -> String {
    format!("social:{what}:{{{user}}}")
}

/// One operation of client `client`'s `n`th turn: follows, unfollows and
/// messages between random pairs.
fn social_op(rng: &mut fastrand::Rng) -> Value {
    let user = USERS[rng.usize(..USERS.len())];
    let mut target = USERS[rng.usize(..USERS.len())];
    while target == user {
        target = USERS[rng.usize(..USERS.len())];
    }
    match rng.u8(..10) {
        0..4 => json!({"op": "follow", "user": user, "target": target}),
        4..7 => json!({"op": "unfollow", "user": user, "target": target}),
        _ => json!({"op": "message", "from": user, "to": target, "text": "hi"}),
    }
}

/// What a race answered.
#[derive(Debug, Default)]
struct Tally {
    committed: usize,
    aborted: BTreeMap<String, usize>,
    /// Requests to a host that died under them: outcome unknown to the
    /// client, known to the audit.
    lost: usize,
}

/// Posts social operations to `hosts` from `clients` clients for `run`,
/// each client moving to the next host when its host stops answering.
async fn race(hosts: Vec<SocketAddr>, clients: usize, run: Duration) -> Tally {
    let hosts = Arc::new(hosts);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let hosts = hosts.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(c as u64 + 1);
                let mut tally = Tally::default();
                let mut host = c % hosts.len();
                let started = Instant::now();
                while started.elapsed() < run {
                    let body = json!({"steps": [step("social", social_op(&mut rng))]});
                    let body = body.to_string();
                    let sent =
                        http::try_request(hosts[host], "POST", "/v1/transactions", body.as_bytes())
                            .await;
                    match sent {
                        Ok((200, reply)) if reply["status"] == "committed" => tally.committed += 1,
                        Ok((200, reply)) => {
                            let code = reply["abort"]["code"].as_str().unwrap_or("?").to_owned();
                            assert!(EXPECTED_ABORTS.contains(&code.as_str()), "{reply}");
                            *tally.aborted.entry(code).or_default() += 1;
                        }
                        // An answer of a host going down, or none at all.
                        Ok((503, _)) | Err(_) => {
                            tally.lost += 1;
                            host = (host + 1) % hosts.len();
                        }
                        Ok((status, reply)) => panic!("{status}: {reply}"),
                    }
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.expect("a client");
        total.committed += t.committed;
        total.lost += t.lost;
        for (code, n) in t.aborted {
            *total.aborted.entry(code).or_default() += n;
        }
    }
    total
}

/// The social graph as Redis holds it, checked whole: `following` and
/// `followers` mirror each other, each user's counters equal the sizes of
/// their sets and their inbox, and every message sent was received once.
/// `conn(key)` reaches the node holding `key`. Returns the follows and the
/// messages there are.
fn audit(mut conn: impl FnMut(&str) -> redis::Connection) -> (usize, usize) {
    let mut following = BTreeMap::new();
    let mut followers = BTreeMap::new();
    let (mut sent, mut unread) = (0, 0);
    for user in USERS {
        let set: BTreeSet<String> = conn(&key("following", user))
            .smembers(key("following", user))
            .expect("SMEMBERS");
        following.insert(user, set);
        let set: BTreeSet<String> = conn(&key("followers", user))
            .smembers(key("followers", user))
            .expect("SMEMBERS");
        followers.insert(user, set);
        let counters: BTreeMap<String, i64> = conn(&key("user", user))
            .hgetall(key("user", user))
            .expect("HGETALL");
        let counter = |f: &str| counters.get(f).copied().unwrap_or(0);
        let inbox: usize = conn(&key("inbox", user))
            .xlen(key("inbox", user))
            .expect("XLEN");
        assert_eq!(counter("following"), following[user].len() as i64, "{user}");
        assert_eq!(counter("followers"), followers[user].len() as i64, "{user}");
        assert_eq!(counter("unread"), inbox as i64, "{user}");
        sent += counter("sent");
        unread += counter("unread");
    }
    for (user, targets) in &following {
        for target in targets {
            assert!(
                followers[target.as_str()].contains(*user),
                "{user} follows {target}, who has no such follower"
            );
        }
    }
    for (user, fans) in &followers {
        for fan in fans {
            assert!(
                following[fan.as_str()].contains(*user),
                "{fan} is a follower of {user} without following"
            );
        }
    }
    assert_eq!(sent, unread, "every message sent was received once");
    let follows = following.values().map(BTreeSet::len).sum();
    (follows, sent as usize)
}

/// Many clients race follows, unfollows and messages through two hosts of
/// one Redis; one host is SIGKILLed a second in, with transactions in
/// flight; the other and recovery finish what it left. The graph stays
/// symmetric, every counter equals what it counts, and each message is in
/// its inbox once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_raced_with_a_host_killed_stay_symmetric() {
    let env = TestEnv::start_with(&["social"], &[social("social")], FAST, Persistence::None);
    let survivor = env.spawn_host(None);
    let tally = race_killing_one(env.spawn_host(None), &survivor).await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    let (follows, messages) = audit(|_| env.redis("social"));
    println!("{tally:?}; {follows} follows and {messages} messages stand");
}

/// The same race on a Redis Cluster, with the users' keys on different
/// masters (a follow writes two slots, which Redis alone cannot do
/// atomically), and a host SIGKILLed among the clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_on_a_cluster_across_slots_stay_symmetric() {
    let env = ClusterEnv::start(&[social(CLUSTER_STORE)], 0, toml::Table::new(), FAST);
    let masters: BTreeSet<u16> = USERS
        .iter()
        .map(|u| env.master_of(&key("user", u)))
        .collect();
    assert!(masters.len() > 1, "the users share one master: {masters:?}");
    let survivor = env.spawn_host(None);
    let tally = race_killing_one(env.spawn_host(None), &survivor).await;
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    let (follows, messages) = audit(|k| env.node_of(k));
    println!("{tally:?}; {follows} follows and {messages} messages stand");
}

/// Eight clients race through `doomed` and `survivor` for 4 s; `doomed`
/// is SIGKILLed a second in, with transactions in flight, and its clients
/// move to `survivor`.
async fn race_killing_one(mut doomed: HostProcess, survivor: &HostProcess) -> Tally {
    let race = tokio::spawn(race(
        vec![doomed.addr, survivor.addr],
        8,
        Duration::from_secs(4),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    doomed.kill();
    let tally = race.await.expect("the race");
    assert!(
        tally.committed > 20,
        "too few transactions to show anything: {tally:?}"
    );
    assert!(tally.lost > 0, "the kill hit nothing in flight: {tally:?}");
    tally
}

/// One follow and one message, with their answers and what they leave; a
/// profile reads the whole hash; the rules abort by their codes.
#[tokio::test]
async fn a_follow_a_message_and_a_profile() {
    let env = TestEnv::start(&["social"], &[social("social")]);
    let run = |input: Value| env.run(json!([step("social", input)]));
    let r = run(json!({"op": "message", "from": "ann", "to": "bob", "text": "hi"})).await;
    assert_eq!(r.abort.map(|a| a.code), Some("not_a_follower".into()));
    let r = run(json!({"op": "follow", "user": "bob", "target": "ann"})).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(
        r.steps[0].output,
        json!({"user": "bob", "target": "ann", "following": true})
    );
    let r = run(json!({"op": "follow", "user": "bob", "target": "ann"})).await;
    assert_eq!(r.abort.map(|a| a.code), Some("already_following".into()));
    let r = run(json!({"op": "follow", "user": "bob", "target": "bob"})).await;
    assert_eq!(r.abort.map(|a| a.code), Some("bad_input".into()));
    let r = run(json!({"op": "message", "from": "ann", "to": "bob", "text": "hi"})).await;
    assert_eq!(r.steps[0].output, json!({"delivered": true}), "{r:?}");
    let r = run(json!({"op": "profile", "user": "bob"})).await;
    assert_eq!(
        r.steps[0].output,
        json!({"following": 1, "followers": 0, "sent": 0, "unread": 1})
    );
    let mut redis = env.redis("social");
    let entries: redis::streams::StreamRangeReply =
        redis.xrange_all(key("inbox", "bob")).expect("XRANGE");
    let [entry] = &entries.ids[..] else {
        panic!("one message: {entries:?}");
    };
    let text: String = entry.get("text").expect("its text");
    let from: String = entry.get("from").expect("its sender");
    assert_eq!((from.as_str(), text.as_str()), ("ann", "hi"));
    let r = run(json!({"op": "unfollow", "user": "bob", "target": "ann"})).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let r = run(json!({"op": "unfollow", "user": "bob", "target": "ann"})).await;
    assert_eq!(r.abort.map(|a| a.code), Some("not_following".into()));
    assert_eq!(audit(|_| env.redis("social")), (0, 1));
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// A declared hash that Redis holds as a string aborts `wrong_type`, naming
/// the key and both types, with nothing applied; a write keeps the TTL the
/// key had; a whole read of a hash larger than `read_items_max` is refused
/// by that name.
#[tokio::test]
async fn wrong_types_ttls_and_the_read_bound() {
    let env = TestEnv::start(&["social"], &[social("social")]);
    let run = |input: Value| env.run(json!([step("social", input)]));
    let mut redis = env.redis("social");

    let _: () = redis.set(key("user", "ann"), "a string").expect("SET");
    let r = run(json!({"op": "follow", "user": "ann", "target": "bob"})).await;
    let abort = r.abort.expect("an abort");
    assert_eq!(abort.code, "wrong_type", "{abort:?}");
    for word in [key("user", "ann").as_str(), "hash", "string"] {
        assert!(abort.message.contains(word), "{word}: {abort:?}");
    }
    // Nothing of the follow was applied.
    let fans: Vec<String> = redis.smembers(key("followers", "bob")).expect("SMEMBERS");
    assert_eq!(fans, Vec::<String>::new());
    let _: () = redis.del(key("user", "ann")).expect("DEL");

    let _: () = redis.hset(key("user", "bob"), "sent", 0).expect("HSET");
    let _: () = redis.pexpire(key("user", "bob"), 600_000).expect("PEXPIRE");
    let r = run(json!({"op": "follow", "user": "ann", "target": "bob"})).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let ttl: i64 = redis.pttl(key("user", "bob")).expect("PTTL");
    assert!(ttl > 0 && ttl <= 600_000, "the TTL went: {ttl}");
    let followers: i64 = redis.hget(key("user", "bob"), "followers").expect("HGET");
    assert_eq!(followers, 1);

    // A profile reads the whole hash: past read_items_max (1024) fields,
    // it is refused by the limit's name, and nothing is left locked.
    let fields: Vec<(String, i64)> = (0..1100).map(|i| (format!("f{i}"), i)).collect();
    let _: () = redis
        .hset_multiple(key("user", "cat"), &fields)
        .expect("HSET");
    let r = run(json!({"op": "profile", "user": "cat"})).await;
    let abort = r.abort.expect("an abort");
    assert_eq!(
        (abort.code.as_str(), abort.limit.as_deref()),
        ("limit_exceeded", Some("read_items")),
        "{abort:?}"
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// Orders of three steps (inventory, payments, orders) with the outbox:
/// a host killed at every fault point, then recovery; and orders refused
/// for want of stock. The `events` stream holds exactly one entry per
/// committed order, none for an aborted one, and each `order:{O}` hash
/// exists iff its order committed.
#[tokio::test]
async fn the_outbox_holds_exactly_the_committed_orders() {
    let participants = [
        ParticipantSpec::built(
            Toolchain::Sdk,
            "inventory",
            "inventory",
            "orders",
            "inventory:",
        ),
        ParticipantSpec::built(
            Toolchain::Sdk,
            "payments",
            "payments",
            "ledger",
            "payments:",
        ),
        ParticipantSpec::built(Toolchain::Sdk, "orders", "orders", "orders", "orders:"),
    ];
    let env = TestEnv::start_with(
        &["orders", "ledger"],
        &participants,
        FAST,
        Persistence::None,
    );
    env.stock_and_fund("A1", 5, "alice", 1000).await;
    let order = |id: &str| {
        json!({"steps": [
            step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1})),
            step("payments", json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 3})),
            step("orders", json!({"op": "place", "order": id, "customer": "alice",
                "sku": "A1", "qty": 1, "total": 3})),
        ]})
        .to_string()
    };
    let points = [
        "prepare-partial",
        "after-prepare",
        "after-decide",
        "commit-partial",
        "before-reply",
    ];
    for (i, point) in points.iter().enumerate() {
        let mut host = env.spawn_host(Some(point));
        let (addr, body) = (host.addr, order(&format!("o{i}")));
        let request = tokio::spawn(async move {
            http::try_request(addr, "POST", "/v1/transactions", body.as_bytes()).await
        });
        host.wait_for_point(point).await;
        host.kill();
        let _ = request.await;
    }
    // A host that comes back sweeps what the dead ones left; then orders
    // run until the stock is gone, and past it.
    let survivor = env.spawn_host(None);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    let mut refused = 0;
    for i in points.len()..points.len() + 6 {
        let body = order(&format!("o{i}"));
        let (status, reply) = http::post(survivor.addr, "/v1/transactions", body.as_bytes()).await;
        assert_eq!(status, 200, "{reply}");
        if reply["status"] == "aborted" {
            assert_eq!(reply["abort"]["code"], "insufficient_stock", "{reply}");
            refused += 1;
        }
    }
    assert!(refused > 0, "the stock never ran out");
    assert_eq!(env.leftovers().await, Vec::<String>::new());

    let mut redis = env.redis("orders");
    let events: redis::streams::StreamRangeReply =
        redis.xrange_all("orders:events").expect("XRANGE");
    let mut placed: Vec<String> = events
        .ids
        .iter()
        .map(|e| {
            assert_eq!(e.get::<String>("type").as_deref(), Some("order_placed"));
            e.get("order").expect("the order's id")
        })
        .collect();
    let announced = placed.len();
    placed.sort();
    placed.dedup();
    assert_eq!(
        placed.len(),
        announced,
        "an order announced twice: {events:?}"
    );
    let orders: BTreeSet<String> = (0..points.len() + 6)
        .map(|i| format!("o{i}"))
        .filter(|o| {
            redis
                .exists(format!("orders:order:{{{o}}}"))
                .expect("EXISTS")
        })
        .collect();
    assert_eq!(placed.into_iter().collect::<BTreeSet<_>>(), orders);
    // The stock sold is the orders placed: 5 units, one per order.
    let stock: i64 = redis.get("inventory:stock:A1").expect("GET");
    assert_eq!((orders.len(), stock), (5, 0), "{orders:?}");
}
