//! Inventory: stock levels per SKU, kept under `stock:<sku>` as decimal
//! strings (a missing key means none in stock).
//!
//! | input | effect | output |
//! | --- | --- | --- |
//! | `{"op":"restock","sku":"A1","qty":5}` | adds 5 to `stock:A1` | `{"sku":"A1","stock":8}` |
//! | `{"op":"deduct","sku":"A1","qty":2}` | takes 2, or aborts `insufficient_stock` | `{"sku":"A1","taken":2}` |
//! | `{"op":"deduct","sku":"A1","qty":2,"read":true}` | the same, reading the stock | `{"sku":"A1","stock":6}` |
//! | `{"op":"levels","skus":["A1","B2"]}` | nothing (reads only) | `{"A1":6,"B2":0}` |
//!
//! `deduct` is an adjustment (escrow): it never reads the stock, only takes
//! from it with the bound "never below 0", so deducts of the same SKU from
//! concurrent orders do not wait for each other (a flash sale). Its output
//! therefore says what was taken, not what is left; with `"read": true` it
//! reads the stock, waits for other orders of the SKU like any write, and
//! reports the level it leaves.
//!
//! Quantities are positive integers; anything else, an empty SKU, an unknown
//! op or an unknown field is `bad_input`.

use std::collections::BTreeMap;

use redstage_guest::{
    Abort, Access, Bounds, Outcome, Participant, Positive, Snapshot, checked_add, checked_sub,
};
use serde::{Deserialize, Serialize};

/// One inventory operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// Receive `qty` units of `sku`.
    Restock { sku: String, qty: Positive },
    /// Hand out `qty` units of `sku`, if that many are in stock; with
    /// `read`, by reading the stock rather than adjusting it.
    Deduct {
        sku: String,
        qty: Positive,
        #[serde(default)]
        read: bool,
    },
    /// Report the stock of each of `skus`.
    Levels { skus: Vec<String> },
}

/// The new stock of the SKU that a restock or deduct changed.
#[derive(Debug, Serialize)]
struct Level<'a> {
    sku: &'a str,
    stock: i64,
}

/// What an escrow deduct took (the level it leaves is not known to it).
#[derive(Debug, Serialize)]
struct Taken<'a> {
    sku: &'a str,
    taken: i64,
}

/// The inventory participant.
#[derive(Debug)]
pub struct Inventory;

impl Participant for Inventory {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        match input {
            Input::Restock { sku, .. }
            | Input::Deduct {
                sku, read: true, ..
            } => Ok(Access::new().write(stock_key(sku)?)),
            Input::Deduct { sku, .. } => Ok(Access::new().adjust(stock_key(sku)?)),
            Input::Levels { skus } => {
                if skus.is_empty() {
                    return Err(Abort::bad_input("`skus` must list at least one SKU"));
                }
                let keys: Vec<String> = skus
                    .iter()
                    .map(|sku| stock_key(sku))
                    .collect::<Result<_, _>>()?;
                Ok(Access::new().read_all(keys))
            }
        }
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        match input {
            Input::Restock { sku, qty } => {
                let key = stock_key(sku)?;
                let stock = checked_add(snapshot.get_i64(&key)?, qty.get())?;
                Outcome::new()
                    .set_i64(key, stock)
                    .output_json(&Level { sku, stock })
            }
            Input::Deduct {
                sku,
                qty,
                read: false,
            } => Outcome::new()
                .adjust(
                    stock_key(sku)?,
                    -qty.get(),
                    Bounds::at_least(0),
                    Abort::new(
                        "insufficient_stock",
                        format!("fewer than {qty} of `{sku}` in stock"),
                    ),
                )
                .output_json(&Taken {
                    sku,
                    taken: qty.get(),
                }),
            Input::Deduct {
                sku,
                qty,
                read: true,
            } => {
                let key = stock_key(sku)?;
                let in_stock = snapshot.get_i64(&key)?;
                if in_stock < qty.get() {
                    return Err(Abort::new(
                        "insufficient_stock",
                        format!("only {in_stock} of `{sku}` in stock, {qty} requested"),
                    ));
                }
                let stock = checked_sub(in_stock, qty.get())?;
                Outcome::new()
                    .set_i64(key, stock)
                    .output_json(&Level { sku, stock })
            }
            Input::Levels { skus } => {
                let levels = skus
                    .iter()
                    .map(|sku| Ok((sku.as_str(), snapshot.get_i64(&stock_key(sku)?)?)))
                    .collect::<Result<BTreeMap<_, _>, Abort>>()?;
                Outcome::new().output_json(&levels)
            }
        }
    }
}

redstage_guest::export!(Inventory);

fn stock_key(sku: &str) -> Result<String, Abort> {
    if sku.is_empty() {
        return Err(Abort::bad_input("`sku` must not be empty"));
    }
    Ok(format!("stock:{sku}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redstage_guest::testing::{self, TestOutcome};
    use serde_json::json;

    fn run(input: serde_json::Value, store: &[(&str, &str)]) -> Result<TestOutcome, Abort> {
        testing::run::<Inventory>(&input.to_string(), store)
    }

    fn written(out: &TestOutcome) -> Vec<(&str, Option<&str>)> {
        out.writes
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_deref()))
            .collect()
    }

    fn bad_input(input: serde_json::Value) -> String {
        let err = run(input.clone(), &[]).unwrap_err();
        assert_eq!(err.code, "bad_input", "{input}: {err}");
        err.message
    }

    #[test]
    fn restock_adds_to_the_stock() {
        let out = run(
            json!({"op": "restock", "sku": "A1", "qty": 5}),
            &[("stock:A1", "3")],
        )
        .unwrap();
        assert_eq!(written(&out), [("stock:A1", Some("8"))]);
        assert_eq!(out.output, json!({"sku": "A1", "stock": 8}));
    }

    #[test]
    fn restock_of_an_unknown_sku_starts_from_zero() {
        let out = run(json!({"op": "restock", "sku": "new", "qty": 2}), &[]).unwrap();
        assert_eq!(written(&out), [("stock:new", Some("2"))]);
    }

    #[test]
    fn deduct_takes_from_the_stock_without_reading_it() {
        let out = run(
            json!({"op": "deduct", "sku": "A1", "qty": 2}),
            &[("stock:A1", "8")],
        )
        .unwrap();
        assert_eq!(out.access, Access::new().adjust("stock:A1"));
        assert_eq!(written(&out), [("stock:A1", Some("6"))]);
        assert_eq!(out.adjustments["stock:A1"], -2);
        assert_eq!(out.output, json!({"sku": "A1", "taken": 2}));
    }

    #[test]
    fn a_reading_deduct_reports_the_level() {
        let out = run(
            json!({"op": "deduct", "sku": "A1", "qty": 2, "read": true}),
            &[("stock:A1", "8")],
        )
        .unwrap();
        assert_eq!(out.access, Access::new().write("stock:A1"));
        assert_eq!(written(&out), [("stock:A1", Some("6"))]);
        assert_eq!(out.output, json!({"sku": "A1", "stock": 6}));
    }

    #[test]
    fn deduct_may_empty_the_stock() {
        for read in [false, true] {
            let out = run(
                json!({"op": "deduct", "sku": "A1", "qty": 8, "read": read}),
                &[("stock:A1", "8")],
            )
            .unwrap();
            assert_eq!(written(&out), [("stock:A1", Some("0"))]);
        }
    }

    #[test]
    fn deduct_beyond_the_stock_aborts() {
        let err = run(
            json!({"op": "deduct", "sku": "A1", "qty": 5}),
            &[("stock:A1", "3")],
        )
        .unwrap_err();
        assert_eq!(err.code, "insufficient_stock");
        assert_eq!(err.message, "fewer than 5 of `A1` in stock");

        let err = run(
            json!({"op": "deduct", "sku": "A1", "qty": 5, "read": true}),
            &[("stock:A1", "3")],
        )
        .unwrap_err();
        assert_eq!(err.message, "only 3 of `A1` in stock, 5 requested");

        let err = run(
            json!({"op": "deduct", "sku": "B2", "qty": 1, "read": true}),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.message, "only 0 of `B2` in stock, 1 requested");
    }

    #[test]
    fn restock_beyond_i64_aborts() {
        let max = i64::MAX.to_string();
        let err = run(
            json!({"op": "restock", "sku": "A1", "qty": 1}),
            &[("stock:A1", &max)],
        )
        .unwrap_err();
        assert_eq!(err.code, "overflow");
    }

    #[test]
    fn corrupt_stock_aborts() {
        let err = run(
            json!({"op": "deduct", "sku": "A1", "qty": 1, "read": true}),
            &[("stock:A1", "lots")],
        )
        .unwrap_err();
        assert_eq!(err.code, "bad_value");
        let err = run(
            json!({"op": "deduct", "sku": "A1", "qty": 1}),
            &[("stock:A1", "lots")],
        )
        .unwrap_err();
        assert_eq!(err.code, "not_an_integer");
    }

    #[test]
    fn levels_reads_only_and_reports_each_sku() {
        let out = run(
            json!({"op": "levels", "skus": ["B2", "A1", "C3"]}),
            &[("stock:A1", "8"), ("stock:B2", "0")],
        )
        .unwrap();
        assert!(out.writes.is_empty());
        assert_eq!(out.access.writes().count(), 0);
        assert_eq!(
            out.access.reads().collect::<Vec<_>>(),
            ["stock:A1", "stock:B2", "stock:C3"]
        );
        assert_eq!(out.output, json!({"A1": 8, "B2": 0, "C3": 0}));
    }

    #[test]
    fn writes_declare_one_key() {
        let declared =
            |input: serde_json::Value| testing::declare::<Inventory>(&input.to_string()).unwrap();
        let restock = declared(json!({"op": "restock", "sku": "A1", "qty": 1}));
        assert_eq!(restock, Access::new().write("stock:A1"));
        let deduct = declared(json!({"op": "deduct", "sku": "A1", "qty": 1}));
        assert_eq!(deduct, Access::new().adjust("stock:A1"));
    }

    #[test]
    fn quantities_must_be_positive_integers() {
        for qty in [json!(0), json!(-1), json!(1.5), json!("2"), json!(null)] {
            let message = bad_input(json!({"op": "restock", "sku": "A1", "qty": qty}));
            assert!(
                message.contains("expected a positive 64-bit integer"),
                "{message}"
            );
        }
        let message = bad_input(json!({"op": "deduct", "sku": "A1"}));
        assert!(message.contains("missing field `qty`"), "{message}");
    }

    #[test]
    fn malformed_input_is_bad_input() {
        let message = bad_input(json!({"op": "steal", "sku": "A1"}));
        assert!(
            message
                .contains("unknown variant `steal`, expected one of `restock`, `deduct`, `levels`"),
            "{message}"
        );
        let message = bad_input(json!({"sku": "A1", "qty": 1}));
        assert!(message.contains("missing field `op`"), "{message}");
        let message = bad_input(json!({"op": "restock", "sku": "", "qty": 1}));
        assert_eq!(message, "`sku` must not be empty");
        let message = bad_input(json!({"op": "levels", "skus": []}));
        assert_eq!(message, "`skus` must list at least one SKU");
        let message = bad_input(json!({"op": "levels", "skus": ["A1", ""]}));
        assert_eq!(message, "`sku` must not be empty");
        let message = bad_input(json!({"op": "restock", "sku": "A1", "qty": 1, "price": 3}));
        assert!(message.contains("unknown field `price`"), "{message}");
        bad_input(json!(["restock"]));
        let err = testing::run::<Inventory>("{not json", &[]).unwrap_err();
        assert_eq!(err.code, "bad_input");
    }
}
