//! A real headless browser for the console's tests: Debian's `chromium`,
//! driven over WebDriver by `chromedriver` (both from apt: `chromium`,
//! `chromium-driver`), on a free loopback port, with a profile of its own.
//! The driver and the browser run in a process group of their own, killed
//! with it when the [`Browser`] is dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the driver gets to start, and a page to reach a state.
pub const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    /// Holds the browser's profile.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session.
    pub async fn start() -> Browser {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("run chromedriver (apt-get install chromium chromium-driver)");
        let profile = tempfile::tempdir().expect("temp dir");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            // A command that hangs fails the test rather than the run.
            http: reqwest::Client::builder()
                .timeout(BROWSER_TIMEOUT * 2)
                .build()
                .expect("an HTTP client"),
            _profile: profile,
        };
        let started = Instant::now();
        while browser
            .http
            .get(format!("{}/status", browser.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < BROWSER_TIMEOUT,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-crash-reporter",
            "--disable-breakpad",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let session = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
                }}}),
            )
            .await;
        let id = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let answer: Value = serde_json::from_str(&response.text().await.expect("an answer"))
            .expect("a WebDriver answer is JSON");
        assert!(status.is_success(), "{method} {path}: {status} {answer}");
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Waits until `expression` is truthy in the page, and returns it;
    /// panics with what the page shows if it does not become so.
    pub async fn wait_for(&self, expression: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self
                .eval(&format!("return ({expression}) || null;"), json!([]))
                .await;
            if !value.is_null() && value != json!(false) {
                return value;
            }
            if started.elapsed() > BROWSER_TIMEOUT {
                let shown = self
                    .eval("return document.body.innerText;", json!([]))
                    .await;
                panic!("the page never showed `{expression}`; it shows:\n{shown}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `selector` names (it must exist).
    pub async fn click(&self, selector: &str) {
        let clicked = self
            .eval(
                "const el = document.querySelector(arguments[0]); if (!el) return false; el.click(); return true;",
                json!([selector]),
            )
            .await;
        assert_eq!(clicked, json!(true), "no element `{selector}` to click");
    }

    /// A PNG of the window, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "/screenshot", Value::Null).await;
        let bytes = decode_base64(png.as_str().expect("base64 PNG"));
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("create the folder");
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and the browser it started: their whole group.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .status();
        let _ = self.driver.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
