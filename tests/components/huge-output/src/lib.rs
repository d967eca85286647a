//! Returns as much output, writes as large a value, and aborts with as long
//! a code and message, as asked for: the limits must stop it before the
//! host keeps or sends them.
//!
//! `{"bytes": 2097152}` outputs that many `x` and sets `last` to the count;
//! `{"value_bytes": 2097152}` sets `last` to that many `v` instead;
//! `{"abort_code": "c", "abort_bytes": 4194304}` aborts with code `c` and a
//! message of that many `m` (`"abort_code_bytes": n` adds n `c` to the
//! code), or, with `"adjust": true`, adjusts `count` by 1 with that abort
//! for when the bound breaks.

use redstage_guest::{Abort, Access, Bounds, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// How much to produce.
#[derive(Debug, Deserialize)]
pub struct Input {
    #[serde(default)]
    pub bytes: usize,
    #[serde(default)]
    pub value_bytes: usize,
    #[serde(default)]
    pub abort_code: Option<String>,
    #[serde(default)]
    pub abort_code_bytes: usize,
    #[serde(default)]
    pub abort_bytes: usize,
    #[serde(default)]
    pub adjust: bool,
}

/// The talkative participant.
#[derive(Debug)]
pub struct HugeOutput;

impl Participant for HugeOutput {
    type Input = Input;

    fn declare(_: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write("last").adjust("count"))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        if input.abort_code.is_some() || input.abort_code_bytes > 0 {
            let code =
                input.abort_code.clone().unwrap_or_default() + &"c".repeat(input.abort_code_bytes);
            let abort = Abort::new(code, "m".repeat(input.abort_bytes));
            if input.adjust {
                return Ok(Outcome::new().adjust("count", 1, Bounds::at_least(0), abort));
            }
            return Err(abort);
        }
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
