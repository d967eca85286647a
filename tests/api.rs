//! The served API over real HTTP, against a real `redstage serve` and real
//! Redis, and the commands operators run: bearer tokens and their scopes on
//! every route, the bounds that turn a flood away at once, a client that
//! disconnects mid-transaction, SIGTERM, request ids and JSON logs, random
//! input to every route, config values from the environment and
//! `redstage check`.

use std::time::{Duration, Instant};

use redstage_tests::{
    Launch, Persistence, TestEnv, Toolchain, component_file, components, http, redstage_binary,
    step,
};
use serde_json::{Value, json};

fn deduct(sku: &str, qty: i64) -> Value {
    step("inventory", json!({"op": "deduct", "sku": sku, "qty": qty}))
}
fn transfer(from: &str, to: &str, amount: i64) -> Value {
    step(
        "payments",
        json!({"op": "transfer", "from": from, "to": to, "amount": amount}),
    )
}

/// Method, path, body, the token with the route's scope, one without it,
/// and the status the route answers once allowed.
type Route<'a> = (&'a str, &'a str, &'a [u8], &'a str, &'a str, u16);

const SHOP_TOKEN: &str = "shop-0123456789abcdef";
const OPS_TOKEN: &str = "ops-0123456789abcdef";
const METRICS_TOKEN: &str = "metrics-0123456789abcdef";

/// Three tokens: one per scope, the metrics one from the environment.
const TOKENS: &str = r#"
[[auth.tokens]]
name = "shop"
token = "shop-0123456789abcdef"
scopes = ["submit"]
[[auth.tokens]]
name = "ops"
token = "ops-0123456789abcdef"
scopes = ["deploy"]
[[auth.tokens]]
name = "metrics"
token_env = "REDSTAGE_TEST_METRICS_TOKEN"
scopes = ["read"]
"#;

#[tokio::test]
async fn every_route_but_health_and_ready_needs_a_token_with_its_scope() {
    let env = TestEnv::orders_with(TOKENS, Persistence::None);
    env.stock_and_fund("A1", 100, "alice", 100).await;
    let host = env
        .launch_host(&Launch {
            envs: &[("REDSTAGE_TEST_METRICS_TOKEN", METRICS_TOKEN)],
            ..Launch::default()
        })
        .expect("serves");
    let order = json!({"steps": [deduct("A1", 1), transfer("alice", "shop", 1)]}).to_string();
    let id = "0190a0a0-0000-7000-8000-000000000000";
    let lookup = format!("/v1/transactions/{id}");
    let routes: [Route; 6] = [
        (
            "POST",
            "/v1/transactions",
            order.as_bytes(),
            SHOP_TOKEN,
            OPS_TOKEN,
            200,
        ),
        ("GET", &lookup, b"", METRICS_TOKEN, OPS_TOKEN, 404),
        (
            "GET",
            "/v1/participants",
            b"",
            METRICS_TOKEN,
            SHOP_TOKEN,
            200,
        ),
        ("GET", "/metrics", b"", METRICS_TOKEN, OPS_TOKEN, 200),
        (
            "PUT",
            "/v1/participants/x?store=orders&prefix=x:",
            b"\0asm",
            OPS_TOKEN,
            SHOP_TOKEN,
            409,
        ),
        (
            "DELETE",
            "/v1/participants/x",
            b"",
            OPS_TOKEN,
            METRICS_TOKEN,
            409,
        ),
    ];
    for (method, path, body, allowed, other, status) in routes {
        let what = format!("{method} {path}");
        for token in [None, Some("not-a-token-at-all-0000"), Some(&allowed[1..])] {
            let (code, head, answer) = http::request_as(host.addr, token, method, path, body).await;
            assert_eq!(code, 401, "{what} with {token:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{what}");
            assert!(head.contains("\r\nwww-authenticate: bearer"), "{head}");
        }
        let (code, _, answer) = http::request_as(host.addr, Some(other), method, path, body).await;
        assert_eq!(code, 403, "{what} with another scope: {answer}");
        assert_eq!(answer["error"]["code"], "forbidden", "{what}");
        let (code, _, answer) =
            http::request_as(host.addr, Some(allowed), method, path, body).await;
        assert_eq!(code, status, "{what} with its scope: {answer}");
    }
    for path in ["/v1/health", "/v1/ready", "/openapi.json"] {
        let (code, _, answer) = http::request_as(host.addr, None, "GET", path, b"").await;
        assert_eq!(code, 200, "{path} stays open: {answer}");
    }
    // Only the one allowed order ran.
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("99")
    );
}

#[tokio::test]
async fn redstage_deploy_sends_its_token_from_the_flag_or_the_environment() {
    let (env, _folder) = TestEnv::orders_with_folder(TOKENS);
    let host = env
        .launch_host(&Launch {
            envs: &[("REDSTAGE_TEST_METRICS_TOKEN", METRICS_TOKEN)],
            ..Launch::default()
        })
        .expect("serves");
    let deploy = |name: &str, flag: Option<&str>, var: Option<&str>| {
        let mut cmd = std::process::Command::new(redstage_binary());
        cmd.args(["deploy", "--server", &format!("http://{}", host.addr)])
            .args(["--store", "orders", "--prefix", &format!("{name}:")])
            .env_remove("REDSTAGE_TOKEN");
        if let Some(token) = flag {
            cmd.args(["--token", token]);
        }
        if let Some(token) = var {
            cmd.env("REDSTAGE_TOKEN", token);
        }
        let component = components(Toolchain::CargoComponent).join(component_file("counter-v1"));
        let out = cmd.arg(name).arg(component).output().expect("run");
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), answer)
    };
    let (code, answer) = deploy("none", None, None);
    assert_eq!(
        (code, &answer["error"]["code"]),
        (Some(1), &json!("unauthorized"))
    );
    let (code, answer) = deploy("shop", Some(SHOP_TOKEN), None);
    assert_eq!(
        (code, &answer["error"]["code"]),
        (Some(1), &json!("forbidden"))
    );
    let (code, answer) = deploy("flag", Some(OPS_TOKEN), None);
    assert_eq!(
        (code, &answer["name"]),
        (Some(0), &json!("flag")),
        "{answer}"
    );
    let (code, answer) = deploy("var", None, Some(OPS_TOKEN));
    assert_eq!(
        (code, &answer["name"]),
        (Some(0), &json!("var")),
        "{answer}"
    );
}

#[tokio::test]
async fn without_tokens_a_host_listens_beyond_loopback_only_when_told_insecure() {
    let env = TestEnv::orders();
    let all = Launch {
        all_interfaces: true,
        ..Launch::default()
    };
    let refused = env.launch_host(&all).expect_err("refused");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("without any [[auth.tokens]]") && l.contains("--insecure")),
        "{refused:?}"
    );
    let host = env
        .launch_host(&Launch {
            args: &["--insecure"],
            ..all
        })
        .expect("serves when told");
    assert!(host.wait_for("--insecure", Duration::from_secs(5)).await);
    let (code, _, _) = http::request_as(host.addr, None, "GET", "/v1/participants", b"").await;
    assert_eq!(code, 200);
    // With a token configured, every interface is fine.
    let env = TestEnv::orders_with(
        "[[auth.tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\nscopes = [\"read\"]\n",
        Persistence::None,
    );
    let host = env.launch_host(&all).expect("serves");
    let (code, _, _) = http::request_as(host.addr, None, "GET", "/v1/participants", b"").await;
    assert_eq!(code, 401);
}

/// The orders that stall after their prepare in the backpressure tests,
/// long enough for everything else a test sends to be answered first.
const STALL: &str = "after-prepare:3000";

fn order() -> Value {
    json!({"steps": [deduct("A1", 1), transfer("alice", "shop", 1)]})
}

fn order_body() -> Vec<u8> {
    order().to_string().into_bytes()
}

/// Sends `n` orders to `addr`, each on a task of its own.
fn send_orders(
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(u16, Value, String)>> {
    (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let (status, head, body) =
                    http::try_request_with_head(addr, "POST", "/v1/transactions", &order_body())
                        .await
                        .expect("an answer");
                (status, body, head)
            })
        })
        .collect()
}

/// Asserts an `overloaded` answer: 503, the code, `Retry-After`, and
/// `what` (the bound) named in the message.
fn assert_overloaded((status, body, head): &(u16, Value, String), what: &str) {
    assert_eq!(*status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(what) && message.contains("nothing was applied"),
        "{message}"
    );
}

async fn assert_committed(orders: Vec<tokio::task::JoinHandle<(u16, Value, String)>>) {
    for order in orders {
        let (status, body, _) = order.await.expect("order task");
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("committed")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_flood_past_the_in_flight_bound_is_turned_away_at_once_and_the_host_recovers() {
    const IN_FLIGHT: usize = 4;
    let env = TestEnv::orders_with(
        &format!("[txn]\nin_flight_max = {IN_FLIGHT}\n"),
        Persistence::None,
    );
    env.stock_and_fund("A1", 100, "alice", 100).await;
    let host = env.spawn_host(Some(STALL));
    let first = send_orders(host.addr, IN_FLIGHT);
    assert!(
        host.wait_for_n(
            "reached fault point after-prepare",
            IN_FLIGHT,
            Duration::from_secs(20)
        )
        .await
    );
    // Every place is taken: the flood is answered while the first orders
    // still stall, having touched nothing.
    for flooded in send_orders(host.addr, 5 * IN_FLIGHT) {
        let answer = flooded.await.expect("flood task");
        assert_overloaded(&answer, "txn.in_flight_max");
    }
    assert!(
        first.iter().all(|o| !o.is_finished()),
        "the flood waited for the orders in flight"
    );
    assert_committed(first).await;
    // Below the bound again, the host serves.
    assert_committed(send_orders(host.addr, IN_FLIGHT)).await;
    let (_, metrics) = http::get(host.addr, "/metrics").await;
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.contains(&format!(
            "redstage_transaction_errors_total{{code=\"overloaded\"}} {}",
            5 * IN_FLIGHT
        )),
        "{metrics}"
    );
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some((100 - 2 * IN_FLIGHT).to_string().as_str()),
        "only the admitted orders applied"
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_transaction_that_waits_past_slot_wait_ms_for_instances_is_turned_away() {
    // One order takes the whole pool and stalls holding it.
    let env = TestEnv::orders_with(
        "[runtime]\ninstance_pool = 2\n[txn]\nsteps_max = 2\nslot_wait_ms = 100\n",
        Persistence::None,
    );
    env.stock_and_fund("A1", 100, "alice", 100).await;
    let host = env.spawn_host(Some(STALL));
    let first = send_orders(host.addr, 1);
    host.wait_for_point("after-prepare").await;
    let waited = send_orders(host.addr, 1).pop().expect("one order");
    assert_overloaded(&waited.await.expect("task"), "txn.slot_wait_ms");
    assert!(!first[0].is_finished());
    assert_committed(first).await;
    assert_committed(send_orders(host.addr, 1)).await;
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("98")
    );
}

#[tokio::test]
async fn a_client_gone_mid_transaction_leaves_it_finished() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 100, "alice", 100).await;
    let host = env.spawn_host(Some("after-prepare:500"));
    let mut client = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connect");
    let body = order_body();
    let head = format!(
        "POST /v1/transactions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.expect("head");
    client.write_all(&body).await.expect("body");
    host.wait_for_point("after-prepare").await;
    drop(client);
    // Nobody waits for the answer, and the order still commits, on both
    // stores, with nothing left for recovery.
    let started = Instant::now();
    while env.get("orders", "inventory:stock:A1").await.as_deref() != Some("99") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the order was cut short"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("99")
    );
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    // The access log says the client went away (nginx's 499).
    let gone = "redstage::access: POST /v1/transactions 499";
    assert!(
        host.wait_for(gone, Duration::from_secs(5)).await,
        "{:?}",
        host.stderr()
    );
}

#[tokio::test]
async fn sigterm_under_load_drains_and_loses_nothing() {
    const CLIENTS: usize = 8;
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 100_000, "alice", 100_000).await;
    let mut host = env.spawn_host(None);
    let addr = host.addr;
    // Each client sends orders, one connection each, until the host no
    // longer accepts; it counts the orders answered committed.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut committed = 0u64;
                loop {
                    let sent = http::try_request_with_head(
                        addr,
                        "POST",
                        "/v1/transactions",
                        &order_body(),
                    )
                    .await;
                    match sent {
                        Ok((200, _, body)) if body["status"] == "committed" => committed += 1,
                        Ok(other) => panic!("an order answered {other:?}"),
                        Err(_) => return committed,
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let stock = || async {
        let stock = env.get("orders", "inventory:stock:A1").await;
        stock.and_then(|s| s.parse::<u64>().ok()).expect("a stock")
    };
    while stock().await > 100_000 - 50 {
        assert!(started.elapsed() < Duration::from_secs(30), "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redstage_tests::signal(host.pid(), "TERM");
    let status = host.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut committed = 0;
    for client in clients {
        committed += client.await.expect("client task");
    }
    // Every order answered committed applied, on both stores, and no other
    // did; nothing was left for recovery.
    assert!(committed > 0);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await,
        Some((100_000 - committed).to_string())
    );
    assert_eq!(
        env.get("ledger", "payments:balance:shop").await,
        Some(committed.to_string())
    );
}

#[tokio::test]
async fn past_shutdown_grace_ms_the_host_exits_and_recovery_finishes_the_rest() {
    let env = TestEnv::orders_with(
        "[txn]\nshutdown_grace_ms = 200\nlease_ms = 800\nstore_timeout_ms = 400\n\
         sweep_interval_ms = 100\n",
        Persistence::None,
    );
    env.stock_and_fund("A1", 100, "alice", 100).await;
    // A transaction that stalls far longer than the grace.
    let (mut host, stalled) = env.held_at("after-prepare:60000", &order()).await;
    redstage_tests::signal(host.pid(), "TERM");
    let status = host.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(
        host.stderr()
            .iter()
            .any(|l| l.contains("shutdown_grace_ms is over")),
        "{:?}",
        host.stderr()
    );
    let answer = stalled.await.expect("task");
    assert!(
        answer.is_err(),
        "the stalled order was answered: {answer:?}"
    );
    // Its locks are another host's to roll back.
    let _survivor = env.spawn_host(None);
    let started = Instant::now();
    while !env.leftovers().await.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("100")
    );
}

#[tokio::test]
async fn a_draining_host_is_not_ready() {
    let env = TestEnv::orders();
    let addr = http::serve(env.coordinator.clone()).await;
    let (status, body) = http::get(addr, "/v1/ready").await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    env.coordinator.drain();
    let (status, body) = http::get(addr, "/v1/ready").await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("draining")),
        "{body}"
    );
}

#[tokio::test]
async fn every_answer_names_its_request_and_json_logs_carry_it() {
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 100, "alice", 100).await;
    let host = env
        .launch_host(&Launch {
            args: &["--log-format", "json"],
            envs: &[("RUST_LOG", "redstage=debug")],
            ..Launch::default()
        })
        .expect("serves");
    let order = order_body();
    // A new id on every answer: a commit, an error, no route, an open route.
    let mut ids = std::collections::BTreeSet::new();
    for (method, path, body) in [
        ("POST", "/v1/transactions", &order[..]),
        ("POST", "/v1/transactions", b"{"),
        ("GET", "/nowhere", b""),
        ("GET", "/v1/health", b""),
    ] {
        let (_, head, _) = http::request_with(host.addr, &[], method, path, body).await;
        let id = http::header(&head, "x-request-id").expect("an id");
        assert!(ids.insert(id.to_owned()), "{id} twice");
    }
    // A client's own id is kept; one that is no header value fit to log is
    // replaced.
    let own = [("x-request-id", "order-42")];
    let (status, head, _) =
        http::request_with(host.addr, &own, "POST", "/v1/transactions", &order).await;
    assert_eq!(status, 200);
    assert_eq!(http::header(&head, "x-request-id"), Some("order-42"));
    let long = "x".repeat(200);
    let (_, head, _) = http::request_with(
        host.addr,
        &[("x-request-id", &long)],
        "GET",
        "/v1/health",
        b"",
    )
    .await;
    assert_ne!(http::header(&head, "x-request-id"), Some(&*long));
    // Its log lines are JSON objects (those logged while it runs carry its
    // `request` span), and it has one access log line of its own, at info.
    assert!(host.wait_for("order-42", Duration::from_secs(10)).await);
    let lines: Vec<Value> = host
        .stderr()
        .iter()
        .filter(|l| l.contains("order-42"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "redstage::access")
        .collect();
    let [answered] = access[..] else {
        panic!("one access line: {lines:?}");
    };
    // Refusals are logged at info too, with their code.
    let refused = host.stderr().iter().any(|l| {
        l.contains("redstage::access")
            && l.contains("\"status\":400")
            && l.contains("\"outcome\":\"malformed_json\"")
    });
    assert!(refused, "{:?}", host.stderr());
    assert_eq!(answered["level"], "INFO", "{answered}");
    let fields = &answered["fields"];
    assert_eq!(
        (&fields["method"], &fields["route"], &fields["status"]),
        (&json!("POST"), &json!("/v1/transactions"), &json!(200)),
        "{answered}"
    );
    assert_eq!(fields["request"], "order-42", "{answered}");
    assert_eq!(fields["outcome"], "committed", "{answered}");
    assert!(http_id(fields["txn"].as_str()), "{answered}");
    assert!(fields["us"].as_u64().is_some(), "{answered}");
}

fn http_id(id: Option<&str>) -> bool {
    id.is_some_and(redstage::txn::is_txn_id)
}

/// Random JSON, shaped now and then like a request, for the fuzz test.
fn random_json(rng: &mut fastrand::Rng, depth: u32) -> Value {
    const KEYS: &[&str] = &[
        "steps",
        "participant",
        "input",
        "idempotency_key",
        "op",
        "sku",
        "qty",
        "from",
        "to",
        "amount",
        "account",
    ];
    let leaf = depth == 0 || rng.u8(..4) == 0;
    match rng.u8(..if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e300),
        4 => json!(["inventory", "payments", "", "x"][rng.usize(..4)]),
        5 => Value::String((0..rng.usize(..40)).map(|_| rng.char(..)).collect()),
        6 => Value::Array(
            (0..rng.usize(..5))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(..5))
                .map(|_| {
                    let key = match rng.bool() {
                        true => KEYS[rng.usize(..KEYS.len())].to_owned(),
                        false => (0..rng.usize(..8)).map(|_| rng.char(..)).collect(),
                    };
                    (key, random_json(rng, depth - 1))
                })
                .collect(),
        ),
    }
}

/// Random bytes: sometimes JSON cut short, sometimes noise.
fn random_body(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(..3) {
        0 => (0..rng.usize(..256)).map(|_| rng.u8(..)).collect(),
        1 => {
            let json = random_json(rng, 4).to_string().into_bytes();
            let cut = rng.usize(..=json.len());
            json[..cut].to_vec()
        }
        _ => random_json(rng, 5).to_string().into_bytes(),
    }
}

/// Random path segment, percent-encoded.
fn random_segment(rng: &mut fastrand::Rng) -> String {
    (0..rng.usize(..24))
        .map(|_| match rng.u8(..3) {
            0 => format!("%{:02X}", rng.u8(..)),
            _ => rng.alphanumeric().to_string(),
        })
        .collect()
}

#[tokio::test]
async fn arbitrary_bytes_and_json_to_every_route_get_an_answer_never_a_5xx() {
    let seed = std::env::var("REDSTAGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("REDSTAGE_FUZZ_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let (env, _folder) = TestEnv::orders_with_folder("");
    env.stock_and_fund("A1", 1_000_000, "alice", 1_000_000)
        .await;
    let host = env.spawn_host(None);
    let document = Document::served(host.addr).await;
    for i in 0..1500 {
        let body = random_body(&mut rng);
        let (method, path, body) = match i % 6 {
            0 | 1 => ("POST", "/v1/transactions".to_owned(), body),
            2 => (
                "GET",
                format!("/v1/transactions/{}", random_segment(&mut rng)),
                Vec::new(),
            ),
            // Half of the deploys have a manifest that holds, so that
            // their bodies are compiled.
            3 => (
                "PUT",
                match rng.bool() {
                    true => format!("/v1/participants/fuzz{i}?store=orders&prefix=fuzz{i}:"),
                    false => format!(
                        "/v1/participants/{}?{}={}&prefix={}",
                        random_segment(&mut rng),
                        ["store", "prefix", "limits", "x"][rng.usize(..4)],
                        random_segment(&mut rng),
                        random_segment(&mut rng)
                    ),
                },
                body,
            ),
            4 => (
                "DELETE",
                format!("/v1/participants/{}", random_segment(&mut rng)),
                body,
            ),
            _ => (
                ["GET", "POST", "PATCH"][rng.usize(..3)],
                format!("/{}", random_segment(&mut rng)),
                body,
            ),
        };
        let what = format!(
            "seed {seed}, request {i}: {method} {path} {:?}",
            String::from_utf8_lossy(&body)
        );
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            http::try_request(host.addr, method, &path, &body),
        )
        .await
        .unwrap_or_else(|_| panic!("no answer within 10 s: {what}"))
        .unwrap_or_else(|e| panic!("{e}: {what}"));
        document.check(method, &path, &answer, &what);
        match answer {
            (200, ref v) if v["status"] == "committed" || v["status"] == "aborted" => {}
            (400..=499, ref v) => {
                assert!(
                    v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                    "no error shape: {v}: {what}"
                );
            }
            other => panic!("{other:?}: {what}"),
        }
    }
    // The host still serves, and nothing but the transactions that ran
    // changed anything: no lock is left behind.
    let (status, _) = http::get(host.addr, "/v1/ready").await;
    assert_eq!(status, 200);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

/// The OpenAPI document a host serves, valid by the OpenAPI 3.1 schema, and
/// a check of real answers against it.
struct Document(Value);

impl Document {
    async fn served(addr: std::net::SocketAddr) -> Document {
        let (status, document) = http::get(addr, "/openapi.json").await;
        assert_eq!(status, 200, "{document}");
        let schema: Value = serde_json::from_str(include_str!("data/openapi-3.1-schema.json"))
            .expect("the OpenAPI 3.1 schema is JSON");
        let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "not an OpenAPI 3.1 document: {errors:#?}"
        );
        Document(document)
    }

    /// The document's template of `path` (its query left out), if any.
    fn template(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        self.0["paths"]
            .as_object()?
            .keys()
            .map(String::as_str)
            .find(|t| {
                let template: Vec<&str> = t.split('/').collect();
                template.len() == segments.len()
                    && template
                        .iter()
                        .zip(&segments)
                        .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
            })
    }

    /// Panics unless `answer` is one the document gives for `method path`:
    /// its status listed, its body fitting the schema listed with it.
    /// Paths the document does not have must answer `404 not_found`.
    fn check(&self, method: &str, path: &str, (status, body): &(u16, Value), what: &str) {
        let Some(template) = self.template(path) else {
            assert_eq!(
                (*status, &body["error"]["code"]),
                (404, &json!("not_found")),
                "{what}"
            );
            return;
        };
        let Some(operation) = self.0["paths"][template].get(method.to_lowercase()) else {
            assert_eq!(*status, 405, "{what}: {body}");
            return;
        };
        let Some(response) = operation["responses"].get(status.to_string()) else {
            panic!("{what}: answered {status}, which {method} {template} does not list: {body}");
        };
        let Some(schema) = response["content"]["application/json"].get("schema") else {
            return;
        };
        let mut schema = schema.clone();
        schema["components"] = self.0["components"].clone();
        let validator = jsonschema::draft202012::new(&schema).expect("a response schema compiles");
        if let Err(e) = validator.validate(body) {
            panic!(
                "{what}: answered {status} with a body its schema refuses: {e} at {}: {body}",
                e.instance_path()
            );
        }
    }
}

/// The document lists every route the router serves, and the router serves
/// every operation the document lists and nothing else on its paths; the
/// answers of a real run fit the schemas it gives them.
#[tokio::test]
async fn the_openapi_document_is_valid_lists_every_route_and_fits_the_answers() {
    let env = TestEnv::orders();
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let host = env.spawn_host(None);
    let document = Document::served(host.addr).await;
    let paths: Vec<String> = document.0["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        paths,
        [
            "/metrics",
            "/openapi.json",
            "/v1/health",
            "/v1/locks",
            "/v1/participants",
            "/v1/participants/{name}",
            "/v1/participants/{name}/rollback",
            "/v1/ready",
            "/v1/transactions",
            "/v1/transactions/{id}",
            "/v1/transactions/{id}/resolve",
        ]
    );
    let id = "0190a0a0-0000-7000-8000-000000000000";
    for template in &paths {
        let path = template.replace("{id}", id).replace("{name}", "x");
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let answer = http::request(host.addr, method, &path, b"{}").await;
            let what = format!("{method} {path}");
            document.check(method, &path, &answer, &what);
            let listed = document.0["paths"][template]
                .get(method.to_lowercase())
                .is_some();
            assert_eq!(answer.0 != 405, listed, "{what}: {answer:?}");
        }
    }
    // Answers of each shape, checked against their schemas.
    let committed = json!({"steps": [deduct("A1", 1), transfer("alice", "shop", 1)]});
    let aborted = json!({"steps": [deduct("A1", 100)]});
    for body in [
        committed,
        aborted,
        json!({"steps": []}),
        json!({"steps": 1}),
    ] {
        let answer = http::post(host.addr, "/v1/transactions", body.to_string().as_bytes()).await;
        document.check("POST", "/v1/transactions", &answer, &body.to_string());
        if let Some(id) = answer.1["id"].as_str() {
            let path = format!("/v1/transactions/{id}");
            let answer = http::get(host.addr, &path).await;
            assert_eq!(answer.0, 200);
            document.check("GET", &path, &answer, &path);
        }
    }
    for path in [
        "/v1/participants",
        "/v1/participants/inventory",
        "/v1/participants/nobody",
        "/v1/transactions/x",
        "/v1/transactions",
        "/v1/transactions?state=committed&limit=1",
        "/v1/transactions?state=nonsense",
        "/v1/transactions?idempotency_key=k",
        "/v1/locks",
        "/v1/locks?store=nowhere",
        "/nowhere",
    ] {
        document.check("GET", path, &http::get(host.addr, path).await, path);
    }
    let (_, committed) = http::get(host.addr, "/v1/transactions?state=committed&limit=1").await;
    let id = committed["transactions"][0]["id"]
        .as_str()
        .expect("a committed id");
    let path = format!("/v1/transactions/{id}/resolve");
    document.check(
        "POST",
        &path,
        &http::post(host.addr, &path, b"").await,
        &path,
    );
    // A submission's answer links its id to the lookup and the resolution.
    let operations =
        |template: &str, method: &str| document.0["paths"][template][method]["operationId"].clone();
    for status in ["200", "503"] {
        let links = &document.0["paths"]["/v1/transactions"]["post"]["responses"][status]["links"];
        assert_eq!(
            links["lookup"]["operationId"],
            operations("/v1/transactions/{id}", "get")
        );
        assert_eq!(
            links["resolve"]["operationId"],
            operations("/v1/transactions/{id}/resolve", "post")
        );
        assert!(
            links["lookup"]["parameters"]["id"]
                .as_str()
                .is_some_and(|p| p.starts_with("$response.body#/"))
        );
    }
    // Participant names are constrained as the host constrains them.
    let step = &document.0["components"]["schemas"]["StepRequest"]["properties"]["participant"];
    assert_eq!(
        step["pattern"],
        redstage::participants::folder::NAME_PATTERN,
        "{step}"
    );
}

/// `redstage check --config PATH` with `envs`: its exit code, stdout as
/// JSON (or null) and stderr.
fn check(config: &std::path::Path, envs: &[(&str, &str)]) -> (Option<i32>, Value, String) {
    let out = std::process::Command::new(redstage_binary())
        .arg("check")
        .arg("--config")
        .arg(config)
        .envs(envs.iter().copied())
        .output()
        .expect("run redstage check");
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn redstage_check_names_the_first_thing_wrong_and_the_environment_sets_values() {
    let env = TestEnv::orders_with(TOKENS, Persistence::None);
    let metrics = [("REDSTAGE_TEST_METRICS_TOKEN", METRICS_TOKEN)];
    let (code, summary, stderr) = check(&env.config_path, &metrics);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(summary["status"], "ok");
    assert_eq!(summary["participants"], json!(["inventory", "payments"]));
    assert_eq!(summary["stores"], json!(["ledger", "orders"]));
    assert_eq!(summary["tokens"], 3);
    // Each of these is the first thing wrong, and named.
    let dead = format!(
        "redis://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    );
    for (envs, says) in [
        (vec![], "REDSTAGE_TEST_METRICS_TOKEN is not set"),
        (
            vec![metrics[0], ("REDSTAGE_TXN__LEASE_MS", "soon")],
            "REDSTAGE_TXN__LEASE_MS",
        ),
        (
            vec![metrics[0], ("REDSTAGE_STORES__LEDGER", dead.as_str())],
            "store `ledger`",
        ),
        (
            vec![metrics[0], ("REDSTAGE_DURABILITY", "checked")],
            "appendfsync",
        ),
        (
            vec![
                metrics[0],
                (
                    "REDSTAGE_PARTICIPANTS__PAYMENTS__COMPONENT",
                    "/no/such.wasm",
                ),
            ],
            "payments",
        ),
    ] {
        let (code, _, stderr) = check(&env.config_path, &envs);
        assert_eq!(code, Some(1), "{envs:?}: {stderr}");
        assert!(stderr.contains(says), "{envs:?}: {stderr}");
    }
}

/// The value of the sample `name` (with its labels, as rendered) in the
/// `/metrics` of `addr`; 0 when there is none.
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (status, text) = http::get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls the sum of the samples `names` of `addr` until `holds` says yes.
async fn metrics_until(addr: std::net::SocketAddr, names: &[&str], holds: impl Fn(f64) -> bool) {
    let started = Instant::now();
    loop {
        let mut sum = 0.0;
        for name in names {
            sum += metric(addr, name).await;
        }
        if holds(sum) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{names:?} stay at {sum}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_move_with_the_traffic_recovery_and_store_failures() {
    let env = TestEnv::orders_with(
        "[txn]\nlease_ms = 800\nstore_timeout_ms = 400\nsweep_interval_ms = 100\n",
        Persistence::None,
    );
    env.stock_and_fund("A1", 100, "alice", 100).await;
    // The phases of what this host ran, and the stores' locks (none).
    let here = http::serve(env.coordinator.clone()).await;
    for phase in ["declare", "lock", "execute", "commit"] {
        let count = format!("redstage_phase_seconds_count{{phase=\"{phase}\"}}");
        assert_eq!(metric(here, &count).await, 1.0, "{phase}");
    }
    for store in ["orders", "ledger"] {
        let held = format!("redstage_locks{{store=\"{store}\"}}");
        assert_eq!(metric(here, &held).await, 0.0);
    }
    // Every error code is there from the start, at 0; so are the gauges of
    // this host and of its stores.
    let (_, text) = http::get(here, "/metrics").await;
    let text = text.as_str().expect("text");
    for line in [
        "redstage_transaction_errors_total{code=\"in_flight\"} 0",
        "redstage_transaction_errors_total{code=\"outcome_unknown\"} 0",
        "redstage_transactions_total{status=\"aborted\",code=\"recovered\"} 0",
        "redstage_oldest_lock_age_seconds{store=\"orders\"} 0.0",
        "redstage_store_ready{store=\"ledger\"} 1",
        "redstage_transactions_in_flight 0",
        "redstage_instance_slots_in_use 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    assert!(
        text.contains("redstage_transaction_duration_seconds_bucket{le=\"10\"}"),
        "buckets reach txn.lock_wait_ms"
    );
    // A host dies after its decision: its locks are in doubt once their
    // lease is over (nothing here sweeps), until another host's sweep
    // rolls them forward.
    let (mut dead, order) = env.held_at("after-decide", &order()).await;
    dead.kill();
    assert!(order.await.expect("task").is_err());
    let expired = [
        "redstage_locks_expired{store=\"orders\"}",
        "redstage_locks_expired{store=\"ledger\"}",
    ];
    metrics_until(here, &expired, |n| n >= 1.0).await;
    // The transaction in doubt is the oldest lock on both stores.
    let oldest = "redstage_oldest_lock_age_seconds{store=\"orders\"}";
    assert!(metric(here, oldest).await > 0.0);
    let survivor = env.spawn_host(None);
    let forward = ["redstage_recovery_actions_total{action=\"roll_forward\"}"];
    metrics_until(survivor.addr, &forward, |n| n >= 1.0).await;
    let held = [
        "redstage_locks{store=\"orders\"}",
        "redstage_locks{store=\"ledger\"}",
    ];
    metrics_until(here, &held, |n| n == 0.0).await;
    // A store that does not answer: its failures are counted, by store.
    let unavailable = "redstage_store_errors_total{store=\"ledger\",kind=\"unavailable\"}";
    assert_eq!(metric(here, unavailable).await, 0.0);
    let ledger = env.server("ledger").pid().expect("running");
    redstage_tests::signal(ledger, "STOP");
    let (status, body) = http::post(here, "/v1/transactions", &order_body()).await;
    redstage_tests::signal(ledger, "CONT");
    assert_eq!(status, 503, "{body}");
    assert!(metric(here, unavailable).await >= 1.0);
    assert_eq!(
        metric(
            here,
            "redstage_store_errors_total{store=\"orders\",kind=\"unavailable\"}"
        )
        .await,
        0.0
    );
}
