//! Counts its own calls in a static and answers with the count: on a fresh
//! instance every step answers 1, on a reused one 2, 3, ... It breaks the
//! contract (a step must be a function of its input and snapshot), which is
//! what the audit of reused instances must catch.
//!
//! Any input; reads `seen`; outputs `{"calls": N}`.

use std::sync::atomic::{AtomicU64, Ordering};

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::de::IgnoredAny;

/// Steps this instance ran.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// The stateful participant.
#[derive(Debug)]
pub struct StaticCounter;

impl Participant for StaticCounter {
    type Input = IgnoredAny;

    fn declare(_: &IgnoredAny) -> Result<Access, Abort> {
        Ok(Access::new().read("seen"))
    }

    fn execute(_: &IgnoredAny, _: &Snapshot) -> Result<Outcome, Abort> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        Outcome::new().output_json(&serde_json::json!({ "calls": calls }))
    }
}

redstage_guest::export!(StaticCounter);
