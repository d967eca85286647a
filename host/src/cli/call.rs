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

use crate::runtime::{
    AccessSet, CallError, CallLimits, Entry, GuestAbort, GuestOutput, Instance, LimitOverrides,
    Runtime, Write,
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
    Given(BTreeMap<String, Option<Vec<u8>>>),
    /// `--store` and `--prefix`.
    Redis { url: String, prefix: String },
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
        "access": {"reads": access.reads, "writes": access.writes, "adjusts": access.adjusts},
        "printed": printed,
    });

    let started = Instant::now();
    let snapshot = snapshot(&source, &access).await?;
    if matches!(source, Source::Redis { .. }) {
        times["read_us"] = json!(us(started.elapsed()));
    }
    report["snapshot"] = snapshot
        .iter()
        .map(|e| {
            (
                e.key.clone(),
                e.value.as_deref().map_or(Value::Null, value_json),
            )
        })
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

/// `{"key": "text", "other": null, "bin": {"base64": "AAE="}}`.
fn parse_snapshot(text: &str) -> anyhow::Result<BTreeMap<String, Option<Vec<u8>>>> {
    let shape = "--snapshot must be a JSON object of key -> value: a string, null (no such \
                 key), or {\"base64\": \"...\"} for bytes";
    let Value::Object(map) = serde_json::from_str::<Value>(text).context(shape)? else {
        bail!("{shape}");
    };
    map.into_iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Null => None,
                Value::String(s) => Some(s.into_bytes()),
                Value::Object(o) if o.len() == 1 && o["base64"].is_string() => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(o["base64"].as_str().expect("a string"))
                        .with_context(|| format!("--snapshot: `{key}` is not base64"))?,
                ),
                other => bail!("{shape}; `{key}` is {other}"),
            };
            Ok((key, value))
        })
        .collect()
}

/// The snapshot `execute` gets: every key declared for reading or writing,
/// once, in order, as the coordinator builds it.
async fn snapshot(source: &Source, access: &AccessSet) -> anyhow::Result<Vec<Entry>> {
    let mut keys: Vec<&String> = access.reads.iter().chain(&access.writes).collect();
    keys.sort();
    keys.dedup();
    let values = match source {
        Source::Given(map) => keys
            .iter()
            .map(|k| map.get(*k).cloned().flatten())
            .collect(),
        Source::Redis { url, prefix } => read(url, prefix, &keys).await?,
    };
    Ok(keys
        .into_iter()
        .zip(values)
        .map(|(key, value)| Entry {
            key: key.clone(),
            value,
        })
        .collect())
}

/// How long reading the snapshot from `--store` may take.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET prefix+key` for each key, and nothing else: the store is only read.
async fn read(url: &str, prefix: &str, keys: &[&String]) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
    if url.starts_with(crate::store::cluster::SCHEME) {
        bail!(
            "--store takes a redis:// or rediss:// URL; for a cluster, give the URL of the node holding the keys"
        );
    }
    let client = redis::Client::open(url).with_context(|| format!("--store {url}"))?;
    let read = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("GET").arg(format!("{prefix}{key}"));
        }
        pipe.query_async::<Vec<Option<Vec<u8>>>>(&mut connection)
            .await
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

fn write_json(write: &Write) -> Value {
    match write {
        Write::Set((key, value)) => json!({"set": key, "value": value_json(value)}),
        Write::Delete(key) => json!({"delete": key}),
        Write::Adjust(a) => json!({
            "adjust": a.key,
            "delta": a.delta,
            "lower": a.lower,
            "upper": a.upper,
            "abort": {"code": a.abort.code, "message": a.abort.message},
        }),
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
        for kind in ["reads", "writes", "adjusts"] {
            line(kind, access[kind].to_string());
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
