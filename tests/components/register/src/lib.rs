//! Test participant: one value per key, under `reg:<key>`, that a step sets,
//! deletes or bumps. For the tests of keys created, deleted and created
//! again while another transaction holds what it read of them.
//!
//! | input | effect | output |
//! | --- | --- | --- |
//! | `{"op":"set","key":"k","value":"v"}` | `reg:k` = `v` | `{"was":<old or null>}` |
//! | `{"op":"delete","key":"k"}` | `reg:k` removed | `{"was":<old or null>}` |
//! | `{"op":"bump","key":"k"}` | `reg:k` + 1 (missing: 0) | `{"was":<old or null>}` |

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot, checked_add};
use serde::{Deserialize, Serialize};

/// One register operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    Set { key: String, value: String },
    Delete { key: String },
    Bump { key: String },
}

impl Input {
    fn key(&self) -> String {
        let (Input::Set { key, .. } | Input::Delete { key } | Input::Bump { key }) = self;
        format!("reg:{key}")
    }
}

/// What every op outputs: the value it found.
#[derive(Debug, Serialize)]
struct Was {
    was: Option<String>,
}

/// The register participant.
#[derive(Debug)]
pub struct Register;

impl Participant for Register {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write(input.key()))
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let key = input.key();
        let was = Was {
            was: snapshot
                .get(&key)?
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        };
        let outcome = match input {
            Input::Set { value, .. } => Outcome::new().set(key, value.as_bytes().to_vec()),
            Input::Delete { .. } => Outcome::new().delete(key),
            Input::Bump { .. } => {
                let n = checked_add(snapshot.get_i64(&key)?, 1)?;
                Outcome::new().set_i64(key, n)
            }
        };
        outcome.output_json(&was)
    }
}

redstage_guest::export!(Register);
