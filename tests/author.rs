//! A participant author's loop, against real parts: the SDK's default
//! build (a component importing only the contract's `console`), what
//! participants print, instances reused under audit, `redstage call` and
//! `redstage new` (a crate generated outside the workspace, built, deployed
//! to a real `serve`, and run in a transaction).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use redstage::txn::types::Status;
use redstage_tests::{
    ParticipantSpec, RedisServer, TestEnv, Toolchain, component_file, components, http,
    redstage_binary, step, workspace,
};
use serde_json::{Value, json};

fn sdk(name: &str, package: &str, store: &str, prefix: &str) -> ParticipantSpec {
    ParticipantSpec::built(Toolchain::Sdk, name, package, store, prefix)
}

fn orders() -> Vec<ParticipantSpec> {
    vec![
        sdk("inventory", "inventory", "orders", "inventory:"),
        sdk("payments", "payments", "ledger", "payments:"),
    ]
}

#[tokio::test]
async fn sdk_builds_import_only_the_console_and_run_an_order() {
    let env = TestEnv::start(&["orders", "ledger"], &orders());
    for name in ["inventory", "payments"] {
        let participant = env.coordinator.registry().get(name).expect("loaded");
        assert_eq!(participant.component.contract(), "0.3.0");
        assert_eq!(
            participant.component.imports(),
            [
                "redstage:participant/console@0.3.0",
                "redstage:participant/types@0.3.0"
            ]
        );
    }
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let r = env
        .run(json!([
            step("inventory", json!({"op": "deduct", "sku": "A1", "qty": 2})),
            step(
                "payments",
                json!({"op": "transfer", "from": "alice", "to": "shop", "amount": 30})
            ),
        ]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("8")
    );
    assert_eq!(
        env.get("ledger", "payments:balance:alice").await.as_deref(),
        Some("70")
    );
}

#[tokio::test]
async fn a_panic_in_an_sdk_build_reaches_the_steps_error() {
    let env = TestEnv::start(&["orders"], &[sdk("panics", "panics", "orders", "p:")]);
    let r = env.run(json!([step("panics", json!({}))])).await;
    let abort = r.abort.expect("aborted");
    assert_eq!(abort.code, "trap");
    assert!(
        abort.message.contains("panicked at")
            && abort.message.contains("the ledger does not balance")
            && abort.message.contains("src/lib.rs"),
        "{}",
        abort.message
    );
}

/// A host of `env`'s config with debug logs in JSON.
fn chatty_host(env: &TestEnv) -> redstage_tests::HostProcess {
    let launch = redstage_tests::Launch {
        args: &["--log-format", "json"],
        envs: &[("RUST_LOG", "info,redstage::runtime=debug")],
        ..Default::default()
    };
    env.launch_host(&launch).expect("serve starts")
}

#[tokio::test]
async fn printed_output_is_logged_with_participant_step_transaction_and_request() {
    let env = TestEnv::start(&["orders"], &[sdk("chatty", "chatty", "orders", "c:")]);
    let host = chatty_host(&env);
    let body = json!({"steps": [
        step("chatty", json!({"key": "a", "lines": 1})),
        step("chatty", json!({"key": "b", "lines": 2})),
    ]});
    let (status, _, answer) = http::request_with(
        host.addr,
        &[("x-request-id", "req-chatty-1")],
        "POST",
        "/v1/transactions",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "committed", "{answer}");
    let txn = answer["id"].as_str().expect("an id").to_owned();
    assert!(
        host.wait_for_n("participant printed", 6, Duration::from_secs(10))
            .await,
        "{:?}",
        host.stderr()
    );
    let lines: Vec<Value> = host
        .stderr()
        .iter()
        .filter(|l| l.contains("participant printed"))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    let printed = |step: u64, phase: &str, stream: &str| {
        lines.iter().find(|l| {
            l["fields"]["step"] == step
                && l["fields"]["phase"] == phase
                && l["fields"][stream].is_string()
        })
    };
    let stdout = printed(1, "execute", "stdout").expect("step 1's stdout");
    assert_eq!(stdout["level"], "DEBUG");
    assert_eq!(stdout["fields"]["stdout"], "line 0 of 2\nline 1 of 2");
    assert_eq!(stdout["fields"]["participant"], "chatty");
    let stderr = printed(0, "execute", "stderr").expect("step 0's stderr");
    assert_eq!(stderr["level"], "WARN");
    assert_eq!(stderr["fields"]["stderr"], "careful: a is about to change");
    let declared = printed(0, "declare", "stdout").expect("step 0's declare");
    for line in [stdout, stderr, declared] {
        let spans = line["spans"].to_string();
        assert!(
            spans.contains("req-chatty-1") && spans.contains(&txn),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_stateful_participant_is_caught_by_the_audit_and_reuse_is_turned_off() {
    let env = TestEnv::start_tuned(
        &["orders"],
        &[
            sdk("counter", "static-counter", "orders", "c:"),
            sdk("inventory", "inventory", "orders", "inventory:"),
        ],
        &[
            ("counter", "reuse_steps", 100.into()),
            ("counter", "reuse_audit", 1.0.into()),
            ("inventory", "reuse_steps", 3.into()),
            ("inventory", "reuse_audit", 1.0.into()),
        ],
    );
    let host = env.spawn_host(None);
    for i in 0..6 {
        let body = json!({"steps": [
            step("counter", json!({})),
            step("inventory", json!({"op": "restock", "sku": "A1", "qty": 1})),
        ]});
        let (status, answer) =
            http::post(host.addr, "/v1/transactions", body.to_string().as_bytes()).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["status"], "committed", "{answer}");
        // Every answer is a fresh instance's: the audit put the reused
        // instance's `2` aside.
        assert_eq!(
            answer["steps"][0]["output"],
            json!({"calls": 1}),
            "transaction {i}"
        );
    }
    assert!(
        host.wait_for("reuse_steps is off for it", Duration::from_secs(5))
            .await,
        "{:?}",
        host.stderr()
    );
    let warning = host
        .stderr()
        .into_iter()
        .find(|l| l.contains("reuse_steps is off for it"))
        .expect("the warning");
    assert!(
        warning.contains("counter") && warning.contains("WARN"),
        "{warning}"
    );
    let (_, metrics) = http::get(host.addr, "/metrics").await;
    let metrics = metrics.as_str().expect("text").to_owned();
    for line in [
        "redstage_reuse_mismatches_total{participant=\"counter\"} 1",
        "redstage_reuse_mismatches_total{participant=\"inventory\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    // The pure participant was reused (3 steps an instance at most), every
    // reused step audited, and nothing differed.
    let reused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redstage_reused_steps_total{participant=\"inventory\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("a count of reused steps");
    assert!(
        (2..=4).contains(&reused),
        "{reused} reused steps of 6\n{metrics}"
    );
    assert_eq!(
        env.get("orders", "inventory:stock:A1").await.as_deref(),
        Some("6")
    );
}

/// `redstage call ARGS`: its exit status and JSON report.
fn call(args: &[&str]) -> (i32, Value) {
    let out = Command::new(redstage_binary())
        .arg("call")
        .args(args)
        .output()
        .expect("run redstage call");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out.stderr).into_owned()));
    (out.status.code().expect("an exit status"), report)
}

fn built(package: &str) -> String {
    components(Toolchain::Sdk)
        .join(component_file(package))
        .display()
        .to_string()
}

#[tokio::test]
async fn call_runs_one_step_and_says_how_it_ended() {
    let inventory = built("inventory");
    let (code, report) = call(&[
        &inventory,
        "--input",
        r#"{"op":"deduct","sku":"A1","qty":2,"read":true}"#,
        "--snapshot",
        r#"{"stock:A1":"10","stock:B2":"5"}"#,
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["status"], "ok");
    assert_eq!(report["declare"]["access"]["writes"], json!(["stock:A1"]));
    assert_eq!(report["snapshot"], json!({"stock:A1": "10"}));
    assert_eq!(
        report["execute"]["writes"],
        json!([{"set": "stock:A1", "value": "8"}])
    );
    assert_eq!(
        report["execute"]["output"],
        json!({"sku": "A1", "stock": 8})
    );
    for phase in ["load_us", "instantiate_us", "declare_us", "execute_us"] {
        assert!(
            report["times"][phase].as_f64().is_some(),
            "{phase}: {report}"
        );
    }

    let (code, report) = call(&[
        &inventory,
        "--input",
        r#"{"op":"deduct","sku":"A1","qty":20,"read":true}"#,
        "--snapshot",
        r#"{"stock:A1":"10"}"#,
    ]);
    assert_eq!(
        (code, &report["abort"]["code"]),
        (1, &json!("insufficient_stock")),
        "{report}"
    );

    let (code, report) = call(&[&built("panics"), "--input", "{}"]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["failure"]["code"], "trap");
    assert!(
        report["execute"]["printed"]["stderr"]
            .as_str()
            .is_some_and(|s| s.contains("the ledger does not balance"))
    );

    let (code, report) = call(&[
        &built("chatty"),
        "--input",
        r#"{"key":"k","lines":100}"#,
        "--limits",
        r#"{"guest_output_bytes_max":64}"#,
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["declare"]["printed"]["stdout"], "declaring k\n");
    let printed = &report["execute"]["printed"];
    assert_eq!(
        printed["stdout"].as_str().map(str::len),
        Some(64 - "declaring k\n".len()),
        "{report}"
    );
    assert!(printed["dropped_bytes"].as_u64() > Some(1000), "{report}");

    // (With time to spare: a busy machine must not turn it into a timeout.)
    let (code, report) = call(&[
        &built("memory-bomb"),
        "--input",
        "{}",
        "--limits",
        r#"{"call_time_ms":5000}"#,
    ]);
    assert_eq!(
        (code, &report["failure"]["limit"]),
        (2, &json!("memory")),
        "{report}"
    );

    // Nothing runs: not a component, not JSON.
    let (code, _) = call(&[
        &workspace().join("Cargo.toml").display().to_string(),
        "--input",
        "{}",
    ]);
    assert_eq!(code, 3);
    let (code, _) = call(&[&inventory, "--input", "{oops"]);
    assert_eq!(code, 3);
}

#[tokio::test]
async fn call_reads_the_declared_keys_from_a_real_redis_and_writes_nothing() {
    let server = RedisServer::start(redstage_tests::Persistence::None).expect("redis-server");
    let mut redis = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    redis::cmd("SET")
        .arg("inventory:stock:A1")
        .arg("7")
        .query::<()>(&mut redis)
        .expect("set");
    let (code, report) = call(&[
        &built("inventory"),
        "--input",
        r#"{"op":"levels","skus":["A1","B2"]}"#,
        "--store",
        &server.url(),
        "--prefix",
        "inventory:",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report["snapshot"],
        json!({"stock:A1": "7", "stock:B2": null})
    );
    assert_eq!(report["execute"]["output"], json!({"A1": 7, "B2": 0}));
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis).expect("keys");
    assert_eq!(keys, ["inventory:stock:A1"]);
}

/// Runs `cargo ARGS` in `dir`, with the shared target folder `target`.
fn cargo(dir: &Path, target: &Path, args: &[&str]) {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo {args:?} in {} failed",
        dir.display()
    );
}

#[tokio::test]
async fn a_new_crate_outside_the_workspace_tests_builds_deploys_and_runs() {
    let outside = tempfile::tempdir().expect("temp dir");
    let dir = outside.path().join("tally");
    let sdk = workspace().join("guest-sdk");
    let status = Command::new(redstage_binary())
        .args(["new", "tally", "--dir"])
        .arg(&dir)
        .arg("--sdk-path")
        .arg(&sdk)
        .status()
        .expect("run redstage new");
    assert!(status.success());
    // Its own target folder (kept between runs), not the workspace's.
    let target = workspace().join("target/new-crate");
    cargo(&dir, &target, &["test", "--quiet"]);
    cargo(
        &dir,
        &target,
        &["build", "--release", "--target", "wasm32-unknown-unknown"],
    );
    let component = target.join("wasm32-unknown-unknown/release/tally.wasm");

    let (env, _folder) = TestEnv::orders_with_folder("");
    let host = env.spawn_host(None);
    let out = Command::new(redstage_binary())
        .args(["deploy", "--server", &format!("http://{}", host.addr)])
        .args(["--store", "orders", "--prefix", "tally:", "tally"])
        .arg(&component)
        .output()
        .expect("run redstage deploy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = json!({"steps": [
        step("tally", json!({"counter": "visits", "by": 2})),
        step("tally", json!({"counter": "visits", "by": 3})),
    ]});
    let (status, answer) =
        http::post(host.addr, "/v1/transactions", body.to_string().as_bytes()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "committed", "{answer}");
    assert_eq!(answer["steps"][1]["output"], json!(5));
    assert_eq!(
        env.get("orders", "tally:count:visits").await.as_deref(),
        Some("5")
    );
}
