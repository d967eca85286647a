//! The bench binary, run for real but tiny: two real redis-server
//! processes, the real example components, every system and workload at
//! one and two clients for 200 ms each. Checks the shape of what it writes
//! and that redstage lost nothing; never a time.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const SYSTEMS: [&str; 7] = [
    "redstage",
    "redstage-locking",
    "redstage-http",
    "lua",
    "watch",
    "naive",
    "two-phase",
];
const WORKLOADS: [&str; 7] = [
    "order", "shop", "transfer", "hot", "flash", "outbox", "social",
];

/// Whether `system` runs `workload`: WATCH, the naive staging and the
/// hand-written two-phase commit only move stock and money.
fn runs(system: &str, workload: &str) -> bool {
    !matches!(system, "watch" | "naive" | "two-phase") || !matches!(workload, "outbox" | "social")
}

/// Builds the example components; returns their folder.
fn components() -> std::path::PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["component", "build", "--release", "--quiet"])
        .args([
            "-p",
            "inventory",
            "-p",
            "payments",
            "-p",
            "orders",
            "-p",
            "social",
        ])
        .current_dir(&workspace)
        .status()
        .expect("run cargo component");
    assert!(status.success(), "building the example components failed");
    workspace.join("target/wasm32-wasip1/release")
}

#[test]
fn a_tiny_run_covers_every_system_and_redstage_loses_nothing() {
    let dir = tempfile_dir("all");
    let (stdout, _, report) = tiny_run(&dir, &["--concurrency", "1,2"]);
    assert!(
        stdout.contains("| workload | clients | system |"),
        "{stdout}"
    );
    let rows = report["rows"].as_array().expect("rows");
    let cells = SYSTEMS
        .iter()
        .flat_map(|s| WORKLOADS.iter().filter(move |w| runs(s, w)))
        .count();
    assert_eq!(rows.len(), cells * 2);
    for system in SYSTEMS {
        for workload in WORKLOADS.into_iter().filter(|w| runs(system, w)) {
            for clients in [1, 2] {
                let row = rows
                    .iter()
                    .find(|r| {
                        r["system"] == system
                            && r["workload"] == workload
                            && r["concurrency"] == clients
                    })
                    .unwrap_or_else(|| panic!("no row for {system} {workload} x{clients}"));
                assert_eq!(row["errors"], 0, "{row}");
                assert!(row["committed"].as_u64() > Some(0), "{row}");
                assert!(row["cmds_per_txn"].as_f64() > Some(0.0), "{row}");
                if system.starts_with("redstage") {
                    assert_eq!(row["lost"], "nothing", "{row}");
                    assert!(row["wasm_us_per_call"].as_f64() > Some(0.0), "{row}");
                }
                // Script calls: the Lua baseline's one per transaction (or
                // more, with its business aborts); none for WATCH/MULTI.
                let scripts = row["scripts_per_txn"].as_f64().expect("scripts/txn");
                match system {
                    "lua" => assert!(scripts >= 1.0, "{row}"),
                    "watch" | "naive" => {
                        assert!(scripts == 0.0 && scripts.is_sign_positive(), "{row}")
                    }
                    _ => assert!(scripts > 0.0, "{row}"),
                }
            }
        }
    }
    for system in ["lua", "watch", "two-phase"] {
        let lost: Vec<&Value> = rows
            .iter()
            .filter(|r| r["system"] == system)
            .map(|r| &r["lost"])
            .collect();
        assert!(
            lost.iter().all(|l| *l == "nothing"),
            "{system} lost something: {lost:?}"
        );
    }
    // The calibration, with wasmtime's floor for a fresh instance.
    let wasm = &report["wasm"];
    for figure in [&wasm["floor"]["empty_us"], &wasm["floor"]["inventory_us"]] {
        assert!(figure.as_f64() > Some(0.0), "{wasm}");
    }
    assert!(
        stdout.contains("wasmtime alone, a fresh instance"),
        "{stdout}"
    );
    let chart = std::fs::read_to_string(dir.join("bench.svg")).expect("the chart");
    assert!(
        chart.starts_with("<svg") && chart.contains("polyline"),
        "{chart}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `--cluster`: `orders` on a local Redis Cluster of three masters. Only
/// redstage runs (the baselines are left out, and say so), every workload,
/// and loses nothing.
#[test]
fn a_tiny_run_on_a_cluster_runs_redstage_only_and_loses_nothing() {
    let dir = tempfile_dir("cluster");
    let (_, stderr, report) = tiny_run(&dir, &["--cluster", "--concurrency", "2"]);
    assert!(stderr.contains("redis+cluster://"), "{stderr}");
    assert!(
        stderr.contains("leaving out [Lua, Watch, Naive, TwoPhase]"),
        "{stderr}"
    );
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3 * WORKLOADS.len());
    for row in rows {
        assert!(
            row["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("redstage")),
            "{row}"
        );
        assert_eq!(row["errors"], 0, "{row}");
        assert!(row["committed"].as_u64() > Some(0), "{row}");
        assert_eq!(row["lost"], "nothing", "{row}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `--redis-time`: per transaction, which scripts each store runs and how
/// many commands each calls. An order is one `LOCK` and one `APPLY` on
/// `orders` and one `COMMIT` on `ledger` (its round trips, and the apply
/// after the answer); a transfer is one `COMMIT`, and locks nothing; the
/// Lua baseline is its one script. Times are only checked to be there.
#[test]
fn redis_time_names_each_script_a_transaction_runs() {
    let dir = tempfile_dir("redis-time");
    let (stdout, _, report) = tiny_run(
        &dir,
        &[
            "--redis-time",
            "--redis-time-txns",
            "20",
            "--workloads",
            "order,transfer",
            "--systems",
            "redstage,lua,two-phase",
        ],
    );
    assert!(stdout.contains("| script or command |"), "{stdout}");
    assert!(report["rows"].as_array().is_some_and(Vec::is_empty));
    let profiles = report["redis_time"].as_array().expect("profiles");
    assert_eq!(profiles.len(), 6);
    let calls = |workload: &str, system: &str, store: &str, name: &str| -> f64 {
        let profile = profiles
            .iter()
            .find(|p| p["workload"] == workload && p["system"] == system)
            .unwrap_or_else(|| panic!("no profile of {workload} {system}"));
        assert_eq!(profile["committed"], 20, "{profile}");
        assert!(profile["us_per_txn"].as_f64() > Some(0.0), "{profile}");
        let parts = profile["parts"].as_array().expect("parts");
        parts
            .iter()
            .find(|p| p["store"] == store && p["name"] == name)
            .inspect(|p| assert!(p["commands_per_call"].as_f64() > Some(0.0), "{p}"))
            .map_or(0.0, |p| p["calls_per_txn"].as_f64().expect("calls"))
    };
    // Escrow orders and transfers only adjust strings: the scripts for
    // that shape, and never the general ones after them.
    assert_eq!(calls("order", "redstage", "orders", "LOCK_ADJUSTED"), 1.0);
    assert_eq!(calls("order", "redstage", "ledger", "COMMIT_ADJUSTED"), 1.0);
    assert_eq!(calls("order", "redstage", "orders", "APPLY_ADJUSTED"), 1.0);
    assert_eq!(
        calls("transfer", "redstage", "ledger", "COMMIT_ADJUSTED"),
        1.0
    );
    for name in ["LOCK", "COMMIT", "APPLY"] {
        assert_eq!(calls("order", "redstage", "orders", name), 0.0);
        assert_eq!(calls("order", "redstage", "ledger", name), 0.0);
    }
    assert_eq!(
        calls("transfer", "redstage", "ledger", "LOCK_ADJUSTED"),
        0.0
    );
    assert_eq!(calls("order", "lua", "orders", "order script"), 1.0);
    assert_eq!(calls("transfer", "lua", "orders", "order script"), 1.0);
    for (store, name) in [
        ("orders", "two-phase reserve"),
        ("ledger", "two-phase commit"),
        ("orders", "two-phase apply"),
    ] {
        assert_eq!(calls("order", "two-phase", store, name), 1.0);
    }
    assert_eq!(
        calls("transfer", "two-phase", "ledger", "two-phase commit"),
        1.0
    );
    assert_eq!(
        calls("transfer", "two-phase", "orders", "two-phase reserve"),
        0.0
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs the bench for 200 ms per cell with `args`, writing into `dir`; its
/// stdout, its stderr, and the JSON report.
fn tiny_run(dir: &Path, args: &[&str]) -> (String, String, Value) {
    let out = dir.join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_redstage-bench"))
        .args(["--duration", "200ms"])
        .args(["--skus", "50", "--accounts", "50", "--wasm-calls", "20"])
        .args(args)
        .arg("--components")
        .arg(components())
        .arg("--out")
        .arg(&out)
        .arg("--svg")
        .arg(dir.join("bench.svg"))
        .output()
        .expect("run redstage-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "redstage-bench failed:\n{stdout}\n{stderr}"
    );
    let report =
        serde_json::from_slice(&std::fs::read(&out).expect("the JSON report")).expect("valid JSON");
    (stdout, stderr, report)
}

/// A folder of its own for each test (they run at once).
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redstage-bench-smoke-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// `redstage-floor`, the parts of an order alone: an order posted to it
/// runs both participants and the hand-written two-phase commit for real
/// (the stock and the money move, once), an order the stock does not cover
/// changes nothing, and a body that is not an order is refused.
#[test]
fn the_floor_serves_orders_with_the_parts_alone() {
    use redstage::embedded::{Persistence, RedisServer};
    let orders = RedisServer::start(Persistence::None).expect("redis-server");
    let ledger = RedisServer::start(Persistence::None).expect("redis-server");
    let mut o = redis::Client::open(orders.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut l = redis::Client::open(ledger.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("inventory:stock:sku1")
        .arg(5)
        .query(&mut o)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("payments:balance:c1")
        .arg(100)
        .query(&mut l)
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut floor = Command::new(env!("CARGO_BIN_EXE_redstage-floor"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--orders", &orders.url(), "--ledger", &ledger.url()])
        .arg("--components")
        .arg(components())
        .spawn()
        .expect("run redstage-floor");
    let order = |qty: u32| {
        format!(
            r#"{{"steps":[{{"participant":"inventory","input":{{"op":"deduct","sku":"sku1","qty":{qty}}}}},{{"participant":"payments","input":{{"op":"transfer","from":"c1","to":"m1","amount":30}}}}]}}"#
        )
    };
    let committed = post(port, &order(2));
    let short = post(port, &order(9));
    let refused = post(port, r#"{"steps":[]}"#);
    floor.kill().ok();
    floor.wait().ok();
    assert!(committed.starts_with("HTTP/1.1 200"), "{committed}");
    assert!(committed.contains(r#""status":"committed""#), "{committed}");
    assert!(short.contains(r#""status":"aborted""#), "{short}");
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let get = |c: &mut redis::Connection, k: &str| -> Option<i64> {
        redis::cmd("GET").arg(k).query(c).unwrap()
    };
    assert_eq!(get(&mut o, "inventory:stock:sku1"), Some(3));
    assert_eq!(get(&mut l, "payments:balance:c1"), Some(70));
    assert_eq!(get(&mut l, "payments:balance:m1"), Some(30));
}

/// POSTs `body` to /v1/transactions on `port`, retrying the connection
/// while the server starts; the whole answer.
fn post(port: u16, body: &str) -> String {
    use std::io::{Read, Write};
    let started = std::time::Instant::now();
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("redstage-floor did not listen: {e}"),
        }
    };
    write!(
        stream,
        "POST /v1/transactions HTTP/1.1\r\nHost: floor\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}
