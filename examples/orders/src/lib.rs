//! Orders: each order a hash, and every order placed an event in a stream
//! that other services read (a transactional outbox).
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `order:{O}` | hash | the fields `customer`, `sku`, `qty`, `total`, `status` of order O |
//! | `events` | stream | one entry per order placed: `type` = `order_placed`, `order`, `customer`, `total` |
//!
//! | input | effect | output |
//! | --- | --- | --- |
//! | `{"op":"place","order":"o1","customer":"c1","sku":"A1","qty":2,"total":30}` | writes `order:{o1}` (`status` = `placed`) and appends its event to `events`; aborts `duplicate_order` if `order:{o1}` exists | `{"order":"o1","status":"placed"}` |
//!
//! An order of the demo is three steps of one transaction, inventory's
//! `deduct`, payments' `transfer` and this `place`, so `events` holds every
//! committed order exactly once and never an aborted one: the append takes
//! no lock and reads nothing, and its entry appears if and only if the
//! transaction commits.
//!
//! `place` declares `order:{O}` whole in write mode, so the hash's fields
//! are in the snapshot (none: the order is new) and no other transaction
//! can place the same order meanwhile; `events` in append mode, so orders
//! never wait for each other on it. Quantities are positive integers,
//! totals integers from 0; an empty id, customer or SKU, an unknown op or
//! an unknown field is `bad_input`.

use redstage_guest::{Abort, Access, Outcome, Participant, Positive, Snapshot};
use serde::{Deserialize, Serialize};

/// One orders operation, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// Record order `order` and announce it on `events`.
    Place {
        order: String,
        customer: String,
        sku: String,
        qty: Positive,
        total: u64,
    },
}

/// What `place` answers.
#[derive(Debug, Serialize)]
struct Placed<'a> {
    order: &'a str,
    status: &'a str,
}

/// The stream every placed order is announced on.
const EVENTS: &str = "events";

/// The status of an order `place` wrote.
const PLACED: &str = "placed";

/// The orders participant.
#[derive(Debug)]
pub struct Orders;

impl Participant for Orders {
    type Input = Input;

    fn declare(input: &Input) -> Result<Access, Abort> {
        let Input::Place {
            order,
            customer,
            sku,
            ..
        } = input;
        for (name, value) in [("order", order), ("customer", customer), ("sku", sku)] {
            if value.is_empty() {
                return Err(Abort::bad_input(format!("`{name}` must not be empty")));
            }
        }
        Ok(Access::new()
            .write_hash(order_key(order))
            .append_stream(EVENTS))
    }

    fn execute(input: &Input, snapshot: &Snapshot) -> Result<Outcome, Abort> {
        let Input::Place {
            order,
            customer,
            sku,
            qty,
            total,
        } = input;
        let key = order_key(order);
        if !snapshot.hgetall(&key)?.is_empty() {
            return Err(Abort::new(
                "duplicate_order",
                format!("order `{order}` exists already"),
            ));
        }
        let total = total.to_string();
        Outcome::new()
            .hset(&key, "customer", customer.as_str())
            .hset(&key, "sku", sku.as_str())
            .hset_i64(&key, "qty", qty.get())
            .hset(&key, "total", total.as_str())
            .hset(&key, "status", PLACED)
            .xadd(
                EVENTS,
                [
                    ("type", "order_placed"),
                    ("order", order.as_str()),
                    ("customer", customer.as_str()),
                    ("total", total.as_str()),
                ],
            )
            .output_json(&Placed {
                order,
                status: PLACED,
            })
    }
}

redstage_guest::export!(Orders);

/// The order's hash: the order id is its hash tag, so that a Redis Cluster
/// spreads orders over its slots.
fn order_key(order: &str) -> String {
    format!("order:{{{order}}}")
}

#[cfg(test)]
mod tests;
