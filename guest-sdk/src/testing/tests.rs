//! The testing store against the host's rules, scenario by scenario: a
//! participant that declares and writes what its input says (`Script`)
//! makes each case one line of JSON.

use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::*;
use crate::{Bounds, Kind, Mode, Outcome, Positive, Snapshot, Target, Value, checked_add};

/// Declares `declare`, outputs what the snapshot holds for each part
/// declared in read or write mode, then writes `ops` (or aborts with
/// `abort`).
struct Script;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default)]
    declare: Vec<(String, Kind, Target, Mode)>,
    #[serde(default)]
    ops: Vec<OpSpec>,
    #[serde(default)]
    abort: Option<(String, String)>,
}

/// An op, with its arguments in Redis's order; bounded ones abort with
/// `bound`.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum OpSpec {
    Set(String, String, Option<u64>),
    Delete(String),
    Adjust(String, i64, Option<i64>, Option<i64>),
    Hset(String, String, String),
    Hdel(String, String),
    Hincrby(String, String, i64, Option<i64>, Option<i64>),
    Sadd(String, String),
    Srem(String, String),
    Zadd(String, f64, String),
    Zrem(String, String),
    Zincrby(String, String, i64, Option<i64>, Option<i64>),
    Xadd(String, Vec<(String, String)>, Option<u64>),
    Rpush(String, Vec<String>),
    Lpush(String, Vec<String>),
    Pexpire(String, u64),
}

// What the script's input names, as serde reads it.
impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        let name = String::deserialize(d)?;
        [
            Kind::String,
            Kind::Hash,
            Kind::Set,
            Kind::Zset,
            Kind::Stream,
            Kind::List,
        ]
        .into_iter()
        .find(|k| k.name() == name)
        .ok_or_else(|| serde::de::Error::custom(format!("no kind {name}")))
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum T {
            Whole,
            Field(String),
            Member(String),
            Ranks(i64, i64),
            Scores(f64, f64),
        }
        Ok(match T::deserialize(d)? {
            T::Whole => Target::Whole,
            T::Field(f) => Target::Field(f),
            T::Member(m) => Target::Member(m),
            T::Ranks(a, b) => Target::Ranks(a, b),
            T::Scores(a, b) => Target::Scores(a, b),
        })
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "read" => Mode::Read,
            "write" => Mode::Write,
            "adjust" => Mode::Adjust,
            _ => Mode::Append,
        })
    }
}

fn bounds(lower: Option<i64>, upper: Option<i64>) -> Bounds {
    Bounds { lower, upper }
}

fn bound() -> Abort {
    Abort::new("bound", "out of bounds")
}

impl Participant for Script {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        Ok(input
            .declare
            .iter()
            .fold(Access::new(), |access, (key, kind, target, mode)| {
                access.declare(key.as_str(), *kind, target.clone(), *mode)
            }))
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        if let Some((code, message)) = &input.abort {
            return Err(Abort::new(code.as_str(), message.as_str()));
        }
        let mut read = Vec::new();
        for (key, kind, target, mode) in &input.declare {
            if matches!(mode, Mode::Read | Mode::Write) {
                read.push(snapshot.value(key, *kind, target).map(to_json));
            }
        }
        let outcome = input.ops.iter().fold(Outcome::new(), |o, op| match op {
            OpSpec::Set(k, v, None) => o.set(k.as_str(), v.as_str()),
            OpSpec::Set(k, v, Some(ttl)) => o.psetex(k.as_str(), *ttl, v.as_str()),
            OpSpec::Delete(k) => o.delete(k.as_str()),
            OpSpec::Adjust(k, d, l, u) => o.adjust(k.as_str(), *d, bounds(*l, *u), bound()),
            OpSpec::Hset(k, f, v) => o.hset(k.as_str(), f.as_str(), v.as_str()),
            OpSpec::Hdel(k, f) => o.hdel(k.as_str(), f.as_str()),
            OpSpec::Hincrby(k, f, d, l, u) => {
                o.hincrby(k.as_str(), f.as_str(), *d, bounds(*l, *u), bound())
            }
            OpSpec::Sadd(k, m) => o.sadd(k.as_str(), m.as_str()),
            OpSpec::Srem(k, m) => o.srem(k.as_str(), m.as_str()),
            OpSpec::Zadd(k, s, m) => o.zadd(k.as_str(), *s, m.as_str()),
            OpSpec::Zrem(k, m) => o.zrem(k.as_str(), m.as_str()),
            OpSpec::Zincrby(k, m, d, l, u) => {
                o.zincrby(k.as_str(), m.as_str(), *d, bounds(*l, *u), bound())
            }
            OpSpec::Xadd(k, fields, None) => o.xadd(k.as_str(), fields.clone()),
            OpSpec::Xadd(k, fields, Some(n)) => o.xadd_maxlen(k.as_str(), *n, fields.clone()),
            OpSpec::Rpush(k, values) => o.rpush(k.as_str(), values.clone()),
            OpSpec::Lpush(k, values) => o.lpush(k.as_str(), values.clone()),
            OpSpec::Pexpire(k, ttl) => o.pexpire(k.as_str(), *ttl),
        });
        outcome.output_json(&read)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Bytes(b) => json!(b.as_deref().map(text)),
        Value::Present(p) => json!(p),
        Value::Score(s) => json!(s),
        Value::Fields(f) => json!(f.iter().map(|(f, v)| (f, text(v))).collect::<Vec<_>>()),
        Value::Members(m) => json!(m),
        Value::Ranked(r) => json!(r),
    }
}

/// Runs the script `input` as one step on `store`.
fn script(store: &mut Store, input: Json) -> Result<Json, TxnAbort> {
    store.run::<Script>(&input.to_string())
}

/// The code a script aborts with on `store`.
fn code(store: &mut Store, input: Json) -> String {
    match script(store, input.clone()) {
        Ok(out) => panic!("{input} committed with {out}"),
        Err(err) => err.abort.code,
    }
}

fn social() -> Store {
    let mut store = Store::new();
    store
        .set("k", "v")
        .hset("h", "b", "2")
        .hset("h", "a", vec![0u8, 255])
        .sadd("s", "y")
        .sadd("s", "x")
        .zadd("z", 5.0, "d")
        .zadd("z", 2.0, "c")
        .zadd("z", 2.0, "b")
        .zadd("z", 1.0, "a");
    store
}

#[test]
fn the_snapshot_holds_one_entry_per_declared_part_as_redis_orders_it() {
    let mut store = social();
    let out = script(
        &mut store,
        json!({"declare": [
            ["k", "string", "whole", "read"],
            ["gone", "string", "whole", "write"],
            ["h", "hash", "whole", "read"],
            ["h", "hash", {"field": "b"}, "write"],
            ["h", "hash", {"field": "c"}, "read"],
            ["h", "hash", {"field": "z"}, "adjust"],
            ["s", "set", "whole", "read"],
            ["s", "set", {"member": "x"}, "read"],
            ["s", "set", {"member": "w"}, "write"],
            ["z", "zset", "whole", "read"],
            ["z", "zset", {"member": "c"}, "read"],
            ["z", "zset", {"member": "e"}, "read"],
            ["z", "zset", {"ranks": [-2, -1]}, "read"],
            ["z", "zset", {"ranks": [1, 100]}, "read"],
            ["z", "zset", {"scores": [2.0, 4.0]}, "read"],
            ["none", "zset", {"scores": [0.0, 1.0]}, "read"],
            ["x", "stream", "whole", "append"],
        ]}),
    )
    .unwrap();
    assert_eq!(
        out,
        json!([
            "v",
            null,
            [["a", "\u{0}\u{fffd}"], ["b", "2"]],
            "2",
            null,
            ["x", "y"],
            true,
            false,
            [["a", 1.0], ["b", 2.0], ["c", 2.0], ["d", 5.0]],
            2.0,
            null,
            [["c", 2.0], ["d", 5.0]],
            [["b", 2.0], ["c", 2.0], ["d", 5.0]],
            [["b", 2.0], ["c", 2.0]],
            [],
        ])
    );
}

#[test]
fn parts_not_declared_are_not_in_the_snapshot() {
    struct Peek;
    impl Participant for Peek {
        type Input = ();
        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new()
                .read_hash_field("h", "a")
                .adjust_hash_field("h", "b"))
        }
        fn execute(_: &(), snapshot: &Snapshot) -> Result<Outcome, Abort> {
            assert_eq!(snapshot.hget("h", "a")?, Some(&[0u8, 255][..]));
            snapshot.hget("h", "b")?;
            Ok(Outcome::new())
        }
    }
    let err = social().run::<Peek>("null").unwrap_err();
    assert_eq!(err.abort.code, "undeclared_key");
}

#[test]
fn each_step_sees_the_typed_writes_of_the_steps_before_it() {
    let mut store = social();
    let outputs = store
        .transaction()
        .step::<Script>(
            &json!({
                "declare": [
                    ["h", "hash", {"field": "a"}, "write"],
                    ["h", "hash", {"field": "n"}, "adjust"],
                    ["s", "set", {"member": "x"}, "write"],
                    ["z", "zset", {"member": "a"}, "adjust"],
                    ["l", "list", "whole", "append"],
                ],
                "ops": [
                    {"hset": ["h", "a", "new"]},
                    {"hincrby": ["h", "n", 5, null, null]},
                    {"srem": ["s", "x"]},
                    {"zincrby": ["z", "a", 10, null, null]},
                    {"rpush": ["l", ["1", "2"]]},
                ],
            })
            .to_string(),
        )
        .step::<Script>(
            &json!({"declare": [
                ["h", "hash", "whole", "read"],
                ["s", "set", "whole", "read"],
                ["z", "zset", {"ranks": [0, 0]}, "read"],
                ["z", "zset", {"ranks": [-1, -1]}, "read"],
            ]})
            .to_string(),
        )
        .run()
        .unwrap();
    assert_eq!(
        outputs[1],
        json!([
            [["a", "new"], ["b", "2"], ["n", "5"]],
            ["y"],
            [["b", 2.0]],
            [["a", 11.0]],
        ])
    );
    assert_eq!(store.lrange("l", 0, -1), [b"1", b"2"]);
    assert_eq!(store.zscore("z", "a"), Some(11.0));
}

#[test]
fn declarations_the_contract_does_not_allow_are_bad_access() {
    let refused = [
        json!(["k", "string", {"field": "f"}, "read"]),
        json!(["k", "string", {"member": "m"}, "write"]),
        json!(["k", "set", {"field": "f"}, "read"]),
        json!(["k", "hash", {"member": "m"}, "read"]),
        json!(["k", "set", {"ranks": [0, 1]}, "read"]),
        json!(["k", "zset", {"ranks": [0, 1]}, "write"]),
        json!(["k", "zset", {"scores": [0.0, 1.0]}, "adjust"]),
        json!(["k", "hash", "whole", "adjust"]),
        json!(["k", "set", {"member": "m"}, "adjust"]),
        json!(["k", "zset", "whole", "adjust"]),
        json!(["k", "string", "whole", "append"]),
        json!(["k", "hash", "whole", "append"]),
        json!(["k", "stream", "whole", "read"]),
        json!(["k", "stream", "whole", "write"]),
        json!(["k", "list", "whole", "read"]),
        json!(["k", "list", "whole", "adjust"]),
        json!(["k", "list", {"member": "m"}, "append"]),
        json!(["k", "stream", {"field": "f"}, "append"]),
    ];
    for declaration in refused {
        let input = json!({"declare": [declaration]});
        assert_eq!(
            code(&mut Store::new(), input),
            "bad_access",
            "{declaration}"
        );
    }
    let allowed = [
        json!(["k", "string", "whole", "adjust"]),
        json!(["k", "hash", {"field": "f"}, "adjust"]),
        json!(["k", "zset", {"member": "m"}, "adjust"]),
        json!(["k", "zset", {"scores": [0.0, 1.0]}, "read"]),
        json!(["k", "stream", "whole", "append"]),
        json!(["k", "list", "whole", "append"]),
        json!(["k", "set", {"member": ""}, "write"]),
    ];
    for declaration in allowed {
        let input = json!({"declare": [declaration]});
        script(&mut Store::new(), input).expect("allowed");
    }
    let two_kinds = json!({"declare": [["k", "string", "whole", "read"], ["k", "hash", {"field": "f"}, "read"]]});
    assert_eq!(code(&mut Store::new(), two_kinds), "bad_access");
    let nan = Access::new().read_zset_scores("z", f64::NAN, 1.0);
    let err = rules::check_access("p", &nan, &Limits::default()).unwrap_err();
    assert_eq!(err.abort.code, "bad_access");
    let empty = json!({"declare": [["", "string", "whole", "read"]]});
    assert_eq!(code(&mut Store::new(), empty), "bad_key");
    let message = script(
        &mut Store::new(),
        json!({"declare": [["k", "set", "whole", "adjust"]]}),
    )
    .unwrap_err()
    .abort
    .message;
    assert_eq!(
        message,
        "the whole of the set `k` in adjust mode: only a string, a hash field or a sorted set \
         member is adjusted"
    );
}

#[test]
fn a_write_needs_a_declaration_that_covers_it() {
    // (declaration, op, covered)
    let cases = [
        (
            json!(["k", "string", "whole", "write"]),
            json!({"set": ["k", "v", null]}),
            true,
        ),
        (
            json!(["k", "string", "whole", "read"]),
            json!({"set": ["k", "v", null]}),
            false,
        ),
        (
            json!(["k", "string", "whole", "adjust"]),
            json!({"set": ["k", "v", null]}),
            false,
        ),
        (
            json!(["k", "string", "whole", "write"]),
            json!({"delete": "k"}),
            true,
        ),
        (
            json!(["k", "string", "whole", "adjust"]),
            json!({"delete": "k"}),
            false,
        ),
        (
            json!(["k", "hash", "whole", "write"]),
            json!({"delete": "k"}),
            true,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "write"]),
            json!({"delete": "k"}),
            false,
        ),
        (
            json!(["k", "set", "whole", "write"]),
            json!({"delete": "k"}),
            true,
        ),
        (
            json!(["k", "string", "whole", "adjust"]),
            json!({"adjust": ["k", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "string", "whole", "write"]),
            json!({"adjust": ["k", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "string", "whole", "read"]),
            json!({"adjust": ["k", 1, null, null]}),
            false,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "write"]),
            json!({"hset": ["k", "f", "v"]}),
            true,
        ),
        (
            json!(["k", "hash", {"field": "g"}, "write"]),
            json!({"hset": ["k", "f", "v"]}),
            false,
        ),
        (
            json!(["k", "hash", "whole", "write"]),
            json!({"hset": ["k", "f", "v"]}),
            true,
        ),
        (
            json!(["k", "hash", "whole", "read"]),
            json!({"hset": ["k", "f", "v"]}),
            false,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "adjust"]),
            json!({"hset": ["k", "f", "v"]}),
            false,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "write"]),
            json!({"hdel": ["k", "f"]}),
            true,
        ),
        (
            json!(["k", "hash", "whole", "write"]),
            json!({"hdel": ["k", "f"]}),
            true,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "read"]),
            json!({"hdel": ["k", "f"]}),
            false,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "adjust"]),
            json!({"hincrby": ["k", "f", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "write"]),
            json!({"hincrby": ["k", "f", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "hash", "whole", "write"]),
            json!({"hincrby": ["k", "f", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "hash", "whole", "read"]),
            json!({"hincrby": ["k", "f", 1, null, null]}),
            false,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "read"]),
            json!({"hincrby": ["k", "f", 1, null, null]}),
            false,
        ),
        (
            json!(["k", "set", {"member": "m"}, "write"]),
            json!({"sadd": ["k", "m"]}),
            true,
        ),
        (
            json!(["k", "set", {"member": "n"}, "write"]),
            json!({"sadd": ["k", "m"]}),
            false,
        ),
        (
            json!(["k", "set", "whole", "write"]),
            json!({"srem": ["k", "m"]}),
            true,
        ),
        (
            json!(["k", "set", "whole", "read"]),
            json!({"srem": ["k", "m"]}),
            false,
        ),
        (
            json!(["k", "zset", {"member": "m"}, "write"]),
            json!({"zadd": ["k", 1.0, "m"]}),
            true,
        ),
        (
            json!(["k", "zset", {"member": "m"}, "adjust"]),
            json!({"zadd": ["k", 1.0, "m"]}),
            false,
        ),
        (
            json!(["k", "zset", "whole", "write"]),
            json!({"zrem": ["k", "m"]}),
            true,
        ),
        (
            json!(["k", "zset", {"ranks": [0, -1]}, "read"]),
            json!({"zrem": ["k", "m"]}),
            false,
        ),
        (
            json!(["k", "zset", {"member": "m"}, "adjust"]),
            json!({"zincrby": ["k", "m", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "zset", {"member": "m"}, "write"]),
            json!({"zincrby": ["k", "m", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "zset", "whole", "write"]),
            json!({"zincrby": ["k", "m", 1, null, null]}),
            true,
        ),
        (
            json!(["k", "zset", {"member": "n"}, "adjust"]),
            json!({"zincrby": ["k", "m", 1, null, null]}),
            false,
        ),
        (
            json!(["k", "stream", "whole", "append"]),
            json!({"xadd": ["k", [["f", "v"]], null]}),
            true,
        ),
        (
            json!(["k", "list", "whole", "append"]),
            json!({"xadd": ["k", [["f", "v"]], null]}),
            false,
        ),
        (
            json!(["k", "list", "whole", "append"]),
            json!({"rpush": ["k", ["v"]]}),
            true,
        ),
        (
            json!(["k", "list", "whole", "append"]),
            json!({"lpush": ["k", ["v"]]}),
            true,
        ),
        (
            json!(["k", "stream", "whole", "append"]),
            json!({"lpush": ["k", ["v"]]}),
            false,
        ),
        (
            json!(["k", "string", "whole", "write"]),
            json!({"pexpire": ["k", 10]}),
            true,
        ),
        (
            json!(["k", "hash", {"field": "f"}, "write"]),
            json!({"pexpire": ["k", 10]}),
            true,
        ),
        (
            json!(["k", "stream", "whole", "append"]),
            json!({"pexpire": ["k", 10]}),
            false,
        ),
        (
            json!(["k", "string", "whole", "adjust"]),
            json!({"pexpire": ["k", 10]}),
            false,
        ),
        (
            json!(["k", "hash", "whole", "read"]),
            json!({"pexpire": ["k", 10]}),
            false,
        ),
        (
            json!(["other", "string", "whole", "write"]),
            json!({"set": ["k", "v", null]}),
            false,
        ),
    ];
    for (declaration, op, covered) in cases {
        let input = json!({"declare": [declaration], "ops": [op]});
        match script(&mut Store::new(), input) {
            Ok(_) => assert!(covered, "{declaration} covered {op}"),
            Err(err) => {
                assert!(
                    !covered,
                    "{declaration} did not cover {op}: {:?}",
                    err.abort
                );
                assert_eq!(err.abort.code, "undeclared_write", "{declaration} {op}");
            }
        }
    }
    let err = script(
        &mut Store::new(),
        json!({"declare": [["k", "hash", {"field": "f"}, "read"]], "ops": [{"hdel": ["k", "f"]}]}),
    )
    .unwrap_err();
    assert!(
        err.abort.message.ends_with(
            "wrote `k`, which it did not declare for writing: `hset`/`hdel` of `f` need the \
             field, or the whole hash, in write mode"
        ),
        "{}",
        err.abort.message
    );
}

#[test]
fn bounded_writes_take_integers_count_missing_as_zero_and_keep_their_bounds() {
    let mut store = Store::new();
    store
        .set("n", "5")
        .set("bad", "1.5")
        .hset("h", "f", "5")
        .hset("h", "bad", "x")
        .zadd("z", 5.0, "m")
        .zadd("z", 0.5, "half")
        .zadd("z", 9007199254740992.0, "top");
    let declare = json!([
        ["n", "string", "whole", "adjust"],
        ["bad", "string", "whole", "adjust"],
        ["new", "string", "whole", "adjust"],
        ["h", "hash", {"field": "f"}, "adjust"],
        ["h", "hash", {"field": "bad"}, "adjust"],
        ["h", "hash", {"field": "new"}, "adjust"],
        ["z", "zset", {"member": "m"}, "adjust"],
        ["z", "zset", {"member": "half"}, "adjust"],
        ["z", "zset", {"member": "top"}, "adjust"],
        ["z", "zset", {"member": "new"}, "adjust"],
    ]);
    let run = |store: &mut Store, op: Json| {
        script(store, json!({"declare": declare, "ops": [op]})).map_err(|e| e.abort.code)
    };
    let fine = [
        json!({"adjust": ["n", -5, 0, null]}),
        json!({"adjust": ["new", -3, null, null]}),
        json!({"hincrby": ["h", "f", 5, null, 10]}),
        json!({"hincrby": ["h", "new", 2, null, null]}),
        json!({"zincrby": ["z", "m", -10, -5, null]}),
        json!({"zincrby": ["z", "new", 7, null, null]}),
        json!({"zincrby": ["z", "top", -1, null, null]}),
    ];
    for op in fine {
        run(&mut store.clone(), op.clone()).unwrap_or_else(|code| panic!("{op}: {code}"));
    }
    let refused = [
        (json!({"adjust": ["bad", 1, null, null]}), "not_an_integer"),
        (
            json!({"hincrby": ["h", "bad", 1, null, null]}),
            "not_an_integer",
        ),
        (
            json!({"zincrby": ["z", "half", 1, null, null]}),
            "not_an_integer",
        ),
        (json!({"adjust": ["n", -6, 0, null]}), "bound"),
        (json!({"hincrby": ["h", "f", 6, null, 10]}), "bound"),
        (json!({"hincrby": ["h", "new", -1, 0, null]}), "bound"),
        (json!({"zincrby": ["z", "m", -11, -5, null]}), "bound"),
        // Under escrow, Redis adds exactly within 2^53 either side of 0.
        (json!({"adjust": ["n", 1i64 << 53, null, null]}), "overflow"),
        (json!({"adjust": ["n", i64::MAX, null, null]}), "overflow"),
        (
            json!({"hincrby": ["h", "f", -(1i64 << 53) - 6, null, null]}),
            "overflow",
        ),
        (json!({"zincrby": ["z", "top", 1, null, null]}), "overflow"),
    ];
    for (op, expected) in refused {
        assert_eq!(
            run(&mut store.clone(), op.clone()),
            Err(expected.into()),
            "{op}"
        );
    }
    // A part some step reads is added to by the host, in 64 bits: past
    // them, the write's own abort.
    let read = json!([
        ["n", "string", "whole", "write"],
        ["h", "hash", {"field": "f"}, "read"],
        ["h", "hash", {"field": "f"}, "adjust"],
        ["z", "zset", "whole", "read"],
        ["z", "zset", {"member": "top"}, "adjust"],
    ]);
    let run_read = |store: &mut Store, op: Json| {
        script(store, json!({"declare": read, "ops": [op]})).map_err(|e| e.abort.code)
    };
    for (op, expected) in [
        (json!({"adjust": ["n", 1i64 << 53, null, null]}), Ok(())),
        (json!({"adjust": ["n", i64::MAX, null, null]}), Err("bound")),
        (
            json!({"hincrby": ["h", "f", 1i64 << 60, null, null]}),
            Ok(()),
        ),
        (
            json!({"zincrby": ["z", "top", 1, null, null]}),
            Err("bound"),
        ),
    ] {
        let result = run_read(&mut store.clone(), op.clone()).map(|_| ());
        assert_eq!(result, expected.map_err(String::from), "{op}");
    }
    let mut after = store.clone();
    script(
        &mut after,
        json!({"declare": declare, "ops": [
            {"adjust": ["new", -3, null, null]},
            {"adjust": ["new", 1, null, null]},
            {"hincrby": ["h", "new", 2, null, null]},
            {"zincrby": ["z", "new", 7, null, null]},
        ]}),
    )
    .unwrap();
    assert_eq!(after.get("new"), Some(&b"-2"[..]));
    assert_eq!(after.hget("h", "new"), Some(&b"2"[..]));
    assert_eq!(after.zscore("z", "new"), Some(7.0));
}

#[test]
fn ttls_are_set_kept_and_dropped_as_redis_does() {
    let mut store = Store::new();
    store.set("a", "1").set("b", "1").hset("h", "f", "1");
    store.pexpire("a", 500).pexpire("b", 500).pexpire("h", 500);
    script(
        &mut store,
        json!({
            "declare": [
                ["a", "string", "whole", "write"],
                ["b", "string", "whole", "write"],
                ["c", "string", "whole", "write"],
                ["d", "string", "whole", "write"],
                ["h", "hash", {"field": "g"}, "write"],
                ["x", "stream", "whole", "append"],
                ["missing", "string", "whole", "write"],
            ],
            "ops": [
                {"set": ["a", "2", null]},
                {"set": ["b", "2", 1000]},
                {"set": ["c", "2", null]},
                {"set": ["d", "2", null]},
                {"pexpire": ["d", 70]},
                {"hset": ["h", "g", "2"]},
                {"xadd": ["x", [["f", "v"]], null]},
                {"pexpire": ["missing", 60]},
            ],
        }),
    )
    .unwrap();
    let ttls: Vec<_> = ["a", "b", "c", "d", "h", "x", "missing"]
        .iter()
        .map(|k| store.pttl(k))
        .collect();
    assert_eq!(
        ttls,
        [Some(500), Some(1000), None, Some(70), Some(500), None, None]
    );
    assert!(!store.exists("missing"));
    script(
        &mut store,
        json!({
            "declare": [["a", "string", "whole", "write"], ["b", "string", "whole", "adjust"]],
            "ops": [{"delete": "a"}, {"set": ["a", "3", null]}, {"adjust": ["b", 1, null, null]}],
        }),
    )
    .unwrap();
    assert_eq!((store.pttl("a"), store.pttl("b")), (None, Some(1000)));
    assert_eq!(store.get("b"), Some(&b"3"[..]));
    for op in [
        json!({"set": ["a", "v", 0]}),
        json!({"pexpire": ["a", 0]}),
        json!({"pexpire": ["a", u64::MAX]}),
    ] {
        let input = json!({"declare": [["a", "string", "whole", "write"]], "ops": [op]});
        assert_eq!(code(&mut store.clone(), input), "bad_write", "{op}");
    }
}

#[test]
fn a_key_of_another_type_is_wrong_type_even_when_an_earlier_step_made_it() {
    for declaration in [
        json!(["k", "hash", {"field": "f"}, "read"]),
        json!(["k", "set", "whole", "write"]),
        json!(["k", "zset", {"member": "m"}, "adjust"]),
        json!(["k", "stream", "whole", "append"]),
    ] {
        let input = json!({"declare": [declaration]});
        assert_eq!(code(&mut social(), input), "wrong_type", "{declaration}");
    }
    let err = script(
        &mut social(),
        json!({"declare": [["h", "set", {"member": "m"}, "read"]]}),
    )
    .unwrap_err();
    assert_eq!(err.abort.message, "`h` holds a hash, declared as a set");
    let mut store = Store::new();
    let before = store.clone();
    let err = store
        .transaction()
        .step::<Script>(
            &json!({"declare": [["k", "list", "whole", "append"]], "ops": [{"lpush": ["k", ["v"]]}]})
                .to_string(),
        )
        .step::<Script>(&json!({"declare": [["k", "string", "whole", "read"]]}).to_string())
        .run()
        .unwrap_err();
    assert_eq!((err.step, err.abort.code.as_str()), (1, "wrong_type"));
    assert_eq!(store, before);
    // Deleted by an earlier step, the key may take another type.
    let mut store = social();
    store
        .transaction()
        .step::<Script>(
            &json!({"declare": [["k", "string", "whole", "write"]], "ops": [{"delete": "k"}]})
                .to_string(),
        )
        .step::<Script>(
            &json!({"declare": [["k", "set", {"member": "m"}, "write"]], "ops": [{"sadd": ["k", "m"]}]})
                .to_string(),
        )
        .run()
        .unwrap();
    assert_eq!(store.key_type("k"), Some(Kind::Set));
}

#[test]
fn aggregates_left_empty_are_gone_and_streams_and_lists_keep_their_order() {
    let mut store = social();
    script(
        &mut store,
        json!({
            "declare": [
                ["h", "hash", "whole", "write"],
                ["s", "set", "whole", "write"],
                ["z", "zset", "whole", "write"],
                ["x", "stream", "whole", "append"],
                ["l", "list", "whole", "append"],
            ],
            "ops": [
                {"hdel": ["h", "a"]}, {"hdel": ["h", "b"]}, {"hdel": ["h", "never"]},
                {"srem": ["s", "x"]}, {"srem": ["s", "y"]},
                {"zrem": ["z", "a"]}, {"zrem": ["z", "b"]}, {"zrem": ["z", "c"]}, {"zrem": ["z", "d"]},
                {"xadd": ["x", [["n", "1"], ["a", "b"]], null]},
                {"xadd": ["x", [["n", "2"]], null]},
                {"xadd": ["x", [["n", "3"]], 2]},
                {"rpush": ["l", ["b", "c"]]},
                {"lpush": ["l", ["a", "z"]]},
            ],
        }),
    )
    .unwrap();
    for key in ["h", "s", "z"] {
        assert!(!store.exists(key), "{key}");
    }
    let entries: Vec<Vec<(&str, &[u8])>> = store
        .xrange("x")
        .iter()
        .map(|e| e.iter().map(|(f, v)| (f.as_str(), v.as_slice())).collect())
        .collect();
    assert_eq!(entries, [vec![("n", &b"2"[..])], vec![("n", &b"3"[..])]]);
    assert_eq!(store.lrange("l", 0, -1), [b"z", b"a", b"b", b"c"]);
    assert_eq!(store.lrange("l", -2, -1), [b"b", b"c"]);
    for op in [
        json!({"xadd": ["x", [], null]}),
        json!({"rpush": ["l", []]}),
        json!({"lpush": ["l", []]}),
    ] {
        let input = json!({"declare": [["x", "stream", "whole", "append"], ["l", "list", "whole", "append"]], "ops": [op]});
        assert_eq!(code(&mut store.clone(), input), "bad_write", "{op}");
    }
}

#[test]
fn a_nan_score_is_a_bad_write() {
    struct Nan;
    impl Participant for Nan {
        type Input = ();
        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new().write_zset_member("z", "m"))
        }
        fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
            Ok(Outcome::new().zadd("z", f64::NAN, "m"))
        }
    }
    let err = Store::new().run::<Nan>("null").unwrap_err();
    assert_eq!(err.abort.code, "bad_write");
}

#[test]
fn limits_are_the_hosts_by_name() {
    let small = Limits {
        read_items_max: 3,
        member_bytes_max: 4,
        keys_max: 3,
        key_bytes_max: 4,
        writes_max: 2,
        value_bytes_max: 4,
        output_bytes_max: 200,
        input_bytes_max: 8000,
        ..Limits::default()
    };
    let mut store = Store::new();
    store.set_limits(small.clone());
    for m in ["a", "b", "c", "d"] {
        store.sadd("s", m).zadd("z", 1.0, m).hset("h", m, "v");
    }
    store.sadd("t", "a").sadd("t", "b").sadd("t", "c");
    let cases = [
        (
            json!({"declare": [["s", "set", "whole", "read"]]}),
            Some("read_items"),
        ),
        (
            json!({"declare": [["h", "hash", "whole", "write"]]}),
            Some("read_items"),
        ),
        (
            json!({"declare": [["z", "zset", "whole", "read"]]}),
            Some("read_items"),
        ),
        (
            json!({"declare": [["z", "zset", {"ranks": [0, -1]}, "read"]]}),
            Some("read_items"),
        ),
        (
            json!({"declare": [["z", "zset", {"scores": [0.0, 1.0]}, "read"]]}),
            Some("read_items"),
        ),
        (json!({"declare": [["t", "set", "whole", "read"]]}), None),
        (
            json!({"declare": [["z", "zset", {"ranks": [1, 3]}, "read"]]}),
            None,
        ),
        (json!({"declare": [["s", "set", "whole", "append"]]}), None),
        (
            json!({"declare": [["s", "set", {"member": "abcde"}, "read"]]}),
            Some("member_bytes"),
        ),
        (
            json!({"declare": [["s", "set", {"member": "abcd"}, "read"]]}),
            None,
        ),
        (
            json!({"declare": [["keyed", "string", "whole", "read"]]}),
            Some("key_bytes"),
        ),
        (
            json!({"declare": [["a", "string", "whole", "read"], ["b", "string", "whole", "read"], ["c", "string", "whole", "read"], ["d", "string", "whole", "read"]]}),
            Some("keys"),
        ),
        (
            json!({"declare": [["h", "hash", {"field": "a"}, "write"]], "ops": [{"hset": ["h", "abcde", "v"]}]}),
            Some("member_bytes"),
        ),
        // A stream entry counts whole, field names and values, as a value.
        (
            json!({"declare": [["x", "stream", "whole", "append"]], "ops": [{"xadd": ["x", [["ab", "cd"]], null]}]}),
            None,
        ),
        (
            json!({"declare": [["x", "stream", "whole", "append"]], "ops": [{"xadd": ["x", [["ab", "c"], ["d", "e"]], null]}]}),
            Some("value_bytes"),
        ),
        (
            json!({"declare": [["x", "stream", "whole", "append"]], "ops": [{"xadd": ["x", [["f", "vvvvv"]], null]}]}),
            Some("value_bytes"),
        ),
        (
            json!({"declare": [["l", "list", "whole", "append"]], "ops": [{"rpush": ["l", ["v", "vvvvv"]]}]}),
            Some("value_bytes"),
        ),
        (
            json!({"declare": [["l", "list", "whole", "append"]], "ops": [{"rpush": ["l", ["v"]]}, {"rpush": ["l", ["v"]]}, {"rpush": ["l", ["v"]]}]}),
            Some("writes"),
        ),
        // A push counts a write per value.
        (
            json!({"declare": [["l", "list", "whole", "append"]], "ops": [{"rpush": ["l", ["v", "w", "x"]]}]}),
            Some("writes"),
        ),
        (
            json!({"declare": [["l", "list", "whole", "append"]], "ops": [{"lpush": ["l", ["v", "w"]]}]}),
            None,
        ),
        (
            json!({"abort": ["no", "x".repeat(5000)]}),
            Some("abort_message_bytes"),
        ),
        (
            json!({"abort": ["n".repeat(65), "x"]}),
            Some("abort_code_bytes"),
        ),
        (
            json!({"declare": [], "ops": [], "abort": null, "x": "y".repeat(8000)}),
            Some("input"),
        ),
    ];
    for (input, limit) in cases {
        let result = script(&mut store.clone(), input.clone());
        match limit {
            None => assert!(
                result
                    .as_ref()
                    .map_or_else(|e| e.abort.code != "limit_exceeded", |_| true),
                "{input}: {result:?}"
            ),
            Some(limit) => {
                let err = result.expect_err("a limit");
                assert_eq!(err.abort.code, "limit_exceeded", "{input}: {err:?}");
                assert_eq!(err.limit, Some(limit), "{input}");
            }
        }
    }
    let mut big = Store::new();
    big.set_limits(Limits {
        output_bytes_max: 10,
        ..Limits::default()
    });
    big.set("k", "0123456789");
    let err = script(
        &mut big,
        json!({"declare": [["k", "string", "whole", "read"]]}),
    )
    .unwrap_err();
    assert_eq!(err.limit, Some("output"));
    assert_eq!(
        err.abort.message,
        "participant `redstage_guest::testing::tests::Script` exceeded its output limit (10 bytes of output)"
    );
}

#[test]
fn aborts_with_the_hosts_codes_are_bad_abort_codes() {
    for code in [
        "conflict",
        "undeclared_write",
        "bad_access",
        "",
        "has space",
        "é",
    ] {
        let err = script(&mut Store::new(), json!({"abort": [code, "m"]})).unwrap_err();
        assert_eq!(err.abort.code, "bad_abort_code", "{code:?}");
    }
    let err = script(
        &mut Store::new(),
        json!({"abort": ["sold-out:A1.x_2", "m"]}),
    )
    .unwrap_err();
    assert_eq!(err.abort, Abort::new("sold-out:A1.x_2", "m"));
    struct Reserved;
    impl Participant for Reserved {
        type Input = ();
        fn declare(_: &()) -> Result<Access, Abort> {
            Ok(Access::new().adjust("n"))
        }
        fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
            let abort = Abort::new("conflict", "a bounded write's abort is checked too");
            Ok(Outcome::new().adjust("n", 1, Bounds::none(), abort))
        }
    }
    let err = Store::new().run::<Reserved>("null").unwrap_err();
    assert_eq!(err.abort.code, "bad_abort_code");
}

#[test]
#[should_panic(expected = "`h` holds a hash, not a string")]
fn the_stores_own_methods_refuse_another_type() {
    social().get("h");
}

/// Takes `qty` of `stock`, never below 0 (an adjustment).
struct Take;

#[derive(Deserialize)]
struct TakeInput {
    qty: Positive,
}

impl Participant for Take {
    type Input = TakeInput;

    fn declare(_: &TakeInput) -> Result<Access, Abort> {
        Ok(Access::new().adjust("stock"))
    }

    fn execute(input: &TakeInput, _: &Snapshot) -> Result<Outcome, Abort> {
        let abort = Abort::new("insufficient_stock", "not enough");
        Outcome::new()
            .adjust("stock", -input.qty.get(), Bounds::at_least(0), abort)
            .output_json(&input.qty)
    }
}

/// Copies the bytes of `from` to `to`, both its own keys.
struct Copy;

#[derive(Deserialize)]
struct CopyInput {
    from: String,
    to: String,
}

impl Participant for Copy {
    type Input = CopyInput;

    fn declare(input: &CopyInput) -> Result<Access, Abort> {
        Ok(Access::new()
            .read(input.from.as_str())
            .write(input.to.as_str()))
    }

    fn execute(input: &CopyInput, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let value = snapshot.get(&input.from)?.unwrap_or_default().to_vec();
        Ok(Outcome::new().set(input.to.as_str(), value))
    }
}

#[test]
fn steps_see_earlier_writes_under_their_own_prefixes_with_binary_values() {
    let mut store = Store::new();
    store
        .set("inv:stock", "5")
        .set("raw:blob", vec![0u8, 159, 146, 150]);
    let outputs = store
        .transaction()
        .step_in::<Take>("inv:", r#"{"qty": 2}"#)
        .step_in::<Copy>("raw:", r#"{"from": "blob", "to": "copy"}"#)
        .step_in::<Copy>("raw:", r#"{"from": "copy", "to": "again"}"#)
        .run()
        .expect("committed");
    assert_eq!(outputs, [json!(2), json!(null), json!(null)]);
    assert_eq!(store.get("inv:stock"), Some(&b"3"[..]));
    assert_eq!(store.get("raw:again"), Some(&[0u8, 159, 146, 150][..]));
}

#[test]
fn an_abort_or_a_broken_bound_leaves_the_store_unchanged() {
    let mut store = Store::new();
    store.set("stock", "3");
    let before = store.clone();
    let err = store
        .transaction()
        .step::<Copy>(r#"{"from": "stock", "to": "seen"}"#)
        .step::<Take>(r#"{"qty": 2}"#)
        .step::<Take>(r#"{"qty": 2}"#)
        .run()
        .expect_err("the second take breaks the bound");
    assert_eq!(err.step, 2);
    assert_eq!(err.abort.code, "insufficient_stock");
    assert_eq!(err.limit, None);
    assert_eq!(store, before);
    let err = store
        .transaction()
        .step::<Take>("{}")
        .run()
        .expect_err("bad input");
    assert_eq!((err.step, err.abort.code.as_str()), (0, "bad_input"));
}

#[test]
fn run_reports_typed_writes_and_the_store_they_leave() {
    let out = run::<Script>(
        &json!({
            "declare": [["n", "string", "whole", "adjust"], ["s", "set", {"member": "m"}, "write"], ["k", "string", "whole", "write"]],
            "ops": [{"adjust": ["n", 2, null, null]}, {"adjust": ["n", 3, null, null]}, {"sadd": ["s", "m"]}, {"delete": "k"}],
        })
        .to_string(),
        &[("n", "1"), ("k", "v")],
    )
    .unwrap();
    assert_eq!(
        out.writes,
        BTreeMap::from([
            ("k".to_string(), None),
            ("n".to_string(), Some("6".to_string()))
        ])
    );
    assert_eq!(out.adjustments, BTreeMap::from([("n".to_string(), 5)]));
    assert_eq!(out.ops.len(), 4);
    assert!(out.store.sismember("s", "m"));
    assert!(!out.store.exists("k"));
}

// One step, with `run`.
/// `{"key": K, "by": N}` adds N to K and reads `limit`.
struct Add;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddInput {
    key: String,
    by: Positive,
}

impl Participant for Add {
    type Input = AddInput;

    fn declare(input: &AddInput) -> Result<Access, Abort> {
        Ok(Access::new().read("limit").write(input.key.as_str()))
    }

    fn execute(input: &AddInput, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let value = checked_add(snapshot.get_i64(&input.key)?, input.by.get())?;
        if value > snapshot.get_i64("limit")? {
            return Err(Abort::new(
                "over_limit",
                format!("{value} is over the limit"),
            ));
        }
        Outcome::new()
            .set_i64(input.key.as_str(), value)
            .output_json(&json!({ "value": value }))
    }
}

#[test]
fn runs_declare_then_execute_on_the_declared_keys() {
    let out = run::<Add>(
        r#"{"key": "n", "by": 2}"#,
        &[("n", "5"), ("limit", "10"), ("other", "x")],
    )
    .unwrap();
    assert_eq!(out.access, Access::new().read("limit").write("n"));
    assert_eq!(out.writes, BTreeMap::from([("n".into(), Some("7".into()))]));
    assert_eq!(out.output, json!({ "value": 7 }));
}

#[test]
fn missing_keys_are_absent() {
    let err = run::<Add>(r#"{"key": "n", "by": 2}"#, &[]).unwrap_err();
    assert_eq!(err, Abort::new("over_limit", "2 is over the limit"));
}

#[test]
fn malformed_input_is_bad_input() {
    for input in [
        "",
        "[]",
        r#"{"key": "n"}"#,
        r#"{"key": "n", "by": 0}"#,
        r#"{"key": "n", "by": 1, "extra": 1}"#,
    ] {
        let err = run::<Add>(input, &[]).unwrap_err();
        assert_eq!(err.code, "bad_input", "{input}: {err}");
    }
    let err = declare::<Add>(r#"{"key": "n", "by": -1}"#).unwrap_err();
    assert!(
        err.message.contains("expected a positive 64-bit integer"),
        "{}",
        err.message
    );
}

#[test]
fn stored_garbage_and_overflow_abort() {
    let input = r#"{"key": "n", "by": 1}"#;
    let err = run::<Add>(input, &[("n", "seven")]).unwrap_err();
    assert_eq!(err.code, "bad_value");
    let err = run::<Add>(input, &[("n", &i64::MAX.to_string())]).unwrap_err();
    assert_eq!(err.code, "overflow");
}

/// Writes a key it never declared.
struct Sneaky;

impl Participant for Sneaky {
    type Input = ();

    fn declare(_: &()) -> Result<Access, Abort> {
        Ok(Access::new().read("a"))
    }

    fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
        Ok(Outcome::new().delete("a"))
    }
}

#[test]
fn an_undeclared_write_is_the_hosts_abort() {
    let err = run::<Sneaky>("null", &[]).unwrap_err();
    assert_eq!(err.code, "undeclared_write");
    assert!(
        err.message
            .contains("wrote `a`, which it did not declare for writing"),
        "{}",
        err.message
    );
}

/// Reads a key it never declared.
struct Nosy;

impl Participant for Nosy {
    type Input = ();

    fn declare(_: &()) -> Result<Access, Abort> {
        Ok(Access::new())
    }

    fn execute(_: &(), snapshot: &Snapshot) -> Result<Outcome, Abort> {
        snapshot.get("secret")?;
        Ok(Outcome::new())
    }
}

#[test]
fn undeclared_read_aborts() {
    let err = run::<Nosy>("null", &[("secret", "x")]).unwrap_err();
    assert_eq!(err.code, "undeclared_key");
}

/// Answers differently each time: what the host must never see.
struct Fickle;

impl Participant for Fickle {
    type Input = ();

    fn declare(_: &()) -> Result<Access, Abort> {
        Ok(Access::new())
    }

    fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static CALLS: AtomicU32 = AtomicU32::new(0);
        Ok(Outcome::new().output(CALLS.fetch_add(1, Ordering::Relaxed).to_string()))
    }
}

#[test]
#[should_panic(expected = "participants must be deterministic")]
fn nondeterminism_panics() {
    let _ = run::<Fickle>("null", &[]);
}

/// Returns non-JSON output.
struct Plain;

impl Participant for Plain {
    type Input = ();

    fn declare(_: &()) -> Result<Access, Abort> {
        Ok(Access::new())
    }

    fn execute(_: &(), _: &Snapshot) -> Result<Outcome, Abort> {
        Ok(Outcome::new().output("not json"))
    }
}

#[test]
fn non_json_output_is_a_string() {
    assert_eq!(run::<Plain>("null", &[]).unwrap().output, json!("not json"));
}
