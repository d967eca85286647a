//! Hostile participants, one component per misdeed (`tests/components/`),
//! and files that are no participant at all.
//!
//! For each: the exact error (the abort code, and the limit when one was
//! broken, or the load error saying what is wrong with the file), the same
//! host committing a normal transaction right after, and nothing in Redis
//! from the hostile transaction: no data, no lock, no staged value.

use std::time::{Duration, Instant};

use redstage::config::Config;
use redstage::txn::types::{AbortInfo, Status};
use redstage_tests::{
    ParticipantSpec, Persistence, TestEnv, Toolchain, component_file, components, config_text, step,
};
use serde_json::{Value, json};

/// The one store; it keeps the transaction log too.
const STORE: &str = "data";

/// Name, component (by package) and key prefix of every participant: the
/// hostile ones, some twice under limits of their own, and the well-behaved
/// `doctors`, also twice more with limits too tight for it.
const PARTICIPANTS: &[(&str, &str, &str)] = &[
    ("doctors", "oncall", "doctors:"),
    ("crowded_doctors", "oncall", "crowded:"),
    ("cramped_doctors", "oncall", "cramped:"),
    ("infinite_loop", "infinite-loop", "loop:"),
    ("slow_loop", "infinite-loop", "slow:"),
    ("memory_bomb", "memory-bomb", "bomb:"),
    ("deep_recursion", "deep-recursion", "deep:"),
    ("panics", "panics", "panics:"),
    ("huge_output", "huge-output", "huge:"),
    ("roomy_output", "huge-output", "roomy:"),
    ("many_keys", "many-writes", "keys:"),
    ("many_writes", "many-writes", "writes:"),
    ("undeclared_write", "undeclared-write", "undeclared:"),
    ("odd_keys", "odd-keys", "odd:"),
    ("wasi_access", "wasi-access", "wasi:"),
];

/// Some participants get limits of their own; the rest keep the defaults.
const LIMITS: &str = r#"
[participants.infinite_loop.limits]
call_time_ms = 200
[participants.crowded_doctors.limits]
instances_max = 2
[participants.cramped_doctors.limits]
memory_bytes_max = 65536
[participants.slow_loop.limits]
call_time_ms = 3000
[participants.roomy_output.limits]
output_bytes_max = 4194304
[participants.many_writes.limits]
keys_max = 10000
"#;

fn specs() -> Vec<ParticipantSpec> {
    PARTICIPANTS
        .iter()
        .map(|(name, package, prefix)| ParticipantSpec::example(name, package, STORE, prefix))
        .collect()
}

fn env() -> TestEnv {
    TestEnv::start_with(&[STORE], &specs(), LIMITS, Persistence::None)
}

/// A well-behaved step that writes: it must not survive a hostile step
/// after it in the same transaction.
fn join(doctor: &str) -> Value {
    step("doctors", json!({"op": "join", "doctor": doctor}))
}

/// Everything in the store but the decision log.
async fn data(env: &TestEnv) -> Vec<(String, String)> {
    env.dump(STORE)
        .await
        .into_iter()
        .filter(|(k, _)| !k.starts_with("rs:txn:"))
        .collect()
}

/// The host still commits a normal transaction, and its write is there.
async fn still_serving(env: &TestEnv) {
    let r = env.run(json!([join("carol")])).await;
    assert_eq!(r.status, Status::Committed, "{r:?}");
    assert_eq!(
        env.get(STORE, "doctors:oncall:carol").await.as_deref(),
        Some("1")
    );
}

/// Runs `hostile` as the second step of a transaction whose first step
/// writes, and checks that it aborts at that step, leaves Redis as it was,
/// and leaves the host serving. Returns the abort.
async fn contained(env: &TestEnv, hostile: Value) -> AbortInfo {
    let before = data(env).await;
    let r = env.run(json!([join("alice"), hostile])).await;
    assert_eq!(r.status, Status::Aborted, "{r:?}");
    let abort = r.abort.expect("an aborted transaction says why");
    assert_eq!(abort.step, Some(1), "{abort:?}");
    assert_eq!(
        data(env).await,
        before,
        "the hostile transaction changed Redis"
    );
    assert_eq!(env.get(STORE, "doctors:oncall:alice").await, None);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    still_serving(env).await;
    abort
}

/// Asserts `abort` is `limit_exceeded` of `limit` by `participant`, with
/// `bound` in its message.
fn assert_limit(abort: &AbortInfo, participant: &str, limit: &str, bound: &str) {
    assert_eq!(
        (abort.code.as_str(), abort.limit.as_deref()),
        ("limit_exceeded", Some(limit)),
        "{abort:?}"
    );
    assert_eq!(abort.participant.as_deref(), Some(participant));
    assert!(
        abort.message.contains(participant) && abort.message.contains(bound),
        "{}",
        abort.message
    );
}

/// Asserts `abort` is a `trap` of `participant` whose message says `what`.
fn assert_trap(abort: &AbortInfo, participant: &str, what: &str) {
    assert_eq!(abort.code, "trap", "{abort:?}");
    assert!(
        abort.message.contains(participant) && abort.message.contains(what),
        "{}",
        abort.message
    );
}

#[tokio::test]
async fn an_infinite_loop_runs_out_of_time() {
    let env = env();
    let started = Instant::now();
    let abort = contained(&env, step("infinite_loop", json!({}))).await;
    assert_limit(&abort, "infinite_loop", "time", "200 ms per call");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `#[tokio::test]` runs on one thread: if the loop held it, or kept the
/// runtime from polling its sockets, nothing else could finish until the
/// loop's time was up.
#[tokio::test]
async fn a_looping_participant_does_not_hold_the_runtime() {
    let env = env();
    let coordinator = env.coordinator.clone();
    let started = Instant::now();
    let looping = tokio::spawn(async move {
        let steps = json!([step("slow_loop", json!({}))]);
        coordinator.run(redstage_tests::request(steps)).await
    });
    // Time for the loop to start: its transaction needs a few milliseconds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serving(&env).await;
    assert!(
        !looping.is_finished() && started.elapsed() < Duration::from_millis(3000),
        "the normal transaction waited for the loop"
    );
    let r = looping.await.expect("task").expect("ran");
    assert_limit(
        r.abort.as_ref().expect("aborted"),
        "slow_loop",
        "time",
        "3000 ms",
    );
    assert!(started.elapsed() >= Duration::from_millis(3000));
}

#[tokio::test]
async fn a_memory_bomb_runs_out_of_memory() {
    let env = env();
    let abort = contained(&env, step("memory_bomb", json!({}))).await;
    assert_limit(&abort, "memory_bomb", "memory", "67108864 bytes");
}

#[tokio::test]
async fn deep_recursion_overflows_the_stack_as_a_trap() {
    let env = env();
    let abort = contained(&env, step("deep_recursion", json!({}))).await;
    assert_trap(&abort, "deep_recursion", "stack overflow");
}

#[tokio::test]
async fn a_panic_is_a_trap_that_says_what_panicked() {
    let env = env();
    let abort = contained(&env, step("panics", json!({}))).await;
    assert_trap(&abort, "panics", "panicked at ");
    assert!(
        abort.message.contains("the ledger does not balance")
            && abort.message.contains("src/lib.rs"),
        "{}",
        abort.message
    );
    assert!(!abort.message.contains("wasi:"), "{}", abort.message);
}

/// A `wasm32-wasip2` build links against WASI directly, not through the
/// preview 1 adapter: other imports, the same denials and the same message.
#[tokio::test]
async fn a_panic_in_a_wasip2_build_says_what_panicked_too() {
    let dir = components(Toolchain::Wasip2);
    let mut participants = specs();
    for (name, package) in [("panics", "panics"), ("wasi_access", "wasi-access")] {
        let spec = participants
            .iter_mut()
            .find(|p| p.name == name)
            .expect("configured");
        spec.component = dir.join(component_file(package));
    }
    let env = TestEnv::start_with(&[STORE], &participants, LIMITS, Persistence::None);
    let abort = contained(&env, step("panics", json!({}))).await;
    assert_trap(&abort, "panics", "panicked at ");
    assert!(
        abort.message.contains("the ledger does not balance"),
        "{}",
        abort.message
    );
    let abort = contained(&env, step("wasi_access", json!({"reach": "clock"}))).await;
    assert_trap(&abort, "wasi_access", "wasi:clocks/wall-clock");
    let r = env
        .run(json!([step("wasi_access", json!({"reach": "env"}))]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
}

#[tokio::test]
async fn huge_output_input_and_values_break_their_limits() {
    let env = env();
    let two_mib = 2 << 20;
    let abort = contained(&env, step("huge_output", json!({"bytes": two_mib}))).await;
    assert_limit(&abort, "huge_output", "output", "1048576 bytes of output");
    let padding = "x".repeat(70_000);
    let abort = contained(
        &env,
        step("huge_output", json!({"bytes": 1, "padding": padding})),
    )
    .await;
    assert_limit(&abort, "huge_output", "input", "65536 bytes of input");
    let abort = contained(&env, step("huge_output", json!({"value_bytes": two_mib}))).await;
    assert_limit(
        &abort,
        "huge_output",
        "value_bytes",
        "1048576 bytes per value",
    );
    // The same component under a participant allowed more output.
    let r = env
        .run(json!([step("roomy_output", json!({"bytes": two_mib}))]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    assert_eq!(r.steps[0].output.as_str().map(str::len), Some(two_mib));
    assert_eq!(
        env.get(STORE, "roomy:last").await,
        Some(two_mib.to_string())
    );
}

#[tokio::test]
async fn participant_aborts_are_bounded_and_cannot_pass_for_the_hosts() {
    let env = env();
    let hostile = |input: Value| step("huge_output", input);
    let abort = contained(
        &env,
        hostile(json!({"abort_code": "out_of_luck", "abort_bytes": 3})),
    )
    .await;
    assert_eq!(
        (abort.code.as_str(), abort.message.as_str()),
        ("out_of_luck", "mmm"),
        "a participant's own abort comes back as it was sent"
    );
    // A 1 MiB code and a 4 MiB message break limits: no 5 MB answer, no
    // 1 MiB metrics label.
    let abort = contained(&env, hostile(json!({"abort_code_bytes": 1 << 20}))).await;
    assert_limit(
        &abort,
        "huge_output",
        "abort_code_bytes",
        "64 bytes of abort code",
    );
    let abort = contained(
        &env,
        hostile(json!({"abort_code": "big", "abort_bytes": 4 << 20})),
    )
    .await;
    assert_limit(
        &abort,
        "huge_output",
        "abort_message_bytes",
        "4096 bytes of abort message",
    );
    // The host's own codes, and codes that cannot be a label as they are,
    // are not the participant's: a client can tell whose abort it got.
    for (code, adjust) in [
        ("conflict", false),
        ("limit_exceeded", false),
        ("trap", false),
        ("bad_abort_code", false),
        ("", false),
        ("two words", false),
        ("line\nbreak", false),
        ("conflict", true),
    ] {
        let abort = contained(&env, hostile(json!({"abort_code": code, "adjust": adjust}))).await;
        assert_eq!(abort.code, "bad_abort_code", "{code:?}: {abort:?}");
        assert_eq!(abort.participant.as_deref(), Some("huge_output"));
        assert!(
            abort.message.contains("huge_output") && abort.message.contains("may not use"),
            "{}",
            abort.message
        );
    }
    // An adjustment's abort within the contract is kept for when its bound
    // breaks, and this one's does not.
    let r = env
        .run(json!([hostile(
            json!({"abort_code": "never", "adjust": true})
        )]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    assert_eq!(env.get(STORE, "huge:count").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn thousands_of_keys_or_writes_break_their_limits() {
    let env = env();
    let thousands = json!({"keys": 5000});
    let abort = contained(&env, step("many_keys", thousands.clone())).await;
    assert_limit(&abort, "many_keys", "keys", "256 declared keys");
    // Allowed the keys, the same component still may not write them all.
    let abort = contained(&env, step("many_writes", thousands)).await;
    assert_limit(&abort, "many_writes", "writes", "256 writes");
}

/// A component whose instance alone breaks a limit fails on every step, at
/// instantiation, as that limit.
#[tokio::test]
async fn limits_hold_from_instantiation_on() {
    let env = env();
    let join = |participant: &str| step(participant, json!({"op": "join", "doctor": "erin"}));
    let abort = contained(&env, join("crowded_doctors")).await;
    assert_limit(&abort, "crowded_doctors", "instances", "2 core instances");
    let abort = contained(&env, join("cramped_doctors")).await;
    assert_limit(&abort, "cramped_doctors", "memory", "65536 bytes");
}

#[tokio::test]
async fn a_write_to_an_undeclared_key_is_refused() {
    let env = env();
    for key in ["theirs", "../doctors:oncall:alice", "{mine}"] {
        let abort = contained(&env, step("undeclared_write", json!({"key": key}))).await;
        assert_eq!(abort.code, "undeclared_write", "{abort:?}");
        assert!(
            abort.message.contains("undeclared_write")
                && abort.message.contains(&format!("{key:?}")),
            "{}",
            abort.message
        );
    }
    assert_eq!(env.get(STORE, "undeclared:mine").await, None);
}

#[tokio::test]
async fn odd_keys_stay_under_the_prefix() {
    let env = env();
    let keys = [
        "{x}",
        "}{",
        "{",
        "a{b}c",
        "line\nbreak",
        "../doctors:oncall:bob",
        "..",
        "rs:txn:forged",
        "' ]] -- \" \\",
        "nul\u{0}byte",
        "*?[glob]",
    ];
    let r = env
        .run(json!([step("odd_keys", json!({"keys": keys}))]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    // Every key is a plain string under the prefix, holding its own name;
    // nothing else but redstage's metadata exists.
    for key in keys {
        assert_eq!(
            env.get(STORE, &format!("odd:{key}")).await.as_deref(),
            Some(key)
        );
    }
    let mut outside: Vec<String> = data(&env)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.starts_with("odd:") && !k.starts_with("rs:{"))
        .collect();
    outside.sort();
    assert_eq!(outside, Vec::<String>::new(), "keys outside the prefix");
    assert_eq!(env.get(STORE, "doctors:oncall:bob").await, None);
    assert_eq!(env.get(STORE, "rs:txn:forged").await, None);
    assert_eq!(env.leftovers().await, Vec::<String>::new());
    // Written again across two steps (so through prepare and commit, not the
    // one-phase path), and read back.
    let r = env
        .run(json!([
            join("dave"),
            step("odd_keys", json!({"keys": keys})),
        ]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    assert_eq!(env.leftovers().await, Vec::<String>::new());

    let long = "k".repeat(513);
    let abort = contained(&env, step("odd_keys", json!({"keys": [long]}))).await;
    assert_limit(&abort, "odd_keys", "key_bytes", "512 bytes per key");
    let abort = contained(&env, step("odd_keys", json!({"keys": [""]}))).await;
    assert_eq!(abort.code, "bad_key", "{abort:?}");
}

#[tokio::test]
async fn clocks_and_randomness_are_denied_by_name() {
    let env = env();
    for (reach, import) in [
        ("clock", "wasi:clocks/wall-clock"),
        ("random", "wasi:random/random"),
    ] {
        let abort = contained(&env, step("wasi_access", json!({"reach": reach}))).await;
        assert_trap(&abort, "wasi_access", import);
        assert!(abort.message.contains("denied"), "{}", abort.message);
    }
}

#[tokio::test]
async fn the_environment_is_empty_and_no_file_opens() {
    let env = env();
    let r = env
        .run(json!([step("wasi_access", json!({"reach": "env"}))]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    assert_eq!(r.steps[0].output, json!("vars [] args []"));
    let r = env
        .run(json!([step("wasi_access", json!({"reach": "file"}))]))
        .await;
    assert_eq!(r.status, Status::Committed, "{:?}", r.abort);
    let seen = r.steps[0].output.as_str().expect("a string");
    assert!(seen.starts_with("error: "), "{seen}");
}

/// Files that are no participant component, each with what the load error
/// must say about it.
fn invalid_components() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = std::fs::read(components(Toolchain::CargoComponent).join(component_file("oncall")))
        .expect("read a built component");
    let mut rng = fastrand::Rng::with_seed(7);
    let random: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(4096).collect();
    let mut headed = b"\0asm\x0d\x00\x01\x00".to_vec();
    headed.extend_from_slice(&random);
    let wat = |text: &str| wat::parse_str(text).expect("valid WAT");
    vec![
        (
            "core_module",
            wat(r#"(module (func (export "declare")))"#),
            "core WebAssembly module, not a component",
        ),
        (
            "other_world",
            wat(r#"(component
                (core module $m (func (export "f") (result i32) i32.const 42))
                (core instance $i (instantiate $m))
                (func (export "hello") (result u32) (canon lift (core func $i "f"))))"#),
            "does not export the `redstage:participant/participant` world",
        ),
        (
            "smuggler",
            wat(r#"(component
                (import "evil:exfil/send" (instance
                    (export "send" (func (param "data" (list u8)))))))"#),
            "`evil:exfil/send#send`, which takes strings or lists",
        ),
        ("random_bytes", random, "not WebAssembly"),
        ("random_component", headed, "malformed section"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "is out of bounds",
        ),
    ]
}

#[tokio::test]
async fn invalid_components_are_refused_at_load_saying_why() {
    let env = env();
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes, expected) in invalid_components() {
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).expect("write the component");
        let mut participants = specs();
        participants.push(ParticipantSpec {
            name: name.into(),
            component: path.clone(),
            store: STORE.into(),
            prefix: format!("{name}:"),
        });
        let config = Config::parse(&config_text(&env.servers, &participants, LIMITS))
            .expect("a valid config");
        let err = redstage::cli::coordinator(&config).expect_err(&format!("{name} was accepted"));
        let message = format!("{err:#}");
        let parts = [
            &format!("participant `{name}`"),
            &path.display().to_string(),
            expected,
        ];
        for part in parts {
            assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
        }
        still_serving(&env).await;
    }
    assert_eq!(env.leftovers().await, Vec::<String>::new());
}

#[tokio::test]
async fn an_unknown_limit_key_is_refused_with_the_participant_named() {
    let env = env();
    let extra = format!("{LIMITS}[participants.doctors.limits]\nmemory_max = 1\n");
    let err = Config::parse(&config_text(&env.servers, &specs(), &extra))
        .expect_err("an unknown limit was accepted")
        .to_string();
    assert!(
        err.contains("[participants.doctors.limits]") && err.contains("memory_max"),
        "{err}"
    );
}
