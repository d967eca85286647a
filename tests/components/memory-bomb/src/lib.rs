//! Allocates and fills memory in `execute` until allocation fails: a
//! participant the memory limit must stop.
//!
//! Any input; declares the write key `hoard`.

use std::hint::black_box;

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::de::IgnoredAny;

/// Bytes added per round.
const CHUNK_BYTES: usize = 1 << 20;

/// The hoarding participant.
#[derive(Debug)]
pub struct MemoryBomb;

impl Participant for MemoryBomb {
    type Input = IgnoredAny;

    fn declare(_: &IgnoredAny) -> Result<Access, Abort> {
        Ok(Access::new().write("hoard"))
    }

    fn execute(_: &IgnoredAny, _: &Snapshot) -> Result<Outcome, Abort> {
        let mut hoard = Vec::new();
        loop {
            hoard.push(black_box(vec![0xA5u8; CHUNK_BYTES]));
            black_box(&hoard);
        }
    }
}

redstage_guest::export!(MemoryBomb);
