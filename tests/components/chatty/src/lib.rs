//! Prints what it does: a line to stdout in `declare`, then `lines` lines
//! to stdout and one to stderr in `execute`, through the SDK's macros.
//!
//! `{"key": K, "lines": N}`: declares and sets `K` to `"done"`; outputs
//! `{"printed": N}`.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot, eprintln, println};
use serde::Deserialize;

/// What to print.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    key: String,
    lines: u32,
}

/// The printing participant.
#[derive(Debug)]
pub struct Chatty;

impl Participant for Chatty {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        println!("declaring {}", input.key);
        Ok(Access::new().write(input.key.as_str()))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        for i in 0..input.lines {
            println!("line {i} of {}", input.lines);
        }
        eprintln!("careful: {} is about to change", input.key);
        Outcome::new()
            .set(input.key.as_str(), "done")
            .output_json(&input.lines)
    }
}

redstage_guest::export!(Chatty);
