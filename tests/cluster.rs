//! Transactions on a real Redis Cluster (3 masters, 3 replicas) next to a
//! single Redis: the bank test with accounts on every master, while slots
//! migrate, and through a master's failover; an order across the cluster
//! and the single Redis; a crash after the commit point.
//!
//! Twelve accounts live on the cluster (`bank`, the payments example), four
//! on the single Redis that keeps the log (`ledger`). Clients on two hosts
//! move money between random accounts: within the cluster as one `transfer`
//! step (an escrow transfer, or one that reads and sets both balances),
//! across the two stores as a `withdraw` and a `deposit` step. Readers add
//! every balance up in one read-only transaction. Money must neither appear
//! nor vanish, no balance may go negative, and the final balances must be
//! the initial ones with every acknowledged transfer applied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redstage::store::StoreError;
use redstage::store::keys::key_slot;
use redstage::txn::types::{Status, TxnResponse};
use redstage::txn::{Coordinator, TxnError};
use redstage_tests::cluster::{CLUSTER_STORE, ClusterEnv, LOG_STORE};
use redstage_tests::{ParticipantSpec, request, step};
use serde_json::{Value, json};

const BANK: usize = 12;
const LEDGER: usize = 4;
const ACCOUNTS: usize = BANK + LEDGER;
const INITIAL: i64 = 100;
const TOTAL: i64 = INITIAL * ACCOUNTS as i64;
const CLIENTS: usize = 6;
const READERS: usize = 2;
/// How long the clients run.
const DURATION: Duration = Duration::from_secs(6);

/// Account `i`: the first [`BANK`] on the cluster, the rest on the log
/// store.
fn participant(i: usize) -> &'static str {
    if i < BANK { "bank" } else { "ledger" }
}

fn account(i: usize) -> String {
    format!("acc{i}")
}

fn bank_key(i: usize) -> String {
    format!("bank:balance:{}", account(i))
}

fn participants() -> Vec<ParticipantSpec> {
    vec![
        ParticipantSpec::example("bank", "payments", CLUSTER_STORE, "bank:"),
        ParticipantSpec::example("ledger", "payments", LOG_STORE, "ledger:"),
    ]
}

fn env(replicas: usize, store: toml::Table) -> ClusterEnv {
    let extra = "[txn]\nlease_ms = 3000\nstore_timeout_ms = 1000\n";
    ClusterEnv::start(&participants(), replicas, store, extra)
}

/// The steps moving `amount` from account `from` to `to`, and the index of
/// the step that pays.
fn transfer(from: usize, to: usize, amount: i64, read: bool) -> (Value, usize) {
    let (p, q) = (participant(from), participant(to));
    if p == q {
        let input = json!({"op": "transfer", "from": account(from), "to": account(to),
            "amount": amount, "read": read});
        return (json!([step(p, input)]), 0);
    }
    let withdraw = step(
        p,
        json!({"op": "withdraw", "account": account(from), "amount": amount}),
    );
    let deposit = step(
        q,
        json!({"op": "deposit", "account": account(to), "amount": amount}),
    );
    if read {
        (json!([deposit, withdraw]), 1)
    } else {
        (json!([withdraw, deposit]), 0)
    }
}

/// Every balance, in one read-only transaction.
fn read_all() -> Value {
    let of = |range: std::ops::Range<usize>| range.map(account).collect::<Vec<_>>();
    json!([
        step("bank", json!({"op": "balances", "accounts": of(0..BANK)})),
        step(
            "ledger",
            json!({"op": "balances", "accounts": of(BANK..ACCOUNTS)})
        ),
    ])
}

fn balances(reply: &TxnResponse) -> [i64; ACCOUNTS] {
    let mut out = [None; ACCOUNTS];
    for s in &reply.steps {
        for (name, balance) in s.output.as_object().expect("an object of balances") {
            let i: usize = name["acc".len()..].parse().expect("an account");
            out[i] = balance.as_i64();
        }
    }
    out.map(|b| b.expect("every account"))
}

/// Runs a transaction; a store that is unavailable (a master killed, a
/// failover under way) counts as nothing applied, which is what the error
/// promises.
async fn run(host: &Coordinator, steps: Value) -> Option<TxnResponse> {
    match host.run(request(steps)).await {
        Ok(reply) => Some(reply),
        Err(TxnError::Store(e @ StoreError::Unavailable { .. })) => {
            println!("unavailable: {e}");
            None
        }
        Err(e) => panic!("not a decision: {e:?}"),
    }
}

async fn seed(env: &ClusterEnv) {
    let steps: Vec<Value> = (0..ACCOUNTS)
        .map(|i| {
            step(
                participant(i),
                json!({"op": "deposit", "account": account(i), "amount": INITIAL}),
            )
        })
        .collect();
    let reply = run(&env.coordinator, json!(steps)).await.expect("seeding");
    assert_eq!(reply.status, Status::Committed, "seeding: {reply:?}");
}

/// A cluster account on each master.
fn one_per_master(env: &ClusterEnv) -> Vec<usize> {
    let mut found: Vec<usize> = Vec::new();
    for i in 0..BANK {
        let master = env.master_of(&bank_key(i));
        if found.iter().all(|&f| env.master_of(&bank_key(f)) != master) {
            found.push(i);
        }
    }
    assert_eq!(found.len(), 3, "an account on each master");
    found
}

/// What disturbs the cluster while the bank runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disturb {
    Nothing,
    /// The accounts' slots move from master to master, one after another.
    Reshard,
    /// The master holding the most accounts is killed, and its replica
    /// takes over.
    Failover,
}

#[derive(Debug, Default)]
struct Log {
    committed: Vec<(usize, usize, i64)>,
    aborted: BTreeMap<String, usize>,
    unavailable: usize,
}

async fn bank(mut env: ClusterEnv, disturb: Disturb) {
    let masters: std::collections::BTreeSet<u16> =
        (0..BANK).map(|i| env.master_of(&bank_key(i))).collect();
    assert_eq!(
        masters.len(),
        3,
        "the cluster's accounts should be spread over all three masters"
    );
    seed(&env).await;
    let hosts = [env.coordinator.clone(), env.second_host()];
    let seed = fastrand::u64(..);
    println!("cluster bank ({disturb:?}): seed {seed}");
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (host, done) = (hosts[r % 2].clone(), done.clone());
            tokio::spawn(async move {
                let (mut reads, mut unavailable) = (0, 0);
                while !done.load(Ordering::Relaxed) {
                    let Some(reply) = run(&host, read_all()).await else {
                        unavailable += 1;
                        continue;
                    };
                    if reply.status != Status::Committed {
                        let code = &reply.abort.as_ref().expect("an abort").code;
                        assert_eq!(code, "conflict", "{reply:?}");
                        continue;
                    }
                    let b = balances(&reply);
                    assert_eq!(b.iter().sum::<i64>(), TOTAL, "a read saw {b:?}");
                    assert!(b.iter().all(|&x| x >= 0), "a read saw {b:?}");
                    reads += 1;
                }
                (reads, unavailable)
            })
        })
        .collect();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let host = hosts[c % 2].clone();
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(c as u64));
            tokio::spawn(async move {
                let mut log = Log::default();
                while started.elapsed() < DURATION {
                    let from = rng.usize(0..ACCOUNTS);
                    let to = (from + rng.usize(1..ACCOUNTS)) % ACCOUNTS;
                    let amount = rng.i64(1..=60);
                    let (steps, paying) = transfer(from, to, amount, rng.bool());
                    let Some(reply) = run(&host, steps).await else {
                        log.unavailable += 1;
                        continue;
                    };
                    match reply.status {
                        Status::Committed => log.committed.push((from, to, amount)),
                        Status::Aborted => {
                            let abort = reply.abort.as_ref().expect("an abort");
                            match abort.code.as_str() {
                                "insufficient_funds" => {
                                    assert_eq!(abort.step, Some(paying), "{reply:?}")
                                }
                                "conflict" => {}
                                _ => panic!("aborted unexpectedly: {reply:?}"),
                            }
                            *log.aborted.entry(abort.code.clone()).or_default() += 1;
                        }
                    }
                }
                log
            })
        })
        .collect();

    match disturb {
        Disturb::Nothing => {}
        Disturb::Reshard => {
            // Each account's slot in turn goes to the next master, while
            // the clients run.
            let mut moved = 0;
            while started.elapsed() < DURATION - Duration::from_secs(1) {
                let key = bank_key(moved % BANK);
                let slot = key_slot(key.as_bytes());
                let ports: Vec<u16> = env.cluster.masters().iter().map(|m| m.0).collect();
                let from = env.master_of(&key);
                let to = ports[(ports.iter().position(|&p| p == from).unwrap() + 1) % ports.len()];
                let cluster = &env.cluster;
                tokio::task::block_in_place(|| cluster.migrate_slot(slot, to))
                    .unwrap_or_else(|e| panic!("migrating slot {slot}: {e}"));
                moved += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("cluster bank: {moved} slots migrated during the run");
            assert!(moved >= 3, "too few migrations to mean anything");
        }
        Disturb::Failover => {
            tokio::time::sleep(DURATION / 3).await;
            let mut held: BTreeMap<u16, usize> = BTreeMap::new();
            for i in 0..BANK {
                *held.entry(env.master_of(&bank_key(i))).or_default() += 1;
            }
            let (&victim, _) = held.iter().max_by_key(|(_, n)| **n).expect("a master");
            let promoted =
                tokio::task::block_in_place(|| env.cluster.kill_master_and_failover(victim))
                    .expect("failover");
            println!("cluster bank: master {victim} killed, {promoted} took over");
        }
    }

    let mut log = Log::default();
    for client in clients {
        let l = client.await.expect("client task");
        log.committed.extend(l.committed);
        for (code, n) in l.aborted {
            *log.aborted.entry(code).or_default() += n;
        }
        log.unavailable += l.unavailable;
    }
    done.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for reader in readers {
        let (r, unavailable) = reader.await.expect("reader task");
        reads += r;
        log.unavailable += unavailable;
    }

    let mut expected = [INITIAL; ACCOUNTS];
    for &(from, to, amount) in &log.committed {
        expected[from] -= amount;
        expected[to] += amount;
    }
    let last = loop {
        if let Some(reply) = run(&env.coordinator, read_all()).await
            && reply.status == Status::Committed
        {
            break balances(&reply);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        last,
        expected,
        "the final balances are not the initial ones with the {} acknowledged transfers applied",
        log.committed.len()
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    for (i, balance) in expected.iter().enumerate().take(BANK) {
        assert_eq!(env.get(&bank_key(i)), Some(balance.to_string()));
    }
    println!(
        "cluster bank ({disturb:?}): {} transfers committed, aborted {:?}, {} found a store \
         unavailable; {reads} reads",
        log.committed.len(),
        log.aborted,
        log.unavailable
    );
    assert!(log.committed.len() > CLIENTS, "too few transfers committed");
    assert!(reads > 0, "no read committed while the transfers ran");
    if disturb != Disturb::Failover {
        assert_eq!(
            log.unavailable, 0,
            "a store failed with nothing disturbing it"
        );
    }
    drop(hosts);
    env.cluster.flushall().ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_on_a_cluster_keeps_every_invariant() {
    bank(env(1, toml::Table::new()), Disturb::Nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_on_a_cluster_while_slots_migrate() {
    bank(env(1, toml::Table::new()), Disturb::Reshard).await;
}

/// With `wait_replicas = 1`, every write that counted reached a replica
/// before it was acknowledged, so the replica that takes over has it: no
/// acknowledged transfer is lost. Each master has two replicas, so that the
/// promoted one still has a replica to wait for. (Without `WAIT`,
/// replication is asynchronous and the killed master may take the last
/// writes with it: an applied transfer could vanish from one account, which
/// the exact final balances would catch.) Transactions that meet the dead
/// master before the failover fail with `store_unavailable`, having
/// applied nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_on_a_cluster_through_a_master_failover() {
    let store = toml::Table::from_iter([
        ("wait_replicas".to_owned(), 1.into()),
        ("wait_timeout_ms".to_owned(), 500.into()),
    ]);
    bank(env(2, store), Disturb::Failover).await;
}

/// A host killed at a fault point of an order that spans the single Redis
/// and three masters of the cluster: before its commit point, what it
/// locked on every slot is rolled back; after it, a transaction that meets
/// a lock rolls the order forward at once, and the sweep finishes every
/// slot's lock index, so nothing is left anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_around_the_commit_point_is_finished_on_every_slot() {
    let env = env(1, toml::Table::new());
    seed(&env).await;
    // Three cluster accounts on three masters, paid from the single Redis.
    let payees = one_per_master(&env);
    let payer = BANK;
    let mut expected = [INITIAL; ACCOUNTS];
    for (point, applied) in [("after-prepare", false), ("after-decide", true)] {
        let mut steps = vec![step(
            "ledger",
            json!({"op": "withdraw", "account": account(payer), "amount": 3}),
        )];
        for &p in &payees {
            steps.push(step(
                "bank",
                json!({"op": "deposit", "account": account(p), "amount": 1}),
            ));
        }
        let body = json!({ "steps": steps }).to_string();
        let mut host = env.spawn_host(Some(point));
        let addr = host.addr;
        let request = tokio::spawn(async move {
            redstage_tests::http::try_request(addr, "POST", "/v1/transactions", body.as_bytes())
                .await
        });
        host.wait_for_point(point).await;
        let held = env.unfinished();
        assert!(
            held.iter().filter(|k| k.ends_with(":locks")).count() >= 3,
            "{point}: a lock index entry on every master: {held:?}"
        );
        host.kill();
        let _ = request.await;

        if applied {
            // Met at once: the lock of a committed transaction is rolled
            // forward by whoever meets it, lease or not.
            expected[payer] -= 3;
            for &p in &payees {
                expected[p] += 1;
            }
            let reply = run(&env.coordinator, read_all()).await.expect("a read");
            assert_eq!(reply.status, Status::Committed, "{point}: {reply:?}");
            assert_eq!(balances(&reply), expected, "{point}: the order is visible");
        }
        assert_eq!(env.leftovers().await, Vec::<String>::new(), "{point}");
        let reply = run(&env.coordinator, read_all()).await.expect("a read");
        assert_eq!(balances(&reply), expected, "{point}");
        for &p in &payees {
            assert_eq!(env.get(&bank_key(p)), Some(expected[p].to_string()));
        }
    }
}

/// The cluster client sends a call again when the connection drops before
/// its reply, so each script may run twice: lock, reserve and apply, run
/// twice on keys of three slots, do what they do once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_delivered_twice_act_once() {
    use redstage::store::keys::Key;
    use redstage::store::{
        Base64, Bounded, Found, IndexEntry, KeyWork, Kind, Locked, Mode, Op, Read, Target,
    };

    let env = env(1, toml::Table::new());
    seed(&env).await;
    let store = env
        .coordinator
        .stores()
        .find(|s| s.name() == CLUSTER_STORE)
        .expect("the cluster store");
    let [set, adjusted, read] = [0, 1, 2].map(|i| bank_key(one_per_master(&env)[i]));
    let targets = [
        [(None, Mode::Exclusive)],
        [(None, Mode::Adjust)],
        [(None, Mode::Shared)],
    ];
    let take = [Bounded {
        delta: -30,
        lower: Some(0),
        upper: None,
    }];
    let ops = [
        vec![Op::Set {
            value: Base64(b"7".to_vec()),
            ttl_ms: None,
        }],
        vec![Op::Adjust {
            part: None,
            steps: take.to_vec(),
        }],
        vec![],
    ];
    let reads = [vec![Read::Get], vec![], vec![Read::Get]];
    let names = [set.as_str(), adjusted.as_str(), read.as_str()];
    let keys: Vec<KeyWork> = (0..3)
        .map(|i| KeyWork {
            key: names[i],
            kind: Kind::String,
            targets: &targets[i],
            reads: &reads[i],
            ops: &ops[i],
        })
        .collect();
    let txn = "00000000-0000-4000-8000-000000000001";
    let entry = IndexEntry {
        txn: txn.into(),
        primary: LOG_STORE.into(),
        keys: names.iter().map(|k| Target::whole(k)).collect(),
    };
    let lease = Duration::from_secs(30);
    for _ in 0..2 {
        let locked = store
            .lock(txn, lease, &entry, &keys, false, 1024)
            .await
            .expect("lock");
        let Locked::Values(values) = locked else {
            panic!("a second delivery conflicted with itself: {locked:?}");
        };
        assert_eq!(values[0], vec![Found::Bytes(Some(b"100".to_vec()))]);
    }
    for _ in 0..2 {
        let refused = store.reserve(txn, &keys).await.expect("reserve");
        assert_eq!(refused, None);
    }
    let table: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(Key::Meta(&adjusted).encode())
        .query(&mut env.node_of(&adjusted))
        .expect("HGETALL");
    assert_eq!(table["n"], "1", "{table:?}");
    assert_eq!(table["neg"], "-30", "{table:?}");

    let encoded = entry.encode();
    let held = store.apply(txn, Some(&encoded), &keys).await;
    assert_eq!(held.expect("apply"), 3);
    let again = store.apply(txn, Some(&encoded), &keys).await;
    assert_eq!(again.expect("apply again"), 0);
    assert_eq!(env.get(&set).as_deref(), Some("7"));
    assert_eq!(env.get(&adjusted).as_deref(), Some("70"));
    assert_eq!(env.get(&read).as_deref(), Some("100"));
    assert_eq!(env.unfinished(), Vec::<String>::new());
}

/// `redstage demo --cluster`: the order demo with `orders` on a local Redis
/// Cluster, its config shown, the same outcome as on two redis-servers.
#[test]
fn the_demo_runs_on_a_cluster() {
    let components = redstage_tests::components(redstage_tests::Toolchain::Wasip2);
    let out = std::process::Command::new(redstage_tests::redstage_binary())
        .args(["demo", "--cluster", "--components"])
        .arg(components)
        .output()
        .expect("run redstage demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("orders = \"redis+cluster://"), "{stdout}");
    assert!(stdout.contains("log_store = \"ledger\""), "{stdout}");
    assert!(
        stdout.contains(r#"# after: {"balances":{"alice":70,"shop":30},"stock":{"A1":8}}"#),
        "{stdout}"
    );
}

/// What an operator sees of a cluster store: an order held before its
/// commit point across the single Redis and three masters is listed once,
/// in doubt; its locks on every master are listed, each once, with their
/// mode and holder; and resolving it fences it and rolls it back on every
/// slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_order_on_a_cluster_is_listed_and_resolved() {
    use redstage::txn::inspect::LockMode;
    use redstage::txn::types::LookupStatus;

    let env = env(1, toml::Table::new());
    seed(&env).await;
    let payees = one_per_master(&env);
    let payer = BANK;
    let mut steps = vec![step(
        "ledger",
        json!({"op": "withdraw", "account": account(payer), "amount": 3}),
    )];
    for &p in &payees {
        steps.push(step(
            "bank",
            json!({"op": "deposit", "account": account(p), "amount": 1}),
        ));
    }
    let body = json!({ "steps": steps }).to_string();
    let mut host = env.spawn_host(Some("after-prepare"));
    let addr = host.addr;
    let request = tokio::spawn(async move {
        redstage_tests::http::try_request(addr, "POST", "/v1/transactions", body.as_bytes()).await
    });
    host.wait_for_point("after-prepare").await;

    let coordinator = &env.coordinator;
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = coordinator
            .list_transactions(Some(LookupStatus::InDoubt), 1, cursor.as_deref())
            .await
            .expect("a page");
        rows.extend(page.transactions);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let [row] = &rows[..] else {
        panic!("one transaction in doubt: {rows:?}");
    };
    // Listed from the single Redis, which holds locks of it too: the
    // cluster is not searched for a transaction found already (it would
    // take a SCAN of every master).
    assert_eq!(row.primary.as_deref(), Some(LOG_STORE), "{row:?}");
    assert_eq!(row.stores, [LOG_STORE], "{row:?}");
    assert_eq!(row.participants, ["ledger"], "{row:?}");
    let mut locks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = coordinator
            .list_locks(Some(CLUSTER_STORE), 2, cursor.as_deref())
            .await
            .expect("a page");
        locks.extend(page.locks);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut keys: Vec<&str> = locks.iter().map(|l| l.key.as_str()).collect();
    keys.sort();
    let mut expected: Vec<String> = payees.iter().map(|&p| bank_key(p)).collect();
    expected.sort();
    assert_eq!(keys, expected, "{locks:?}");
    for lock in &locks {
        // A deposit writes its balance: held exclusively.
        assert_eq!(
            (lock.mode, &lock.txn),
            (LockMode::Exclusive, &row.id),
            "{lock:?}"
        );
        assert_eq!(lock.participant.as_deref(), Some("bank"));
    }

    let resolved = coordinator
        .resolve(&row.id, "a test", false)
        .await
        .expect("resolve")
        .expect("known");
    assert!(resolved.made, "{resolved:?}");
    let stores: Vec<(&str, &str)> = resolved
        .stores
        .iter()
        .map(|s| (s.store.as_str(), s.action.name()))
        .collect();
    assert_eq!(
        stores,
        [(LOG_STORE, "rolled_back"), (CLUSTER_STORE, "rolled_back")]
    );
    host.kill();
    let _ = request.await;
    assert_eq!(env.unfinished(), Vec::<String>::new());
    let reply = run(&env.coordinator, read_all()).await.expect("a read");
    assert_eq!(balances(&reply), [INITIAL; ACCOUNTS]);
}
