//! Metrics in one `prometheus-client` registry per coordinator, rendered in
//! the Prometheus text format (0.0.4) by `GET /metrics`. What other parts
//! count in their own atomics (each store's failed calls, each participant's
//! calls, the compile cache) and the lock gauges read from the stores are
//! copied in at each scrape ([`Scraped`]).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `redstage_transactions_total` | `status`, `code` | decided transactions; `code` on aborts (at most [`ABORT_CODES_MAX`] codes, then `(other)`) |
//! | `redstage_transaction_errors_total` | `code` | requests that ended in an error, not a decision |
//! | `redstage_transaction_attempts_total` | | attempts, re-runs after conflicts included |
//! | `redstage_transaction_duration_seconds` | | histogram, request to decision |
//! | `redstage_participant_calls_total` | `participant`, `call` | `instantiate`, `declare`, `execute` |
//! | `redstage_participant_call_seconds_total` | `participant`, `call` | wall time in those calls |
//! | `redstage_reused_steps_total` | `participant` | steps run on a reused instance (`reuse_steps`) |
//! | `redstage_reuse_audits_total` | `participant` | of those, steps also run on a fresh instance and compared |
//! | `redstage_reuse_mismatches_total` | `participant` | audited steps whose answers differed: reuse is off for the participant until it is deployed again |
//! | `redstage_components_compiled_total` | | compilations (compile cache misses) |
//! | `redstage_compile_cache_hits_total` | | components loaded from the compile cache |
//! | `redstage_recovered_locks_total` | | expired locks resolved by sweeps and readers |
//! | `redstage_recovery_actions_total` | `action` | the same, by `roll_forward` or `roll_back` |
//! | `redstage_phase_seconds` | `phase` | histogram of each phase: `declare`, `lock`, `execute`, `reserve`, `commit` |
//! | `redstage_store_errors_total` | `store`, `kind` | failed Redis calls: `unavailable` (no answer in time, connection lost) or `protocol` |
//! | `redstage_locks` | `store` | transactions holding locks on each store right now (its lock index entries: one per transaction, whatever its keys; a committed one whose other stores are still applying counts on its primary), read at scrape |
//! | `redstage_locks_expired` | `store` | of those, the ones whose lease has ended: in doubt until recovery finishes them |
//! | `redstage_store_ready` | `store` | 1 when the store answers and keeps its writes as the config's durability demands (what `/v1/ready` checks), else 0 |
//! | `redstage_oldest_lock_age_seconds` | `store` | how long ago the transaction whose lease on the store ends first started (by its id's time); 0 without locks |
//! | `redstage_round_trips_total` | | rounds of Redis calls transactions waited for before their answers (calls of one round run in parallel) |
//! | `redstage_transactions_in_flight` | | transactions running on this host now (bounded by `txn.in_flight_max`) |
//! | `redstage_instance_slots` | | instance slots of the pool (`runtime.instance_pool`) |
//! | `redstage_instance_slots_in_use` | | of those, reserved by running transactions now |
//! | `redstage_build_info` | `version` | 1, labelled with this build's version |
//!
//! Every error code a request can end in, and every abort code of the
//! host's own, is there from the start at 0, so that rates and alerts see
//! a series before its first event. The latency histogram's buckets reach
//! the largest wait the config allows (see [`Metrics::new`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::runtime::{RESERVED_ABORT_CODES, ReuseCounts};

/// Upper bounds of the latency histograms' buckets, in seconds; the
/// transactions' own go on past the last (see [`Metrics::new`]).
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// The codes a request can end in without a decision (see
/// `txn::TxnError::code`), each counted from 0.
pub const ERROR_CODES: &[&str] = &[
    "empty_transaction",
    "unknown_participant",
    "too_many_steps",
    "bad_idempotency_key",
    "idempotency_key_reused",
    "store_unavailable",
    "store_error",
    "outcome_unknown",
    "in_flight",
    "overloaded",
];

/// Distinct abort codes counted under their own label. Participants choose
/// their codes, so past this many a new one counts as [`OTHER_CODES`]
/// rather than growing every scrape (the host's own codes always keep
/// theirs).
pub const ABORT_CODES_MAX: usize = 100;

/// The label of the codes past [`ABORT_CODES_MAX`]; no participant's code
/// can have parentheses.
pub const OTHER_CODES: &str = "(other)";

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A sample's labels, in order.
type Labels = Vec<(&'static str, String)>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// [`LATENCY_BUCKETS`], then 10 s, 20 s, 40 s, ... until one reaches
/// `longest`.
fn buckets_to(longest: Duration) -> Vec<f64> {
    let mut buckets = LATENCY_BUCKETS.to_vec();
    let mut next = 10.0;
    while buckets.last().is_some_and(|b| *b < longest.as_secs_f64()) {
        buckets.push(next);
        next *= 2.0;
    }
    buckets
}

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

/// The coordinator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By `status` and, for aborts, `code`.
    transactions: Family<Labels, Counter>,
    committed: Counter,
    /// Distinct abort codes with a label of their own; held while a code is
    /// looked up and maybe added, so that the bound is exact.
    abort_codes: Mutex<usize>,
    /// Held from copying a scrape's values in to rendering them, so that
    /// two scrapes at once cannot add what each copies to the other's.
    scraping: Mutex<()>,
    errors: Family<Labels, Counter>,
    attempts: Counter,
    latency: Histogram,
    recovered_locks: Counter,
    rolled_forward: Counter,
    rolled_back: Counter,
    /// How long each phase of a transaction took, by [`Phase`].
    phases: Vec<Histogram>,
    /// Rounds of Redis calls waited for before answers: what latency is
    /// made of, whatever the network.
    round_trips: Counter,
    // Copied in at each scrape.
    store_errors: Family<Labels, Counter>,
    locks: Family<Labels, Gauge>,
    locks_expired: Family<Labels, Gauge>,
    calls: Family<Labels, Counter>,
    call_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    reused: Family<Labels, Counter>,
    reuse_audits: Family<Labels, Counter>,
    reuse_mismatches: Family<Labels, Counter>,
    compiled: Counter,
    cache_hits: Counter,
    oldest_lock_age: Family<Labels, Gauge<f64, AtomicU64>>,
    ready: Family<Labels, Gauge>,
    in_flight: Gauge,
    slots: Gauge,
    slots_in_use: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(Duration::ZERO)
    }
}

impl Metrics {
    /// The metrics of a coordinator whose longest configured wait (for
    /// locks, a first request with the same key, instance slots) is
    /// `longest`: the latency histogram's buckets reach it.
    pub fn new(longest: Duration) -> Metrics {
        let transactions = Family::<Labels, Counter>::default();
        let committed = transactions.get_or_create_owned(&labels([("status", "committed")]));
        let phase_family =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let phases = Phase::ALL
            .iter()
            .map(|p| phase_family.get_or_create_owned(&labels([("phase", p.name())])))
            .collect();
        let recovery_actions = Family::<Labels, Counter>::default();
        let rolled_forward =
            recovery_actions.get_or_create_owned(&labels([("action", "roll_forward")]));
        let rolled_back = recovery_actions.get_or_create_owned(&labels([("action", "roll_back")]));
        let mut m = Metrics {
            registry: Registry::with_prefix("redstage"),
            transactions,
            committed,
            abort_codes: Mutex::new(0),
            scraping: Mutex::new(()),
            errors: Family::default(),
            attempts: Counter::default(),
            latency: Histogram::new(buckets_to(longest)),
            recovered_locks: Counter::default(),
            rolled_forward,
            rolled_back,
            phases,
            round_trips: Counter::default(),
            store_errors: Family::default(),
            locks: Family::default(),
            locks_expired: Family::default(),
            calls: Family::default(),
            call_seconds: Family::default(),
            reused: Family::default(),
            reuse_audits: Family::default(),
            reuse_mismatches: Family::default(),
            compiled: Counter::default(),
            cache_hits: Counter::default(),
            oldest_lock_age: Family::default(),
            ready: Family::default(),
            in_flight: Gauge::default(),
            slots: Gauge::default(),
            slots_in_use: Gauge::default(),
        };
        for code in ERROR_CODES {
            m.errors.get_or_create_owned(&labels([("code", code)]));
        }
        for code in RESERVED_ABORT_CODES {
            let labels = labels([("status", "aborted"), ("code", code)]);
            m.transactions.get_or_create_owned(&labels);
        }
        let r = &mut m.registry;
        r.register(
            "transactions",
            "transactions decided, by status and (aborted) code",
            m.transactions.clone(),
        );
        r.register(
            "transaction_errors",
            "requests that ended in an error rather than a decision, by code",
            m.errors.clone(),
        );
        r.register(
            "transaction_attempts",
            "attempts, re-runs after conflicts included",
            m.attempts.clone(),
        );
        r.register(
            "transaction_duration_seconds",
            "from request to decision",
            m.latency.clone(),
        );
        r.register(
            "recovered_locks",
            "expired locks resolved",
            m.recovered_locks.clone(),
        );
        r.register(
            "recovery_actions",
            "transactions finished by recovery on one store, by what it did",
            recovery_actions,
        );
        r.register(
            "phase_seconds",
            "time of each phase of a transaction, per attempt",
            phase_family,
        );
        r.register(
            "round_trips",
            "rounds of Redis calls transactions waited for before their answers",
            m.round_trips.clone(),
        );
        r.register(
            "store_errors",
            "failed Redis calls, by store and kind",
            m.store_errors.clone(),
        );
        r.register(
            "locks",
            "transactions holding locks on each store now (lock index entries, one per \
             transaction whatever its keys)",
            m.locks.clone(),
        );
        r.register(
            "locks_expired",
            "of the transactions holding locks on each store, those whose lease has ended: \
             in doubt until recovery finishes them",
            m.locks_expired.clone(),
        );
        r.register(
            "oldest_lock_age_seconds",
            "how long ago the transaction whose lease on each store ends first started \
             (0 without locks)",
            m.oldest_lock_age.clone(),
        );
        r.register(
            "store_ready",
            "1 when the store answers and keeps its writes as the config's durability \
             demands (what /v1/ready checks), else 0",
            m.ready.clone(),
        );
        r.register(
            "transactions_in_flight",
            "transactions running on this host now (txn.in_flight_max bounds them)",
            m.in_flight.clone(),
        );
        r.register(
            "instance_slots",
            "instance slots of the pool (runtime.instance_pool)",
            m.slots.clone(),
        );
        r.register(
            "instance_slots_in_use",
            "instance slots reserved by running transactions now",
            m.slots_in_use.clone(),
        );
        let build = Family::<Labels, Gauge>::default();
        build
            .get_or_create(&labels([("version", env!("CARGO_PKG_VERSION"))]))
            .set(1);
        r.register(
            "build_info",
            "this build: 1, labelled with its version",
            build,
        );
        r.register(
            "participant_calls",
            "calls into participant components",
            m.calls.clone(),
        );
        r.register(
            "participant_call_seconds",
            "wall time spent in participant calls",
            m.call_seconds.clone(),
        );
        r.register(
            "reused_steps",
            "steps run on a reused instance",
            m.reused.clone(),
        );
        r.register(
            "reuse_audits",
            "reused steps also run on a fresh instance and compared",
            m.reuse_audits.clone(),
        );
        r.register(
            "reuse_mismatches",
            "audited steps whose reused and fresh answers differed",
            m.reuse_mismatches.clone(),
        );
        r.register(
            "components_compiled",
            "components compiled",
            m.compiled.clone(),
        );
        r.register(
            "compile_cache_hits",
            "components loaded from the compile cache",
            m.cache_hits.clone(),
        );
        m
    }

    pub fn decided(&self, abort_code: Option<&str>, attempts: u32, took: Duration) {
        match abort_code {
            None => {
                self.committed.inc();
            }
            Some(code) => {
                let mut codes = self.abort_codes.lock().expect("metrics lock");
                let mut labels = labels([("status", "aborted"), ("code", code)]);
                if self.transactions.get(&labels).is_none() {
                    if *codes < ABORT_CODES_MAX || RESERVED_ABORT_CODES.contains(&code) {
                        *codes += 1;
                    } else {
                        labels[1].1 = OTHER_CODES.to_owned();
                    }
                }
                self.transactions.get_or_create(&labels).inc();
            }
        }
        self.attempts.inc_by(u64::from(attempts));
        self.latency.observe(took.as_secs_f64());
    }

    /// One run of `phase` took `took`.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.phases[phase as usize].observe(took.as_secs_f64());
    }

    /// Recovery finished a transaction's locks on one store: `forward`
    /// (it had committed) or back.
    pub fn recovered(&self, forward: bool) {
        self.recovered_locks.inc();
        match forward {
            true => self.rolled_forward.inc(),
            false => self.rolled_back.inc(),
        };
    }

    /// A transaction waited for one more round of Redis calls before its
    /// answer.
    pub fn round_trip(&self) {
        self.round_trips.inc();
    }

    /// Rounds of Redis calls waited for before answers, so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.get()
    }

    /// Transactions decided committed, so far.
    pub fn committed(&self) -> u64 {
        self.committed.get()
    }

    pub fn failed(&self, code: &'static str) {
        self.errors.get_or_create(&labels([("code", code)])).inc();
    }

    /// Copies in what was read at this scrape, then renders every metric.
    pub fn encode(&self, scraped: &Scraped) -> String {
        let _scraping = self.scraping.lock().expect("metrics lock");
        // Only what this scrape read: a removed participant, or a store
        // that did not answer, is left out.
        self.store_errors.clear();
        self.locks.clear();
        self.locks_expired.clear();
        self.oldest_lock_age.clear();
        self.ready.clear();
        for (store, ready) in &scraped.ready {
            let labels = labels([("store", store)]);
            self.ready.get_or_create(&labels).set(i64::from(*ready));
        }
        self.calls.clear();
        self.call_seconds.clear();
        self.reused.clear();
        self.reuse_audits.clear();
        self.reuse_mismatches.clear();
        for (store, unavailable, protocol) in &scraped.store_errors {
            for (kind, n) in [("unavailable", unavailable), ("protocol", protocol)] {
                let labels = labels([("store", store), ("kind", kind)]);
                self.store_errors.get_or_create(&labels).inc_by(*n);
            }
        }
        for lock in &scraped.locks {
            let labels = labels([("store", lock.store)]);
            self.locks.get_or_create(&labels).set(lock.held as i64);
            self.locks_expired
                .get_or_create(&labels)
                .set(lock.expired as i64);
            self.oldest_lock_age
                .get_or_create(&labels)
                .set(lock.oldest.as_secs_f64());
        }
        self.in_flight.set(scraped.in_flight as i64);
        self.slots.set(scraped.slots.0 as i64);
        self.slots_in_use.set(scraped.slots.1 as i64);
        for (participant, stats) in &scraped.calls {
            for (call, timer) in stats.timers() {
                let (count, total) = timer.get();
                let labels = labels([("participant", participant), ("call", call)]);
                self.calls.get_or_create(&labels).inc_by(count);
                self.call_seconds
                    .get_or_create(&labels)
                    .inc_by(total.as_secs_f64());
            }
            // A series for every participant, reusing or not, so that an
            // alert on mismatches has one from the start.
            let labels = labels([("participant", participant)]);
            self.reuse_mismatches.get_or_create_owned(&labels);
        }
        for (participant, counts) in &scraped.reuse {
            let labels = labels([("participant", participant)]);
            self.reused.get_or_create(&labels).inc_by(counts.reused);
            self.reuse_audits
                .get_or_create(&labels)
                .inc_by(counts.audited);
            self.reuse_mismatches
                .get_or_create(&labels)
                .inc_by(counts.mismatches);
        }
        if let Some((compiled, hits)) = scraped.cache {
            // Counters of the cache's own, mirrored: never less than before.
            self.compiled
                .inc_by(compiled.saturating_sub(self.compiled.get()));
            self.cache_hits
                .inc_by(hits.saturating_sub(self.cache_hits.get()));
        }
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// What a scrape reads from outside the coordinator's metrics.
#[derive(Debug, Default)]
pub struct Scraped<'a> {
    /// Per store: failed calls (unavailable, protocol).
    pub store_errors: Vec<(&'a str, u64, u64)>,
    /// Per store that answered: its locks.
    pub locks: Vec<Locks<'a>>,
    /// Per store: whether it is ready (answers, and is durable enough).
    pub ready: Vec<(&'a str, bool)>,
    /// Transactions running on this host.
    pub in_flight: usize,
    /// Instance slots: (all, in use).
    pub slots: (usize, usize),
    /// Per participant: its calls.
    pub calls: Vec<(&'a str, &'a CallStats)>,
    /// Per participant: how reusing its instances went.
    pub reuse: Vec<(&'a str, ReuseCounts)>,
    /// The compile cache's (compilations, hits), when there is one.
    pub cache: Option<(u64, u64)>,
}

/// The locks of one store, as read at a scrape.
#[derive(Debug, Default)]
pub struct Locks<'a> {
    pub store: &'a str,
    /// Transactions holding locks there.
    pub held: u64,
    /// Of those, past their lease.
    pub expired: u64,
    /// How long ago the one whose lease ends first started.
    pub oldest: Duration,
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
    fn timers(&self) -> [(&'static str, &Timer); 3] {
        [
            ("instantiate", &self.instantiate),
            ("declare", &self.declare),
            ("execute", &self.execute),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        m.encode(&Scraped::default())
    }

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.decided(None, 1, Duration::from_micros(800));
        m.decided(Some("conflict"), 10, Duration::from_millis(30));
        m.failed("store_unavailable");
        let stats = CallStats::default();
        stats.execute.record(Duration::from_millis(3));
        let scraped = Scraped {
            store_errors: vec![("ledger", 2, 0)],
            locks: vec![Locks {
                store: "ledger",
                held: 5,
                expired: 1,
                oldest: Duration::from_millis(2500),
            }],
            ready: vec![("ledger", true), ("orders", false)],
            in_flight: 3,
            slots: (1000, 7),
            calls: vec![("pay\"ments", &stats)],
            reuse: vec![(
                "inventory",
                ReuseCounts {
                    reused: 9,
                    audited: 2,
                    mismatches: 1,
                    disabled: true,
                },
            )],
            cache: Some((3, 4)),
        };
        let out = m.encode(&scraped);
        for line in [
            "# TYPE redstage_transactions_total counter",
            "redstage_reuse_mismatches_total{participant=\"inventory\"} 1",
            "redstage_reused_steps_total{participant=\"inventory\"} 9",
            "redstage_transactions_total{status=\"committed\"} 1",
            "redstage_transactions_total{status=\"aborted\",code=\"conflict\"} 1",
            "redstage_transaction_errors_total{code=\"store_unavailable\"} 1",
            "redstage_transaction_attempts_total 11",
            "redstage_transaction_duration_seconds_bucket{le=\"0.001\"} 1",
            "redstage_transaction_duration_seconds_bucket{le=\"0.05\"} 2",
            "redstage_transaction_duration_seconds_bucket{le=\"+Inf\"} 2",
            "redstage_transaction_duration_seconds_count 2",
            "redstage_phase_seconds_count{phase=\"commit\"} 0",
            "redstage_store_errors_total{store=\"ledger\",kind=\"unavailable\"} 2",
            "redstage_locks{store=\"ledger\"} 5",
            "redstage_locks_expired{store=\"ledger\"} 1",
            "redstage_oldest_lock_age_seconds{store=\"ledger\"} 2.5",
            "redstage_store_ready{store=\"ledger\"} 1",
            "redstage_store_ready{store=\"orders\"} 0",
            "redstage_transactions_in_flight 3",
            "redstage_instance_slots 1000",
            "redstage_instance_slots_in_use 7",
            concat!(
                "redstage_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "redstage_transaction_errors_total{code=\"in_flight\"} 0",
            "redstage_transactions_total{status=\"aborted\",code=\"recovered\"} 0",
            r#"redstage_participant_calls_total{participant="pay\"ments",call="execute"} 1"#,
            "redstage_components_compiled_total 3",
            "redstage_compile_cache_hits_total 4",
        ] {
            assert!(out.lines().any(|l| l == line), "no `{line}` in\n{out}");
        }
        // What a scrape copies in is what it read, not a sum of scrapes.
        let out = m.encode(&scraped);
        assert!(
            out.contains("redstage_store_errors_total{store=\"ledger\",kind=\"unavailable\"} 2\n")
        );
        assert!(!m.encode(&Scraped::default()).contains("redstage_locks{"));
    }

    /// Each scrape shows what it read, whatever other scrapes run at the
    /// same time.
    #[test]
    fn scrapes_at_once_do_not_add_up() {
        let m = Metrics::default();
        let line = "redstage_store_errors_total{store=\"ledger\",kind=\"unavailable\"} 7";
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let scraped = Scraped {
                            store_errors: vec![("ledger", 7, 0)],
                            ..Scraped::default()
                        };
                        let out = m.encode(&scraped);
                        assert!(out.lines().any(|l| l == line), "no `{line}` in\n{out}");
                    }
                });
            }
        });
    }

    /// The latency histogram reaches the longest wait configured, however
    /// long.
    #[test]
    fn latency_buckets_reach_the_longest_wait() {
        assert_eq!(buckets_to(Duration::ZERO).last(), Some(&5.0));
        assert_eq!(buckets_to(Duration::from_secs(10)).last(), Some(&10.0));
        assert_eq!(buckets_to(Duration::from_secs(25)).last(), Some(&40.0));
        let m = Metrics::new(Duration::from_secs(30));
        m.decided(None, 1, Duration::from_secs(25));
        let out = render(&m);
        assert!(
            out.contains("redstage_transaction_duration_seconds_bucket{le=\"20\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("redstage_transaction_duration_seconds_bucket{le=\"40\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn abort_codes_past_the_bound_share_one_label() {
        let m = Metrics::default();
        for i in 0..ABORT_CODES_MAX + 50 {
            m.decided(Some(&format!("code_{i}")), 1, Duration::ZERO);
        }
        m.decided(Some("code_0"), 1, Duration::ZERO);
        m.decided(Some("conflict"), 1, Duration::ZERO);
        let out = render(&m);
        let aborted: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("redstage_transactions_total{status=\"aborted\""))
            .collect();
        // The bounded codes, `(other)`, and the host's own (at 0 from the
        // start, `conflict` among them).
        let expected = ABORT_CODES_MAX + 1 + RESERVED_ABORT_CODES.len();
        assert_eq!(aborted.len(), expected, "{out}");
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
