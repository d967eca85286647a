//! Metrics, kept in atomics on the hot path and rendered in the Prometheus
//! text format by `GET /metrics`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `redstage_transactions_total` | `status`, `code` | decided transactions; `code` on aborts (at most [`ABORT_CODES_MAX`] codes, then `(other)`) |
//! | `redstage_transaction_errors_total` | `code` | requests that ended in an error, not a decision |
//! | `redstage_transaction_attempts_total` | | attempts, re-runs after conflicts included |
//! | `redstage_transaction_duration_seconds` | | histogram, request to decision |
//! | `redstage_participant_calls_total` | `participant`, `call` | `instantiate`, `declare`, `execute` |
//! | `redstage_participant_call_seconds_total` | `participant`, `call` | wall time in those calls |
//! | `redstage_components_compiled_total` | | compilations (compile cache misses) |
//! | `redstage_compile_cache_hits_total` | | components loaded from the compile cache |
//! | `redstage_recovered_locks_total` | | expired locks resolved by sweeps and readers |
//! | `redstage_recovery_actions_total` | `action` | the same, by `roll_forward` or `roll_back` |
//! | `redstage_phase_seconds` | `phase` | histogram of each phase: `declare`, `lock`, `execute`, `reserve`, `commit` |
//! | `redstage_store_errors_total` | `store`, `kind` | failed Redis calls: `unavailable` (no answer in time, connection lost) or `protocol` |
//! | `redstage_locks` | `store` | locks held right now, read from each store's lock index at scrape |
//! | `redstage_locks_expired` | `store` | of those, locks past their lease: transactions in doubt until recovery finishes them |
//! | `redstage_round_trips_total` | | rounds of Redis calls transactions waited for before their answers (calls of one round run in parallel) |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::runtime::RESERVED_ABORT_CODES;

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// Distinct abort codes counted under their own label. Participants choose
/// their codes, so past this many a new one counts as [`OTHER_CODES`]
/// rather than growing every scrape (the host's own codes always keep
/// theirs).
pub const ABORT_CODES_MAX: usize = 100;

/// The label of the codes past [`ABORT_CODES_MAX`]; no participant's code
/// can have parentheses.
pub const OTHER_CODES: &str = "(other)";

/// The phases of a transaction whose time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Instantiating the steps and calling `declare` on each.
    Declare,
    /// The round that locks and reads every key, on every store at once.
    Lock,
    /// Calling `execute` on each step.
    Execute,
    /// The round that reserves adjustments on the stores but the primary.
    Reserve,
    /// The commit point, on the primary.
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Declare,
        Phase::Lock,
        Phase::Execute,
        Phase::Reserve,
        Phase::Commit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Declare => "declare",
            Phase::Lock => "lock",
            Phase::Execute => "execute",
            Phase::Reserve => "reserve",
            Phase::Commit => "commit",
        }
    }
}

/// The coordinator's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    committed: AtomicU64,
    /// Aborts by code: few distinct codes, so a lock is cheap enough.
    aborted: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    attempts: AtomicU64,
    latency: Histogram,
    /// Recovery actions, each one transaction's locks on one store.
    rolled_forward: AtomicU64,
    rolled_back: AtomicU64,
    /// How long each phase of a transaction took.
    phases: [Histogram; Phase::ALL.len()],
    /// Rounds of Redis calls waited for before answers: what latency is
    /// made of, whatever the network.
    round_trips: AtomicU64,
}

impl Metrics {
    pub fn decided(&self, abort_code: Option<&str>, attempts: u32, took: Duration) {
        match abort_code {
            None => {
                self.committed.fetch_add(1, Relaxed);
            }
            Some(code) => {
                let mut aborted = self.aborted.lock().expect("metrics lock");
                let own = aborted.contains_key(code)
                    || aborted.len() < ABORT_CODES_MAX
                    || RESERVED_ABORT_CODES.contains(&code);
                let label = if own { code } else { OTHER_CODES };
                *aborted.entry(label.to_owned()).or_default() += 1;
            }
        }
        self.attempts.fetch_add(u64::from(attempts), Relaxed);
        self.latency.observe(took);
    }

    /// One run of `phase` took `took`.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.phases[phase as usize].observe(took);
    }

    /// Recovery finished a transaction's locks on one store: `forward`
    /// (it had committed) or back.
    pub fn recovered(&self, forward: bool) {
        let counter = match forward {
            true => &self.rolled_forward,
            false => &self.rolled_back,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A transaction waited for one more round of Redis calls before its
    /// answer.
    pub fn round_trip(&self) {
        self.round_trips.fetch_add(1, Relaxed);
    }

    /// Rounds of Redis calls waited for before answers, so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Relaxed)
    }

    /// Transactions decided committed, so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Relaxed)
    }

    pub fn failed(&self, code: &'static str) {
        *self
            .errors
            .lock()
            .expect("metrics lock")
            .entry(code)
            .or_default() += 1;
    }

    /// Appends the coordinator's metrics to `out`.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "redstage_transactions_total",
            "counter",
            "decided transactions",
        );
        sample(
            out,
            "redstage_transactions_total",
            &[("status", "committed")],
            self.committed.load(Relaxed),
        );
        for (code, n) in self.aborted.lock().expect("metrics lock").iter() {
            sample(
                out,
                "redstage_transactions_total",
                &[("status", "aborted"), ("code", code)],
                *n,
            );
        }
        header(
            out,
            "redstage_transaction_errors_total",
            "counter",
            "requests that ended in an error rather than a decision",
        );
        for (code, n) in self.errors.lock().expect("metrics lock").iter() {
            sample(
                out,
                "redstage_transaction_errors_total",
                &[("code", code)],
                *n,
            );
        }
        header(
            out,
            "redstage_transaction_attempts_total",
            "counter",
            "attempts, re-runs after conflicts included",
        );
        sample(
            out,
            "redstage_transaction_attempts_total",
            &[],
            self.attempts.load(Relaxed),
        );
        self.latency.render(
            out,
            "redstage_transaction_duration_seconds",
            "from request to decision",
        );
        header(
            out,
            "redstage_recovered_locks_total",
            "counter",
            "expired locks resolved",
        );
        let (forward, back) = (
            self.rolled_forward.load(Relaxed),
            self.rolled_back.load(Relaxed),
        );
        sample(out, "redstage_recovered_locks_total", &[], forward + back);
        header(
            out,
            "redstage_recovery_actions_total",
            "counter",
            "transactions finished by recovery on one store, by what it did",
        );
        for (action, n) in [("roll_forward", forward), ("roll_back", back)] {
            sample(
                out,
                "redstage_recovery_actions_total",
                &[("action", action)],
                n,
            );
        }
        header(
            out,
            "redstage_phase_seconds",
            "histogram",
            "time of each phase of a transaction, per attempt",
        );
        for phase in Phase::ALL {
            self.phases[phase as usize].render_samples(
                out,
                "redstage_phase_seconds",
                &[("phase", phase.name())],
            );
        }
        header(
            out,
            "redstage_round_trips_total",
            "counter",
            "rounds of Redis calls transactions waited for before their answers",
        );
        sample(
            out,
            "redstage_round_trips_total",
            &[],
            self.round_trips.load(Relaxed),
        );
    }
}

/// Calls into one participant's component, and the wall time they took.
#[derive(Debug, Default)]
pub struct CallStats {
    pub instantiate: Timer,
    pub declare: Timer,
    pub execute: Timer,
}

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct Timer {
    count: AtomicU64,
    nanos: AtomicU64,
}

impl Timer {
    pub fn record(&self, took: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// (calls, total time)
    pub fn get(&self) -> (u64, Duration) {
        (
            self.count.load(Relaxed),
            Duration::from_nanos(self.nanos.load(Relaxed)),
        )
    }
}

impl CallStats {
    /// Appends one participant's call metrics to `out` (headers written by
    /// [`call_headers`]).
    pub fn render(&self, out: &mut String, participant: &str) {
        for (call, timer) in [
            ("instantiate", &self.instantiate),
            ("declare", &self.declare),
            ("execute", &self.execute),
        ] {
            let (count, total) = timer.get();
            let labels = [("participant", participant), ("call", call)];
            sample(out, "redstage_participant_calls_total", &labels, count);
            sample_f64(
                out,
                "redstage_participant_call_seconds_total",
                &labels,
                total.as_secs_f64(),
            );
        }
    }
}

/// The headers of the participant call metrics.
pub fn call_headers(out: &mut String) {
    header(
        out,
        "redstage_participant_calls_total",
        "counter",
        "calls into participant components",
    );
    header(
        out,
        "redstage_participant_call_seconds_total",
        "counter",
        "wall time spent in participant calls",
    );
}

/// A latency histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        self.render_samples(out, name, &[]);
    }

    /// The samples alone, each with `labels` too.
    fn render_samples(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (le, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let le = le.to_string();
            let labels: Vec<_> = labels.iter().copied().chain([("le", &*le)]).collect();
            sample(out, &bucket, &labels, cumulative);
        }
        let count = self.count.load(Relaxed);
        let labels: Vec<_> = labels.iter().copied().chain([("le", "+Inf")]).collect();
        sample(out, &bucket, &labels, count);
        let labels = &labels[..labels.len() - 1];
        let sum = Duration::from_nanos(self.sum_nanos.load(Relaxed)).as_secs_f64();
        sample_f64(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, count);
    }
}

pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
}

fn sample_f64(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
}

/// `{a="x",b="y"}`, values escaped as the text format requires.
fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('\n', r"\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.decided(None, 1, Duration::from_micros(800));
        m.decided(Some("conflict"), 10, Duration::from_millis(30));
        m.failed("store_unavailable");
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "# TYPE redstage_transactions_total counter",
            "redstage_transactions_total{status=\"committed\"} 1",
            "redstage_transactions_total{status=\"aborted\",code=\"conflict\"} 1",
            "redstage_transaction_errors_total{code=\"store_unavailable\"} 1",
            "redstage_transaction_attempts_total 11",
            "redstage_transaction_duration_seconds_bucket{le=\"0.001\"} 1",
            "redstage_transaction_duration_seconds_bucket{le=\"0.05\"} 2",
            "redstage_transaction_duration_seconds_bucket{le=\"+Inf\"} 2",
            "redstage_transaction_duration_seconds_count 2",
        ] {
            assert!(out.lines().any(|l| l == line), "no `{line}` in\n{out}");
        }
        assert_eq!(render_labels(&[("p", "a\"b\\c\nd")]), r#"{p="a\"b\\c\nd"}"#);
    }

    #[test]
    fn abort_codes_past_the_bound_share_one_label() {
        let m = Metrics::default();
        for i in 0..ABORT_CODES_MAX + 50 {
            m.decided(Some(&format!("code_{i}")), 1, Duration::ZERO);
        }
        m.decided(Some("code_0"), 1, Duration::ZERO);
        m.decided(Some("conflict"), 1, Duration::ZERO);
        let mut out = String::new();
        m.render(&mut out);
        let aborted: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("redstage_transactions_total{status=\"aborted\""))
            .collect();
        assert_eq!(aborted.len(), ABORT_CODES_MAX + 2, "{out}");
        assert!(
            aborted.contains(&r#"redstage_transactions_total{status="aborted",code="conflict"} 1"#)
        );
        assert!(
            aborted.contains(&r#"redstage_transactions_total{status="aborted",code="code_0"} 2"#)
        );
        assert!(
            aborted.contains(&r#"redstage_transactions_total{status="aborted",code="(other)"} 50"#)
        );
    }
}
