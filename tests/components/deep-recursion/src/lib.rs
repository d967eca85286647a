//! Recurses without end in `execute`: a participant whose call stack must run
//! out as a trap, not as a crash of the host.
//!
//! Any input; declares the write key `depth`.

use std::hint::black_box;

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::de::IgnoredAny;

/// The recursing participant.
#[derive(Debug)]
pub struct DeepRecursion;

impl Participant for DeepRecursion {
    type Input = IgnoredAny;

    fn declare(_: &IgnoredAny) -> Result<Access, Abort> {
        Ok(Access::new().write("depth"))
    }

    fn execute(_: &IgnoredAny, _: &Snapshot) -> Result<Outcome, Abort> {
        let depth = descend(black_box(u64::MAX));
        Ok(Outcome::new().set_i64("depth", depth as i64))
    }
}

/// `n` frames deep; `black_box` keeps the compiler from turning it into a loop.
#[inline(never)]
fn descend(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    black_box(descend(black_box(n - 1))) + 1
}

redstage_guest::export!(DeepRecursion);
