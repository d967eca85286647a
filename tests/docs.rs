//! The README's first screens, run as written: the demo prints what the
//! README shows (on durable stores, checked), and its first transaction
//! over HTTP, with its config, its `curl` commands and its Python script,
//! answers what the README shows against a real `serve`.
//!
//! Lines shown in the README may shorten a part that changes from run to
//! run (ids, ports) to `...`; everything else must match exactly.

use std::path::Path;
use std::process::Command;

use redstage_tests::{HostProcess, Persistence, RedisServer, Toolchain};

fn readme() -> String {
    std::fs::read_to_string(redstage_tests::workspace().join("README.md")).expect("read README.md")
}

/// The bodies of the fenced blocks of kind `lang` under the heading
/// `heading` (up to the next `## ` heading), in order.
fn blocks(text: &str, heading: &str, lang: &str) -> Vec<String> {
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no heading `{heading}`"));
    let section = &text[start + heading.len() + 2..];
    let mut section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    let mut found = Vec::new();
    while let Some(at) = section.find(&fence) {
        let body = &section[at + fence.len()..];
        let end = body.find("```").expect("a closed block");
        found.push(body[..end].to_owned());
        section = &body[end + 3..];
    }
    assert!(!found.is_empty(), "no ```{lang} block under `{heading}`");
    found
}

/// Whether `line` is `shown`, where each `...` of `shown` stands for any text.
fn matches(shown: &str, line: &str) -> bool {
    let mut parts = shown.split("...");
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Checks that every line `shown` appears in `output`, in that order.
fn assert_shown_in_order(shown: &str, output: &str) {
    let mut lines = output.lines();
    for expected in shown.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            lines.any(|line| matches(expected, line)),
            "the README shows\n  {expected}\nbut the output (from there on) does not have it:\n{output}"
        );
    }
}

#[test]
fn shortened_lines_match_what_they_stand_for() {
    assert!(matches(
        r#"{"id":"...","status":"committed"}"#,
        r#"{"id":"01a2","status":"committed"}"#
    ));
    assert!(matches(
        "on 127.0.0.1:... for `orders`",
        "on 127.0.0.1:6379 for `orders`"
    ));
    assert!(!matches(
        r#"{"id":"...","status":"committed"}"#,
        r#"{"id":"1","status":"aborted"}"#
    ));
    assert!(!matches("exact", "exact, and more"));
    assert!(matches("exact", "exact"));
}

/// `./scripts/demo.sh` ends in `redstage demo --components
/// target/wasm32-unknown-unknown/release`: run that (on the test build of the binary)
/// and hold it to the README's transcript, durable stores and `checked`
/// durability included.
#[test]
fn the_demo_prints_what_the_readme_shows() {
    let script = std::fs::read_to_string(redstage_tests::workspace().join("scripts/demo.sh"))
        .expect("read scripts/demo.sh");
    assert!(
        script.contains("redstage demo --components target/wasm32-unknown-unknown/release"),
        "scripts/demo.sh no longer runs the command this test runs:\n{script}"
    );
    let out = Command::new(redstage_tests::redstage_binary())
        .args(["demo", "--components"])
        .arg(redstage_tests::components(Toolchain::Sdk))
        .output()
        .expect("run redstage demo");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_shown_in_order(&blocks(&readme(), "## The demo", "text")[0], &stdout);
    assert!(
        !stderr.contains("durability = \"unsafe\""),
        "the demo runs with durability unchecked, which the README says it does not:\n{stderr}"
    );
}

/// The README's config, with its two Redis servers started as its commands
/// start them (AOF `always`) on free ports, served by `redstage serve`, and
/// its `curl` commands run as they are: each answer is the one shown.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_first_transaction_runs_as_shown() {
    let text = readme();
    let heading = "## A first transaction over HTTP";
    let servers: Vec<RedisServer> = (0..2)
        .map(|_| RedisServer::start(Persistence::AofAlways).expect("start redis-server"))
        .collect();
    let commands = blocks(&text, heading, "sh").concat();
    assert!(
        commands.contains("--appendonly yes --appendfsync always"),
        "{commands}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let components = redstage_tests::components(Toolchain::Sdk);
    let config = blocks(&text, heading, "toml")[0]
        .replace("redis://127.0.0.1:6379", &servers[0].url())
        .replace("redis://127.0.0.1:6380", &servers[1].url())
        .replace(
            "\"target/wasm32-unknown-unknown/release/",
            &format!("\"{}/", components.display()),
        )
        .replace(
            "folder = \"participants\"",
            &format!("folder = {:?}", dir.path().join("participants")),
        );
    assert!(
        config.contains(&*components.to_string_lossy()) && !config.contains("6379"),
        "the README's config changed shape: {config}"
    );
    let path = dir.path().join("redstage.toml");
    std::fs::write(&path, &config).expect("write the config");
    let host = HostProcess::start(&path, None);

    let shown = &blocks(&text, heading, "text")[0];
    let mut answers = String::new();
    let mut last_id = String::new();
    for line in commands.lines().filter(|l| l.starts_with("curl ")) {
        let line = line
            .replace("localhost:7878", &host.addr.to_string())
            .replace(
                "/v1/transactions/ID",
                &format!("/v1/transactions/{last_id}"),
            );
        let out = run_sh(&line, dir.path());
        let answer: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{line}: not JSON ({e}): {out}"));
        if let Some(id) = answer["id"].as_str() {
            last_id = id.to_owned();
        }
        answers.push_str(out.trim());
        answers.push('\n');
    }
    assert_eq!(shown.lines().count(), answers.lines().count(), "{answers}");
    for (expected, line) in shown.lines().zip(answers.lines()) {
        assert!(
            matches(expected, line),
            "the README shows\n  {expected}\nbut serve answered\n  {line}"
        );
    }

    // The same order from Python, printing what the script's comment says.
    let script = blocks(&text, heading, "python")[0]
        .replace("http://127.0.0.1:7878", &format!("http://{}", host.addr));
    let printed = script
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("print(")?
                .split_once("# ")
                .map(|(_, p)| p)
        })
        .expect("the script shows what it prints");
    let out = Command::new(redstage_tests::python::python())
        .args(["-c", &script])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), printed);
}

fn run_sh(line: &str, dir: &Path) -> String {
    let out = Command::new("sh")
        .args(["-c", line])
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
