//! A step as slow as its input says: it spins `turns` times, then adds 1 to
//! the counter `key` (read, so that it is locked exclusively from round
//! trip 1 on) or, with `"write": false`, only reads it. For the tests of
//! leases: a transaction of many slow steps outlives any one lease.
//!
//! | input | effect | output |
//! | --- | --- | --- |
//! | `{"key":"a","turns":1000000}` | `a` + 1 | `{"a":4}` (the new value) |
//! | `{"key":"a","turns":1000000,"write":false}` | nothing | `{"a":3}` |

use std::collections::BTreeMap;
use std::hint::black_box;

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    key: String,
    turns: u64,
    #[serde(default = "yes")]
    write: bool,
}

fn yes() -> bool {
    true
}

/// The slow participant.
#[derive(Debug)]
pub struct Slow;

impl Participant for Slow {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        let access = Access::new().read(&input.key);
        Ok(if input.write {
            access.write(&input.key)
        } else {
            access
        })
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let mut spun = 0u64;
        for _ in 0..input.turns {
            spun = black_box(spun.wrapping_add(1));
        }
        let value = snapshot.get_i64(&input.key)? + i64::from(input.write && spun > 0);
        let output = BTreeMap::from([(input.key.as_str(), value)]);
        let outcome = Outcome::new().output_json(&output)?;
        Ok(if input.write {
            outcome.set_i64(&input.key, value)
        } else {
            outcome
        })
    }
}

redstage_guest::export!(Slow);
