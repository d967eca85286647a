//! Declares one write key and writes another as well: the host must refuse
//! the step and write neither.
//!
//! `{"key": "theirs"}` declares `mine`, then sets `mine` and `theirs`.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// The key written without being declared.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub key: String,
}

/// The trespassing participant.
#[derive(Debug)]
pub struct UndeclaredWrite;

impl Participant for UndeclaredWrite {
    type Input = Input;

    fn declare(_: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write("mine"))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        Ok(Outcome::new().set("mine", "1").set(input.key.as_str(), "1"))
    }
}

redstage_guest::export!(UndeclaredWrite);
