//! The orders participant on the SDK's in-memory store, alone and as the
//! last step of the demo's order (inventory, payments, orders), each under
//! the prefix its manifest gives it.

use redstage_guest::testing::{self, Store, TxnAbort};
use redstage_guest::{Access, Kind, Mode, Target};
use serde_json::{Value, json};

use super::*;

fn place(order: &str, total: u64) -> Value {
    json!({"op": "place", "order": order, "customer": "c1", "sku": "A1", "qty": 2, "total": total})
}

fn run(store: &mut Store, input: Value) -> Result<Value, TxnAbort> {
    let mut outputs = store
        .transaction()
        .step_in::<Orders>("orders:", &input.to_string())
        .run()?;
    Ok(outputs.remove(0))
}

/// The fields of a hash or a stream entry as text.
fn text<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(f, v)| (f.to_owned(), String::from_utf8(v.to_vec()).unwrap()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .collect()
}

/// The orders announced on `events`, in order.
fn announced(store: &Store) -> Vec<String> {
    store
        .xrange("orders:events")
        .iter()
        .map(|entry| {
            let fields = text(entry.iter().map(|(f, v)| (f.as_str(), v.as_slice())));
            assert_eq!(fields[0], ("type".into(), "order_placed".into()));
            fields[1].1.clone()
        })
        .collect()
}

#[test]
fn place_writes_the_order_and_announces_it() {
    let mut store = Store::new();
    let out = run(&mut store, place("o1", 30)).unwrap();
    assert_eq!(out, json!({"order": "o1", "status": "placed"}));
    assert_eq!(
        text(store.hgetall("orders:order:{o1}")),
        pairs(&[
            ("customer", "c1"),
            ("qty", "2"),
            ("sku", "A1"),
            ("status", "placed"),
            ("total", "30"),
        ])
    );
    let events = store.xrange("orders:events");
    assert_eq!(events.len(), 1);
    assert_eq!(
        text(events[0].iter().map(|(f, v)| (f.as_str(), v.as_slice()))),
        pairs(&[
            ("type", "order_placed"),
            ("order", "o1"),
            ("customer", "c1"),
            ("total", "30"),
        ])
    );
}

#[test]
fn an_order_is_placed_once() {
    let mut store = Store::new();
    run(&mut store, place("o1", 30)).unwrap();
    let before = store.clone();
    let err = run(&mut store, place("o1", 99)).unwrap_err();
    assert_eq!(
        err.abort,
        Abort::new("duplicate_order", "order `o1` exists already")
    );
    assert_eq!(store, before);
    // Any field makes the order exist, whoever wrote it.
    store.hset("orders:order:{o2}", "status", "cancelled");
    let err = run(&mut store, place("o2", 1)).unwrap_err();
    assert_eq!(err.abort.code, "duplicate_order");
    run(&mut store, place("o3", 0)).unwrap();
    assert_eq!(announced(&store), ["o1", "o3"]);
}

#[test]
fn place_declares_the_order_whole_and_appends_to_events() {
    let access = testing::declare::<Orders>(&place("o1", 30).to_string()).unwrap();
    assert_eq!(
        access,
        Access::new()
            .write_hash("order:{o1}")
            .append_stream("events")
    );
    let declared: Vec<_> = access
        .accesses()
        .map(|d| (d.key, d.kind, d.target, d.mode))
        .collect();
    assert_eq!(
        declared,
        [
            ("events".into(), Kind::Stream, Target::Whole, Mode::Append),
            ("order:{o1}".into(), Kind::Hash, Target::Whole, Mode::Write),
        ]
    );
}

#[test]
fn a_key_of_another_type_is_wrong_type() {
    let mut store = Store::new();
    store.set("orders:events", "not a stream");
    let err = run(&mut store, place("o1", 30)).unwrap_err();
    assert_eq!(err.abort.code, "wrong_type");
    assert!(!store.exists("orders:order:{o1}"));
}

#[test]
fn malformed_input_is_bad_input() {
    let bad = |input: Value| {
        let err = testing::declare::<Orders>(&input.to_string()).unwrap_err();
        assert_eq!(err.code, "bad_input", "{input}: {err}");
        err.message
    };
    let mut input = place("", 30);
    assert_eq!(bad(input.clone()), "`order` must not be empty");
    input["order"] = json!("o1");
    input["customer"] = json!("");
    assert_eq!(bad(input.clone()), "`customer` must not be empty");
    input["customer"] = json!("c1");
    input["sku"] = json!("");
    assert_eq!(bad(input.clone()), "`sku` must not be empty");
    input["sku"] = json!("A1");
    for qty in [json!(0), json!(-1), json!(1.5), json!("2")] {
        input["qty"] = qty;
        assert!(bad(input.clone()).contains("expected a positive 64-bit integer"));
    }
    input["qty"] = json!(2);
    for total in [json!(-1), json!(2.5), json!("30")] {
        input["total"] = total;
        assert!(bad(input.clone()).contains("expected u64"), "{input}");
    }
    input["total"] = json!(30);
    input["coupon"] = json!("x");
    assert!(bad(input).contains("unknown field `coupon`"));
    let message = bad(json!({"op": "cancel", "order": "o1"}));
    assert!(
        message.contains("unknown variant `cancel`, expected `place`"),
        "{message}"
    );
    assert!(bad(json!({"op": "place", "order": "o1"})).contains("missing field"));
}

/// The demo's order: take the stock, pay the shop, place the order, as
/// one transaction.
fn order(store: &mut Store, id: &str, qty: i64, total: i64) -> Result<Vec<Value>, TxnAbort> {
    store
        .transaction()
        .step_in::<inventory::Inventory>(
            "inventory:",
            &json!({"op": "deduct", "sku": "A1", "qty": qty}).to_string(),
        )
        .step_in::<payments::Payments>(
            "payments:",
            &json!({"op": "transfer", "from": "c1", "to": "shop", "amount": total}).to_string(),
        )
        .step_in::<Orders>(
            "orders:",
            &json!({"op": "place", "order": id, "customer": "c1", "sku": "A1", "qty": qty, "total": total})
                .to_string(),
        )
        .run()
}

fn demo_store() -> Store {
    let mut store = Store::new();
    store
        .set("inventory:stock:A1", "5")
        .set("payments:balance:c1", "100");
    store
}

#[test]
fn an_order_of_three_steps_commits_all_of_them() {
    let mut store = demo_store();
    let outputs = order(&mut store, "o1", 2, 30).unwrap();
    assert_eq!(
        outputs,
        [
            json!({"sku": "A1", "taken": 2}),
            json!({"from": "c1", "to": "shop", "amount": 30}),
            json!({"order": "o1", "status": "placed"}),
        ]
    );
    assert_eq!(store.get("inventory:stock:A1"), Some(&b"3"[..]));
    assert_eq!(store.get("payments:balance:c1"), Some(&b"70"[..]));
    assert_eq!(store.get("payments:balance:shop"), Some(&b"30"[..]));
    assert_eq!(
        store.hget("orders:order:{o1}", "status"),
        Some(&b"placed"[..])
    );
    assert_eq!(announced(&store), ["o1"]);
}

#[test]
fn the_outbox_holds_every_committed_order_once_and_no_aborted_one() {
    let mut store = demo_store();
    // (order, qty, total, the step that aborts and its code)
    let orders = [
        ("o1", 2, 30, None),
        ("o2", 9, 10, Some((0, "insufficient_stock"))),
        ("o3", 1, 80, Some((1, "insufficient_funds"))),
        ("o1", 1, 10, Some((2, "duplicate_order"))),
        ("o4", 3, 70, None),
        ("o5", 1, 5, Some((0, "insufficient_stock"))),
        // Every step declares before any executes: payments refuses to
        // move 0 before inventory looks at the stock.
        ("o6", 1, 0, Some((1, "bad_input"))),
    ];
    let mut committed = Vec::new();
    for (id, qty, total, aborts) in orders {
        let before = store.clone();
        match (order(&mut store, id, qty, total), aborts) {
            (Ok(_), None) => committed.push(id),
            (Err(err), Some((step, code))) => {
                assert_eq!((err.step, err.abort.code.as_str()), (step, code), "{id}");
                assert_eq!(store, before, "{id} aborted but changed the store");
            }
            (result, _) => panic!("{id}: {result:?}"),
        }
    }
    assert_eq!(announced(&store), committed);
    assert_eq!(store.get("inventory:stock:A1"), Some(&b"0"[..]));
    assert_eq!(store.get("payments:balance:c1"), Some(&b"0"[..]));
    assert_eq!(store.get("payments:balance:shop"), Some(&b"100"[..]));
}
