//! Reuse of instances across steps: an operator's opt-in per participant
//! (`reuse_steps`), bounded, discarded at the first sign of trouble, and
//! audited.
//!
//! A fresh instance per step is the default and the guarantee: no state of
//! one step is visible to another. With `reuse_steps = N`, an instance that
//! finished a step cleanly goes back to its component's idle list and may
//! serve another step of the same participant version, N steps at most. It
//! is discarded instead after an abort, a trap, a broken limit or a growth
//! of its memory, and all idle instances go when the participant is
//! deployed again. A fraction `reuse_audit` of reused steps also runs on a
//! fresh instance (a shadow, made when the reused one is handed out), and
//! the two answers are compared call by call. A mismatch means the
//! participant keeps state across steps: the fresh answer is the one used,
//! reuse is off for that participant version, a warning names it, and
//! `redstage_reuse_mismatches_total{participant}` counts it.
//!
//! ```text
//!  instantiate --idle list empty, or reuse off--> fresh instance (served = 1)
//!       |
//!       +--idle instance--> served + 1, console emptied; with probability
//!                           reuse_audit a fresh shadow beside it
//!  drop --clean, served < N, no growth, reuse on, a slot free--> idle list
//!       +--otherwise--> dropped (its pool slot freed)
//! ```
//!
//! Idle instances hold pool slots that no transaction reserved: they take
//! them from [`ReuseSlots`], `runtime.reuse_instances_max` extra slots of
//! the pool. A reused instance keeps its slot while it runs a step (its
//! shadow, if audited, runs in it), so transactions' own reservations are
//! never short of a slot.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use super::component::Live;

/// A participant's reuse settings (`reuse_steps`, `reuse_audit`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReusePolicy {
    /// Steps one instance may serve; 0 (the default): a fresh instance per
    /// step.
    pub steps: u32,
    /// The fraction of reused steps also run on a fresh instance and
    /// compared, 0 to 1.
    pub audit: f64,
}

/// `reuse_audit`'s default: one reused step in a hundred is checked.
pub const REUSE_AUDIT_DEFAULT: f64 = 0.01;

impl Default for ReusePolicy {
    fn default() -> Self {
        ReusePolicy {
            steps: 0,
            audit: REUSE_AUDIT_DEFAULT,
        }
    }
}

impl ReusePolicy {
    /// Whether the values are usable; else why not.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.audit) {
            return Err(format!(
                "reuse_audit must be between 0 and 1, not {}",
                self.audit
            ));
        }
        Ok(())
    }
}

/// How reuse went for one participant version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReuseCounts {
    /// Steps run on a reused instance.
    pub reused: u64,
    /// Of those, steps also run on a fresh instance and compared.
    pub audited: u64,
    /// Audited steps whose answers differed.
    pub mismatches: u64,
    /// Whether a mismatch turned reuse off.
    pub disabled: bool,
}

/// The pool slots set aside for idle instances (and the shadows of audited
/// steps), shared by every component of a runtime.
#[derive(Debug)]
pub(super) struct ReuseSlots {
    used: AtomicUsize,
    max: usize,
}

/// One of [`ReuseSlots`], given back when dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<ReuseSlots>);

impl ReuseSlots {
    pub(super) fn new(max: usize) -> Arc<ReuseSlots> {
        Arc::new(ReuseSlots {
            used: AtomicUsize::new(0),
            max,
        })
    }

    fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Relaxed, Relaxed, |used| {
                (used < self.max).then_some(used + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Relaxed);
    }
}

/// One component's idle instances, settings and counts.
pub(super) struct Reuse {
    /// The participant's name, for the warning of a mismatch.
    pub(super) name: String,
    pub(super) policy: ReusePolicy,
    idle: Mutex<Vec<Live>>,
    slots: Arc<ReuseSlots>,
    /// Set by a mismatch: no more reuse for this version.
    disabled: AtomicBool,
    /// Set when a new version replaced this one: instances are no longer kept.
    retired: AtomicBool,
    reused: AtomicU64,
    audited: AtomicU64,
    mismatches: AtomicU64,
}

impl Reuse {
    pub(super) fn new(name: String, policy: ReusePolicy, slots: Arc<ReuseSlots>) -> Reuse {
        Reuse {
            name,
            policy,
            idle: Mutex::default(),
            slots,
            disabled: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            reused: AtomicU64::new(0),
            audited: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
        }
    }

    fn on(&self) -> bool {
        self.policy.steps > 0 && !self.disabled.load(Relaxed) && !self.retired.load(Relaxed)
    }

    /// An idle instance, if reuse is on and there is one; and whether to
    /// audit the step it serves.
    pub(super) fn take(&self) -> Option<(Live, bool)> {
        if !self.on() {
            return None;
        }
        let live = self.idle.lock().expect("idle lock").pop()?;
        self.reused.fetch_add(1, Relaxed);
        let audit = self.policy.audit > 0.0 && fastrand::f64() < self.policy.audit;
        if audit {
            self.audited.fetch_add(1, Relaxed);
        }
        Some((live, audit))
    }

    /// Keeps `live` for another step if it may serve one: it finished its
    /// steps cleanly, has steps left, never grew its memory, reuse is on,
    /// and a slot is free. Otherwise it is dropped.
    pub(super) fn give_back(&self, mut live: Live, clean: bool) {
        if !clean || !self.on() || live.served >= self.policy.steps || live.grew() {
            return;
        }
        if live.slot.is_none() {
            match self.slots.take() {
                Some(slot) => live.slot = Some(slot),
                None => return,
            }
        }
        let mut idle = self.idle.lock().expect("idle lock");
        // Checked again under the lock: `retire` and `mismatch` empty the
        // list under it, and nothing may join the list after them.
        if self.on() {
            idle.push(live);
        }
    }

    /// A reused instance and a fresh one answered differently.
    pub(super) fn mismatch(&self, call: &str) {
        self.mismatches.fetch_add(1, Relaxed);
        if !self.disabled.swap(true, Relaxed) {
            tracing::warn!(
                participant = %self.name,
                call,
                "a reused instance answered differently from a fresh one: the participant keeps \
                 state between steps; reuse_steps is off for it until it is deployed again"
            );
        }
        self.drain();
    }

    /// A new version replaced this one: drop the idle instances, keep no more.
    pub(super) fn retire(&self) {
        self.retired.store(true, Relaxed);
        self.drain();
    }

    fn drain(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("idle lock"));
        drop(idle);
    }

    pub(super) fn counts(&self) -> ReuseCounts {
        ReuseCounts {
            reused: self.reused.load(Relaxed),
            audited: self.audited.load(Relaxed),
            mismatches: self.mismatches.load(Relaxed),
            disabled: self.disabled.load(Relaxed),
        }
    }

    /// Instances idle now.
    pub(super) fn idle(&self) -> usize {
        self.idle.lock().expect("idle lock").len()
    }
}
