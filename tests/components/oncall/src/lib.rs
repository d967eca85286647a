//! On call: which doctors of a team are on call, kept under `oncall:<name>`
//! as `"1"` (on call) or `"0"` (off call); a missing key is `"1"`.
//!
//! A test participant for the write-skew anomaly: a doctor may leave only
//! while some *other* member of the team is on call, so a leave writes one
//! key (the doctor's own flag) on the strength of reads of others.
//!
//! | input | effect |
//! | --- | --- |
//! | `{"op":"leave","doctor":"alice","team":["alice","bob"]}` | alice off call, or aborts `last_on_call` |
//! | `{"op":"join","doctor":"alice"}` | alice on call |
//! | `{"op":"status","team":["alice","bob"]}` | nothing (reads only) |
//!
//! `leave` and `status` output the team's flags as seen, by name:
//! `{"alice":false,"bob":true}` (after the leave); `join` outputs `{"alice":true}`.

use std::collections::BTreeMap;

use redstage_guest::{Abort, Access, Outcome, Participant, Snapshot};
use serde::Deserialize;

/// One on-call operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// Take `doctor` off call, if another member of `team` stays on call.
    Leave { doctor: String, team: Vec<String> },
    /// Put `doctor` on call.
    Join { doctor: String },
    /// Report every member's flag.
    Status { team: Vec<String> },
}

/// The on-call participant.
#[derive(Debug)]
pub struct OnCall;

impl Participant for OnCall {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        match input {
            Input::Leave { doctor, team } => {
                if !team.contains(doctor) {
                    return Err(Abort::bad_input(format!(
                        "`{doctor}` is not in the team {team:?}"
                    )));
                }
                Ok(Access::new()
                    .read_all(team_keys(team)?)
                    .write(flag_key(doctor)?))
            }
            Input::Join { doctor } => Ok(Access::new().write(flag_key(doctor)?)),
            Input::Status { team } => Ok(Access::new().read_all(team_keys(team)?)),
        }
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        match input {
            Input::Leave { doctor, team } => {
                let mut flags = flags(team, snapshot)?;
                let others = flags
                    .iter()
                    .filter(|(name, on)| **on && *name != doctor)
                    .count();
                if others == 0 {
                    return Err(Abort::new(
                        "last_on_call",
                        format!("`{doctor}` cannot leave: nobody else in the team is on call"),
                    ));
                }
                flags.insert(doctor, false);
                Outcome::new()
                    .set(flag_key(doctor)?, "0")
                    .output_json(&flags)
            }
            Input::Join { doctor } => Outcome::new()
                .set(flag_key(doctor)?, "1")
                .output_json(&BTreeMap::from([(doctor, true)])),
            Input::Status { team } => Outcome::new().output_json(&flags(team, snapshot)?),
        }
    }
}

redstage_guest::export!(OnCall);

/// Every member's flag, `true` for on call.
fn flags<'a>(team: &'a [String], snapshot: &Snapshot) -> Result<BTreeMap<&'a str, bool>, Abort> {
    team.iter()
        .map(|name| {
            let key = flag_key(name)?;
            let on = match snapshot.get(&key)? {
                None | Some(b"1") => true,
                Some(b"0") => false,
                Some(other) => {
                    return Err(Abort::new(
                        "bad_value",
                        format!(
                            "`{key}` holds {:?}; expected \"1\" or \"0\"",
                            String::from_utf8_lossy(other)
                        ),
                    ));
                }
            };
            Ok((name.as_str(), on))
        })
        .collect()
}

fn team_keys(team: &[String]) -> Result<Vec<String>, Abort> {
    if team.is_empty() {
        return Err(Abort::bad_input("`team` must list at least one doctor"));
    }
    team.iter().map(|name| flag_key(name)).collect()
}

fn flag_key(name: &str) -> Result<String, Abort> {
    if name.is_empty() {
        return Err(Abort::bad_input("doctor names must not be empty"));
    }
    Ok(format!("oncall:{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redstage_guest::testing::{self, TestOutcome};

    const LEAVE_ALICE: &str = r#"{"op":"leave","doctor":"alice","team":["alice","bob"]}"#;

    fn run(input: &str, store: &[(&str, &str)]) -> Result<TestOutcome, Abort> {
        testing::run::<OnCall>(input, store)
    }

    #[test]
    fn leave_reads_the_team_and_writes_only_the_doctor() {
        let out = run(LEAVE_ALICE, &[]).unwrap();
        assert_eq!(
            out.access,
            Access::new().read("oncall:bob").write("oncall:alice")
        );
        assert_eq!(out.writes.len(), 1);
        assert_eq!(out.writes["oncall:alice"].as_deref(), Some("0"));
        assert_eq!(out.output["alice"], false);
        assert_eq!(out.output["bob"], true);
    }

    #[test]
    fn the_last_doctor_on_call_cannot_leave() {
        let err = run(LEAVE_ALICE, &[("oncall:bob", "0")]).unwrap_err();
        assert_eq!(err.code, "last_on_call");
        // Already off call, alone: still no.
        let err = run(LEAVE_ALICE, &[("oncall:alice", "0"), ("oncall:bob", "0")]).unwrap_err();
        assert_eq!(err.code, "last_on_call");
    }

    #[test]
    fn join_and_status() {
        let out = run(r#"{"op":"join","doctor":"bob"}"#, &[("oncall:bob", "0")]).unwrap();
        assert_eq!(out.writes["oncall:bob"].as_deref(), Some("1"));
        let out = run(
            r#"{"op":"status","team":["alice","bob"]}"#,
            &[("oncall:alice", "0")],
        )
        .unwrap();
        assert!(out.writes.is_empty());
        assert_eq!(out.output["alice"], false);
        assert_eq!(out.output["bob"], true);
    }

    #[test]
    fn bad_input_and_bad_values() {
        for input in [
            r#"{"op":"leave","doctor":"carol","team":["alice","bob"]}"#,
            r#"{"op":"leave","doctor":"","team":[""]}"#,
            r#"{"op":"status","team":[]}"#,
            r#"{"op":"swap","doctor":"alice"}"#,
        ] {
            assert_eq!(run(input, &[]).unwrap_err().code, "bad_input", "{input}");
        }
        let err = run(LEAVE_ALICE, &[("oncall:bob", "yes")]).unwrap_err();
        assert_eq!(err.code, "bad_value");
    }
}
