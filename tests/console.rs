//! The web console in a real headless browser (chromium over WebDriver)
//! against a real `serve` with tokens: every page loads and shows what the
//! host knows, a transaction stuck at a fault point is listed and resolved
//! from the page (rolled forward in Redis), a deploy shows in the
//! participant view and is rolled back from it. Each page's screenshot is
//! written to `target/console-screenshots/` (the docs show them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use redstage_tests::browser::Browser;
use redstage_tests::http::request_as;
use redstage_tests::{
    ParticipantSpec, Persistence, TestEnv, Toolchain, component_file, components,
};
use serde_json::{Value, json};

const VIEWER: &str = "viewer-token-0123456789";
const OPS: &str = "ops-token-0123456789abcdef";

/// Two tokens (one that sees, one that acts), a deploy folder, and a lease
/// long enough that a stuck transaction waits for the page, not recovery.
fn env(folder: &std::path::Path) -> TestEnv {
    let extra = format!(
        "[txn]\nlease_ms = 120000\n\
         [deploy]\nfolder = {:?}\n\
         [[auth.tokens]]\nname = \"viewer\"\ntoken = \"{VIEWER}\"\nscopes = [\"read\"]\n\
         [[auth.tokens]]\nname = \"ops\"\ntoken = \"{OPS}\"\nscopes = [\"read\", \"submit\", \"deploy\"]\n",
        folder.display().to_string()
    );
    TestEnv::start_with(
        &["orders", "ledger"],
        &[
            ParticipantSpec::example("inventory", "inventory", "orders", "inventory:"),
            ParticipantSpec::example("payments", "payments", "ledger", "payments:"),
        ],
        &extra,
        Persistence::None,
    )
}

fn order() -> Value {
    json!({"steps": [
        {"participant": "inventory", "input": {"op": "deduct", "sku": "A1", "qty": 1}},
        {"participant": "payments", "input": {"op": "transfer", "from": "alice", "to": "shop", "amount": 3}},
    ]})
}

async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Value {
    let (status, _, reply) = request_as(addr, Some(OPS), "POST", path, body).await;
    assert_eq!(status, 200, "{path}: {reply}");
    reply
}

async fn deploy(addr: SocketAddr, component: &str) -> String {
    let bytes =
        std::fs::read(components(Toolchain::CargoComponent).join(component_file(component)))
            .expect("a test component");
    let path = "/v1/participants/counter?store=orders&prefix=counter:";
    let (status, _, reply) = request_as(addr, Some(OPS), "PUT", path, &bytes).await;
    assert_eq!(status, 200, "{reply}");
    reply["version"]["digest"]
        .as_str()
        .expect("a digest")
        .to_owned()
}

fn screenshots() -> PathBuf {
    redstage_tests::workspace().join("target/console-screenshots")
}

/// Opens `page` of the console (a hash route) and waits until it has loaded.
async fn open(browser: &Browser, addr: SocketAddr, page: &str) {
    browser
        .goto(&format!("http://{addr}/console#/{page}"))
        .await;
    let name = page.split('/').next().unwrap_or(page);
    browser
        .wait_for(&format!("document.body.dataset.ready === {name:?}"))
        .await;
}

/// Enters `token` in the page's token field, as an operator would.
async fn use_token(browser: &Browser, token: &str) {
    browser
        .eval(
            "document.getElementById('token').value = arguments[0];
             document.getElementById('token-form').requestSubmit(); return true;",
            json!([token]),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_host_its_participants_and_stores() {
    let folder = tempfile::tempdir().expect("temp dir");
    let env = env(folder.path());
    env.stock_and_fund("A1", 100_000, "alice", 1_000_000).await;
    let host = env.spawn_host(None);
    let browser = Browser::start().await;

    // Without a token the page says what it needs.
    open(&browser, host.addr, "overview").await;
    browser
        .wait_for("document.querySelector('[data-error=unauthorized]')")
        .await;

    // Orders run while the overview scrapes, so its charts have rates.
    use_token(&browser, VIEWER).await;
    let addr = host.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = stop.clone();
    let load = tokio::spawn(async move {
        let (mut last, mut n) = (Value::Null, 0);
        while !running.load(std::sync::atomic::Ordering::Relaxed) {
            // One in five cannot be paid: aborts by code have a line too.
            let mut body = order();
            if n % 5 == 4 {
                body["steps"][1]["input"]["amount"] = json!(10_000_000);
            }
            let reply = post(addr, "/v1/transactions", body.to_string().as_bytes()).await;
            if reply["status"] == "committed" {
                last = reply;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    });
    browser
        .wait_for("Number(document.getElementById('main').dataset.loaded) >= 5")
        .await;
    browser
        .wait_for("document.querySelector('[data-chart=Throughput]')")
        .await;
    browser
        .screenshot(&screenshots().join("overview.png"))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = load.await.expect("the load ran");

    // One transaction by its id.
    let id = last["id"].as_str().expect("an id");
    open(&browser, host.addr, &format!("transaction/{id}")).await;
    browser
        .wait_for(&format!(
            "document.querySelector('[data-detail=\"{id}\"][data-status=committed]')"
        ))
        .await;
    browser
        .screenshot(&screenshots().join("transaction.png"))
        .await;

    // A deploy shows in the participant view.
    let digest = deploy(host.addr, "counter-v1").await;
    open(&browser, host.addr, "participants").await;
    let shown = browser
        .wait_for("document.querySelector('[data-participant=counter]')?.innerText")
        .await;
    assert!(
        shown
            .as_str()
            .unwrap()
            .contains(&digest["sha256:".len()..][..12]),
        "{shown}"
    );
    browser
        .screenshot(&screenshots().join("participants.png"))
        .await;

    // Stores, with their health and the durability check.
    open(&browser, host.addr, "stores").await;
    for store in ["orders", "ledger"] {
        browser
            .wait_for(&format!(
                "document.querySelector('[data-store={store}][data-health=ready]')"
            ))
            .await;
    }
    browser
        .wait_for("document.querySelector('[data-ready=ready]')")
        .await;
    browser.screenshot(&screenshots().join("stores.png")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_transaction_is_resolved_and_a_deploy_rolled_back_from_the_console() {
    let folder = tempfile::tempdir().expect("temp dir");
    let env = env(folder.path());
    env.stock_and_fund("A1", 10, "alice", 100).await;
    let host = env.spawn_host(None);

    // An order stopped after its commit point (decided, the primary
    // applied, `orders` not), its host killed there; and one stopped before
    // its decision.
    let mut stuck = Vec::new();
    for point in ["after-decide", "after-prepare"] {
        let mut doomed = env.spawn_host(Some(point));
        let addr = doomed.addr;
        let _request = tokio::spawn(async move {
            let body = order().to_string();
            request_as(addr, Some(OPS), "POST", "/v1/transactions", body.as_bytes()).await
        });
        doomed.wait_for_point(point).await;
        doomed.kill();
        let holders = env.lock_holders();
        let id = holders
            .into_iter()
            .find(|h| !stuck.contains(h))
            .expect("the stuck order holds locks");
        stuck.push(id);
    }
    let (decided, undecided) = (stuck[0].clone(), stuck[1].clone());

    let browser = Browser::start().await;
    open(&browser, host.addr, "in-doubt").await;
    use_token(&browser, VIEWER).await;
    browser
        .wait_for(&format!(
            "document.querySelector('[data-txn=\"{decided}\"][data-kind=applying]')"
        ))
        .await;
    browser
        .wait_for(&format!(
            "document.querySelector('[data-txn=\"{undecided}\"][data-kind=in_doubt]')"
        ))
        .await;
    browser
        .screenshot(&screenshots().join("in-doubt.png"))
        .await;

    open(&browser, host.addr, "locks").await;
    browser
        .wait_for(&format!(
            "[...document.querySelectorAll('[data-lock]')].some(r => r.innerText.includes({decided:?}))"
        ))
        .await;
    browser.screenshot(&screenshots().join("locks.png")).await;

    // A token that may only see cannot resolve: the page says so.
    open(&browser, host.addr, "in-doubt").await;
    let resolve = format!("[data-txn=\"{decided}\"] [data-action=resolve]");
    browser.click(&resolve).await;
    browser
        .wait_for("document.querySelector('[data-action=resolve-now]')")
        .await;
    browser.click("[data-action=resolve-now]").await;
    browser
        .wait_for("document.querySelector('[data-error=forbidden]')")
        .await;

    // With one that may act, it rolls the order forward on `orders`.
    use_token(&browser, OPS).await;
    browser
        .wait_for("document.body.dataset.ready === 'in-doubt'")
        .await;
    browser.click(&resolve).await;
    browser
        .wait_for("document.querySelector('[data-action=resolve-now]')")
        .await;
    browser.click("[data-action=resolve-now]").await;
    browser
        .wait_for(&format!(
            "document.querySelector('[data-resolved=\"{decided}\"][data-decision=committed]')"
        ))
        .await;
    browser
        .screenshot(&screenshots().join("resolved.png"))
        .await;
    let stock = redis::cmd("GET")
        .arg("inventory:stock:A1")
        .query::<Option<String>>(&mut env.redis("orders"))
        .expect("GET");
    assert_eq!(
        stock.as_deref(),
        Some("9"),
        "the order was not rolled forward"
    );
    assert!(!env.lock_holders().contains(&decided));

    // A deploy, then another, rolled back from the participant's page.
    let first = deploy(host.addr, "counter-v1").await;
    let second = deploy(host.addr, "counter-v2").await;
    open(&browser, host.addr, "participants/counter").await;
    browser
        .wait_for(&format!(
            "document.querySelector('[data-current=\"{second}\"]')"
        ))
        .await;
    browser.click("[data-action=rollback-now]").await;
    browser
        .wait_for(&format!(
            "document.querySelector('[data-current=\"{first}\"]')"
        ))
        .await;
    browser
        .screenshot(&screenshots().join("participant.png"))
        .await;
}
