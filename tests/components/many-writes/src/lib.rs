//! Declares and writes as many keys as asked for: the key and write limits
//! must stop it before the host locks anything.
//!
//! `{"keys": 5000}` declares `k0` ... `k4999` for writing and sets each to `"1"`.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// How many keys.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub keys: usize,
}

/// The prolific participant.
#[derive(Debug)]
pub struct ManyWrites;

impl Participant for ManyWrites {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write_all(keys(input)))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        Ok(keys(input).fold(Outcome::new(), |outcome, key| outcome.set(key, "1")))
    }
}

fn keys(input: &Input) -> impl Iterator<Item = String> {
    (0..input.keys).map(|i| format!("k{i}"))
}

redstage_guest::export!(ManyWrites);
