//! Loops forever in `execute`, after declaring one write: a participant the
//! wall-time limit must stop without holding a host thread.
//!
//! Any input; declares the write key `spin`.

use std::hint::black_box;

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::de::IgnoredAny;

/// The looping participant.
#[derive(Debug)]
pub struct InfiniteLoop;

impl Participant for InfiniteLoop {
    type Input = IgnoredAny;

    fn declare(_: &IgnoredAny) -> Result<Access, Abort> {
        Ok(Access::new().write("spin"))
    }

    fn execute(_: &IgnoredAny, _: &Snapshot) -> Result<Outcome, Abort> {
        let mut turns = 0u64;
        loop {
            turns = black_box(turns.wrapping_add(1));
        }
    }
}

redstage_guest::export!(InfiniteLoop);
