//! Returns as much output, and writes as large a value, as asked for: the
//! output and value limits must stop it before the host keeps or sends them.
//!
//! `{"bytes": 2097152}` outputs that many `x` and sets `last` to the count;
//! `{"value_bytes": 2097152}` sets `last` to that many `v` instead.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// How much to produce.
#[derive(Debug, Deserialize)]
pub struct Input {
    #[serde(default)]
    pub bytes: usize,
    #[serde(default)]
    pub value_bytes: usize,
}

/// The talkative participant.
#[derive(Debug)]
pub struct HugeOutput;

impl Participant for HugeOutput {
    type Input = Input;

    fn declare(_: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write("last"))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        let last = match input.value_bytes {
            0 => input.bytes.to_string().into_bytes(),
            n => vec![b'v'; n],
        };
        Ok(Outcome::new()
            .set("last", last)
            .output(vec![b'x'; input.bytes]))
    }
}

redstage_guest::export!(HugeOutput);
