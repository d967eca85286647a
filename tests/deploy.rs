//! Deploys: a participant shipped to a running server over HTTP, checked
//! before it replaces anything, listed with its version, kept in the deploy
//! folder across restarts, swapped under load without failing a
//! transaction, and loaded by hosts that watch the same folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redstage::txn::types::Status;
use redstage_tests::{TestEnv, Toolchain, component_file, components, http, request, step};
use serde_json::{Value, json};

/// The bound on a component in these tests: room for the test components
/// (about 4.3 MB each), well under the default 16 MiB.
const COMPONENT_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The orders environment, with a deploy folder (returned) watched often.
fn env_with_folder() -> (TestEnv, tempfile::TempDir) {
    TestEnv::orders_with_folder(&format!(
        "poll_ms = 100\ncomponent_bytes_max = {COMPONENT_BYTES_MAX}\n"
    ))
}

fn counter(version: u32) -> Vec<u8> {
    let path =
        components(Toolchain::CargoComponent).join(component_file(&format!("counter-v{version}")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const COUNTER_AT: &str = "store=orders&prefix=counter%3A";

async fn put(addr: SocketAddr, name: &str, query: &str, bytes: &[u8]) -> (u16, Value) {
    http::request(
        addr,
        "PUT",
        &format!("/v1/participants/{name}?{query}"),
        bytes,
    )
    .await
}

fn bump(counter: &str) -> Value {
    step("counter", json!({"op": "bump", "counter": counter}))
}

/// The version each step of a committed transaction ran, checked to be one.
fn version_of(r: &redstage::txn::types::TxnResponse) -> i64 {
    assert_eq!(r.status, Status::Committed, "{r:?}");
    let versions: Vec<i64> = r
        .steps
        .iter()
        .map(|s| s.output["version"].as_i64().expect("a version"))
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] == w[1]),
        "one transaction ran two versions: {r:?}"
    );
    versions[0]
}

/// The entries of the deploy folder (not its kept versions and history).
fn files(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_deploy_is_checked_listed_used_kept_and_removed() {
    let (env, folder) = env_with_folder();
    let api = http::serve(env.coordinator.clone()).await;

    let (status, listing) = http::get(api, "/v1/participants").await;
    assert_eq!(status, 200, "{listing}");
    let names: Vec<&str> = listing["participants"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["inventory", "payments"]);
    assert_eq!(listing["participants"][0]["version"]["source"], "config");

    // Refusals, each with its code; none leaves anything behind.
    let v1 = counter(1);
    let truncated = &v1[..v1.len() / 2];
    let refusals: [(&str, &str, &[u8], u16, &str); 8] = [
        (
            "counter",
            COUNTER_AT,
            b"\0asm but not really",
            422,
            "invalid_component",
        ),
        ("counter", COUNTER_AT, truncated, 422, "invalid_component"),
        (
            "counter",
            "store=nowhere&prefix=c%3A",
            &v1,
            400,
            "bad_manifest",
        ),
        (
            "counter",
            "store=orders&prefix=inventory%3Ax",
            &v1,
            400,
            "bad_manifest",
        ),
        (
            "counter",
            "store=orders&prefix=rs%3A",
            &v1,
            400,
            "bad_manifest",
        ),
        ("counter", "store=orders", &v1, 400, "bad_manifest"),
        ("bad.name", COUNTER_AT, &v1, 400, "bad_participant_name"),
        ("inventory", COUNTER_AT, &v1, 409, "configured_in_file"),
    ];
    for (name, query, bytes, status, code) in refusals {
        let (got, reply) = put(api, name, query, bytes).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str()),
            (status, Some(code)),
            "{name}?{query}: {reply}"
        );
    }
    let (status, reply) = put(
        api,
        "counter",
        COUNTER_AT,
        &vec![0; COMPONENT_BYTES_MAX + 1],
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (413, Some("component_too_large")),
        "{reply}"
    );
    let limits = "&limits=%7B%22memory_max%22%3A1%7D"; // {"memory_max":1}
    let (status, reply) = put(api, "counter", &format!("{COUNTER_AT}{limits}"), &v1).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (400, Some("bad_manifest")),
        "{reply}"
    );
    assert!(
        files(folder.path()).is_empty(),
        "{:?}",
        files(folder.path())
    );

    // The deploy, with a limit of its own.
    let limits = "&limits=%7B%22call_time_ms%22%3A50%7D"; // {"call_time_ms":50}
    let (status, deployed) = put(api, "counter", &format!("{COUNTER_AT}{limits}"), &v1).await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["name"], "counter");
    assert_eq!(deployed["version"]["source"], "folder");
    assert_eq!(deployed["limits"]["call_time_ms"], 50);
    let digest = deployed["version"]["digest"]
        .as_str()
        .expect("a digest")
        .to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(files(folder.path()), ["counter.toml", "counter.wasm"]);
    let r = env.run(json!([bump("a")])).await;
    assert_eq!(version_of(&r), 1);
    assert_eq!(
        env.get("orders", "counter:count:a").await.as_deref(),
        Some("1")
    );

    // Another host (a restart, as far as it knows) loads it from the folder.
    let other = env.second_host();
    let r = other.run(request(json!([bump("a")]))).await.expect("runs");
    assert_eq!(version_of(&r), 1);
    let listed = other.registry().list();
    let counter_entry = listed
        .participants
        .iter()
        .find(|p| p.name == "counter")
        .expect("listed");
    assert_eq!(counter_entry.version.digest, digest);
    assert!(listed.errors.is_empty(), "{:?}", listed.errors);

    // Removal.
    let (status, reply) = http::request(api, "DELETE", "/v1/participants/counter", b"").await;
    assert_eq!(status, 200, "{reply}");
    let err = env
        .coordinator
        .run(request(json!([bump("a")])))
        .await
        .expect_err("gone");
    assert_eq!(err.code(), "unknown_participant");
    let (status, reply) = http::request(api, "DELETE", "/v1/participants/counter", b"").await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (404, Some("unknown_participant"))
    );
    let (status, reply) = http::request(api, "DELETE", "/v1/participants/payments", b"").await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (409, Some("configured_in_file"))
    );
    assert!(files(folder.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_swapped_in_under_load_fails_no_transaction() {
    const TASKS: usize = 4;
    let (env, _folder) = env_with_folder();
    let api = http::serve(env.coordinator.clone()).await;
    let (status, reply) = put(api, "counter", COUNTER_AT, &counter(1)).await;
    assert_eq!(status, 200, "{reply}");

    let stop = Arc::new(AtomicBool::new(false));
    let deployed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (host, stop, deployed_at) =
                (env.coordinator.clone(), stop.clone(), deployed_at.clone());
            tokio::spawn(async move {
                let name = format!("c{t}");
                let mut versions = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    // Two steps on one counter: both must run one version.
                    let r = host
                        .run(request(json!([bump(&name), bump(&name)])))
                        .await
                        .expect("runs");
                    let version = version_of(&r);
                    let after_deploy = deployed_at
                        .lock()
                        .expect("lock")
                        .is_some_and(|at| started > at);
                    if after_deploy {
                        assert_eq!(version, 2, "started after the deploy, ran the old version");
                    }
                    versions.push(version);
                }
                (name, versions)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, reply) = put(api, "counter", COUNTER_AT, &counter(2)).await;
    assert_eq!(status, 200, "{reply}");
    *deployed_at.lock().expect("lock") = Some(Instant::now());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let (mut old, mut new) = (0, 0);
    for task in tasks {
        let (name, versions) = task.await.expect("task");
        // Once a task saw the new version, it never saw the old one again.
        let first_new = versions
            .iter()
            .position(|&v| v == 2)
            .expect("saw version 2");
        assert!(
            versions[first_new..].iter().all(|&v| v == 2),
            "{versions:?}"
        );
        let ones = versions.iter().filter(|&&v| v == 1).count() as i64;
        let twos = versions.len() as i64 - ones;
        // And the counter holds exactly what the versions reported adding.
        assert_eq!(
            env.get("orders", &format!("counter:count:{name}")).await,
            Some((2 * ones + 2000 * twos).to_string())
        );
        old += ones;
        new += twos;
    }
    assert!(old > 0 && new > 0, "old {old}, new {new}");
    println!("swap under load: {old} transactions on version 1, {new} on version 2, none failed");
}

/// Deploys back to back, alternating two versions, while transactions of
/// many steps on one participant run: every transaction runs one version from
/// its first step to its last, whichever deploy lands as it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_back_to_back_never_split_a_transaction_across_versions() {
    const TASKS: usize = 3;
    const STEPS: usize = 16;
    const DEPLOYS: usize = 30;
    let (env, _folder) = env_with_folder();
    let api = http::serve(env.coordinator.clone()).await;
    let versions = [counter(1), counter(2)];
    let (status, reply) = put(api, "counter", COUNTER_AT, &versions[0]).await;
    assert_eq!(status, 200, "{reply}");

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (host, stop) = (env.coordinator.clone(), stop.clone());
            tokio::spawn(async move {
                let name = format!("c{t}");
                let steps: Vec<Value> = (0..STEPS).map(|_| bump(&name)).collect();
                let mut added = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = host.run(request(json!(steps))).await.expect("runs");
                    // Version 1 adds 1 a step, version 2 adds 1000.
                    added += STEPS as i64 * if version_of(&r) == 1 { 1 } else { 1000 };
                }
                (name, added)
            })
        })
        .collect();
    for i in 0..DEPLOYS {
        let (status, reply) = put(api, "counter", COUNTER_AT, &versions[(i + 1) % 2]).await;
        assert_eq!(status, 200, "deploy {i}: {reply}");
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let (name, added) = task.await.expect("task");
        assert!(added > 0, "{name} ran no transaction");
        assert_eq!(
            env.get("orders", &format!("counter:count:{name}")).await,
            Some(added.to_string())
        );
    }
}

/// Waits until `check` holds for the host's listing.
async fn listing_until(addr: SocketAddr, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (_, listing) = http::get(addr, "/v1/participants").await;
        if check(&listing) {
            return listing;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{listing}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn version_named(listing: &Value, name: &str) -> Option<String> {
    listing["participants"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["version"]["digest"].as_str().expect("digest").to_owned())
}

#[tokio::test]
async fn a_server_watches_its_folder() {
    let (env, folder) = env_with_folder();
    let host = env.spawn_host(None);
    let write = |name: &str, bytes: &[u8]| {
        let path: PathBuf = folder.path().join(name);
        std::fs::write(&path, bytes).expect("write into the folder");
    };

    // An operator copies a participant in, by hand (no digest in the
    // manifest).
    write(
        "counter.toml",
        b"store = \"orders\"\nprefix = \"counter:\"\n",
    );
    write("counter.wasm", &counter(1));
    let listing = listing_until(host.addr, |l| version_named(l, "counter").is_some()).await;
    let v1 = version_named(&listing, "counter").expect("listed");
    let body = json!({"steps": [bump("x")]}).to_string();
    let (_, reply) = http::post(host.addr, "/v1/transactions", body.as_bytes()).await;
    assert_eq!(reply["steps"][0]["output"]["version"], 1, "{reply}");

    // A broken manifest is listed as an error; the loaded version runs on.
    write("counter.toml", b"store = \"orders\"\nprefix = 7\n");
    let listing = listing_until(host.addr, |l| l["errors"]["counter"].is_string()).await;
    assert!(
        listing["errors"]["counter"]
            .as_str()
            .is_some_and(|e| e.contains("counter.toml")),
        "{listing}"
    );
    assert_eq!(version_named(&listing, "counter").as_deref(), Some(&*v1));

    // Fixed, with a new component: the new version, no error.
    write("counter.wasm", &counter(2));
    write(
        "counter.toml",
        b"store = \"orders\"\nprefix = \"counter:\"\n",
    );
    let listing = listing_until(host.addr, |l| {
        version_named(l, "counter").is_some_and(|v| v != v1) && l["errors"] == json!({})
    })
    .await;
    assert!(version_named(&listing, "counter").is_some());
    let (_, reply) = http::post(host.addr, "/v1/transactions", body.as_bytes()).await;
    assert_eq!(reply["steps"][0]["output"]["version"], 2, "{reply}");
    assert_eq!(
        env.get("orders", "counter:count:x").await.as_deref(),
        Some("1001")
    );

    // Deleted: gone.
    std::fs::remove_file(folder.path().join("counter.wasm")).expect("remove");
    std::fs::remove_file(folder.path().join("counter.toml")).expect("remove");
    listing_until(host.addr, |l| version_named(l, "counter").is_none()).await;

    // `redstage deploy`, the command line client.
    let deploy = |name: &str, prefix: &str| {
        std::process::Command::new(redstage_tests::workspace().join("target/debug/redstage"))
            .args(["deploy", "--server", &format!("http://{}", host.addr)])
            .args(["--store", "orders", "--prefix", prefix, name])
            .arg(components(Toolchain::CargoComponent).join(component_file("counter-v2")))
            .output()
            .expect("run redstage deploy")
    };
    let out = deploy("tally", "tally:");
    assert!(out.status.success(), "{out:?}");
    let deployed: Value = serde_json::from_slice(&out.stdout).expect("the new version as JSON");
    assert_eq!(deployed["name"], "tally");
    let out = deploy("tally2", "inventory:");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let refusal: Value = serde_json::from_slice(&out.stdout).expect("the refusal as JSON");
    assert_eq!(refusal["error"]["code"], "bad_manifest", "{refusal}");
    assert!(std::fs::exists(folder.path().join("tally.wasm")).expect("stat"));
}

/// Deploy tokens held to some participants and stores, and what a deploy
/// leaves: kept versions (at most `deploy.versions_max`), a history naming
/// who did what, and rollbacks that go one version back each, as a deploy
/// of that version would.
#[tokio::test]
async fn rollbacks_go_back_a_version_each_and_deploy_tokens_keep_to_their_scope() {
    const CI: &str = "ci-0123456789abcdef";
    const ADMIN: &str = "admin-0123456789abcdef";
    const VIEWER: &str = "viewer-0123456789abcdef";
    let tokens = r#"poll_ms = 100
versions_max = 2
[[auth.tokens]]
name = "ci"
token = "ci-0123456789abcdef"
scopes = ["deploy"]
participants = ["counter"]
stores = ["orders"]
[[auth.tokens]]
name = "admin"
token = "admin-0123456789abcdef"
scopes = ["deploy", "submit"]
[[auth.tokens]]
name = "viewer"
token = "viewer-0123456789abcdef"
scopes = ["read"]
"#;
    let (env, folder) = TestEnv::orders_with_folder(tokens);
    let host = env
        .launch_host(&redstage_tests::Launch::default())
        .expect("serves");
    let addr = host.addr;
    let put_as = |token: &'static str, name: &'static str, query: &'static str, bytes: Vec<u8>| async move {
        let path = format!("/v1/participants/{name}?{query}");
        let (status, _, body) = http::request_as(addr, Some(token), "PUT", &path, &bytes).await;
        (status, body)
    };
    let post_as = |token: &'static str, path: String| async move {
        let (status, _, body) = http::request_as(addr, Some(token), "POST", &path, b"").await;
        (status, body)
    };
    let register =
        std::fs::read(components(Toolchain::CargoComponent).join(component_file("register")))
            .expect("the register component");

    // Out of its scope, a deploy token is refused, naming what it lacks.
    let (status, reply) = put_as(CI, "counter", "store=ledger&prefix=counter%3A", counter(1)).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (403, &json!("forbidden")),
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("store `ledger`")),
        "{reply}"
    );
    let (status, reply) = put_as(CI, "other", COUNTER_AT, counter(1)).await;
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("participant `other`")),
        "{reply}"
    );
    let (status, _) = put_as(VIEWER, "counter", COUNTER_AT, counter(1)).await;
    assert_eq!(status, 403);

    // Three versions; two are kept.
    let mut digests = Vec::new();
    for (token, bytes) in [(CI, counter(1)), (CI, counter(2)), (ADMIN, register)] {
        let (status, reply) = put_as(token, "counter", COUNTER_AT, bytes).await;
        assert_eq!(status, 200, "{reply}");
        digests.push(
            reply["version"]["digest"]
                .as_str()
                .expect("a digest")
                .to_owned(),
        );
    }
    let (status, _, detail) =
        http::request_as(addr, Some(VIEWER), "GET", "/v1/participants/counter", b"").await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(
        (&detail["store"], &detail["prefix"]),
        (&json!("orders"), &json!("counter:"))
    );
    assert_eq!(detail["version"]["digest"], json!(digests[2]));
    let kept: Vec<(&str, bool)> = detail["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["digest"].as_str().unwrap(),
                v["current"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [(&*digests[2], true), (&*digests[1], false)],
        "{detail}"
    );
    let history: Vec<(&str, &str, &str)> = detail["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["action"].as_str().unwrap(),
                h["digest"].as_str().unwrap(),
                h["by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("deploy", &*digests[2], "admin"),
            ("deploy", &*digests[1], "ci"),
            ("deploy", &*digests[0], "ci")
        ],
        "newest first: {detail}"
    );

    // A rollback: the version before, current on this host at once, and
    // what the next transaction runs; seeing is not enough to do it.
    let rollback = "/v1/participants/counter/rollback".to_owned();
    let (status, _) = post_as(VIEWER, rollback.clone()).await;
    assert_eq!(status, 403);
    let (status, reply) = post_as(CI, rollback.clone()).await;
    assert_eq!(
        (status, &reply["version"]["digest"]),
        (200, &json!(digests[1])),
        "{reply}"
    );
    let bump =
        json!({"steps": [step("counter", json!({"op": "bump", "counter": "c"}))]}).to_string();
    let (status, _, ran) = http::request_as(
        addr,
        Some(ADMIN),
        "POST",
        "/v1/transactions",
        bump.as_bytes(),
    )
    .await;
    assert_eq!(
        (status, &ran["steps"][0]["output"]["version"]),
        (200, &json!(2)),
        "{ran}"
    );
    // Version 1 is no longer kept: there is nothing before this one.
    let (status, reply) = post_as(ADMIN, rollback.clone()).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (409, &json!("no_previous_version")),
        "{reply}"
    );
    // The command says the same.
    let out = std::process::Command::new(redstage_tests::redstage_binary())
        .args(["--server", &format!("http://{addr}"), "--token", ADMIN])
        .args(["deploy", "--rollback", "counter"])
        .output()
        .expect("run redstage deploy --rollback");
    let reply: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (out.status.code(), &reply["error"]["code"]),
        (Some(1), &json!("no_previous_version"))
    );
    let (_, _, detail) =
        http::request_as(addr, Some(VIEWER), "GET", "/v1/participants/counter", b"").await;
    assert_eq!(detail["history"][0]["action"], "rollback", "{detail}");
    assert_eq!(detail["history"][0]["by"], "ci", "{detail}");
    let logged = host.stderr().iter().any(|l| {
        l.contains("rolled back")
            && l.contains("token=ci")
            && l.contains(&digests[1])
            && l.contains("store=orders")
    });
    assert!(logged, "{:?}", host.stderr());

    // Another host on the same folder runs the rolled-back version too.
    let other = env
        .launch_host(&redstage_tests::Launch::default())
        .expect("serves");
    let (_, _, listing) = http::request_as(
        other.addr,
        Some(VIEWER),
        "GET",
        "/v1/participants/counter",
        b"",
    )
    .await;
    assert_eq!(listing["version"]["digest"], json!(digests[1]), "{listing}");
    // Only the versions a rollback could reach are kept: version 1 went
    // past versions_max, the rolled back one went with its rollback.
    let mut kept_files = files(&folder.path().join(".history/counter"));
    kept_files.retain(|f| f.ends_with(".wasm"));
    let current = digests[1].trim_start_matches("sha256:");
    assert_eq!(kept_files, [format!("{current}.wasm")]);
}
