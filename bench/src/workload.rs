//! Workloads, the key space every system shares, and the audit that tells
//! what a system lost.
//!
//! ```text
//!  Redis key                    seeded      touched by
//!  ---------------------------  ----------  --------------------------------
//!  inventory:stock:sku<i>       1 000 000   order, hot: deduct 1..=3
//!  payments:balance:c<i>        1 000 000   every workload pays from here
//!  payments:balance:m<i>        0           order: paid 1..=10 (as many
//!                                           merchants as customers)
//!  payments:balance:shop        0           hot, flash: every order pays it
//! ```
//!
//! `flash` is a flash sale: every order takes 1 to 3 of the same SKU,
//! `sku0`, and pays the same merchant, `shop`: two hot keys, on two stores.
//!
//! `shop` has a key space of its own, a real shop's: 100 customers paying
//! 10 merchants, over the same SKUs, so that every merchant's balance is
//! shared by a tenth of all orders.
//!
//! `outbox` is `order` with a third step, the `orders` participant's
//! `place`: the order's hash `orders:order:{O}` and its event in the stream
//! `orders:events`, which must hold exactly one entry per committed order.
//!
//! `social` is the `social` participant's network among the customers
//! (`u<i>`): follows, unfollows and messages, the users drawn so that a few
//! are popular (the cube of a uniform draw: a tenth of the users take
//! nearly half the picks). Its audit checks the graph whole: `following`
//! and `followers` mirror each other, each user's counters equal the sizes
//! of the sets and the inbox they count, and every message sent was
//! received once.
//!
//! These are the keys the redstage participants use (`inventory:` and
//! `payments:` prefixes, `stock:<sku>` and `balance:<account>` relative
//! keys), and every other system uses the same names, so each one starts
//! from the same state and is audited the same way.

use std::fmt;

use serde::Serialize;

/// Stock of every SKU at the start of a cell: enough that no run empties it.
pub const STOCK_SEED: i64 = 1_000_000;
/// Balance of every customer at the start of a cell.
pub const BALANCE_SEED: i64 = 1_000_000;
/// Largest quantity one order takes.
const QTY_MAX: i64 = 3;
/// Largest amount one payment moves.
const AMOUNT_MAX: i64 = 10;
/// The `shop` workload's customers and merchants.
const SHOP_CUSTOMERS: usize = 100;
const SHOP_MERCHANTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Inventory deduct on `orders` + payment from a customer to a merchant
    /// on `ledger`.
    Order,
    /// One payment between two customers: one participant, one store.
    Transfer,
    /// Orders that all pay the same account, `shop`: one hot key.
    Hot,
    /// Orders from 100 customers to 10 merchants: a real shop's contention.
    Shop,
    /// Orders that all take the same SKU and pay the same account.
    Flash,
    /// `order`, recorded and announced in an outbox stream by a third step.
    Outbox,
    /// Follows, unfollows and messages among users, a few of them popular.
    Social,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Order => "order",
            Workload::Transfer => "transfer",
            Workload::Hot => "hot",
            Workload::Shop => "shop",
            Workload::Flash => "flash",
            Workload::Outbox => "outbox",
            Workload::Social => "social",
        }
    }

    /// The key space of this workload, given the SKUs and accounts asked
    /// for (which `shop` keeps to its own 100 customers and 10 merchants).
    pub fn space(self, skus: usize, accounts: usize) -> KeySpace {
        match self {
            Workload::Shop => KeySpace {
                skus: skus.max(1),
                customers: SHOP_CUSTOMERS,
                merchants: SHOP_MERCHANTS,
            },
            _ => KeySpace::new(skus, accounts),
        }
    }

    pub fn has_stock(self) -> bool {
        !matches!(self, Workload::Transfer | Workload::Social)
    }

    /// Whether it moves money: every workload but `social`.
    pub fn has_money(self) -> bool {
        self != Workload::Social
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many SKUs and accounts there are.
#[derive(Debug, Clone, Copy)]
pub struct KeySpace {
    pub skus: usize,
    pub customers: usize,
    pub merchants: usize,
}

impl KeySpace {
    pub fn new(skus: usize, customers: usize) -> KeySpace {
        KeySpace {
            skus: skus.max(1),
            customers: customers.max(2),
            merchants: customers.max(2),
        }
    }

    /// Every account with the balance it starts with.
    pub fn accounts(&self) -> Vec<(String, i64)> {
        let customers = (0..self.customers).map(|i| (format!("c{i}"), BALANCE_SEED));
        let merchants = (0..self.merchants).map(|i| (format!("m{i}"), 0));
        customers
            .chain(merchants)
            .chain([("shop".to_owned(), 0)])
            .collect()
    }

    pub fn sku_names(&self) -> Vec<String> {
        (0..self.skus).map(|i| format!("sku{i}")).collect()
    }

    pub fn money(&self) -> i64 {
        self.customers as i64 * BALANCE_SEED
    }

    pub fn stock(&self) -> i64 {
        self.skus as i64 * STOCK_SEED
    }
}

/// The Redis key of a SKU's stock.
pub fn stock_key(sku: &str) -> String {
    format!("inventory:stock:{sku}")
}

/// The Redis key of an account's balance.
pub fn balance_key(account: &str) -> String {
    format!("payments:balance:{account}")
}

/// One transaction to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// The SKU and quantity to deduct; none for a plain transfer.
    pub item: Option<(String, i64)>,
    pub from: String,
    pub to: String,
    pub amount: i64,
    /// `outbox`: the order's id, recorded and announced by a third step.
    pub order: Option<String>,
    /// `social`: the operation, run instead of an order or a payment.
    pub social: Option<Social>,
}

/// A `social` operation between two users (never the same one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Social {
    Follow { user: String, target: String },
    Unfollow { user: String, target: String },
    Message { from: String, to: String },
}

/// The Redis key of one of a user's `social` keys: `following`,
/// `followers` (sets), `user` (the counters' hash), `inbox` (a stream).
pub fn social_key(what: &str, user: &str) -> String {
    format!("social:{what}:{{{user}}}")
}

/// The `outbox` stream.
pub const OUTBOX_KEY: &str = "orders:events";

/// The Redis key of an `outbox` order's hash.
pub fn order_key(order: &str) -> String {
    format!("orders:order:{{{order}}}")
}

/// The users of `social`.
pub fn users(space: &KeySpace) -> Vec<String> {
    (0..space.customers).map(|i| format!("u{i}")).collect()
}

impl Txn {
    /// Applies the business logic to the values read (`stock` is ignored
    /// by a plain transfer): the new (stock, from, to), or the abort code.
    pub fn apply(&self, stock: i64, from: i64, to: i64) -> Result<(i64, i64, i64), &'static str> {
        let stock = match &self.item {
            Some((_, qty)) if stock < *qty => return Err("insufficient_stock"),
            Some((_, qty)) => stock - qty,
            None => stock,
        };
        if from < self.amount {
            return Err("insufficient_funds");
        }
        Ok((stock, from - self.amount, to + self.amount))
    }
}

/// Draws the transactions of one client: the same sequence for every
/// system, given the same workload, concurrency and client.
#[derive(Debug)]
pub struct Generator {
    rng: fastrand::Rng,
    workload: Workload,
    space: KeySpace,
    /// The client, and how many transactions it drew: an outbox order's id.
    client: usize,
    drawn: u64,
}

impl Generator {
    pub fn new(workload: Workload, space: KeySpace, concurrency: usize, client: usize) -> Self {
        let seed = (workload as u64) << 48 ^ (concurrency as u64) << 24 ^ client as u64;
        Generator {
            rng: fastrand::Rng::with_seed(seed),
            workload,
            space,
            client,
            drawn: 0,
        }
    }

    /// A user, a few of them drawn far more often than the rest.
    fn popular_user(&mut self) -> usize {
        let u = self.rng.f64();
        ((u * u * u * self.space.customers as f64) as usize).min(self.space.customers - 1)
    }

    fn social(&mut self) -> Social {
        let user = self.popular_user();
        let mut target = self.popular_user();
        while target == user {
            target = self.popular_user();
        }
        let (user, target) = (format!("u{user}"), format!("u{target}"));
        match self.rng.u8(..10) {
            0..4 => Social::Follow { user, target },
            4..7 => Social::Unfollow { user, target },
            _ => Social::Message {
                from: user,
                to: target,
            },
        }
    }

    pub fn next_txn(&mut self) -> Txn {
        self.drawn += 1;
        if self.workload == Workload::Social {
            return Txn {
                item: None,
                from: String::new(),
                to: String::new(),
                amount: 0,
                order: None,
                social: Some(self.social()),
            };
        }
        let from = self.rng.usize(..self.space.customers);
        let amount = self.rng.i64(1..=AMOUNT_MAX);
        match self.workload {
            Workload::Transfer => {
                // Any other customer.
                let to =
                    (from + 1 + self.rng.usize(..self.space.customers - 1)) % self.space.customers;
                Txn {
                    item: None,
                    from: format!("c{from}"),
                    to: format!("c{to}"),
                    amount,
                    order: None,
                    social: None,
                }
            }
            Workload::Social => unreachable!("drawn above"),
            Workload::Order
            | Workload::Hot
            | Workload::Shop
            | Workload::Flash
            | Workload::Outbox => {
                let sku = match self.workload {
                    Workload::Flash => "sku0".to_owned(),
                    _ => format!("sku{}", self.rng.usize(..self.space.skus)),
                };
                let to = match self.workload {
                    Workload::Hot | Workload::Flash => "shop".to_owned(),
                    _ => format!("m{}", self.rng.usize(..self.space.merchants)),
                };
                Txn {
                    item: Some((sku, self.rng.i64(1..=QTY_MAX))),
                    from: format!("c{from}"),
                    to,
                    amount,
                    order: (self.workload == Workload::Outbox)
                        .then(|| format!("c{}-{}", self.client, self.drawn)),
                    social: None,
                }
            }
        }
    }
}

/// Which store (0 = `orders`, 1 = `ledger`) holds which keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub inventory: usize,
    pub payments: usize,
}

/// What the clients were told committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub committed: u64,
    /// Units of stock the committed orders took.
    pub qty: i64,
    /// Money the committed orders paid to merchants or the shop.
    pub paid: i64,
}

impl Tally {
    pub fn add(&mut self, txn: &Txn) {
        self.committed += 1;
        if let Some((_, qty)) = &txn.item {
            self.qty += qty;
            self.paid += txn.amount;
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.committed += other.committed;
        self.qty += other.qty;
        self.paid += other.paid;
    }
}

/// The stock and balances found after a cell.
#[derive(Debug, Clone, Default)]
pub struct Levels {
    pub stock: Vec<i64>,
    /// Per account, in [`KeySpace::accounts`] order.
    pub balances: Vec<(String, i64)>,
    /// `social`: what breaks the graph's rules (see [`graph_faults`]).
    pub graph: usize,
    /// `outbox`: entries in the stream, and the distinct orders they name.
    pub events: (usize, usize),
}

/// One user's `social` keys, as read back.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub following: std::collections::BTreeSet<String>,
    pub followers: std::collections::BTreeSet<String>,
    /// The counters `following`, `followers`, `sent`, `unread` (0 when
    /// missing).
    pub counters: [i64; 4],
    pub inbox: usize,
}

/// How many of the `social` rules `profiles` (by user) break: a follow
/// without its mirror (either way), a counter unequal to the set or inbox
/// it counts, and one per message sent but never received (or received
/// twice).
pub fn graph_faults(profiles: &std::collections::BTreeMap<String, Profile>) -> usize {
    let mut faults = 0;
    let (mut sent, mut unread) = (0, 0);
    let none = Profile::default();
    for (user, p) in profiles {
        let [following, followers, s, u] = p.counters;
        faults += usize::from(following != p.following.len() as i64);
        faults += usize::from(followers != p.followers.len() as i64);
        faults += usize::from(u != p.inbox as i64);
        faults += p
            .following
            .iter()
            .filter(|t| !profiles.get(*t).unwrap_or(&none).followers.contains(user))
            .count();
        faults += p
            .followers
            .iter()
            .filter(|f| !profiles.get(*f).unwrap_or(&none).following.contains(user))
            .count();
        sent += s;
        unread += u;
    }
    faults + (sent - unread).unsigned_abs() as usize
}

/// What a system lost in one cell, compared with what it acknowledged.
/// Every field is 0 for a correct system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Money after minus money before: created (+) or destroyed (-).
    pub money: i64,
    /// Stock taken minus stock the committed orders took: more (+) means
    /// stock left without an acknowledged order, less (-) means committed
    /// orders whose deduction was lost (overselling).
    pub stock: i64,
    /// Money received by merchants and the shop minus what committed orders
    /// paid.
    pub paid: i64,
    /// Stock levels or balances below zero.
    pub negative: usize,
    /// Locks or temporary keys left behind.
    pub leftovers: usize,
    /// `social`: broken rules of the graph (see [`graph_faults`]).
    pub graph: usize,
    /// `outbox`: events minus committed orders, plus events naming an
    /// order already announced: more (+) means an event of an order that
    /// did not commit (or twice), less (-) a committed order never announced.
    pub events: i64,
}

impl Audit {
    pub fn new(
        workload: Workload,
        space: &KeySpace,
        levels: &Levels,
        tally: &Tally,
        leftovers: usize,
    ) -> Audit {
        let money: i64 = levels.balances.iter().map(|(_, b)| b).sum();
        let received: i64 = levels
            .balances
            .iter()
            .filter(|(a, _)| !a.starts_with('c'))
            .map(|(_, b)| b)
            .sum();
        let negative = levels.stock.iter().filter(|s| **s < 0).count()
            + levels.balances.iter().filter(|(_, b)| *b < 0).count();
        let (stock, paid) = match workload.has_stock() {
            true => {
                let taken = space.stock() - levels.stock.iter().sum::<i64>();
                (taken - tally.qty, received - tally.paid)
            }
            false => (0, received),
        };
        let (events, distinct) = levels.events;
        let events = match workload {
            Workload::Outbox => {
                distinct as i64 - tally.committed as i64 + (events - distinct) as i64
            }
            _ => 0,
        };
        match workload.has_money() {
            true => Audit {
                money: money - space.money(),
                stock,
                paid,
                negative,
                leftovers,
                graph: 0,
                events,
            },
            false => Audit {
                leftovers,
                graph: levels.graph,
                ..Audit::default()
            },
        }
    }

    pub fn lost(&self) -> bool {
        *self != Audit::default()
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.lost() {
            return f.write_str("nothing");
        }
        let mut parts = Vec::new();
        if self.money != 0 {
            parts.push(format!("money {:+}", self.money));
        }
        if self.stock != 0 {
            parts.push(format!("stock {:+}", self.stock));
        }
        if self.paid != 0 {
            parts.push(format!("paid {:+}", self.paid));
        }
        if self.negative != 0 {
            parts.push(format!("{} negative", self.negative));
        }
        if self.leftovers != 0 {
            parts.push(format!("{} leftover keys", self.leftovers));
        }
        if self.graph != 0 {
            parts.push(format!("{} broken follows or counters", self.graph));
        }
        if self.events != 0 {
            parts.push(format!("events {:+}", self.events));
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_client_draws_the_same_transactions() {
        let space = KeySpace::new(10, 10);
        let draw = || {
            let mut g = Generator::new(Workload::Order, space, 4, 2);
            (0..50).map(|_| g.next_txn()).collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn transfers_never_pay_the_payer() {
        let mut g = Generator::new(Workload::Transfer, KeySpace::new(1, 2), 1, 0);
        for _ in 0..100 {
            let txn = g.next_txn();
            assert_ne!(txn.from, txn.to);
            assert!(txn.item.is_none());
        }
    }

    #[test]
    fn social_picks_two_users_and_favours_a_few() {
        let mut g = Generator::new(Workload::Social, KeySpace::new(1, 100), 1, 0);
        let mut picks = [0usize; 100];
        for _ in 0..2000 {
            let txn = g.next_txn();
            let (a, b) = match txn.social.expect("a social operation") {
                Social::Follow { user, target } | Social::Unfollow { user, target } => {
                    (user, target)
                }
                Social::Message { from, to } => (from, to),
            };
            assert_ne!(a, b);
            for u in [a, b] {
                picks[u[1..].parse::<usize>().expect("u<i>")] += 1;
            }
        }
        // A tenth of the users draw nearly half the picks.
        let top: usize = picks[..10].iter().sum();
        assert!(top > 4000 * 4 / 10, "{top} of 4000");
    }

    #[test]
    fn outbox_orders_have_ids_of_their_own() {
        let mut g = Generator::new(Workload::Outbox, KeySpace::new(5, 5), 2, 1);
        let ids: std::collections::BTreeSet<String> = (0..50)
            .map(|_| g.next_txn().order.expect("an id"))
            .collect();
        assert_eq!(ids.len(), 50);
    }

    #[test]
    fn the_graph_audit_finds_a_half_follow_and_a_wrong_counter() {
        let set = |m: &[&str]| m.iter().map(|s| s.to_string()).collect();
        let mut profiles = std::collections::BTreeMap::new();
        profiles.insert(
            "a".to_owned(),
            Profile {
                following: set(&["b"]),
                counters: [1, 0, 1, 0],
                ..Profile::default()
            },
        );
        profiles.insert(
            "b".to_owned(),
            Profile {
                followers: set(&["a"]),
                counters: [0, 1, 0, 1],
                inbox: 1,
                ..Profile::default()
            },
        );
        assert_eq!(graph_faults(&profiles), 0);
        // b lost its follower: a's follow has no mirror, b's counter is off.
        profiles.get_mut("b").unwrap().followers.clear();
        assert_eq!(graph_faults(&profiles), 2);
        // And a message counted as sent but never received.
        profiles.get_mut("b").unwrap().followers = set(&["a"]);
        profiles.get_mut("a").unwrap().counters[2] = 2;
        assert_eq!(graph_faults(&profiles), 1);
    }

    #[test]
    fn hot_orders_all_pay_the_shop() {
        let mut g = Generator::new(Workload::Hot, KeySpace::new(5, 5), 1, 0);
        assert!((0..20).all(|_| g.next_txn().to == "shop"));
    }

    #[test]
    fn business_logic_aborts_without_changes() {
        let txn = Txn {
            item: Some(("sku1".into(), 2)),
            from: "c0".into(),
            to: "m0".into(),
            amount: 5,
            order: None,
            social: None,
        };
        assert_eq!(txn.apply(1, 10, 0), Err("insufficient_stock"));
        assert_eq!(txn.apply(2, 4, 0), Err("insufficient_funds"));
        assert_eq!(txn.apply(2, 5, 1), Ok((0, 0, 6)));
    }

    #[test]
    fn the_audit_finds_lost_updates() {
        let space = KeySpace::new(1, 2);
        let mut tally = Tally::default();
        let txn = Txn {
            item: Some(("sku0".into(), 1)),
            from: "c0".into(),
            to: "m0".into(),
            amount: 10,
            order: None,
            social: None,
        };
        tally.add(&txn);
        tally.add(&txn);
        // Two orders acknowledged, one applied: a lost update.
        let levels = Levels {
            stock: vec![STOCK_SEED - 1],
            balances: vec![
                ("c0".into(), BALANCE_SEED - 10),
                ("c1".into(), BALANCE_SEED),
                ("m0".into(), 10),
                ("shop".into(), 0),
            ],
            ..Levels::default()
        };
        let audit = Audit::new(Workload::Order, &space, &levels, &tally, 0);
        assert_eq!((audit.money, audit.stock, audit.paid), (0, -1, -10));
        assert_eq!(audit.to_string(), "stock -1, paid -10");
        let clean = Audit::new(Workload::Order, &space, &levels, &Tally::default(), 0);
        assert!(clean.lost(), "nothing acknowledged, yet stock was taken");
    }
}
