//! Reaches for what a participant must not have: the clock, randomness, the
//! environment, files. The host denies each: a call that would have to
//! return something traps naming the import; the environment is empty and
//! no file can be opened.
//!
//! | input | what it does |
//! | --- | --- |
//! | `{"reach": "clock"}` | reads the system time |
//! | `{"reach": "random"}` | seeds a `HashMap` hasher from the host's randomness |
//! | `{"reach": "env"}` | outputs the environment variables and arguments it sees |
//! | `{"reach": "file"}` | outputs the error of reading `/etc/passwd` |

use std::collections::HashMap;
use std::hint::black_box;

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// What to reach for.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    Clock,
    Random,
    Env,
    File,
}

/// The input: `{"reach": ...}`.
#[derive(Debug, Deserialize)]
pub struct Input {
    pub reach: Reach,
}

/// The curious participant.
#[derive(Debug)]
pub struct WasiAccess;

impl Participant for WasiAccess {
    type Input = Input;

    fn declare(_: &Input) -> Result<Access, Abort> {
        Ok(Access::new().write("seen"))
    }

    fn execute(input: &Input, _: &Snapshot) -> Result<Outcome, Abort> {
        let seen = match input.reach {
            Reach::Clock => format!("{:?}", black_box(std::time::SystemTime::now())),
            Reach::Random => {
                let map: HashMap<u8, u8> = black_box(HashMap::new());
                format!("{}", map.len())
            }
            Reach::Env => {
                let vars: Vec<_> = std::env::vars().collect();
                let args: Vec<_> = std::env::args().collect();
                format!("vars {vars:?} args {args:?}")
            }
            Reach::File => match std::fs::read("/etc/passwd") {
                Ok(bytes) => format!("read {} bytes", bytes.len()),
                Err(e) => format!("error: {e}"),
            },
        };
        Outcome::new().set("seen", seen.as_str()).output_json(&seen)
    }
}

redstage_guest::export!(WasiAccess);
