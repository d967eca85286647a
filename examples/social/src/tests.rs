//! The social participant on the SDK's in-memory store, under the prefix
//! `social:` its manifest gives it.

use redstage_guest::testing::{self, Store, TxnAbort};
use redstage_guest::{Declaration, Kind, Mode, Target};
use serde_json::{Value, json};

use super::*;

const PREFIX: &str = "social:";

fn run(store: &mut Store, input: Value) -> Result<Value, TxnAbort> {
    let mut outputs = store
        .transaction()
        .step_in::<Social>(PREFIX, &input.to_string())
        .run()?;
    Ok(outputs.remove(0))
}

fn abort(store: &mut Store, input: Value) -> Abort {
    let before = store.clone();
    let err = run(store, input.clone()).expect_err("an abort");
    assert_eq!(*store, before, "{input} aborted but changed the store");
    err.abort
}

fn follow(store: &mut Store, user: &str, target: &str) -> Result<Value, TxnAbort> {
    run(
        store,
        json!({"op": "follow", "user": user, "target": target}),
    )
}

fn unfollow(store: &mut Store, user: &str, target: &str) -> Result<Value, TxnAbort> {
    run(
        store,
        json!({"op": "unfollow", "user": user, "target": target}),
    )
}

fn message(store: &mut Store, from: &str, to: &str, text: &str) -> Result<Value, TxnAbort> {
    run(
        store,
        json!({"op": "message", "from": from, "to": to, "text": text}),
    )
}

fn counter(store: &Store, user: &str, field: &str) -> i64 {
    let key = format!("{PREFIX}user:{{{user}}}");
    store
        .hget(&key, field)
        .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap())
}

fn set<'s>(store: &'s Store, name: &str, user: &str) -> Vec<&'s str> {
    store.smembers(&format!("{PREFIX}{name}:{{{user}}}"))
}

/// The inbox of `user`, as (from, text) pairs, oldest first.
fn inbox(store: &Store, user: &str) -> Vec<(String, String)> {
    store
        .xrange(&format!("{PREFIX}inbox:{{{user}}}"))
        .iter()
        .map(|entry| {
            let text = |i: usize| String::from_utf8(entry[i].1.clone()).unwrap();
            assert_eq!((entry[0].0.as_str(), entry[1].0.as_str()), ("from", "text"));
            (text(0), text(1))
        })
        .collect()
}

#[test]
fn follow_adds_each_to_the_others_set_and_counts_it() {
    let mut store = Store::new();
    let out = follow(&mut store, "alice", "bob").unwrap();
    assert_eq!(
        out,
        json!({"user": "alice", "target": "bob", "following": true})
    );
    assert_eq!(set(&store, "following", "alice"), ["bob"]);
    assert_eq!(set(&store, "followers", "bob"), ["alice"]);
    assert_eq!(counter(&store, "alice", "following"), 1);
    assert_eq!(counter(&store, "bob", "followers"), 1);
    // Nothing else: alice has no followers yet, bob follows nobody.
    assert!(set(&store, "followers", "alice").is_empty());
    assert!(!store.exists("social:following:{bob}"));
    assert_eq!(counter(&store, "alice", "followers"), 0);
    follow(&mut store, "carol", "bob").unwrap();
    assert_eq!(set(&store, "followers", "bob"), ["alice", "carol"]);
    assert_eq!(counter(&store, "bob", "followers"), 2);
}

#[test]
fn following_twice_aborts_and_changes_nothing() {
    let mut store = Store::new();
    follow(&mut store, "alice", "bob").unwrap();
    let err = abort(
        &mut store,
        json!({"op": "follow", "user": "alice", "target": "bob"}),
    );
    assert_eq!(
        err,
        Abort::new("already_following", "`alice` already follows `bob`")
    );
}

#[test]
fn unfollow_is_the_reverse() {
    let mut store = Store::new();
    follow(&mut store, "alice", "bob").unwrap();
    follow(&mut store, "bob", "alice").unwrap();
    let out = unfollow(&mut store, "alice", "bob").unwrap();
    assert_eq!(
        out,
        json!({"user": "alice", "target": "bob", "following": false})
    );
    // Emptied sets are gone, as in Redis; counters are back to 0.
    assert!(!store.exists("social:following:{alice}"));
    assert!(!store.exists("social:followers:{bob}"));
    assert_eq!(counter(&store, "alice", "following"), 0);
    assert_eq!(counter(&store, "bob", "followers"), 0);
    // bob still follows alice.
    assert_eq!(set(&store, "following", "bob"), ["alice"]);
    assert_eq!(counter(&store, "alice", "followers"), 1);
    let err = abort(
        &mut store,
        json!({"op": "unfollow", "user": "alice", "target": "bob"}),
    );
    assert_eq!(
        err,
        Abort::new("not_following", "`alice` does not follow `bob`")
    );
}

#[test]
fn a_message_reaches_a_follower_once_and_is_counted() {
    let mut store = Store::new();
    follow(&mut store, "bob", "alice").unwrap();
    let out = message(&mut store, "alice", "bob", "hi").unwrap();
    assert_eq!(out, json!({"delivered": true}));
    message(&mut store, "alice", "bob", "").unwrap();
    assert_eq!(
        inbox(&store, "bob"),
        [
            ("alice".to_string(), "hi".to_string()),
            ("alice".to_string(), String::new())
        ]
    );
    assert_eq!(counter(&store, "bob", "unread"), 2);
    assert_eq!(counter(&store, "alice", "sent"), 2);
    assert!(inbox(&store, "alice").is_empty());
}

#[test]
fn only_followers_get_messages() {
    let mut store = Store::new();
    // alice follows bob, not the other way round.
    follow(&mut store, "alice", "bob").unwrap();
    let input = json!({"op": "message", "from": "alice", "to": "bob", "text": "hi"});
    let err = abort(&mut store, input);
    assert_eq!(err.code, "not_a_follower");
    assert_eq!(
        err.message,
        "`bob` does not follow `alice`: `alice` cannot message them"
    );
    let err = abort(
        &mut store,
        json!({"op": "message", "from": "carol", "to": "carol", "text": "me"}),
    );
    assert_eq!(err.code, "not_a_follower");
    message(&mut store, "bob", "alice", "hey").unwrap();
}

#[test]
fn profile_reads_the_counters_missing_fields_as_zero() {
    let mut store = Store::new();
    let out = run(&mut store, json!({"op": "profile", "user": "nobody"})).unwrap();
    assert_eq!(
        out,
        json!({"following": 0, "followers": 0, "sent": 0, "unread": 0})
    );
    follow(&mut store, "alice", "bob").unwrap();
    follow(&mut store, "bob", "alice").unwrap();
    follow(&mut store, "carol", "alice").unwrap();
    message(&mut store, "alice", "bob", "hi").unwrap();
    store.hset("social:user:{alice}", "nickname", "al");
    let out = run(&mut store, json!({"op": "profile", "user": "alice"})).unwrap();
    assert_eq!(
        out,
        json!({"following": 1, "followers": 2, "sent": 1, "unread": 0})
    );
    store.hset("social:user:{alice}", "sent", "lots");
    let err = abort(&mut store, json!({"op": "profile", "user": "alice"}));
    assert_eq!(err.code, "bad_value");
}

#[test]
fn every_op_declares_the_parts_it_touches_and_no_more() {
    let declared = |input: Value| {
        testing::declare::<Social>(&input.to_string())
            .unwrap()
            .accesses()
            .map(|d| (d.key, d.kind, d.target, d.mode))
            .collect::<Vec<_>>()
    };
    let member = |m: &str| Target::Member(m.into());
    let field = |f: &str| Target::Field(f.into());
    let follow = declared(json!({"op": "follow", "user": "alice", "target": "bob"}));
    let expected = vec![
        (
            "followers:{bob}".into(),
            Kind::Set,
            member("alice"),
            Mode::Write,
        ),
        (
            "following:{alice}".into(),
            Kind::Set,
            member("bob"),
            Mode::Write,
        ),
        (
            "user:{alice}".into(),
            Kind::Hash,
            field("following"),
            Mode::Adjust,
        ),
        (
            "user:{bob}".into(),
            Kind::Hash,
            field("followers"),
            Mode::Adjust,
        ),
    ];
    assert_eq!(follow, expected);
    let unfollow = declared(json!({"op": "unfollow", "user": "alice", "target": "bob"}));
    assert_eq!(unfollow, expected);
    let message = declared(json!({"op": "message", "from": "alice", "to": "bob", "text": "x"}));
    assert_eq!(
        message,
        [
            (
                "following:{bob}".into(),
                Kind::Set,
                member("alice"),
                Mode::Read
            ),
            (
                "inbox:{bob}".into(),
                Kind::Stream,
                Target::Whole,
                Mode::Append
            ),
            (
                "user:{alice}".into(),
                Kind::Hash,
                field("sent"),
                Mode::Adjust
            ),
            (
                "user:{bob}".into(),
                Kind::Hash,
                field("unread"),
                Mode::Adjust
            ),
        ]
    );
    let profile = declared(json!({"op": "profile", "user": "alice"}));
    assert_eq!(
        profile,
        [("user:{alice}".into(), Kind::Hash, Target::Whole, Mode::Read)]
    );
}

/// Whether two steps' declarations make one wait for the other: the same
/// part (or a part and its whole key) with at least one writer or reader
/// against a writer; adjusters share, appenders take no lock.
fn waits(a: &[Declaration], b: &[Declaration]) -> bool {
    let overlap = |x: &Declaration, y: &Declaration| {
        x.key == y.key
            && (x.target == y.target || x.target == Target::Whole || y.target == Target::Whole)
    };
    let shares = |x: Mode, y: Mode| {
        matches!(
            (x, y),
            (Mode::Read, Mode::Read) | (Mode::Adjust, Mode::Adjust)
        ) || x == Mode::Append
            || y == Mode::Append
    };
    a.iter()
        .any(|x| b.iter().any(|y| overlap(x, y) && !shares(x.mode, y.mode)))
}

#[test]
fn transactions_about_different_users_or_parts_never_wait_for_each_other() {
    let declared = |input: Value| -> Vec<Declaration> {
        testing::declare::<Social>(&input.to_string())
            .unwrap()
            .accesses()
            .collect()
    };
    let follow = |u: &str, t: &str| declared(json!({"op": "follow", "user": u, "target": t}));
    let message =
        |f: &str, t: &str| declared(json!({"op": "message", "from": f, "to": t, "text": "x"}));
    let profile = |u: &str| declared(json!({"op": "profile", "user": u}));
    // Two new followers of a popular user, and their messages to others.
    assert!(!waits(&follow("alice", "star"), &follow("bob", "star")));
    assert!(!waits(&follow("alice", "star"), &message("star", "carol")));
    assert!(!waits(&message("alice", "star"), &message("bob", "star")));
    assert!(!waits(&follow("alice", "bob"), &follow("carol", "dave")));
    // The same relation, or a profile against its counters, must wait.
    assert!(waits(&follow("alice", "bob"), &follow("alice", "bob")));
    assert!(waits(&follow("alice", "bob"), &message("bob", "alice")));
    assert!(waits(&profile("star"), &follow("alice", "star")));
    assert!(!waits(&profile("star"), &profile("star")));
}

#[test]
fn follows_and_unfollows_keep_the_sets_symmetric_and_the_counters_equal_to_them() {
    const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];
    let mut store = Store::new();
    // A fixed pseudo-random walk (a 64-bit LCG), so the test is the same
    // every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % n
    };
    let (mut committed, mut refused) = (0, 0);
    for _ in 0..400 {
        let (user, target) = (USERS[next(4)], USERS[next(4)]);
        let result = match next(3) {
            0 => unfollow(&mut store, user, target),
            1 => message(&mut store, user, target, "x"),
            _ => follow(&mut store, user, target),
        };
        match result {
            Ok(_) => committed += 1,
            Err(err) => {
                let expected = [
                    "already_following",
                    "not_following",
                    "not_a_follower",
                    "bad_input",
                ];
                assert!(expected.contains(&err.abort.code.as_str()), "{err:?}");
                refused += 1;
            }
        }
        for u in USERS {
            let following = set(&store, "following", u);
            let followers = set(&store, "followers", u);
            for t in &following {
                assert!(set(&store, "followers", t).contains(&u), "{u} -> {t}");
            }
            for f in &followers {
                assert!(set(&store, "following", f).contains(&u), "{f} -> {u}");
            }
            assert_eq!(counter(&store, u, "following"), following.len() as i64);
            assert_eq!(counter(&store, u, "followers"), followers.len() as i64);
            assert_eq!(counter(&store, u, "unread"), inbox(&store, u).len() as i64);
        }
    }
    assert!(committed > 100 && refused > 100, "{committed} {refused}");
    let sent: i64 = USERS.iter().map(|u| counter(&store, u, "sent")).sum();
    let received: usize = USERS.iter().map(|u| inbox(&store, u).len()).sum();
    assert_eq!(sent, received as i64);
}

#[test]
fn a_message_appears_only_if_its_transaction_commits() {
    let mut store = Store::new();
    // Steps of one transaction see each other's writes: bob follows alice,
    // then alice can message him.
    let outputs = store
        .transaction()
        .step_in::<Social>(PREFIX, r#"{"op":"follow","user":"bob","target":"alice"}"#)
        .step_in::<Social>(
            PREFIX,
            r#"{"op":"message","from":"alice","to":"bob","text":"hi"}"#,
        )
        .run()
        .unwrap();
    assert_eq!(outputs[1], json!({"delivered": true}));
    let before = store.clone();
    let err = store
        .transaction()
        .step_in::<Social>(
            PREFIX,
            r#"{"op":"message","from":"alice","to":"bob","text":"lost"}"#,
        )
        .step_in::<Social>(PREFIX, r#"{"op":"follow","user":"bob","target":"alice"}"#)
        .run()
        .unwrap_err();
    assert_eq!(
        (err.step, err.abort.code.as_str()),
        (1, "already_following")
    );
    assert_eq!(store, before);
    assert_eq!(
        inbox(&store, "bob"),
        [("alice".to_string(), "hi".to_string())]
    );
}

#[test]
fn data_of_another_type_is_the_hosts_wrong_type() {
    let mut store = Store::new();
    store.set("social:user:{alice}", "not a hash");
    let err = follow(&mut store, "alice", "bob").unwrap_err();
    assert_eq!(err.abort.code, "wrong_type");
    assert_eq!(
        err.abort.message,
        "`user:{alice}` holds a string, declared as a hash"
    );
}

#[test]
fn malformed_input_is_bad_input() {
    let mut store = Store::new();
    let bad = |store: &mut Store, input: Value| {
        let err = abort(store, input.clone());
        assert_eq!(err.code, "bad_input", "{input}: {err}");
        err.message
    };
    let message = bad(
        &mut store,
        json!({"op": "follow", "user": "alice", "target": "alice"}),
    );
    assert_eq!(
        message,
        "`user` and `target` must differ (both are `alice`): nobody follows themselves"
    );
    let message = bad(
        &mut store,
        json!({"op": "unfollow", "user": "", "target": "bob"}),
    );
    assert_eq!(message, "`user` must not be empty");
    let message = bad(
        &mut store,
        json!({"op": "message", "from": "a", "to": "b}", "text": "x"}),
    );
    assert!(
        message.starts_with("`to` must not contain `{` or `}`"),
        "{message}"
    );
    let message = bad(&mut store, json!({"op": "profile", "user": "{x"}));
    assert!(message.starts_with("`user` must not contain"), "{message}");
    let message = bad(&mut store, json!({"op": "poke", "user": "a"}));
    assert!(
        message.contains(
            "unknown variant `poke`, expected one of `follow`, `unfollow`, `message`, `profile`"
        ),
        "{message}"
    );
    let message = bad(&mut store, json!({"op": "message", "from": "a", "to": "b"}));
    assert!(message.contains("missing field `text`"), "{message}");
    let message = bad(
        &mut store,
        json!({"op": "profile", "user": "a", "extra": 1}),
    );
    assert!(message.contains("unknown field `extra`"), "{message}");
    bad(
        &mut store,
        json!({"op": "follow", "user": 1, "target": "b"}),
    );
}
