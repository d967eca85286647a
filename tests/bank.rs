//! The Jepsen-style bank test, through the HTTP API: money moves between
//! accounts spread over three Redis instances while readers add it all up.
//!
//! Eight accounts, assigned round-robin to three payments participants
//! (`ledger0`..`ledger2`), each on its own store. Clients on two hosts send
//! random transfers: between two accounts of one ledger as one `transfer`
//! step (an escrow transfer, or one that reads and reports the balances, at
//! random: both kinds on the same accounts), between ledgers as a `withdraw`
//! step and a `deposit` step (in either order) in one transaction. Readers read every balance in one read-only
//! transaction. The money must neither appear nor vanish, no balance may go
//! negative, and the final balances must be exactly the initial ones with
//! every acknowledged transfer applied, and nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redstage_tests::{ParticipantSpec, Persistence, TestEnv, http, step};
use serde_json::{Value, json};

const ACCOUNTS: usize = 8;
const LEDGERS: usize = 3;
const INITIAL: i64 = 100;
const TOTAL: i64 = INITIAL * ACCOUNTS as i64;
const CLIENTS: usize = 8;
/// Bounds on the clients: whichever comes first.
const DURATION: Duration = Duration::from_secs(8);
const REQUESTS_PER_CLIENT: usize = 400;
const READERS: usize = 4;
const READS_MAX: usize = 5_000;

fn account(i: usize) -> String {
    format!("acc{i}")
}

fn ledger(i: usize) -> String {
    format!("ledger{}", i % LEDGERS)
}

/// The accounts kept by ledger `l`.
fn accounts_of(l: usize) -> Vec<String> {
    (l..ACCOUNTS).step_by(LEDGERS).map(account).collect()
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    from: usize,
    to: usize,
    amount: i64,
}

impl Transfer {
    /// The steps, and the index of the step that pays (which says
    /// `insufficient_funds`). `either` picks the order of a withdrawal and a
    /// deposit, or whether a transfer reads the balances.
    fn steps(&self, either: bool) -> (Value, usize) {
        let (from, to, amount) = (account(self.from), account(self.to), self.amount);
        if ledger(self.from) == ledger(self.to) {
            let input =
                json!({"op": "transfer", "from": from, "to": to, "amount": amount, "read": either});
            return (json!([step(&ledger(self.from), input)]), 0);
        }
        let deposit_first = either;
        let withdraw = step(
            &ledger(self.from),
            json!({"op": "withdraw", "account": from, "amount": amount}),
        );
        let deposit = step(
            &ledger(self.to),
            json!({"op": "deposit", "account": to, "amount": amount}),
        );
        if deposit_first {
            (json!([deposit, withdraw]), 1)
        } else {
            (json!([withdraw, deposit]), 0)
        }
    }
}

/// Every balance, in one read-only transaction.
fn read_all() -> Value {
    let steps: Vec<Value> = (0..LEDGERS)
        .map(|l| {
            step(
                &ledger(l),
                json!({"op": "balances", "accounts": accounts_of(l)}),
            )
        })
        .collect();
    json!({ "steps": steps })
}

/// The balances in the step outputs of a committed reply, by account index.
/// Accounts the reply does not mention are `None`; so are all of those of an
/// escrow transfer, which reports what it moved, not the balances.
fn balances_in(reply: &Value) -> [Option<i64>; ACCOUNTS] {
    let mut out = [None; ACCOUNTS];
    for s in reply["steps"].as_array().expect("steps") {
        if s["output"].get("amount").is_some() {
            continue;
        }
        for (name, balance) in s["output"].as_object().expect("an object of balances") {
            let i: usize = name
                .strip_prefix("acc")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected account {name} in {reply}"));
            out[i] = Some(balance.as_i64().expect("an integer balance"));
        }
    }
    out
}

/// Submits a transaction; any answer but a decision fails the test.
async fn submit(addr: SocketAddr, body: &Value) -> Value {
    let (status, reply) = http::post(addr, "/v1/transactions", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{body} -> {reply}");
    reply
}

#[derive(Debug, Default)]
struct ClientLog {
    committed: Vec<(Transfer, String)>,
    aborted: BTreeMap<String, usize>,
    aborted_ids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank() {
    let env = TestEnv::start_with(
        &["s0", "s1", "s2"],
        &(0..LEDGERS)
            .map(|l| {
                ParticipantSpec::example(
                    &format!("ledger{l}"),
                    "payments",
                    &format!("s{l}"),
                    &format!("ledger{l}:"),
                )
            })
            .collect::<Vec<_>>(),
        "",
        Persistence::None,
    );
    let servers = [
        http::serve(env.coordinator.clone()).await,
        http::serve(env.second_host()).await,
    ];
    let seed = std::env::var("BANK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("bank: seed {seed} (BANK_SEED={seed} picks the same transfers again)");

    let seeding: Vec<Value> = (0..ACCOUNTS)
        .map(|i| {
            step(
                &ledger(i),
                json!({"op": "deposit", "account": account(i), "amount": INITIAL}),
            )
        })
        .collect();
    let reply = submit(servers[0], &json!({ "steps": seeding })).await;
    assert_eq!(reply["status"], "committed", "seeding: {reply}");

    let started = Instant::now();
    let deadline = started + DURATION;
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (addr, done) = (servers[r % servers.len()], done.clone());
            tokio::spawn(async move {
                let (mut reads, mut conflicts) = (0, 0);
                while !done.load(Ordering::Relaxed) && reads + conflicts < READS_MAX {
                    let reply = submit(addr, &read_all()).await;
                    if reply["status"] != "committed" {
                        assert_eq!(reply["abort"]["code"], "conflict", "{reply}");
                        conflicts += 1;
                        continue;
                    }
                    let balances = balances_in(&reply).map(|b| b.expect("every account"));
                    assert_eq!(
                        balances.iter().sum::<i64>(),
                        TOTAL,
                        "a read saw {balances:?}: money appeared or vanished"
                    );
                    assert!(
                        balances.iter().all(|&b| b >= 0),
                        "a read saw a negative balance: {balances:?}"
                    );
                    reads += 1;
                }
                (reads, conflicts)
            })
        })
        .collect();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = servers[c % servers.len()];
            let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(c as u64));
            tokio::spawn(async move {
                let mut log = ClientLog::default();
                for _ in 0..REQUESTS_PER_CLIENT {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let from = rng.usize(0..ACCOUNTS);
                    let to = (from + rng.usize(1..ACCOUNTS)) % ACCOUNTS;
                    let transfer = Transfer {
                        from,
                        to,
                        amount: rng.i64(1..=60),
                    };
                    let (steps, paying) = transfer.steps(rng.bool());
                    let reply = submit(addr, &json!({ "steps": steps })).await;
                    let id = reply["id"].as_str().expect("an id").to_owned();
                    match reply["status"].as_str() {
                        Some("committed") => {
                            let seen = balances_in(&reply);
                            assert!(
                                seen.iter().flatten().all(|&b| b >= 0),
                                "{transfer:?} left a negative balance: {reply}"
                            );
                            log.committed.push((transfer, id));
                        }
                        Some("aborted") => {
                            let code = reply["abort"]["code"].as_str().expect("a code");
                            match code {
                                "insufficient_funds" => {
                                    assert_eq!(reply["abort"]["step"], paying, "{reply}");
                                    assert_eq!(
                                        reply["abort"]["participant"],
                                        ledger(from),
                                        "{reply}"
                                    );
                                }
                                "conflict" => {}
                                _ => panic!("{transfer:?} aborted unexpectedly: {reply}"),
                            }
                            *log.aborted.entry(code.to_owned()).or_default() += 1;
                            log.aborted_ids.push(id);
                        }
                        _ => panic!("not a decision: {reply}"),
                    }
                }
                log
            })
        })
        .collect();

    let mut committed = Vec::new();
    let mut aborted: BTreeMap<String, usize> = BTreeMap::new();
    let mut aborted_ids = Vec::new();
    for client in clients {
        let log = client.await.expect("client task");
        committed.extend(log.committed);
        for (code, n) in log.aborted {
            *aborted.entry(code).or_default() += n;
        }
        aborted_ids.extend(log.aborted_ids);
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (mut reads, mut read_conflicts) = (0, 0);
    for reader in readers {
        let (r, c) = reader.await.expect("reader task");
        reads += r;
        read_conflicts += c;
    }

    // Every acknowledged transfer, and nothing else.
    let mut expected = [INITIAL; ACCOUNTS];
    for (t, _) in &committed {
        expected[t.from] -= t.amount;
        expected[t.to] += t.amount;
    }
    let reply = submit(servers[1], &read_all()).await;
    assert_eq!(reply["status"], "committed", "{reply}");
    let last = balances_in(&reply).map(|b| b.expect("every account"));
    assert_eq!(
        last,
        expected,
        "the final balances are not the initial ones with the {} committed transfers applied",
        committed.len()
    );
    for (i, balance) in expected.iter().enumerate() {
        let store = format!("s{}", i % LEDGERS);
        let key = format!("{}:balance:{}", ledger(i), account(i));
        assert_eq!(
            env.get(&store, &key).await,
            Some(balance.to_string()),
            "{key}"
        );
    }
    // Each host knows the outcomes the other decided.
    let sample = committed
        .iter()
        .map(|(_, id)| (id, "committed"))
        .step_by(committed.len().div_ceil(10).max(1))
        .chain(
            aborted_ids
                .iter()
                .map(|id| (id, "aborted"))
                .step_by(aborted_ids.len().div_ceil(10).max(1)),
        );
    for (id, status) in sample {
        for addr in servers {
            let (code, found) = http::get(addr, &format!("/v1/transactions/{id}")).await;
            assert_eq!(
                (code, found["status"].as_str()),
                (200, Some(status)),
                "{found}"
            );
        }
    }
    assert_eq!(env.leftovers().await, Vec::<String>::new());

    println!(
        "bank: {} transfers committed, aborted {aborted:?}; {reads} reads ({read_conflicts} gave up \
         on conflicts) in {:.1} s; final {last:?}",
        committed.len(),
        elapsed.as_secs_f64()
    );
    assert!(
        committed.len() > CLIENTS,
        "too few transfers committed to mean anything"
    );
    assert!(reads > 0, "no read committed while the transfers ran");
}
