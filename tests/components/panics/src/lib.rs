//! Panics in `execute`, after declaring one write: the host must report the
//! panic's message as a trap, and write nothing.
//!
//! Any input; declares the write key `never`.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::de::IgnoredAny;

/// What the panic says.
pub const MESSAGE: &str = "the ledger does not balance";

/// The panicking participant.
#[derive(Debug)]
pub struct Panics;

impl Participant for Panics {
    type Input = IgnoredAny;

    fn declare(_: &IgnoredAny) -> Result<Access, Abort> {
        Ok(Access::new().write("never"))
    }

    fn execute(_: &IgnoredAny, _: &Snapshot) -> Result<Outcome, Abort> {
        panic!("{MESSAGE}");
    }
}

redstage_guest::export!(Panics);
