//! Declares and writes whatever keys it is given, braces, newlines, `..` and
//! all: the host must keep every one of them under the participant's prefix.
//!
//! `{"keys": ["{x}", "a\nb"]}` declares each key for writing and sets it to
//! its own name; the output is the list of keys.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// The keys to write.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub keys: Vec<String>,
}

/// The participant with strange keys.
#[derive(Debug)]
pub struct OddKeys;

impl Participant for OddKeys {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write_all(input.keys.iter().cloned()))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        let outcome = input.keys.iter().fold(Outcome::new(), |outcome, key| {
            outcome.set(key.as_str(), key.as_str())
        });
        outcome.output_json(&input.keys)
    }
}

redstage_guest::export!(OddKeys);
