//! The anomalies that strict serializability rules out, each provoked on
//! purpose and shown not to happen: many transactions at once, from two
//! coordinators (two hosts) on the same two Redis stores, and a check that
//! the anomaly, had it happened, would fail.
//!
//! Every test runs both commit paths where it can: transactions on one store
//! (the one-phase shortcut) and across two stores (two-phase commit, with
//! read-only keys validated after the write locks are held).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redstage::txn::Coordinator;
use redstage::txn::types::{Status, TxnResponse};
use redstage_tests::{ParticipantSpec, Persistence, TestEnv, request, step};
use serde_json::{Value, json};
use tokio::sync::{Barrier, Mutex};

/// Two stores `s0` and `s1`, payments as `p0` on `s0` and as `p1` on `s1`.
/// `extra` is appended to the config.
fn payments_env(extra: &str) -> TestEnv {
    TestEnv::start_with(
        &["s0", "s1"],
        &[
            ParticipantSpec::example("p0", "payments", "s0", "p0:"),
            ParticipantSpec::example("p1", "payments", "s1", "p1:"),
        ],
        extra,
        Persistence::None,
    )
}

/// The tests of this file take turns. Each runs many transactions at once on
/// purpose; run side by side on a small machine, they would starve one
/// another's readers (a debug build spends most of a transaction in wasm),
/// and a read that never runs while the writers do finds no anomaly.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Two coordinators on the same stores, as two hosts would be.
fn hosts(env: &TestEnv) -> [Arc<Coordinator>; 2] {
    [env.coordinator.clone(), env.second_host()]
}

async fn run(host: &Coordinator, steps: Value) -> TxnResponse {
    host.run(request(steps))
        .await
        .expect("the transaction ran to a decision")
}

fn deposit(participant: &str, account: &str, amount: i64) -> Value {
    step(
        participant,
        json!({"op": "deposit", "account": account, "amount": amount}),
    )
}

fn withdraw(participant: &str, account: &str, amount: i64) -> Value {
    step(
        participant,
        json!({"op": "withdraw", "account": account, "amount": amount}),
    )
}

fn balances(participant: &str, accounts: &[&str]) -> Value {
    step(participant, json!({"op": "balances", "accounts": accounts}))
}

/// The balance of `account` that step `index` of a committed transaction
/// output.
fn balance(r: &TxnResponse, index: usize, account: &str) -> i64 {
    r.steps[index].output[account]
        .as_i64()
        .unwrap_or_else(|| panic!("step {index} output no balance of `{account}`: {r:?}"))
}

/// The abort code of an aborted transaction.
fn abort_code(r: &TxnResponse) -> &str {
    assert_eq!(r.status, Status::Aborted, "{r:?}");
    &r.abort
        .as_ref()
        .expect("an aborted transaction says why")
        .code
}

/// A transaction that gave up after losing every race: no step said no.
fn assert_conflict(r: &TxnResponse) {
    assert_eq!(abort_code(r), "conflict", "{r:?}");
    let abort = r.abort.as_ref().expect("abort");
    assert_eq!((abort.step, abort.participant.as_deref()), (None, None));
    assert!(r.steps.is_empty(), "{r:?}");
}

fn committed(r: &TxnResponse) -> bool {
    r.status == Status::Committed
}

/// `GET key` on a store, through a connection of the test's own.
async fn raw_get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<i64> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}

async fn raw_connection(env: &TestEnv, store: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.server(store).url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Lost update: concurrent increments of one key, from two hosts. Each
/// committed deposit of 1 reports the balance it left; if two of them had
/// read the same balance, one update would be lost and two would report the
/// same number. So the reported balances must be exactly 1..=n, and the
/// final balance n. Half the deposits also increment a key on the second
/// store (two-phase commit), the others stay on one store (one phase).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_update() {
    const TASKS_PER_HOST: usize = 4;
    const DEPOSITS_PER_TASK: usize = 10;
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = payments_env("");
    let mut tasks = Vec::new();
    for host in hosts(&env) {
        for task in 0..TASKS_PER_HOST {
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                // Per committed deposit: the balance on s0, and on s1 for
                // the two-store ones.
                let mut reported = Vec::new();
                let (mut conflicts, mut reruns) = (0, 0);
                for i in 0..DEPOSITS_PER_TASK {
                    let two_stores = (task + i) % 2 == 1;
                    let steps = if two_stores {
                        json!([deposit("p0", "counter", 1), deposit("p1", "counter", 1)])
                    } else {
                        json!([deposit("p0", "counter", 1)])
                    };
                    let r = run(&host, steps).await;
                    reruns += r.attempts - 1;
                    if committed(&r) {
                        let on_s1 = two_stores.then(|| balance(&r, 1, "counter"));
                        reported.push((balance(&r, 0, "counter"), on_s1));
                    } else {
                        assert_conflict(&r);
                        conflicts += 1;
                    }
                }
                (reported, conflicts, reruns)
            }));
        }
    }
    let (mut on_s0, mut on_s1, mut conflicts, mut reruns) = (Vec::new(), Vec::new(), 0, 0);
    for task in tasks {
        let (reported, c, r) = task.await.expect("deposit task");
        conflicts += c;
        reruns += r;
        for (s0, s1) in reported {
            on_s0.push(s0);
            on_s1.extend(s1);
        }
    }
    on_s0.sort_unstable();
    on_s1.sort_unstable();
    let (n0, n1) = (on_s0.len() as i64, on_s1.len() as i64);
    println!(
        "lost_update: {n0} deposits committed ({n1} across both stores), {conflicts} gave up on \
         conflicts; {reruns} re-runs after a conflict"
    );
    assert!(n1 > 0 && n0 > n1, "both kinds of deposit must commit");
    assert!(
        reruns > 0,
        "no two deposits collided: the test saw no concurrency"
    );
    assert_eq!(
        on_s0,
        (1..=n0).collect::<Vec<_>>(),
        "committed deposits on s0 did not each see the one before"
    );
    assert_eq!(
        on_s1,
        (1..=n1).collect::<Vec<_>>(),
        "committed deposits on s1 did not each see the one before"
    );
    assert_eq!(
        env.get("s0", "p0:balance:counter").await,
        Some(n0.to_string())
    );
    assert_eq!(
        env.get("s1", "p1:balance:counter").await,
        Some(n1.to_string())
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// Dirty (aborted) read: writers that abort must never be seen. Each writer
/// deposits its own power of two to `x` on s0 and to `y` on s1, so a balance
/// read names exactly the writers it includes. Some writers abort by design
/// (a third step withdraws from an empty account: `insufficient_funds`, after
/// both writes), and with `attempts_max = 2` many more give up on conflicts,
/// some after their writes were staged and rolled back. Readers through
/// redstage (both keys in one read-only transaction) and plain `GET`s run
/// meanwhile; no read may contain the bit of a writer that did not commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dirty_read() {
    const ROUNDS: usize = 2;
    const WRITERS_PER_HOST: u32 = 3;
    /// Per writer and round, one after the other: 2 * 3 * 10 = 60 bits.
    const WRITES: u32 = 10;
    const READS_MAX: usize = 5_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = payments_env("[txn]\nattempts_max = 2\n");
    let hosts = hosts(&env);
    let (mut conflicts, mut doomed, mut reads_total, mut raw_total, mut partial) = (0, 0, 0, 0, 0);
    for round in 0..ROUNDS {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let done = Arc::new(AtomicBool::new(false));

        let readers: Vec<_> = hosts
            .iter()
            .map(|host| {
                let (host, done, x, y) = (host.clone(), done.clone(), x.clone(), y.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !done.load(Ordering::Relaxed) && seen.len() < READS_MAX {
                        let r =
                            run(&host, json!([balances("p0", &[&x]), balances("p1", &[&y])])).await;
                        if committed(&r) {
                            seen.push((balance(&r, 0, &x), balance(&r, 1, &y)));
                        } else {
                            assert_conflict(&r);
                        }
                    }
                    seen
                })
            })
            .collect();
        let raw_reader = {
            let mut s0 = raw_connection(&env, "s0").await;
            let mut s1 = raw_connection(&env, "s1").await;
            let (done, x, y) = (
                done.clone(),
                format!("p0:balance:{x}"),
                format!("p1:balance:{y}"),
            );
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(Ordering::Relaxed) && seen.len() < READS_MAX {
                    seen.extend(raw_get(&mut s0, &x).await);
                    seen.extend(raw_get(&mut s1, &y).await);
                }
                seen
            })
        };

        let mut writers = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            for w in 0..WRITERS_PER_HOST {
                let (host, x, y) = (host.clone(), x.clone(), y.clone());
                let first_bit = (h as u32 * WRITERS_PER_HOST + w) * WRITES;
                writers.push(tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    for bit in first_bit..first_bit + WRITES {
                        let amount = 1i64 << bit;
                        let doomed = bit % 4 == 3;
                        let mut steps = vec![deposit("p0", &x, amount), deposit("p1", &y, amount)];
                        if doomed {
                            steps.push(withdraw("p1", "empty", 1));
                        }
                        outcomes.push((amount, doomed, run(&host, Value::Array(steps)).await));
                    }
                    outcomes
                }));
            }
        }
        // Bit masks of the writers that committed and that aborted.
        let (mut good, mut bad) = (0i64, 0i64);
        for writer in writers {
            for (amount, is_doomed, r) in writer.await.expect("writer task") {
                if committed(&r) {
                    assert!(
                        !is_doomed,
                        "a withdrawal from an empty account committed: {r:?}"
                    );
                    good |= amount;
                } else if is_doomed && abort_code(&r) == "insufficient_funds" {
                    let abort = r.abort.as_ref().expect("abort");
                    assert_eq!(
                        (abort.step, abort.participant.as_deref()),
                        (Some(2), Some("p1"))
                    );
                    doomed += 1;
                    bad |= amount;
                } else {
                    assert_conflict(&r);
                    conflicts += 1;
                    bad |= amount;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        let mut reads = Vec::new();
        for reader in readers {
            reads.extend(reader.await.expect("reader task"));
        }
        let raw = raw_reader.await.expect("raw reader task");

        for &(vx, vy) in &reads {
            assert_eq!(
                vx & bad,
                0,
                "round {round}: a read saw x = {vx:#b}, which includes aborted writers {:#b}",
                vx & bad
            );
            assert_eq!(
                vx & !good,
                0,
                "round {round}: x = {vx:#b} includes unknown bits"
            );
            assert_eq!(vx, vy, "round {round}: a read saw one half of a writer");
        }
        for &v in &raw {
            assert_eq!(
                v & bad,
                0,
                "round {round}: GET saw {v:#b}, which includes aborted writers {:#b}",
                v & bad
            );
        }
        assert!(good != 0, "round {round}: no writer committed");
        assert_eq!(
            env.get("s0", &format!("p0:balance:{x}")).await,
            Some(good.to_string())
        );
        assert_eq!(
            env.get("s1", &format!("p1:balance:{y}")).await,
            Some(good.to_string())
        );
        reads_total += reads.len();
        raw_total += raw.len();
        partial += reads.iter().filter(|(v, _)| *v != 0 && *v != good).count();
    }
    assert_eq!(env.get("s1", "p1:balance:empty").await, None);
    println!(
        "dirty_read: {} writers, {doomed} aborted by their last step, {conflicts} gave up on \
         conflicts; {reads_total} reads ({partial} mid-way), {raw_total} plain GETs",
        ROUNDS as u32 * 2 * WRITERS_PER_HOST * WRITES
    );
    assert!(
        conflicts > 0,
        "no writer gave up after a conflict: the test did not exercise rollbacks"
    );
    assert!(
        partial > 0,
        "no read ran while the writers did: the test saw nothing"
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// Fractured read: transfers between `a` on s0 and `b` on s1, each a
/// withdrawal on one store and a deposit on the other in one transaction,
/// while read-only transactions read both balances. A read that saw one half
/// of a transfer would see a different sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fractured_read() {
    const WRITERS_PER_HOST: u64 = 2;
    const READERS_PER_HOST: usize = 2;
    const TRANSFERS: usize = 25;
    const READS_MAX: usize = 5_000;
    const TOTAL: i64 = 2_000;
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = payments_env("");
    let r = env
        .run(json!([
            deposit("p0", "a", TOTAL / 2),
            deposit("p1", "b", TOTAL / 2)
        ]))
        .await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let seed = fastrand::u64(..);
    println!("fractured_read: seed {seed}");
    let hosts = hosts(&env);
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..2 * READERS_PER_HOST)
        .map(|r| {
            let (host, done) = (hosts[r % 2].clone(), done.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut conflicts = 0;
                while !done.load(Ordering::Relaxed) && seen.len() < READS_MAX {
                    let r = run(
                        &host,
                        json!([balances("p0", &["a"]), balances("p1", &["b"])]),
                    )
                    .await;
                    if committed(&r) {
                        seen.push((balance(&r, 0, "a"), balance(&r, 1, "b")));
                    } else {
                        assert_conflict(&r);
                        conflicts += 1;
                    }
                }
                (seen, conflicts)
            })
        })
        .collect();

    let mut writers = Vec::new();
    for (h, host) in hosts.iter().enumerate() {
        for w in 0..WRITERS_PER_HOST {
            let host = host.clone();
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(h as u64 * 100 + w));
            writers.push(tokio::spawn(async move {
                let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
                for _ in 0..TRANSFERS {
                    let amount = rng.i64(1..=300);
                    let a_to_b = rng.bool();
                    let steps = if a_to_b {
                        json!([withdraw("p0", "a", amount), deposit("p1", "b", amount)])
                    } else {
                        json!([withdraw("p1", "b", amount), deposit("p0", "a", amount)])
                    };
                    let r = run(&host, steps).await;
                    let outcome = if committed(&r) {
                        // The transfer read both balances too, atomically.
                        let (a, b) = if a_to_b {
                            (balance(&r, 0, "a"), balance(&r, 1, "b"))
                        } else {
                            (balance(&r, 1, "a"), balance(&r, 0, "b"))
                        };
                        assert_eq!(a + b, TOTAL, "a transfer saw a fractured state: {r:?}");
                        assert!(a >= 0 && b >= 0, "{r:?}");
                        "committed"
                    } else {
                        let code = abort_code(&r);
                        assert!(["insufficient_funds", "conflict"].contains(&code), "{r:?}");
                        code
                    };
                    *outcomes.entry(outcome.to_owned()).or_default() += 1;
                }
                outcomes
            }));
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for writer in writers {
        for (k, n) in writer.await.expect("writer task") {
            *outcomes.entry(k).or_default() += n;
        }
    }
    done.store(true, Ordering::Relaxed);
    let (mut reads, mut read_conflicts) = (Vec::new(), 0);
    for reader in readers {
        let (seen, c) = reader.await.expect("reader task");
        reads.extend(seen);
        read_conflicts += c;
    }
    for &(a, b) in &reads {
        assert_eq!(
            a + b,
            TOTAL,
            "a read saw a = {a}, b = {b}: a fractured transfer"
        );
        assert!(a >= 0 && b >= 0, "a read saw a = {a}, b = {b}");
    }
    let distinct: std::collections::BTreeSet<_> = reads.iter().collect();
    println!(
        "fractured_read: transfers {outcomes:?}; {} reads ({} distinct states), {read_conflicts} reads gave up on conflicts",
        reads.len(),
        distinct.len()
    );
    assert!(
        outcomes.get("committed").is_some_and(|&n| n > 0),
        "no transfer committed"
    );
    assert!(!reads.is_empty(), "no read committed");
    let a: i64 = env
        .get("s0", "p0:balance:a")
        .await
        .expect("a")
        .parse()
        .expect("number");
    let b: i64 = env
        .get("s1", "p1:balance:b")
        .await
        .expect("b")
        .parse()
        .expect("number");
    assert_eq!(a + b, TOTAL);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// Write skew: alice and bob are on call; each asks to leave, which is
/// allowed while the *other* is on call. Each leave reads both flags and
/// writes only its own, so only validation of the read keys can stop both
/// from leaving. Two hosts, started together by a barrier, round after
/// round; every other round each leave also makes a deposit on s1, which
/// takes the two-phase path instead of the one-phase one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_skew() {
    const ROUNDS: usize = 40;
    const TEAM: [&str; 2] = ["alice", "bob"];
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::start(
        &["s0", "s1"],
        &[
            ParticipantSpec::example("oncall", "oncall", "s0", "ward:"),
            ParticipantSpec::example("p1", "payments", "s1", "p1:"),
        ],
    );
    let [h0, h1] = hosts(&env);
    let (mut one_left, mut raced, mut two_phase_leaves) = (0, 0, 0);
    for round in 0..ROUNDS {
        let two_phase = round % 2 == 1;
        let r = run(
            &h0,
            json!([
                step("oncall", json!({"op": "join", "doctor": "alice"})),
                step("oncall", json!({"op": "join", "doctor": "bob"})),
            ]),
        )
        .await;
        assert_eq!(r.status, Status::Committed, "reset: {r:?}");

        let barrier = Arc::new(Barrier::new(2));
        let leave = |host: Arc<Coordinator>, doctor: &'static str| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut steps = vec![step(
                    "oncall",
                    json!({"op": "leave", "doctor": doctor, "team": TEAM}),
                )];
                if two_phase {
                    steps.push(deposit("p1", &format!("leaves_{doctor}"), 1));
                }
                barrier.wait().await;
                run(&host, Value::Array(steps)).await
            })
        };
        let alice = leave(h0.clone(), "alice");
        let bob = leave(h1.clone(), "bob");
        let results = [
            alice.await.expect("alice's task"),
            bob.await.expect("bob's task"),
        ];
        let left: Vec<bool> = results.iter().map(committed).collect();
        assert!(
            !(left[0] && left[1]),
            "round {round}: write skew, both doctors left: {results:?}"
        );
        for r in results.iter().filter(|r| !committed(r)) {
            if abort_code(r) == "last_on_call" {
                let abort = r.abort.as_ref().expect("abort");
                assert_eq!(
                    (abort.step, abort.participant.as_deref()),
                    (Some(0), Some("oncall"))
                );
                assert!(left.contains(&true), "round {round}: {results:?}");
                // It ran more than once: it overlapped the other's leave,
                // lost, and re-ran on the new state.
                raced += usize::from(r.attempts > 1);
            } else {
                assert_conflict(r);
            }
        }
        let status = run(
            &h1,
            json!([step("oncall", json!({"op": "status", "team": TEAM}))]),
        )
        .await;
        assert_eq!(status.status, Status::Committed, "{status:?}");
        let on_call = &status.steps[0].output;
        for (doctor, left) in TEAM.iter().zip(&left) {
            assert_eq!(
                on_call[doctor],
                json!(!left),
                "round {round}: {doctor}'s flag disagrees with its outcome: {results:?}, status {on_call}"
            );
        }
        if left.contains(&true) {
            one_left += 1;
            two_phase_leaves += usize::from(two_phase);
        }
    }
    println!(
        "write_skew: {ROUNDS} rounds, one doctor left in {one_left} ({two_phase_leaves} two-phase), \
         the loser overlapped and re-ran in {raced}"
    );
    assert!(one_left > ROUNDS / 2, "too few rounds let anyone leave");
    assert!(
        raced > 0,
        "the two leaves never overlapped: the test saw no race"
    );
    // Atomicity on the two-phase rounds: a deposit per committed leave.
    let mut counted = 0i64;
    for d in ["alice", "bob"] {
        counted += env
            .get("s1", &format!("p1:balance:leaves_{d}"))
            .await
            .map_or(0, |v| v.parse().expect("number"));
    }
    assert_eq!(counted, two_phase_leaves as i64);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}
