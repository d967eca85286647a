// The counter participant, shared by its versions: each crate defines
// `VERSION` and includes this file.
//
// `{"op":"bump","counter":C}` adds `STEP` to `count:C` and outputs
// `{"version":VERSION,"count":N}`; version 1 adds 1, version 2 adds 1000, so
// the counter's value tells how many bumps each version made.

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot, checked_add};
use serde::{Deserialize, Serialize};

/// What a bump adds: version 1 counts in ones, version 2 in thousands.
const STEP: i64 = if VERSION == 1 { 1 } else { 1000 };

/// One counter operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    Bump { counter: String },
}

/// What a bump outputs.
#[derive(Debug, Serialize)]
pub struct Bumped {
    pub version: i64,
    pub count: i64,
}

/// The counter participant.
#[derive(Debug)]
pub struct Counter;

impl Participant for Counter {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        let Input::Bump { counter } = input;
        Ok(Access::new().write(format!("count:{counter}")))
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let Input::Bump { counter } = input;
        let key = format!("count:{counter}");
        let count = checked_add(snapshot.get_i64(&key)?, STEP)?;
        Outcome::new()
            .set_i64(key, count)
            .output_json(&Bumped {
                version: VERSION,
                count,
            })
    }
}

redstage_guest::export!(Counter);
