//! What operators see and steer, over a real `redstage serve` and real
//! Redis: transactions in doubt and decided listed a page at a time, the
//! locked keys, a stuck transaction resolved by the protocol's own rules
//! (rolled forward if it committed, fenced and rolled back if not), the
//! transaction behind an idempotency key, the scopes of each, and the
//! commands that talk to a server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redstage_tests::{HostProcess, Launch, Persistence, TestEnv, http, redstage_binary, step};
use serde_json::{Value, json};

const READ_TOKEN: &str = "read-0123456789abcdef";
const SHOP_TOKEN: &str = "shop-0123456789abcdef";
const OPS_TOKEN: &str = "ops-0123456789abcdef";

/// A token per scope.
const TOKENS: &str = r#"
[[auth.tokens]]
name = "viewer"
token = "read-0123456789abcdef"
scopes = ["read"]
[[auth.tokens]]
name = "shop"
token = "shop-0123456789abcdef"
scopes = ["submit"]
[[auth.tokens]]
name = "ops"
token = "ops-0123456789abcdef"
scopes = ["deploy"]
"#;

/// An order that reads (so locks exclusively) the stock of `sku` and the
/// balances of `from` and `to`.
fn locking_order(sku: &str, from: &str, to: &str) -> Value {
    json!({"steps": [
        step("inventory", json!({"op": "deduct", "sku": sku, "qty": 1, "read": true})),
        step("payments", json!({"op": "transfer", "from": from, "to": to, "amount": 3, "read": true})),
    ]})
}

/// `GET path` with `token`: status and body.
async fn get(addr: SocketAddr, token: Option<&str>, path: &str) -> (u16, Value) {
    let (status, _, body) = http::request_as(addr, token, "GET", path, b"").await;
    (status, body)
}

async fn post(addr: SocketAddr, token: Option<&str>, path: &str) -> (u16, Value) {
    let (status, _, body) = http::request_as(addr, token, "POST", path, b"").await;
    (status, body)
}

/// A plain read of a key, whatever holds it.
fn raw(env: &TestEnv, store: &str, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut env.redis(store))
        .expect("GET")
}

/// Every row of a listing at `path` (which has its query), `limit` at a
/// time, following the cursors; checks that no page exceeds the limit.
async fn every_row(
    addr: SocketAddr,
    token: Option<&str>,
    path: &str,
    what: &str,
    limit: usize,
) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut page_path = format!("{path}{sep}limit={limit}");
        if let Some(c) = &cursor {
            page_path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(addr, token, &page_path).await;
        assert_eq!(status, 200, "{page_path}: {page}");
        let found = page[what].as_array().expect("rows").clone();
        assert!(found.len() <= limit, "{page_path}: {page}");
        rows.extend(found);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return rows,
        }
    }
    panic!("{path}: the listing never ends");
}

fn ids(rows: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits until `n` transactions hold locks, and returns them.
async fn holders(env: &TestEnv, n: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let holders = env.lock_holders();
        if holders.len() >= n {
            return holders;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {n} transactions hold locks",
            holders.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stuck_transaction_is_listed_with_its_locks_then_fenced_and_rolled_back_by_resolve() {
    let env = TestEnv::orders_with(TOKENS, Persistence::None);
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let mut stuck = env.spawn_host(Some("after-prepare"));
    let (addr, body) = (stuck.addr, locking_order("A1", "alice", "shop").to_string());
    let request = tokio::spawn(async move {
        let shop = Some(SHOP_TOKEN);
        http::request_as(addr, shop, "POST", "/v1/transactions", body.as_bytes()).await
    });
    stuck.wait_for_point("after-prepare").await;
    let [txn] = &holders(&env, 1).await[..] else {
        panic!("one transaction holds locks");
    };
    let host = env.launch_host(&Launch::default()).expect("serves");

    let (status, page) = get(
        host.addr,
        Some(READ_TOKEN),
        "/v1/transactions?state=in_doubt",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let rows = page["transactions"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{page}");
    let row = &rows[0];
    assert_eq!(row["id"], json!(txn));
    assert_eq!(row["state"], "in_doubt");
    assert_eq!(row["stores"], json!(["ledger", "orders"]));
    assert_eq!(row["participants"], json!(["inventory", "payments"]));
    assert_eq!(row["primary"], "ledger");
    let lease_left = row["lease_left_ms"].as_i64().expect("a lease");
    assert!(lease_left > 0 && lease_left <= 5000, "{row}");
    assert!(row["age_ms"].as_u64().expect("an age") < 60_000, "{row}");
    assert!(page.get("next_cursor").is_none(), "{page}");

    let (status, locks) = get(host.addr, Some(READ_TOKEN), "/v1/locks").await;
    assert_eq!(status, 200, "{locks}");
    let mut held: Vec<(String, String, String, String)> = locks["locks"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|l| {
            assert_eq!(l["txn"], json!(txn), "{l}");
            assert_eq!(l["mode"], "exclusive", "{l}");
            assert_eq!(l["primary"], "ledger", "{l}");
            assert!(l["lease_left_ms"].as_i64().expect("a lease") > 0, "{l}");
            let s = |k: &str| l[k].as_str().expect(k).to_owned();
            (s("store"), s("key"), s("participant"), s("txn"))
        })
        .collect();
    held.sort();
    let expected = |store: &str, key: &str, participant: &str| {
        (
            store.to_owned(),
            key.to_owned(),
            participant.to_owned(),
            txn.clone(),
        )
    };
    assert_eq!(
        held,
        [
            expected("ledger", "payments:balance:alice", "payments"),
            expected("ledger", "payments:balance:shop", "payments"),
            expected("orders", "inventory:stock:A1", "inventory"),
        ]
    );
    let (_, ledger) = get(host.addr, Some(READ_TOKEN), "/v1/locks?store=ledger").await;
    assert_eq!(
        ledger["locks"].as_array().map(Vec::len),
        Some(2),
        "{ledger}"
    );

    // Seeing is not acting.
    let resolve = format!("/v1/transactions/{txn}/resolve");
    let (status, refused) = post(host.addr, Some(READ_TOKEN), &resolve).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (403, &json!("forbidden")),
        "{refused}"
    );

    let (status, done) = post(host.addr, Some(SHOP_TOKEN), &resolve).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["id"], json!(txn));
    assert_eq!(done["decision"], "aborted");
    assert_eq!(done["made"], true, "it had no decision: resolve fenced it");
    assert_eq!(
        done["stores"],
        json!([{"store": "ledger", "action": "rolled_back"}, {"store": "orders", "action": "rolled_back"}])
    );
    assert!(
        done["by"]
            .as_str()
            .is_some_and(|b| b.contains("token `shop`")),
        "{done}"
    );

    // Looked up, it says who rolled it back and why; nothing changed.
    let (status, found) = get(
        host.addr,
        Some(READ_TOKEN),
        &format!("/v1/transactions/{txn}"),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["status"], "aborted");
    assert_eq!(found["abort"]["code"], "recovered", "{found}");
    let message = found["abort"]["message"].as_str().expect("a message");
    assert!(
        message.contains("POST /v1/transactions/{id}/resolve (token `shop`")
            && message.contains("no decision written")
            && message.contains("was to end at"),
        "{message}"
    );
    assert!(env.unfinished().is_empty(), "{:?}", env.unfinished());
    assert_eq!(
        raw(&env, "orders", "inventory:stock:A1").as_deref(),
        Some("10")
    );
    assert_eq!(
        raw(&env, "ledger", "payments:balance:alice").as_deref(),
        Some("100")
    );

    let (_, in_doubt) = get(
        host.addr,
        Some(READ_TOKEN),
        "/v1/transactions?state=in_doubt",
    )
    .await;
    assert_eq!(in_doubt["transactions"], json!([]), "{in_doubt}");
    let aborted = every_row(
        host.addr,
        Some(SHOP_TOKEN),
        "/v1/transactions?state=aborted",
        "transactions",
        10,
    )
    .await;
    let row = aborted
        .iter()
        .find(|r| r["id"] == json!(txn))
        .expect("listed as aborted");
    assert_eq!(row["abort"]["code"], "recovered", "{row}");

    // Again: the decision stands, found this time, with nothing left to do.
    let (status, again) = post(host.addr, Some(OPS_TOKEN), &resolve).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["decision"], &again["made"], &again["stores"]),
        (&json!("aborted"), &json!(false), &json!([]))
    );

    stuck.kill();
    assert!(request.await.is_err(), "the killed host answered");
}

#[tokio::test]
async fn a_committed_transaction_stuck_before_its_other_store_applied_is_rolled_forward_by_resolve()
{
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let (mut dead, request) = env
        .held_at("after-decide", &locking_order("A1", "alice", "shop"))
        .await;
    dead.kill();
    assert!(request.await.expect("task").is_err());
    let [txn] = &holders(&env, 1).await[..] else {
        panic!("one transaction holds locks");
    };
    let api = http::serve(env.coordinator.clone()).await;

    let committed = every_row(
        api,
        None,
        "/v1/transactions?state=committed",
        "transactions",
        100,
    )
    .await;
    let row = committed
        .iter()
        .find(|r| r["id"] == json!(txn))
        .expect("listed");
    assert_eq!(row["applying"], true, "{row}");
    assert_eq!(row["stores"], json!(["ledger", "orders"]), "{row}");
    assert_eq!(
        row["participants"],
        json!(["inventory"]),
        "the record names the keys left to apply: {row}"
    );
    let (_, in_doubt) = get(api, None, "/v1/transactions?state=in_doubt").await;
    assert_eq!(
        in_doubt["transactions"],
        json!([]),
        "decided, so not in doubt: {in_doubt}"
    );

    let (status, done) = post(api, None, &format!("/v1/transactions/{txn}/resolve")).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (&done["decision"], &done["made"]),
        (&json!("committed"), &json!(false)),
        "{done}"
    );
    assert_eq!(
        done["stores"],
        json!([{"store": "ledger", "action": "finalized"}, {"store": "orders", "action": "rolled_forward"}])
    );
    assert!(env.unfinished().is_empty(), "{:?}", env.unfinished());
    assert_eq!(
        raw(&env, "orders", "inventory:stock:A1").as_deref(),
        Some("9")
    );
    assert_eq!(
        raw(&env, "ledger", "payments:balance:shop").as_deref(),
        Some("3")
    );
    let committed = every_row(
        api,
        None,
        "/v1/transactions?state=committed",
        "transactions",
        100,
    )
    .await;
    let row = committed
        .iter()
        .find(|r| r["id"] == json!(txn))
        .expect("listed");
    assert!(row.get("applying").is_none(), "finished: {row}");
}

#[tokio::test]
async fn listings_page_through_every_transaction_and_lock_once_whatever_the_limit() {
    const STUCK: usize = 12;
    const DONE: usize = 25;
    let env = TestEnv::orders();
    for i in 0..STUCK {
        env.stock_and_fund(&format!("S{i}"), 1, &format!("u{i}"), 3)
            .await;
    }
    let host = env.spawn_host(Some("after-prepare"));
    let mut requests = Vec::new();
    for i in 0..STUCK {
        let body = locking_order(&format!("S{i}"), &format!("u{i}"), &format!("v{i}")).to_string();
        let addr = host.addr;
        requests.push(tokio::spawn(async move {
            http::try_request(addr, "POST", "/v1/transactions", body.as_bytes()).await
        }));
    }
    let stuck = holders(&env, STUCK).await;
    let mut done = Vec::new();
    for i in 0..DONE {
        let restock = step(
            "inventory",
            json!({"op": "restock", "sku": format!("R{i}"), "qty": 1}),
        );
        done.push(env.run(json!([restock])).await.id);
    }
    done.sort();
    let api = http::serve(env.coordinator.clone()).await;

    for limit in [1, 5, 1000] {
        let rows = every_row(
            api,
            None,
            "/v1/transactions?state=in_doubt",
            "transactions",
            limit,
        )
        .await;
        assert_eq!(ids(&rows), stuck, "limit {limit}");
        let rows = every_row(
            api,
            None,
            "/v1/transactions?state=committed",
            "transactions",
            limit,
        )
        .await;
        let committed = ids(&rows);
        assert!(
            done.iter().all(|d| committed.binary_search(d).is_ok()),
            "limit {limit}"
        );
        // The stocking and funding, and the restocks.
        assert_eq!(committed.len(), STUCK + DONE, "limit {limit}");
        assert_eq!(
            committed.len(),
            BTreeSet::from_iter(&committed).len(),
            "each once"
        );
        let all = ids(&every_row(api, None, "/v1/transactions", "transactions", limit).await);
        assert_eq!(all.len(), STUCK + committed.len(), "limit {limit}");
        let locks = every_row(api, None, "/v1/locks", "locks", limit).await;
        let keys: BTreeSet<(String, String)> = locks
            .iter()
            .map(|l| {
                (
                    l["store"].as_str().unwrap().into(),
                    l["key"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            (locks.len(), keys.len()),
            (3 * STUCK, 3 * STUCK),
            "limit {limit}"
        );
    }
    drop(host);
    for request in requests {
        assert!(request.await.expect("task").is_err());
    }
}

#[tokio::test]
async fn listing_queries_that_cannot_work_are_refused_saying_what_works() {
    let env = TestEnv::orders();
    let api = http::serve(env.coordinator.clone()).await;
    // A cursor of the locks listing (`{"q":"l:","s":0,"c":0}`).
    let lock_cursor = format!(
        "/v1/transactions?cursor={}",
        "eyJxIjoibDoiLCJzIjowLCJjIjowfQ"
    );
    for (path, code) in [
        ("/v1/transactions?state=stuck", "bad_query"),
        ("/v1/transactions?limit=0", "bad_query"),
        ("/v1/transactions?limit=1001", "bad_query"),
        ("/v1/transactions?limit=many", "bad_query"),
        ("/v1/transactions?color=red", "bad_query"),
        ("/v1/transactions?cursor=not-a-cursor", "bad_cursor"),
        (lock_cursor.as_str(), "bad_cursor"),
        ("/v1/locks?store=nowhere", "unknown_store"),
        ("/v1/locks?limit=0", "bad_query"),
    ] {
        let (status, answer) = get(api, None, path).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{path}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "{answer}"
        );
    }
    for id in ["0190a0a0-0000-7000-8000-000000000000", "not-an-id"] {
        let (status, answer) = post(api, None, &format!("/v1/transactions/{id}/resolve")).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (404, &json!("unknown_transaction")),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_lost_answer_is_found_again_by_its_idempotency_key() {
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 1, "alice", 100).await;
    let api = http::serve(env.coordinator.clone()).await;
    let order = |key: &str| json!({"steps": [step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1}))], "idempotency_key": key});
    let (_, first) = http::post(
        api,
        "/v1/transactions",
        order("order-1").to_string().as_bytes(),
    )
    .await;
    assert_eq!(first["status"], "committed", "{first}");
    let (_, second) = http::post(
        api,
        "/v1/transactions",
        order("order-2").to_string().as_bytes(),
    )
    .await;
    assert_eq!(second["abort"]["code"], "insufficient_stock", "{second}");

    let (status, found) = get(api, None, "/v1/transactions?idempotency_key=order-1").await;
    assert_eq!(status, 200, "{found}");
    let row = &found["transactions"][0];
    assert_eq!(
        (&row["id"], &row["state"], &row["idempotency_key"]),
        (&first["id"], &json!("committed"), &json!("order-1"))
    );
    let (_, found) = get(api, None, "/v1/transactions?idempotency_key=order-2").await;
    let row = &found["transactions"][0];
    assert_eq!(
        (&row["id"], &row["state"]),
        (&second["id"], &json!("aborted"))
    );
    assert_eq!(row["abort"]["code"], "insufficient_stock");
    let (status, none) = get(api, None, "/v1/transactions?idempotency_key=never-sent").await;
    assert_eq!((status, &none), (200, &json!({"transactions": []})));
    // The state filters it too.
    let (_, none) = get(
        api,
        None,
        "/v1/transactions?idempotency_key=order-1&state=aborted",
    )
    .await;
    assert_eq!(none, json!({"transactions": []}));
    let (_, found) = get(
        api,
        None,
        "/v1/transactions?idempotency_key=order-1&state=committed",
    )
    .await;
    assert_eq!(found["transactions"][0]["id"], first["id"]);
}

/// Runs `redstage` with `args` against the server at `addr`: exit code,
/// stdout as JSON, stderr.
fn redstage(
    addr: SocketAddr,
    envs: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&str>,
) -> (Option<i32>, Value, String) {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(redstage_binary());
    cmd.env("REDSTAGE_SERVER", format!("http://{addr}"))
        .env_remove("REDSTAGE_TOKEN")
        .env_remove("REDSTAGE_CONFIG")
        .envs(envs.iter().copied())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run redstage");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("redstage ends");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::String(stdout));
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_commands_talk_to_a_server_with_its_tokens() {
    let env = TestEnv::orders_with(TOKENS, Persistence::None);
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let host = HostProcess::start(&env.config_path, None);
    let addr = host.addr;
    let shop = [("REDSTAGE_TOKEN", SHOP_TOKEN)];
    let viewer = [("REDSTAGE_TOKEN", READ_TOKEN)];
    let order =
        json!({"steps": [step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1}))]})
            .to_string();

    // submit: from an argument, from stdin, from a file; 2 when aborted.
    let (code, answer, err) = redstage(addr, &shop, &["submit", &order], None);
    assert_eq!(
        (code, &answer["status"]),
        (Some(0), &json!("committed")),
        "{answer} {err}"
    );
    let id = answer["id"].as_str().expect("an id").to_owned();
    let (code, answer, _) = redstage(addr, &shop, &["submit"], Some(&order));
    assert_eq!(
        (code, &answer["status"]),
        (Some(0), &json!("committed")),
        "{answer}"
    );
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let too_many =
        json!({"steps": [step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 100}))]});
    std::fs::write(file.path(), too_many.to_string()).expect("write");
    let path = file.path().to_str().expect("a path");
    let (code, answer, _) = redstage(addr, &shop, &["submit", "--file", path], None);
    assert_eq!(
        (code, &answer["abort"]["code"]),
        (Some(2), &json!("insufficient_stock")),
        "{answer}"
    );
    // A token without the scope: the error answer, and 1.
    let (code, answer, err) = redstage(addr, &viewer, &["submit", &order], None);
    assert_eq!(
        (code, &answer["error"]["code"]),
        (Some(1), &json!("forbidden")),
        "{answer}"
    );
    assert!(err.contains("HTTP 403"), "{err}");
    let (code, answer, _) = redstage(addr, &[], &["get", &id], None);
    assert_eq!(
        (code, &answer["error"]["code"]),
        (Some(1), &json!("unauthorized")),
        "no token"
    );

    // get: 0 known, 2 unknown; --token as a flag.
    let (code, answer, _) = redstage(addr, &[], &["--token", READ_TOKEN, "get", &id], None);
    assert_eq!(
        (code, &answer["status"]),
        (Some(0), &json!("committed")),
        "{answer}"
    );
    let unknown = "0190a0a0-0000-7000-8000-000000000000";
    let (code, answer, _) = redstage(addr, &viewer, &["get", unknown], None);
    assert_eq!(
        (code, &answer["error"]["code"]),
        (Some(2), &json!("unknown_transaction"))
    );

    // list and locks follow their pages up to --limit.
    let (code, answer, _) = redstage(
        addr,
        &viewer,
        &["list", "--state", "committed", "--limit", "2"],
        None,
    );
    assert_eq!(code, Some(0), "{answer}");
    assert_eq!(
        answer["transactions"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    assert!(answer["next_cursor"].is_string(), "more to list: {answer}");
    let (code, answer, _) = redstage(addr, &viewer, &["list", "--state", "committed"], None);
    assert!(
        answer["transactions"]
            .as_array()
            .is_some_and(|t| t.iter().any(|r| r["id"] == json!(id))),
        "{answer}"
    );
    assert_eq!(code, Some(0));
    let (code, answer, _) = redstage(addr, &viewer, &["list", "--state", "stuck"], None);
    assert_eq!(
        (code, &answer["error"]["code"]),
        (Some(1), &json!("bad_query"))
    );
    let (code, answer, _) = redstage(addr, &viewer, &["locks", "--store", "orders"], None);
    assert_eq!((code, &answer), (Some(0), &json!({"locks": []})));

    // participants, all or one.
    let (code, answer, _) = redstage(addr, &viewer, &["participants"], None);
    assert_eq!(code, Some(0));
    assert_eq!(
        answer["participants"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    let (code, answer, _) = redstage(addr, &viewer, &["participants", "inventory"], None);
    assert_eq!(
        (code, &answer["store"], &answer["prefix"]),
        (Some(0), &json!("orders"), &json!("inventory:")),
        "{answer}"
    );
    let (code, _, _) = redstage(addr, &viewer, &["participants", "nobody"], None);
    assert_eq!(code, Some(2));

    // resolve: nothing left to do for a finished transaction, but it says so.
    let (code, answer, _) = redstage(
        addr,
        &[("REDSTAGE_TOKEN", OPS_TOKEN)],
        &["resolve", &id],
        None,
    );
    assert_eq!(
        (code, &answer["decision"], &answer["made"]),
        (Some(0), &json!("committed"), &json!(false)),
        "{answer}"
    );

    // A config from the environment; `status` compiles no component.
    let config = env.config_path.to_str().expect("a path");
    let (code, answer, err) =
        redstage(addr, &[("REDSTAGE_CONFIG", config)], &["status", &id], None);
    assert_eq!(
        (code, &answer["status"]),
        (Some(0), &json!("committed")),
        "{answer} {err}"
    );
}

/// The metric names a served `/metrics` has: its samples' and its
/// families' (`# TYPE`), so that a family with no series yet counts.
fn served_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(family) => family.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// The `redstage_*` names `text` refers to.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("redstage_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // `redstage_*` in prose names no metric.
        if name.len() > "redstage_".len() {
            names.insert(name);
        }
    }
    names
}

/// The Grafana dashboard and the Prometheus alert rules in `deploy/` name
/// only metrics a real host serves, and are what their tools load: a
/// dashboard with panels and queries, rule groups with an alert, an
/// expression and a summary each.
#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_metrics_a_host_serves() {
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let host = env.spawn_host(None);
    let order =
        json!({"steps": [step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 1}))]});
    let (status, _) = http::post(host.addr, "/v1/transactions", order.to_string().as_bytes()).await;
    assert_eq!(status, 200);
    let (_, text) = http::get(host.addr, "/metrics").await;
    let served = served_names(text.as_str().expect("text"));
    for expected in [
        "redstage_build_info",
        "redstage_oldest_lock_age_seconds",
        "redstage_store_ready",
        "redstage_transactions_in_flight",
        "redstage_instance_slots_in_use",
    ] {
        assert!(
            served.contains(expected),
            "{expected} is not served: {served:?}"
        );
    }

    let deploy = redstage_tests::workspace().join("deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/redstage-dashboard.json"))
        .expect("the dashboard");
    let json: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("a query"))
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    let alerts = std::fs::read_to_string(deploy.join("prometheus/redstage-alerts.yml"))
        .expect("the alert rules");
    let yaml = &yaml_rust2::YamlLoader::load_from_str(&alerts).expect("the rules are YAML")[0];
    let rules = yaml["groups"][0]["rules"]
        .as_vec()
        .expect("a group of rules");
    for rule in rules {
        let alert = rule["alert"].as_str().expect("an alert name");
        assert!(rule["expr"].as_str().is_some(), "{alert}: no expression");
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{alert}: no summary"
        );
    }
    let alerted: BTreeSet<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for needed in [
        "RedstageTransactionsInDoubt",
        "RedstageGiveUps",
        "RedstageStoreErrors",
        "RedstageStoreNotReady",
        "RedstageReuseMismatch",
    ] {
        assert!(alerted.contains(needed), "no {needed}: {alerted:?}");
    }
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let unknown: Vec<String> = referenced_names(text)
            .difference(&served)
            .cloned()
            .collect();
        assert!(
            unknown.is_empty(),
            "the {file} names metrics no host serves: {unknown:?}"
        );
    }
}

/// A free loopback port nothing listens on: a store that cannot be reached.
fn dead_store() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("redis://127.0.0.1:{port}")
}

/// `redstage` with a config and `args`, no server: exit code, stdout as
/// JSON (or null), stderr.
fn local(
    config: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Option<i32>, Value, String) {
    let out = std::process::Command::new(redstage_binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(envs.iter().copied())
        .output()
        .expect("run redstage");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Frictions of a first hour with a config: `check` reports each component
/// it compiled (name, contract, digest) before anything about the stores,
/// also when a store then fails; a store that cannot be reached is said to
/// be unreachable, not to need `CONFIG GET` or `durability = "unsafe"`
/// (which is already set); one store needs no `log_store`.
#[tokio::test]
async fn check_reports_components_and_an_unreachable_store_is_called_so() {
    let env = TestEnv::orders();
    let dead = dead_store();
    let unreachable = [("REDSTAGE_STORES__LEDGER", dead.as_str())];
    let (code, summary, stderr) = local(&env.config_path, &["check"], &unreachable);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(summary["status"], "error", "{summary}");
    let components = summary["components"].as_array().expect("components");
    let names: Vec<&str> = components
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["inventory", "payments"], "{summary}");
    for c in components {
        assert!(
            c["contract"].as_str().is_some_and(|v| v.starts_with("0.")),
            "{c}"
        );
        assert!(
            c["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{c}"
        );
    }
    assert!(stderr.contains("store `ledger`"), "{stderr}");

    let order =
        json!({"steps": [step("payments", json!({"op": "deposit", "account": "a", "amount": 1}))]})
            .to_string();
    let (code, _, stderr) = local(&env.config_path, &["run", &order], &unreachable);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot be reached"), "{stderr}");
    assert!(!stderr.contains("Allow CONFIG GET"), "{stderr}");
    assert!(
        !stderr.contains("set durability"),
        "durability is unsafe already: {stderr}"
    );

    // One store: no log_store needed.
    let server = redstage_tests::RedisServer::start(Persistence::None).expect("redis-server");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("one.toml");
    let component = redstage_tests::components(redstage_tests::Toolchain::CargoComponent)
        .join(redstage_tests::component_file("payments"));
    std::fs::write(
        &config,
        format!(
            "durability = \"unsafe\"\n[stores]\nmain = {:?}\n[participants.payments]\n\
             component = {:?}\nstore = \"main\"\nprefix = \"payments:\"\n",
            server.url(),
            component.display().to_string()
        ),
    )
    .expect("write the config");
    let (code, answer, stderr) = local(&config, &["run", &order], &[]);
    assert_eq!(
        (code, &answer["status"]),
        (Some(0), &json!("committed")),
        "{stderr}"
    );
}

/// A host killed holding an order at fault point `point`, with the order's
/// id (the one transaction holding locks that `before` did not list).
async fn stuck_at(env: &TestEnv, point: &str, sku: &str, payer: &str, before: &[String]) -> String {
    // A payee of its own: no other order meets (and fences) its locks.
    let payee = format!("{payer}-shop");
    let (mut host, request) = env.held_at(point, &locking_order(sku, payer, &payee)).await;
    host.kill();
    assert!(
        request.await.expect("task").is_err(),
        "a killed host answered"
    );
    let holders = holders(env, before.len() + 1).await;
    holders
        .into_iter()
        .find(|h| !before.contains(h))
        .expect("a new holder")
}

/// `redstage recover` reports what it did per transaction (its stores, its
/// decision found or made, the action on each store) and counts
/// transactions, not lock entries; `--dry-run` says what it would do and
/// does nothing; `recover ID` resolves that one. A store that cannot be
/// read makes what remains `unknown`, not 0. And a serving host's sweep
/// logs one line per transaction it resolves, naming it and who.
#[tokio::test]
async fn recover_reports_each_transaction_dry_runs_first_and_resolves_one_by_id() {
    // Hosts that do not sweep, so that what is stuck stays stuck until
    // the commands look at it.
    let env = TestEnv::orders_with(
        "[txn]\nlease_ms = 800\nstore_timeout_ms = 300\nsweep_interval_ms = 600000\n",
        Persistence::None,
    );
    env.stock_and_fund("A1", 10, "alice", 100).await;
    env.stock_and_fund("B1", 10, "bob", 100).await;
    let undecided = stuck_at(&env, "after-prepare", "A1", "alice", &[]).await;
    let committed = stuck_at(
        &env,
        "after-decide",
        "B1",
        "bob",
        std::slice::from_ref(&undecided),
    )
    .await;
    // Both leases end.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (code, plan, stderr) = local(&env.config_path, &["recover", "--dry-run"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(plan["dry_run"], true, "{plan}");
    let find = |report: &Value, id: &str| -> Value {
        report["transactions"]
            .as_array()
            .expect("transactions")
            .iter()
            .find(|t| t["id"] == json!(id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {report}"))
    };
    let rolled_back = json!([{"store": "ledger", "action": "rolled_back"}, {"store": "orders", "action": "rolled_back"}]);
    let t = find(&plan, &undecided);
    assert_eq!(
        (&t["decision"], &t["made"], &t["stores"]),
        (&json!("aborted"), &json!(true), &rolled_back),
        "{t}"
    );
    let t = find(&plan, &committed);
    assert_eq!(
        (&t["decision"], &t["made"]),
        (&json!("committed"), &json!(false)),
        "{t}"
    );
    assert_eq!(
        t["stores"],
        json!([{"store": "ledger", "action": "finalized"}, {"store": "orders", "action": "rolled_forward"}])
    );
    assert_eq!(env.lock_holders().len(), 2, "a dry run changes nothing");

    let (code, one, stderr) = local(&env.config_path, &["recover", &undecided], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        (&one["id"], &one["made"], &one["stores"]),
        (&json!(undecided), &json!(true), &rolled_back)
    );
    let found = env
        .coordinator
        .lookup(&undecided)
        .await
        .expect("lookup")
        .expect("known");
    let abort = found.abort.expect("an abort");
    assert_eq!(abort.code, "recovered");
    assert!(
        abort.message.contains("`redstage recover` on host"),
        "{}",
        abort.message
    );

    // A store that does not answer: what remains is not known.
    let ledger = env.server("ledger").pid().expect("running");
    redstage_tests::signal(ledger, "STOP");
    let (code, report, _) = local(&env.config_path, &["recover"], &[]);
    redstage_tests::signal(ledger, "CONT");
    assert_eq!(
        (code, &report["remaining"]),
        (Some(2), &json!("unknown")),
        "{report}"
    );

    let (code, report, stderr) = local(&env.config_path, &["recover"], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        (&report["resolved"], &report["remaining"]),
        (&json!(1), &json!(0)),
        "one transaction, two stores: {report}"
    );
    let t = find(&report, &committed);
    assert_eq!(t["decision"], "committed", "{t}");
    assert!(env.leftovers().await.is_empty());
    assert_eq!(
        raw(&env, "orders", "inventory:stock:B1").as_deref(),
        Some("9")
    );
    assert_eq!(
        raw(&env, "orders", "inventory:stock:A1").as_deref(),
        Some("10")
    );

    // A serving host's sweep: one line per transaction, with its id and who.
    let stuck = stuck_at(&env, "after-prepare", "A1", "alice", &[]).await;
    let sweeping = Launch {
        envs: &[("REDSTAGE_TXN__SWEEP_INTERVAL_MS", "100")],
        ..Launch::default()
    };
    let host = env.launch_host(&sweeping).expect("serves");
    let line = |l: &&String| l.contains("recovery resolved a transaction") && l.contains(&stuck);
    let started = Instant::now();
    while !host.stderr().iter().any(|l| line(&l)) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            host.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines: Vec<String> = host
        .stderr()
        .into_iter()
        .filter(|l| l.contains(&stuck))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the transaction: {lines:?}");
    assert!(
        lines[0].contains("INFO")
            && lines[0].contains("by=the recovery sweep of host")
            && lines[0].contains("made=true"),
        "{lines:?}"
    );
}
