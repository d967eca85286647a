//! `redstage call`: one step of a participant, run on its own, the way the
//! host runs it (the same runtime, limits and checks), without a config,
//! a coordinator or, unless asked to read one, a Redis.
//!
//! It calls `declare` with the input, builds the snapshot of the declared
//! keys (from `--snapshot`, or read from a Redis with `--store`, read-only),
//! calls `execute`, and prints each part: the access set, the snapshot, the
//! writes, the output or the abort, what the participant printed, and how
//! long each phase took.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::runtime::guest::{self, Access, Kind, Mode, Op, Target};
use crate::runtime::{
    AccessSet, CallError, CallLimits, Entry, GuestAbort, GuestOutput, Instance, LimitOverrides,
    Runtime,
};

/// Exit status: the step answered.
pub const EXIT_OK: u8 = 0;
/// Exit status: the participant aborted (a business "no", `bad_input`).
pub const EXIT_ABORTED: u8 = 1;
/// Exit status: the step failed: a trap, a broken limit, a bad abort code.
pub const EXIT_FAILED: u8 = 2;
/// Exit status: nothing ran: the component does not load, an argument is
/// not what it should be, the store cannot be read.
pub const EXIT_UNUSABLE: u8 = 3;

/// What `redstage call` was asked.
#[derive(Debug, Clone)]
pub struct Call {
    pub component: PathBuf,
    pub input: String,
    pub snapshot: Option<String>,
    pub store: Option<String>,
    pub prefix: Option<String>,
    pub limits: Option<String>,
    pub pretty: bool,
}

/// Where the snapshot comes from.
enum Source {
    /// `--snapshot`: values by key; a key not given does not exist.
    Given(BTreeMap<String, Data>),
    /// `--store` and `--prefix`.
    Redis { url: String, prefix: String },
}

/// What one key holds, as `--snapshot` gives it.
#[derive(Debug, Clone, PartialEq)]
enum Data {
    None,
    String(Vec<u8>),
    Hash(BTreeMap<String, Vec<u8>>),
    Set(Vec<String>),
    /// Members and scores, in order of score.
    Zset(Vec<(String, f64)>),
}

/// Runs the call and prints its report; the exit status says how it ended.
pub async fn run(call: Call) -> anyhow::Result<ExitCode> {
    match report(&call).await {
        Ok((report, status)) => {
            match call.pretty {
                true => print!("{}", pretty(&report)),
                false => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(ExitCode::from(status))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_UNUSABLE))
        }
    }
}

fn us(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 1000.0 * 10.0).round() / 10.0
}

/// The report, and the exit status it calls for.
async fn report(call: &Call) -> anyhow::Result<(Value, u8)> {
    let input: Value = serde_json::from_str(&call.input)
        .context("--input must be JSON, the step's `input` as a transaction would carry it")?;
    let source = source(call)?;
    let limits = match &call.limits {
        Some(text) => serde_json::from_str::<LimitOverrides>(text)
            .context("--limits must be a JSON object of [limits] keys")?
            .apply(&CallLimits::default())
            .map_err(|e| anyhow::anyhow!("--limits: {e}"))?,
        None => CallLimits::default(),
    };
    let bytes = std::fs::read(&call.component)
        .with_context(|| format!("cannot read {}", call.component.display()))?;
    let runtime = Runtime::new().context("starting the WebAssembly runtime")?;
    let loading = Instant::now();
    let component = runtime
        .load(&bytes, limits)
        .with_context(|| format!("{}", call.component.display()))?;
    let mut report = json!({
        "component": {
            "path": call.component,
            "bytes": bytes.len(),
            "contract": component.contract(),
            "imports": component.imports(),
        },
        "input": input,
    });
    let mut times = json!({"load_us": us(loading.elapsed())});
    let input = serde_json::to_vec(&input).expect("JSON values serialize");

    let started = Instant::now();
    let mut instance = match component.instantiate().await {
        Ok(instance) => instance,
        Err(e) => {
            return Ok(failed(
                report,
                times,
                "instantiate",
                e,
                GuestOutput::default(),
            ));
        }
    };
    times["instantiate_us"] = json!(us(started.elapsed()));

    let started = Instant::now();
    let declared = instance.declare(&input).await;
    times["declare_us"] = json!(us(started.elapsed()));
    let printed = instance.take_output();
    let access = match declared {
        Ok(Ok(access)) => access,
        Ok(Err(abort)) => return Ok(aborted(report, times, "declare", abort, printed)),
        Err(e) => return Ok(failed(report, times, "declare", e, printed)),
    };
    report["declare"] = json!({
        "access": access_json(&access),
        "printed": printed,
    });

    let started = Instant::now();
    let snapshot = snapshot(&source, &access).await?;
    if matches!(source, Source::Redis { .. }) {
        times["read_us"] = json!(us(started.elapsed()));
    }
    report["snapshot"] = snapshot
        .iter()
        .map(|e| (entry_name(e), found_json(&e.value)))
        .collect::<serde_json::Map<_, _>>()
        .into();

    execute(report, times, &mut instance, &input, &snapshot).await
}

async fn execute(
    mut report: Value,
    mut times: Value,
    instance: &mut Instance,
    input: &[u8],
    snapshot: &[Entry],
) -> anyhow::Result<(Value, u8)> {
    let started = Instant::now();
    let executed = instance.execute(input, snapshot).await;
    times["execute_us"] = json!(us(started.elapsed()));
    let printed = instance.take_output();
    let outcome = match executed {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(abort)) => return Ok(aborted(report, times, "execute", abort, printed)),
        Err(e) => return Ok(failed(report, times, "execute", e, printed)),
    };
    let output = serde_json::from_slice::<Value>(&outcome.output)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&outcome.output).into_owned()));
    report["execute"] = json!({
        "writes": outcome.writes.iter().map(write_json).collect::<Vec<_>>(),
        "output": if outcome.output.is_empty() { Value::Null } else { output },
        "printed": printed,
    });
    report["status"] = json!("ok");
    report["times"] = times;
    Ok((report, EXIT_OK))
}

fn aborted(
    mut report: Value,
    times: Value,
    call: &str,
    abort: GuestAbort,
    printed: GuestOutput,
) -> (Value, u8) {
    report[call] = json!({"printed": printed});
    report["status"] = json!("aborted");
    report["abort"] = json!({"call": call, "code": abort.code, "message": abort.message});
    report["times"] = times;
    (report, EXIT_ABORTED)
}

fn failed(
    mut report: Value,
    times: Value,
    call: &str,
    error: CallError,
    printed: GuestOutput,
) -> (Value, u8) {
    let (code, limit) = match &error {
        CallError::Trap(_) => ("trap", None),
        CallError::Limit { limit, .. } => ("limit_exceeded", Some(limit.name())),
        CallError::BadAbortCode(_) => ("bad_abort_code", None),
    };
    report[call] = json!({"printed": printed});
    report["status"] = json!("failed");
    report["failure"] =
        json!({"call": call, "code": code, "limit": limit, "message": error.to_string()});
    report["times"] = times;
    (report, EXIT_FAILED)
}

fn source(call: &Call) -> anyhow::Result<Source> {
    match (&call.snapshot, &call.store, &call.prefix) {
        (Some(_), Some(_), _) => bail!("give either --snapshot or --store, not both"),
        (Some(text), None, _) => Ok(Source::Given(parse_snapshot(text)?)),
        (None, Some(url), Some(prefix)) => Ok(Source::Redis {
            url: url.clone(),
            prefix: prefix.clone(),
        }),
        (None, Some(_), None) => {
            bail!("--store needs --prefix, the participant's key prefix on that store")
        }
        (None, None, _) => Ok(Source::Given(BTreeMap::new())),
    }
}

/// `{"key": "text", "other": null, "bin": {"base64": "AAE="}, "user": {"hash":
/// {"sent": "3"}}, "follows": {"set": ["bob"]}, "board": {"zset": {"ann": 7}}}`.
fn parse_snapshot(text: &str) -> anyhow::Result<BTreeMap<String, Data>> {
    let shape = "--snapshot must be a JSON object of key -> value: a string, null (no such \
                 key), {\"base64\": \"...\"} for bytes, {\"hash\": {field: value}}, \
                 {\"set\": [member]} or {\"zset\": {member: score}}";
    let Value::Object(map) = serde_json::from_str::<Value>(text).context(shape)? else {
        bail!("{shape}");
    };
    let bytes = |key: &str, v: &Value| -> anyhow::Result<Vec<u8>> {
        match v {
            Value::String(s) => Ok(s.clone().into_bytes()),
            Value::Object(o) if o.len() == 1 && o["base64"].is_string() => {
                base64::engine::general_purpose::STANDARD
                    .decode(o["base64"].as_str().expect("a string"))
                    .with_context(|| format!("--snapshot: `{key}` is not base64"))
            }
            other => bail!("{shape}; `{key}` holds {other}"),
        }
    };
    map.into_iter()
        .map(|(key, value)| {
            let data = match &value {
                Value::Null => Data::None,
                Value::Object(o) if o.len() == 1 && o.contains_key("hash") => {
                    let Value::Object(fields) = &o["hash"] else {
                        bail!("{shape}; `{key}`'s hash is not an object");
                    };
                    let fields = fields
                        .iter()
                        .map(|(f, v)| Ok((f.clone(), bytes(&key, v)?)))
                        .collect::<anyhow::Result<_>>()?;
                    Data::Hash(fields)
                }
                Value::Object(o) if o.len() == 1 && o.contains_key("set") => {
                    let members = o["set"]
                        .as_array()
                        .and_then(|ms| ms.iter().map(|m| m.as_str().map(str::to_owned)).collect())
                        .with_context(|| {
                            format!("{shape}; `{key}`'s set is not a list of strings")
                        })?;
                    let mut members: Vec<String> = members;
                    members.sort();
                    members.dedup();
                    Data::Set(members)
                }
                Value::Object(o) if o.len() == 1 && o.contains_key("zset") => {
                    let scored = o["zset"]
                        .as_object()
                        .and_then(|ms| {
                            ms.iter()
                                .map(|(m, s)| s.as_f64().map(|s| (m.clone(), s)))
                                .collect::<Option<Vec<_>>>()
                        })
                        .with_context(|| {
                            format!("{shape}; `{key}`'s zset is not an object of member: score")
                        })?;
                    let mut scored = scored;
                    scored.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
                    Data::Zset(scored)
                }
                other => Data::String(bytes(&key, other)?),
            };
            Ok((key, data))
        })
        .collect()
}

/// The snapshot `execute` gets: every access declared in read or write
/// mode, once, in order, as the coordinator builds it.
async fn snapshot(source: &Source, access: &AccessSet) -> anyhow::Result<Vec<Entry>> {
    let mut reads: Vec<&Access> = Vec::new();
    for a in &access.accesses {
        let read = matches!(a.mode, Mode::Read | Mode::Write);
        let seen = reads
            .iter()
            .any(|r| r.key == a.key && r.kind == a.kind && r.target == a.target);
        if read && !seen {
            reads.push(a);
        }
    }
    let mut entries = Vec::with_capacity(reads.len());
    for a in reads {
        let data = match source {
            Source::Given(map) => map.get(&a.key).cloned().unwrap_or(Data::None),
            Source::Redis { url, prefix } => {
                read(url, &format!("{prefix}{}", a.key), a.kind).await?
            }
        };
        entries.push(Entry {
            key: a.key.clone(),
            kind: a.kind,
            target: a.target.clone(),
            value: value_of(&data, a),
        });
    }
    Ok(entries)
}

/// What access `a` finds in `data`, as the host's snapshot gives it.
fn value_of(data: &Data, a: &Access) -> guest::Value {
    let empty = Vec::new();
    let (hash, set, zset) = match data {
        Data::Hash(h) => (Some(h), None, None),
        Data::Set(s) => (None, Some(s), None),
        Data::Zset(z) => (None, None, Some(z)),
        _ => (None, None, None),
    };
    let zset = zset.unwrap_or(&empty);
    match (&a.target, a.kind) {
        (Target::Whole, Kind::String) => guest::Value::Bytes(match data {
            Data::String(v) => Some(v.clone()),
            _ => None,
        }),
        (Target::Field(f), _) => guest::Value::Bytes(hash.and_then(|h| h.get(f).cloned())),
        (Target::Whole, Kind::Hash) => guest::Value::Fields(
            hash.map(|h| h.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
                .unwrap_or_default(),
        ),
        (Target::Member(m), Kind::Set) => {
            guest::Value::Present(set.is_some_and(|s| s.binary_search(m).is_ok()))
        }
        (Target::Whole, Kind::Set) => guest::Value::Members(set.cloned().unwrap_or_default()),
        (Target::Member(m), _) => {
            guest::Value::Score(zset.iter().find(|(n, _)| n == m).map(|(_, s)| *s))
        }
        (Target::Ranks((a, b)), _) => {
            let n = zset.len() as i64;
            let norm = |i: i64| if i < 0 { n + i } else { i };
            let (a, b) = (norm(*a).max(0), norm(*b).min(n - 1));
            guest::Value::Ranked(if a > b {
                Vec::new()
            } else {
                zset[a as usize..=b as usize].to_vec()
            })
        }
        (Target::Scores((min, max)), _) => guest::Value::Ranked(
            zset.iter()
                .filter(|(_, s)| s >= min && s <= max)
                .cloned()
                .collect(),
        ),
        _ => guest::Value::Ranked(zset.clone()),
    }
}

/// How long reading the snapshot from `--store` may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `key` holds on the store, read as a value of `kind`, and nothing
/// else: the store is only read.
async fn read(url: &str, key: &str, kind: Kind) -> anyhow::Result<Data> {
    if url.starts_with(crate::store::cluster::SCHEME) {
        bail!(
            "--store takes a redis:// or rediss:// URL; for a cluster, give the URL of the node holding the keys"
        );
    }
    let client = redis::Client::open(url).with_context(|| format!("--store {url}"))?;
    let read = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        Ok::<Data, redis::RedisError>(match kind {
            Kind::String => match redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut c)
                .await?
            {
                Some(v) => Data::String(v),
                None => Data::None,
            },
            Kind::Hash => Data::Hash(redis::cmd("HGETALL").arg(key).query_async(&mut c).await?),
            Kind::Set => {
                let mut members: Vec<String> =
                    redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await?;
                members.sort();
                Data::Set(members)
            }
            Kind::Zset => Data::Zset(
                redis::cmd("ZRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await?,
            ),
            Kind::Stream | Kind::List => Data::None,
        })
    };
    tokio::time::timeout(STORE_TIMEOUT, read)
        .await
        .map_err(|_| anyhow::anyhow!("--store {url}: no answer within {STORE_TIMEOUT:?}"))?
        .with_context(|| format!("reading the snapshot from {url}"))
}

/// A value as JSON: its text when it is UTF-8, else `{"base64": ...}`.
fn value_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::String => "string",
        Kind::Hash => "hash",
        Kind::Set => "set",
        Kind::Zset => "zset",
        Kind::Stream => "stream",
        Kind::List => "list",
    }
}

fn target_json(target: &Target) -> Value {
    match target {
        Target::Whole => json!("whole"),
        Target::Field(f) => json!({"field": f}),
        Target::Member(m) => json!({"member": m}),
        Target::Ranks((a, b)) => json!({"ranks": [a, b]}),
        Target::Scores((a, b)) => json!({"scores": [a, b]}),
    }
}

/// The access set: the keys by mode (`reads`, `writes`, `adjusts`,
/// `appends`), and every access in full.
fn access_json(access: &AccessSet) -> Value {
    let keys = |mode: Mode| {
        let mut keys: Vec<&str> = access
            .accesses
            .iter()
            .filter(|a| a.mode == mode)
            .map(|a| a.key.as_str())
            .collect();
        keys.dedup();
        keys
    };
    json!({
        "reads": keys(Mode::Read),
        "writes": keys(Mode::Write),
        "adjusts": keys(Mode::Adjust),
        "appends": keys(Mode::Append),
        "accesses": access.accesses.iter().map(|a| json!({
            "key": a.key,
            "kind": kind_name(a.kind),
            "target": target_json(&a.target),
            "mode": match a.mode {
                Mode::Read => "read",
                Mode::Write => "write",
                Mode::Adjust => "adjust",
                Mode::Append => "append",
            },
        })).collect::<Vec<_>>(),
    })
}

/// A snapshot entry's name in the report: its key, and its target unless
/// it is the key whole.
fn entry_name(e: &Entry) -> String {
    match &e.target {
        Target::Whole => e.key.clone(),
        t => format!("{} {}", e.key, target_json(t)),
    }
}

fn found_json(value: &guest::Value) -> Value {
    match value {
        guest::Value::Bytes(v) => v.as_deref().map_or(Value::Null, value_json),
        guest::Value::Present(p) => json!(p),
        guest::Value::Score(s) => json!(s),
        guest::Value::Fields(fs) => fs
            .iter()
            .map(|(f, v)| (f.clone(), value_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        guest::Value::Members(ms) => json!(ms),
        guest::Value::Ranked(rs) => json!(rs),
    }
}

fn write_json(write: &guest::Write) -> Value {
    let key = &write.key;
    let bounded = |b: &guest::Bounded| {
        json!({
            "delta": b.delta,
            "lower": b.lower,
            "upper": b.upper,
            "abort": {"code": b.abort.code, "message": b.abort.message},
        })
    };
    match &write.op {
        Op::Set((value, None)) => json!({"set": key, "value": value_json(value)}),
        Op::Set((value, Some(ttl))) => {
            json!({"set": key, "value": value_json(value), "ttl_ms": ttl})
        }
        Op::Delete => json!({"delete": key}),
        Op::Adjust(b) => {
            let mut v = bounded(b);
            v["adjust"] = json!(key);
            v
        }
        Op::Hset((f, v)) => json!({"hset": key, "field": f, "value": value_json(v)}),
        Op::Hdel(f) => json!({"hdel": key, "field": f}),
        Op::Hincrby((f, b)) => {
            let mut v = bounded(b);
            v["hincrby"] = json!(key);
            v["field"] = json!(f);
            v
        }
        Op::Sadd(m) => json!({"sadd": key, "member": m}),
        Op::Srem(m) => json!({"srem": key, "member": m}),
        Op::Zadd((m, s)) => json!({"zadd": key, "member": m, "score": s}),
        Op::Zrem(m) => json!({"zrem": key, "member": m}),
        Op::Zincrby((m, b)) => {
            let mut v = bounded(b);
            v["zincrby"] = json!(key);
            v["member"] = json!(m);
            v
        }
        Op::Xadd(e) => json!({
            "xadd": key,
            "fields": e.fields.iter().map(|(f, v)| (f.clone(), value_json(v))).collect::<serde_json::Map<_, _>>(),
            "maxlen": e.maxlen,
        }),
        Op::Rpush(vs) => {
            json!({"rpush": key, "values": vs.iter().map(|v| value_json(v)).collect::<Vec<_>>()})
        }
        Op::Lpush(vs) => {
            json!({"lpush": key, "values": vs.iter().map(|v| value_json(v)).collect::<Vec<_>>()})
        }
        Op::Expire(ms) => json!({"expire": key, "ms": ms}),
    }
}

/// The report as a person would rather read it.
fn pretty(report: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<10} {text}\n"));
    let component = &report["component"];
    line(
        "component",
        format!(
            "{} (contract {}, {} bytes)",
            Path::new(component["path"].as_str().unwrap_or_default()).display(),
            component["contract"].as_str().unwrap_or_default(),
            component["bytes"]
        ),
    );
    line("input", report["input"].to_string());
    let times = &report["times"];
    if let Some(access) = report["declare"].get("access") {
        for kind in ["reads", "writes", "adjusts", "appends"] {
            if access[kind].as_array().is_some_and(|a| !a.is_empty()) {
                line(kind, access[kind].to_string());
            }
        }
    }
    if let Some(snapshot) = report["snapshot"].as_object() {
        let mut first = true;
        for (key, value) in snapshot {
            let label = if first { "snapshot" } else { "" };
            first = false;
            line(label, format!("{key} = {value}"));
        }
        if snapshot.is_empty() {
            line("snapshot", "(no keys)".into());
        }
    }
    if let Some(writes) = report["execute"]["writes"].as_array() {
        for write in writes {
            line("write", write.to_string());
        }
        line("output", report["execute"]["output"].to_string());
    }
    for call in ["declare", "execute"] {
        for stream in ["stdout", "stderr"] {
            if let Some(text) = report[call]["printed"][stream]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                for (i, l) in text.lines().enumerate() {
                    let label = if i == 0 {
                        stream.to_string()
                    } else {
                        String::new()
                    };
                    line(&label, format!("[{call}] {l}"));
                }
            }
        }
    }
    match report["status"].as_str() {
        Some("aborted") => line(
            "aborted",
            format!(
                "{}: {}",
                report["abort"]["code"].as_str().unwrap_or_default(),
                report["abort"]["message"].as_str().unwrap_or_default()
            ),
        ),
        Some("failed") => line(
            "failed",
            report["failure"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => line("status", "ok".into()),
    }
    let phase = |name: &str| times[format!("{name}_us")].as_f64();
    let phases: Vec<String> = ["load", "instantiate", "declare", "read", "execute"]
        .iter()
        .filter_map(|p| phase(p).map(|t| format!("{p} {t} µs")))
        .collect();
    line("time", phases.join(", "));
    out
}
