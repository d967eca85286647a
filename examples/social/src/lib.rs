//! Social: who follows whom, and messages between them, kept as Redis
//! users keep them, each user's keys sharing the hash tag `{U}` so that a
//! Redis Cluster spreads users over its slots:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `following:{U}` | set | the users U follows |
//! | `followers:{U}` | set | the users who follow U |
//! | `user:{U}` | hash | the integer fields `following`, `followers`, `sent`, `unread` (a missing field is 0) |
//! | `inbox:{U}` | stream | messages to U, with the fields `from` and `text` |
//!
//! | input | effect | output |
//! | --- | --- | --- |
//! | `{"op":"follow","user":"alice","target":"bob"}` | adds bob to `following:{alice}` and alice to `followers:{bob}`; 1 more `following` for alice, `followers` for bob; aborts `already_following` if alice follows bob | `{"user":"alice","target":"bob","following":true}` |
//! | `{"op":"unfollow","user":"alice","target":"bob"}` | the reverse; aborts `not_following` if alice does not follow bob | `{"user":"alice","target":"bob","following":false}` |
//! | `{"op":"message","from":"alice","to":"bob","text":"hi"}` | appends `from`, `text` to `inbox:{bob}`; 1 more `unread` for bob, `sent` for alice; aborts `not_a_follower` unless bob follows alice | `{"delivered":true}` |
//! | `{"op":"profile","user":"alice"}` | nothing (reads `user:{alice}` whole) | `{"following":1,"followers":0,"sent":0,"unread":0}` |
//!
//! Every op declares exactly the parts it touches, so that transactions
//! about different users never wait for each other, and those about one
//! user wait only where they must:
//!
//! - `follow` and `unfollow` read and write one **member** of each set
//!   (alice in `followers:{bob}`, not the whole set: two new followers of
//!   bob do not wait for each other) and **adjust** one counter field of
//!   each user's hash (`HINCRBY` under escrow: never read, so a popular
//!   user's counters take any number of concurrent changes);
//! - `message` reads one member (does bob follow alice?), adjusts two
//!   counter fields and **appends** to the inbox, which takes no lock at
//!   all: the entry appears once if the transaction commits, never if it
//!   aborts;
//! - `profile` reads the **whole** hash, so it waits for changes in flight
//!   to the user's counters, and sees them all or none.
//!
//! User ids are not empty and have no `{` or `}` (they are the hash tag of
//! the user's keys); a user cannot follow themselves. Anything else, an
//! unknown op or an unknown field is `bad_input`.

use redstage_guest::{Abort, Access, Bounds, Outcome, Participant, Snapshot};
use serde::{Deserialize, Serialize};

/// One social operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// `user` starts following `target`.
    Follow { user: String, target: String },
    /// `user` stops following `target`.
    Unfollow { user: String, target: String },
    /// `from` sends `text` to `to`, who must follow `from`.
    Message {
        from: String,
        to: String,
        text: String,
    },
    /// The counters of `user`.
    Profile { user: String },
}

/// The answer to `follow` and `unfollow`.
#[derive(Debug, Serialize)]
struct Relation<'a> {
    user: &'a str,
    target: &'a str,
    following: bool,
}

/// The answer to `message`.
#[derive(Debug, Serialize)]
struct Delivered {
    delivered: bool,
}

/// A user's counters, the fields of `user:{U}`.
#[derive(Debug, Serialize)]
struct Profile {
    following: i64,
    followers: i64,
    sent: i64,
    unread: i64,
}

/// The social participant.
#[derive(Debug)]
pub struct Social;

impl Participant for Social {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        match input {
            Input::Follow { user, target } | Input::Unfollow { user, target } => {
                pair(user, target)?;
                Ok(Access::new()
                    .write_set_member(following(user), target.as_str())
                    .write_set_member(followers(target), user.as_str())
                    .adjust_hash_field(profile(user), "following")
                    .adjust_hash_field(profile(target), "followers"))
            }
            Input::Message { from, to, .. } => {
                check_user("from", from)?;
                check_user("to", to)?;
                Ok(Access::new()
                    .read_set_member(following(to), from.as_str())
                    .append_stream(inbox(to))
                    .adjust_hash_field(profile(to), "unread")
                    .adjust_hash_field(profile(from), "sent"))
            }
            Input::Profile { user } => {
                check_user("user", user)?;
                Ok(Access::new().read_hash(profile(user)))
            }
        }
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        match input {
            Input::Follow { user, target } => {
                if snapshot.sismember(&following(user), target)? {
                    return Err(Abort::new(
                        "already_following",
                        format!("`{user}` already follows `{target}`"),
                    ));
                }
                let outcome = Outcome::new()
                    .sadd(following(user), target.as_str())
                    .sadd(followers(target), user.as_str());
                let outcome = count(outcome, user, "following", 1);
                count(outcome, target, "followers", 1).output_json(&Relation {
                    user,
                    target,
                    following: true,
                })
            }
            Input::Unfollow { user, target } => {
                if !snapshot.sismember(&following(user), target)? {
                    return Err(Abort::new(
                        "not_following",
                        format!("`{user}` does not follow `{target}`"),
                    ));
                }
                let outcome = Outcome::new()
                    .srem(following(user), target.as_str())
                    .srem(followers(target), user.as_str());
                let outcome = count(outcome, user, "following", -1);
                count(outcome, target, "followers", -1).output_json(&Relation {
                    user,
                    target,
                    following: false,
                })
            }
            Input::Message { from, to, text } => {
                if !snapshot.sismember(&following(to), from)? {
                    return Err(Abort::new(
                        "not_a_follower",
                        format!("`{to}` does not follow `{from}`: `{from}` cannot message them"),
                    ));
                }
                let outcome = Outcome::new().xadd(
                    inbox(to),
                    [("from", from.as_bytes()), ("text", text.as_bytes())],
                );
                let outcome = count(outcome, to, "unread", 1);
                count(outcome, from, "sent", 1).output_json(&Delivered { delivered: true })
            }
            Input::Profile { user } => {
                let key = profile(user);
                let field = |name: &str| snapshot.hget_i64(&key, name);
                Outcome::new().output_json(&Profile {
                    following: field("following")?,
                    followers: field("followers")?,
                    sent: field("sent")?,
                    unread: field("unread")?,
                })
            }
        }
    }
}

redstage_guest::export!(Social);

/// Adds `delta` to the counter `field` of `user`, without reading it.
/// Counters only move by one with the sets and messages they count, so
/// they need no bound but the integer's own.
fn count(outcome: Outcome, user: &str, field: &str, delta: i64) -> Outcome {
    let abort = Abort::new(
        "overflow",
        format!("the `{field}` count of `{user}` does not fit in a 64-bit signed integer"),
    );
    outcome.hincrby(profile(user), field, delta, Bounds::none(), abort)
}

/// Checks the two users of `follow` and `unfollow`.
fn pair(user: &str, target: &str) -> Result<(), Abort> {
    check_user("user", user)?;
    check_user("target", target)?;
    if user == target {
        return Err(Abort::bad_input(format!(
            "`user` and `target` must differ (both are `{user}`): nobody follows themselves"
        )));
    }
    Ok(())
}

/// A user id, the hash tag of the user's keys: not empty, no braces.
fn check_user(name: &str, id: &str) -> Result<(), Abort> {
    if id.is_empty() {
        return Err(Abort::bad_input(format!("`{name}` must not be empty")));
    }
    if id.contains(['{', '}']) {
        return Err(Abort::bad_input(format!(
            "`{name}` must not contain `{{` or `}}` (it is the hash tag of the user's keys): {id:?}"
        )));
    }
    Ok(())
}

fn following(user: &str) -> String {
    format!("following:{{{user}}}")
}

fn followers(user: &str) -> String {
    format!("followers:{{{user}}}")
}

fn profile(user: &str) -> String {
    format!("user:{{{user}}}")
}

fn inbox(user: &str) -> String {
    format!("inbox:{{{user}}}")
}

#[cfg(test)]
mod tests;
