//! Redis's data types in a transaction (contract 0.3.0): hashes, sets,
//! sorted sets, streams and lists, locked at the granularity declared.
//!
//! The first tests drive the store's scripts directly, as a coordinator
//! does, on a real redis-server: what each script reads, locks, changes and
//! leaves, field by field and member by member.

use std::time::Duration;

use redis::Commands;
use redstage::store::{
    Base64, Bounded, Found, IndexEntry, KeyWork, Kind, Locked, Mode, Op, Read, Refusal, Store,
    Target,
};
use redstage_tests::{Persistence, RedisServer};

const LEASE: Duration = Duration::from_secs(30);

/// A fresh redis-server, the store on it, and a connection of the test's
/// own to look at it.
fn started() -> (RedisServer, Store, redis::Connection) {
    let server = RedisServer::start(Persistence::None).expect("redis");
    let store = Store::connect("s", &server.url().as_str().into(), Duration::from_secs(5))
        .expect("a store");
    let redis = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect");
    (server, store, redis)
}

/// Holds every client's commands in the server for `ms`, so that calls
/// sent meanwhile queue behind the first.
fn pause(redis: &mut redis::Connection, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query(redis)
        .expect("CLIENT PAUSE");
}

fn entry(txn: &str, keys: &[KeyWork]) -> IndexEntry {
    IndexEntry {
        txn: txn.to_owned(),
        primary: "s".to_owned(),
        keys: keys
            .iter()
            .flat_map(|k| {
                k.targets.iter().map(|(part, _)| Target {
                    key: k.key.to_owned(),
                    part: part.clone(),
                })
            })
            .collect(),
    }
}

async fn lock(store: &Store, txn: &str, keys: &[KeyWork<'_>]) -> Locked {
    store
        .lock(txn, LEASE, &entry(txn, keys), keys, false, 1024)
        .await
        .expect("lock")
}

fn part(p: &str) -> Option<String> {
    Some(p.to_owned())
}

/// Two transactions write different fields of one hash at once; a third,
/// reading the hash whole, is in the way of both until they are done; then
/// it reads what they wrote. Every field is read and written as bytes.
#[tokio::test]
async fn fields_of_one_hash_are_locked_apart_and_a_whole_read_waits_for_them() {
    let (_server, store, mut redis) = started();
    let _: () = redis.hset("user:{a}", "sent", "3").expect("HSET");

    let sent = [(part("sent"), Mode::Exclusive)];
    let unread = [(part("unread"), Mode::Exclusive)];
    let whole = [(None, Mode::Shared)];
    let read_sent = [Read::HGet("sent".into())];
    let read_unread = [Read::HGet("unread".into())];
    let read_all = [Read::HGetAll];
    let work = |targets, reads, ops| KeyWork {
        key: "user:{a}",
        kind: Kind::Hash,
        targets,
        reads,
        ops,
    };
    let t1 = [work(&sent, &read_sent, &[])];
    let t2 = [work(&unread, &read_unread, &[])];
    let t3 = [work(&whole, &read_all, &[])];
    assert_eq!(
        lock(&store, "t1", &t1).await,
        Locked::Values(vec![vec![Found::Bytes(Some(b"3".to_vec()))]])
    );
    assert_eq!(
        lock(&store, "t2", &t2).await,
        Locked::Values(vec![vec![Found::Bytes(None)]])
    );
    let Locked::Conflict { holder, .. } = lock(&store, "t3", &t3).await else {
        panic!("a whole read went past field locks");
    };
    assert!(["t1", "t2"].contains(&holder.txn.as_str()), "{holder:?}");

    // Once someone waits for the whole key, no new field lock starts.
    let t4 = [work(&sent, &read_sent, &[])];
    assert!(matches!(
        lock(&store, "t4", &t4).await,
        Locked::Conflict { .. }
    ));

    let four = [Op::HSet("sent".into(), Base64(b"4".to_vec()))];
    let one = [Op::HSet("unread".into(), Base64(vec![0xff, b'1']))];
    let t1w = [work(&sent, &[], &four)];
    let t2w = [work(&unread, &[], &one)];
    for (txn, keys) in [("t1", &t1w), ("t2", &t2w)] {
        let held = store
            .apply(txn, Some(&entry(txn, keys).encode()), keys)
            .await
            .expect("apply");
        assert_eq!(held, 1, "{txn}");
    }
    let Locked::Values(found) = lock(&store, "t3", &t3).await else {
        panic!("the whole read still waits");
    };
    assert_eq!(
        found,
        vec![vec![Found::Fields(vec![
            ("sent".into(), b"4".to_vec()),
            ("unread".into(), vec![0xff, b'1']),
        ])]]
    );
    let released = [work(&whole, &[], &[])];
    store
        .apply("t3", Some(&entry("t3", &t3).encode()), &released)
        .await
        .expect("release t3");
    let left: Vec<String> = redis.keys("rs:*").expect("KEYS");
    assert_eq!(left, Vec::<String>::new());
}

/// Escrow on a hash field and on a sorted set member's score: adjusters of
/// one target share it and reserve against its bound; a value that is not
/// an integer (a fractional score) is refused before anything changes.
#[tokio::test]
async fn fields_and_scores_are_adjusted_under_their_bounds() {
    let (_server, store, mut redis) = started();
    let _: () = redis.hset("stock", "A1", "5").expect("HSET");
    let _: () = redis.zadd("board", "ann", 2.5).expect("ZADD");
    let _: () = redis.zadd("board", "bob", 10).expect("ZADD");

    let take = |n: i64| {
        vec![Op::Adjust {
            part: part("A1"),
            steps: vec![Bounded {
                delta: -n,
                lower: Some(0),
                upper: None,
            }],
        }]
    };
    let a1 = [(part("A1"), Mode::Adjust)];
    let (three, three_more) = (take(3), take(3));
    let work = |ops| KeyWork {
        key: "stock",
        kind: Kind::Hash,
        targets: &a1,
        reads: &[],
        ops,
    };
    let first = [work(&three)];
    let second = [work(&three_more)];
    let locked = store
        .lock("t1", LEASE, &entry("t1", &first), &first, true, 1024)
        .await
        .expect("lock");
    assert!(matches!(locked, Locked::Values(_)), "{locked:?}");
    // 5 - 3 reserved: 3 more would break the bound if both commit.
    let refused = store
        .lock("t2", LEASE, &entry("t2", &second), &second, true, 1024)
        .await
        .expect("lock");
    assert_eq!(
        refused,
        Locked::Refused(Refusal::Bound {
            index: 0,
            target: 0,
            step: 0
        })
    );
    store
        .apply("t1", Some(&entry("t1", &first).encode()), &first)
        .await
        .expect("apply");
    let left: String = redis.hget("stock", "A1").expect("HGET");
    assert_eq!(left, "2");

    let score = |member: &str, n: i64| {
        vec![Op::Adjust {
            part: part(member),
            steps: vec![Bounded {
                delta: n,
                lower: None,
                upper: Some(12),
            }],
        }]
    };
    let (ann, bob) = (score("ann", 1), score("bob", 5));
    let ann_t = [(part("ann"), Mode::Adjust)];
    let bob_t = [(part("bob"), Mode::Adjust)];
    let zwork = |targets, ops| KeyWork {
        key: "board",
        kind: Kind::Zset,
        targets,
        reads: &[],
        ops,
    };
    let ann_k = [zwork(&ann_t, &ann)];
    assert!(matches!(
        store
            .lock("t3", LEASE, &entry("t3", &ann_k), &ann_k, true, 1024)
            .await
            .expect("lock"),
        Locked::Refused(Refusal::NotInteger { .. })
    ));
    let bob_k = [zwork(&bob_t, &bob)];
    assert!(matches!(
        store
            .lock("t4", LEASE, &entry("t4", &bob_k), &bob_k, true, 1024)
            .await
            .expect("lock"),
        Locked::Refused(Refusal::Bound { .. })
    ));
    let left: Vec<String> = redis.keys("rs:*").expect("KEYS");
    assert_eq!(left, Vec::<String>::new(), "a refusal left locks");
}

/// Appends take no lock: a stream entry and list values are made once by
/// the apply that still finds the transaction's index entry, and not again
/// by a second delivery; a key of another type than declared is refused
/// before anything changes.
#[tokio::test]
async fn appends_are_made_once_and_type_checked() {
    let (_server, store, mut redis) = started();
    let append = [(None, Mode::Append)];
    let entry_ops = [Op::XAdd {
        fields: vec![
            ("type".into(), Base64(b"order_placed".to_vec())),
            ("order".into(), Base64(b"o1".to_vec())),
        ],
        maxlen: Some(1000),
    }];
    let push = [Op::RPush(vec![
        Base64(b"x".to_vec()),
        Base64(b"y".to_vec()),
    ])];
    let keys = [
        KeyWork {
            key: "events",
            kind: Kind::Stream,
            targets: &append,
            reads: &[],
            ops: &entry_ops,
        },
        KeyWork {
            key: "queue",
            kind: Kind::List,
            targets: &append,
            reads: &[],
            ops: &push,
        },
    ];
    assert_eq!(
        lock(&store, "t1", &keys).await,
        Locked::Values(vec![vec![], vec![]])
    );
    let encoded = entry("t1", &keys).encode();
    store
        .apply("t1", Some(&encoded), &keys)
        .await
        .expect("apply");
    store
        .apply("t1", Some(&encoded), &keys)
        .await
        .expect("apply again");
    let entries: usize = redis.xlen("events").expect("XLEN");
    assert_eq!(entries, 1);
    let queue: Vec<String> = redis.lrange("queue", 0, -1).expect("LRANGE");
    assert_eq!(queue, ["x", "y"]);

    let _: () = redis.set("oops", "a string").expect("SET");
    let wrong = [KeyWork {
        key: "oops",
        kind: Kind::Stream,
        targets: &append,
        reads: &[],
        ops: &entry_ops,
    }];
    assert_eq!(
        lock(&store, "t2", &wrong).await,
        Locked::Refused(Refusal::WrongType {
            index: 0,
            found: "string".into()
        })
    );
    let left: Vec<String> = redis.keys("rs:*").expect("KEYS");
    assert_eq!(left, Vec::<String>::new());
}

/// Sets and sorted sets are read by member, whole and by range; a whole
/// read of more items than the limit is refused, naming the count.
#[tokio::test]
async fn members_ranges_and_the_read_bound() {
    let (_server, store, mut redis) = started();
    let _: () = redis.sadd("followers:{b}", &["a", "c"]).expect("SADD");
    for (m, s) in [("a", 1.0), ("b", 2.0), ("c", 3.5)] {
        let _: () = redis.zadd("board", m, s).expect("ZADD");
    }
    let read = [(None, Mode::Read)];
    let members = [
        Read::SIsMember("a".into()),
        Read::SIsMember("z".into()),
        Read::SMembers,
    ];
    let ranges = [
        Read::ZScore("c".into()),
        Read::ZRank(-2, -1),
        Read::ZByScore(1.5, f64::INFINITY),
        Read::ZAll,
    ];
    let keys = [
        KeyWork {
            key: "followers:{b}",
            kind: Kind::Set,
            targets: &read,
            reads: &members,
            ops: &[],
        },
        KeyWork {
            key: "board",
            kind: Kind::Zset,
            targets: &read,
            reads: &ranges,
            ops: &[],
        },
    ];
    let ranked = |pairs: &[(&str, f64)]| {
        Found::Ranked(pairs.iter().map(|(m, s)| (m.to_string(), *s)).collect())
    };
    assert_eq!(
        lock(&store, "t1", &keys).await,
        Locked::Values(vec![
            vec![
                Found::Present(true),
                Found::Present(false),
                Found::Members(vec!["a".into(), "c".into()]),
            ],
            vec![
                Found::Score(Some(3.5)),
                ranked(&[("b", 2.0), ("c", 3.5)]),
                ranked(&[("b", 2.0), ("c", 3.5)]),
                ranked(&[("a", 1.0), ("b", 2.0), ("c", 3.5)]),
            ],
        ])
    );
    let bounded = store
        .lock("t2", LEASE, &entry("t2", &keys), &keys, false, 2)
        .await
        .expect("lock");
    assert_eq!(
        bounded,
        Locked::Refused(Refusal::TooMany { index: 1, count: 3 })
    );
}

/// Group commit: applies queued while the store is busy go in one script
/// call, and each transaction still gets its own reply. Twelve transactions
/// adjust one value, share a lock on another key and write a key of their
/// own; a thirteenth appends to a key that was overwritten with a string
/// behind redstage's back, and one transaction is queued twice. The twelve
/// are applied once each (the shared lock table, released by every one of
/// them, is gone), the thirteenth is refused with nothing applied and
/// keeps its index entry, and two calls at most carried all of it.
#[tokio::test]
async fn applies_queued_together_share_one_call_and_each_gets_its_own_reply() {
    let (_server, store, mut redis) = started();
    let _: () = redis.set("stock", "100").expect("SET");
    let _: () = redis.set("cfg", "v").expect("SET");

    let adjust = [(None, Mode::Adjust)];
    let shared = [(None, Mode::Shared)];
    let mine = [(None, Mode::Exclusive)];
    let append = [(None, Mode::Append)];
    let take = [Op::Adjust {
        part: None,
        steps: vec![Bounded {
            delta: -1,
            lower: Some(0),
            upper: None,
        }],
    }];
    let names: Vec<String> = (0..12).map(|i| format!("order:{i}")).collect();
    let values: Vec<[Op; 1]> = (0..12)
        .map(|i| {
            [Op::Set {
                value: Base64(i.to_string().into_bytes()),
                ttl_ms: None,
            }]
        })
        .collect();
    let work = |key, kind, targets, ops| KeyWork {
        key,
        kind,
        targets,
        reads: &[],
        ops,
    };
    let txns: Vec<(String, Vec<KeyWork>)> = (0..12)
        .map(|i| {
            let keys = vec![
                work("stock", Kind::String, &adjust[..], &take[..]),
                work("cfg", Kind::String, &shared[..], &[][..]),
                work(&names[i], Kind::String, &mine[..], &values[i][..]),
            ];
            (format!("t{i}"), keys)
        })
        .collect();
    let event = [Op::XAdd {
        fields: vec![("type".into(), Base64(b"placed".to_vec()))],
        maxlen: None,
    }];
    let bad = vec![work("events", Kind::Stream, &append[..], &event[..])];
    for (txn, keys) in txns.iter().chain([&("bad".to_owned(), bad.clone())]) {
        let locked = store
            .lock(txn, LEASE, &entry(txn, keys), keys, true, 1024)
            .await
            .expect("lock");
        assert!(matches!(locked, Locked::Values(_)), "{txn}: {locked:?}");
    }
    let _: () = redis.set("events", "not a stream").expect("SET");
    // Loads the script, so that the calls below are one EVALSHA each.
    store.apply("nobody", None, &[]).await.expect("apply");
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut redis)
        .expect("CONFIG RESETSTAT");

    // While every client is paused, the first call waits in the server and
    // the rest queue behind it.
    pause(&mut redis, 300);
    let entries: Vec<String> = txns
        .iter()
        .map(|(txn, keys)| entry(txn, keys).encode())
        .collect();
    let bad_entry = entry("bad", &bad).encode();
    let queued = txns
        .iter()
        .zip(&entries)
        .map(|((txn, keys), e)| (txn.as_str(), e.as_str(), &keys[..]))
        .chain([
            ("bad", bad_entry.as_str(), &bad[..]),
            ("t0", entries[0].as_str(), &txns[0].1[..]),
        ]);
    let replies = futures::future::join_all(
        queued.map(|(txn, e, keys)| store.apply_queued(txn, Some(e), keys)),
    )
    .await;

    for (i, reply) in replies[..12].iter().enumerate().skip(1) {
        assert_eq!(reply.as_ref().expect("applied"), &3, "t{i}");
    }
    let message = replies[12].as_ref().expect_err("refused").to_string();
    assert!(message.contains("holds a string"), "{message}");
    let t0: usize = [&replies[0], &replies[13]]
        .iter()
        .map(|r| r.as_ref().expect("t0"))
        .sum();
    assert_eq!(t0, 3, "t0 queued twice is applied once");

    let stock: i64 = redis.get("stock").expect("GET");
    assert_eq!(stock, 88);
    for (i, name) in names.iter().enumerate() {
        let v: String = redis.get(name).expect("GET");
        assert_eq!(v, i.to_string());
    }
    let left: Vec<String> = redis.keys("rs:*").expect("KEYS");
    assert_eq!(left, ["rs:locks"], "only the refused transaction is left");
    let listed: Vec<String> = redis.zrange("rs:locks", 0, -1).expect("ZRANGE");
    assert_eq!(listed, [bad_entry]);
    let kept: String = redis.get("events").expect("GET");
    assert_eq!(kept, "not a stream");

    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis)
        .expect("INFO");
    let calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        (1..=2).contains(&calls),
        "14 applies took {calls} script calls"
    );
}

/// Two transactions that declare one key as two Redis types never share an
/// apply call: the second goes in the next call, and its check sees what
/// the first made of the key. Here one appends to `mixed` as a list and the
/// other as a stream (appends take no lock, so both got this far): the
/// list is made, the stream's append is refused with nothing applied, and
/// no call failed half-way.
#[tokio::test]
async fn a_key_declared_as_two_types_is_never_in_one_apply_call() {
    let (_server, store, mut redis) = started();
    let append = [(None, Mode::Append)];
    let push = [Op::RPush(vec![Base64(b"x".to_vec())])];
    let event = [Op::XAdd {
        fields: vec![("type".into(), Base64(b"placed".to_vec()))],
        maxlen: None,
    }];
    let work = |kind, ops| KeyWork {
        key: "mixed",
        kind,
        targets: &append,
        reads: &[],
        ops,
    };
    let as_list = [work(Kind::List, &push)];
    let as_stream = [work(Kind::Stream, &event)];
    for (txn, keys) in [("l", &as_list), ("s", &as_stream)] {
        assert_eq!(lock(&store, txn, keys).await, Locked::Values(vec![vec![]]));
    }
    pause(&mut redis, 200);
    let (list_entry, stream_entry) = (
        entry("l", &as_list).encode(),
        entry("s", &as_stream).encode(),
    );
    let (list, stream) = tokio::join!(
        store.apply_queued("l", Some(&list_entry), &as_list),
        store.apply_queued("s", Some(&stream_entry), &as_stream),
    );
    list.expect("the list's append applied");
    let refused = stream.expect_err("the stream's append refused").to_string();
    assert!(refused.contains("holds a list"), "{refused}");
    let items: Vec<String> = redis.lrange("mixed", 0, -1).expect("LRANGE");
    assert_eq!(items, ["x"]);
    let listed: Vec<String> = redis.zrange("rs:locks", 0, -1).expect("ZRANGE");
    assert_eq!(listed, [stream_entry], "the refused one keeps its entry");
}
