//! The systems redstage is measured against, each doing the same business
//! logic as the participants (deduct the stock if there is enough, move the
//! money if the balance covers it, else change nothing):
//!
//! - [`Lua`]: one `EVALSHA`, every key on one Redis. Atomic and as fast as
//!   Redis goes: the floor no distributed protocol can beat. It also runs
//!   `outbox` (the order's hash and event in the same script) and `social`
//!   (the social participant's rules), which the others do not.
//! - [`Watch`]: `WATCH` the keys, `MGET` them, decide in the client, `MULTI`
//!   `SET`s `EXEC`; re-run when `EXEC` answers nil. Correct, on one Redis.
//! - [`Naive`]: staging across the stores as commonly published: read,
//!   write temp keys, set a lock key without checking it, `RENAME` the temp
//!   keys over the data, delete the lock. Fast, and it loses updates.
//! - [`TwoPhase`]: the fewest Redis commands a two-phase commit across the
//!   stores makes for these workloads, written by hand: a reservation of
//!   the stock with a lease in an index (what recovery would go by), the
//!   commit point on `ledger` (a decision record, the payment), then the
//!   reservation turned into the deduction or dropped. It knows nothing but
//!   these keys: no declarations, modes, parts, types, waiting or
//!   re-delivery, so it measures what a protocol that keeps its state in
//!   Redis costs at the least, against which redstage's generality shows.

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::{Script, Value};

use super::{Done, Ending};
use crate::stores::Stores;
use crate::workload::{OUTBOX_KEY, Social, Txn, balance_key, order_key, social_key, stock_key};

/// A WATCH transaction that lost this many races in a row gives up.
pub const WATCH_ATTEMPTS_MAX: u32 = 100;

/// KEYS: [stock], from, to; ARGV: qty (ignored without a stock key), amount.
/// Reply: `ok` or the abort code.
pub const ORDER_LUA: &str = r"
local n = #KEYS
local amount = tonumber(ARGV[2])
if n == 3 then
  local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
  if stock < tonumber(ARGV[1]) then return 'insufficient_stock' end
end
local from = tonumber(redis.call('GET', KEYS[n - 1]) or '0')
if from < amount then return 'insufficient_funds' end
if n == 3 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
redis.call('DECRBY', KEYS[n - 1], amount)
redis.call('INCRBY', KEYS[n], amount)
return 'ok'
";

/// `outbox` on one Redis: the order, its hash and its event in one script.
/// KEYS: stock, from, to, the order's hash, the stream; ARGV: qty, amount,
/// order, customer, sku. Reply: `ok` or the abort code.
pub const OUTBOX_LUA: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  return 'insufficient_stock'
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[2]) then
  return 'insufficient_funds'
end
if redis.call('EXISTS', KEYS[4]) == 1 then return 'duplicate_order' end
redis.call('DECRBY', KEYS[1], ARGV[1])
redis.call('DECRBY', KEYS[2], ARGV[2])
redis.call('INCRBY', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], 'customer', ARGV[4], 'sku', ARGV[5], 'qty', ARGV[1],
  'total', ARGV[2], 'status', 'placed')
redis.call('XADD', KEYS[5], '*', 'type', 'order_placed', 'order', ARGV[3],
  'customer', ARGV[4], 'total', ARGV[2])
return 'ok'
";

/// `social` on one Redis, the participant's rules in one script.
/// KEYS: following:{u}, followers:{t}, user:{u}, user:{t}, inbox:{t},
/// followers:{u}; ARGV: op, u, t. Reply: `ok` or the abort code.
pub const SOCIAL_LUA: &str = r"
local op, u, t = ARGV[1], ARGV[2], ARGV[3]
if op == 'follow' then
  if redis.call('SADD', KEYS[1], t) == 0 then return 'already_following' end
  redis.call('SADD', KEYS[2], u)
  redis.call('HINCRBY', KEYS[3], 'following', 1)
  redis.call('HINCRBY', KEYS[4], 'followers', 1)
elseif op == 'unfollow' then
  if redis.call('SREM', KEYS[1], t) == 0 then return 'not_following' end
  redis.call('SREM', KEYS[2], u)
  redis.call('HINCRBY', KEYS[3], 'following', -1)
  redis.call('HINCRBY', KEYS[4], 'followers', -1)
else
  if redis.call('SISMEMBER', KEYS[6], t) == 0 then return 'not_a_follower' end
  redis.call('XADD', KEYS[5], '*', 'from', u, 'text', 'hi')
  redis.call('HINCRBY', KEYS[4], 'unread', 1)
  redis.call('HINCRBY', KEYS[3], 'sent', 1)
end
return 'ok'
";

/// [`TwoPhase`]'s first phase on `orders`: reserves `qty` of the stock if
/// what is left after every reservation in flight covers it, and indexes
/// the transaction with a lease by the server's clock.
/// KEYS: stock, its reservations (a hash: `sum`, and one field per
/// transaction), the index; ARGV: txn, qty, lease_ms. Reply: `ok` or
/// `insufficient_stock`.
pub const TWO_PHASE_RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local qty = tonumber(ARGV[2])
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = tonumber(redis.call('HGET', KEYS[2], 'sum') or '0')
if stock - held < qty then return 'insufficient_stock' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'sum', ARGV[2])
redis.call('ZADD', KEYS[3], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
return 'ok'
";

/// [`TwoPhase`]'s commit point on `ledger`: the decision record (unless one
/// stands: a recovery's fence) and the payment, if the balance covers it.
/// KEYS: from, to, the record; ARGV: amount, the record's TTL in ms. Reply:
/// `ok`, `insufficient_funds` or `decided`.
pub const TWO_PHASE_COMMIT: &str = r"
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  return 'insufficient_funds'
end
if not redis.call('SET', KEYS[3], 'committed', 'NX', 'PX', ARGV[2]) then return 'decided' end
redis.call('DECRBY', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[1])
return 'ok'
";

/// [`TwoPhase`]'s second phase on `orders`: the reservation becomes the
/// deduction (`commit` is `1`) or goes, and the index entry with it; a
/// second delivery finds no reservation and does nothing.
/// KEYS: stock, its reservations, the index; ARGV: txn, commit. Reply: 1,
/// or 0 if there was no reservation.
pub const TWO_PHASE_APPLY: &str = r"
local qty = redis.call('HGET', KEYS[2], ARGV[1])
if not qty then return 0 end
if ARGV[2] == '1' then redis.call('DECRBY', KEYS[1], qty) end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'sum', '-' .. qty)
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

/// [`TwoPhase`]'s lease and its records' lifetime (a record outlives any
/// apply by far; recovery is not run in the benchmark).
const TWO_PHASE_LEASE_MS: u64 = 30_000;
const TWO_PHASE_RECORD_TTL_MS: u64 = 600_000;

/// The Redis keys `txn` touches: (stock if any, from, to).
fn keys(txn: &Txn) -> (Option<String>, String, String) {
    (
        txn.item.as_ref().map(|(sku, _)| stock_key(sku)),
        balance_key(&txn.from),
        balance_key(&txn.to),
    )
}

fn parse(value: Option<String>) -> anyhow::Result<i64> {
    value.map_or(Ok(0), |v| v.parse().context("a value that is not a number"))
}

/// One EVALSHA on `orders`, over a connection every client shares.
#[derive(Debug, Clone)]
pub struct Lua {
    conn: MultiplexedConnection,
    /// The order (and payment), the outbox order, the social operation.
    scripts: std::sync::Arc<[Script; 3]>,
}

impl Lua {
    pub fn new(stores: &Stores) -> Lua {
        Lua {
            conn: stores.conn(0),
            scripts: std::sync::Arc::new([ORDER_LUA, OUTBOX_LUA, SOCIAL_LUA].map(Script::new)),
        }
    }

    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        let (stock, from, to) = keys(txn);
        let invocation = match (&txn.social, &txn.order, &txn.item) {
            (Some(social), _, _) => {
                let (op, u, t) = match social {
                    Social::Follow { user, target } => ("follow", user, target),
                    Social::Unfollow { user, target } => ("unfollow", user, target),
                    Social::Message { from, to } => ("message", from, to),
                };
                let mut invocation = self.scripts[2].prepare_invoke();
                invocation
                    .key(social_key("following", u))
                    .key(social_key("followers", t))
                    .key(social_key("user", u))
                    .key(social_key("user", t))
                    .key(social_key("inbox", t))
                    .key(social_key("followers", u))
                    .arg(op)
                    .arg(u)
                    .arg(t);
                invocation
            }
            (None, Some(order), Some((sku, qty))) => {
                let mut invocation = self.scripts[1].prepare_invoke();
                invocation
                    .key(stock_key(sku))
                    .key(&from)
                    .key(&to)
                    .key(order_key(order))
                    .key(OUTBOX_KEY)
                    .arg(qty)
                    .arg(txn.amount)
                    .arg(order)
                    .arg(&txn.from)
                    .arg(sku);
                invocation
            }
            _ => {
                let mut invocation = self.scripts[0].prepare_invoke();
                if let Some(stock) = &stock {
                    invocation.key(stock);
                }
                invocation
                    .key(&from)
                    .key(&to)
                    .arg(txn.item.as_ref().map_or(0, |(_, qty)| *qty))
                    .arg(txn.amount);
                invocation
            }
        };
        let reply: String = invocation.invoke_async(&mut self.conn).await?;
        Ok(Done::first_try(match reply.as_str() {
            "ok" => Ending::Committed,
            _ => Ending::Aborted,
        }))
    }
}

/// WATCH/MULTI/EXEC on `orders`.
#[derive(Debug)]
pub struct Watch {
    /// Where each client opens its own connection.
    url: String,
}

/// One client's own connection: WATCH state belongs to a connection.
#[derive(Debug)]
pub struct WatchWorker {
    conn: MultiplexedConnection,
}

impl Watch {
    pub fn new(stores: &Stores) -> Watch {
        Watch {
            url: stores.urls()[0].clone(),
        }
    }

    pub async fn worker(&self) -> anyhow::Result<WatchWorker> {
        let client = redis::Client::open(self.url.as_str())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(crate::stores::RESPONSE_TIMEOUT));
        Ok(WatchWorker {
            conn: client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        })
    }
}

impl WatchWorker {
    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        let (stock, from, to) = keys(txn);
        let watched: Vec<&String> = stock.iter().chain([&from, &to]).collect();
        for attempt in 0..WATCH_ATTEMPTS_MAX {
            redis::cmd("WATCH")
                .arg(&watched)
                .exec_async(&mut self.conn)
                .await?;
            let mut values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&watched)
                .query_async(&mut self.conn)
                .await?;
            let to_value = parse(values.pop().flatten())?;
            let from_value = parse(values.pop().flatten())?;
            let stock_value = parse(values.pop().flatten())?;
            let (new_stock, new_from, new_to) = match txn.apply(stock_value, from_value, to_value) {
                Ok(new) => new,
                Err(_) => {
                    redis::cmd("UNWATCH").exec_async(&mut self.conn).await?;
                    return Ok(Done {
                        ending: Ending::Aborted,
                        retries: attempt,
                    });
                }
            };
            let mut pipe = redis::pipe();
            pipe.atomic();
            if let Some(stock) = &stock {
                pipe.set(stock, new_stock);
            }
            pipe.set(&from, new_from).set(&to, new_to);
            let reply: Option<Vec<Value>> = pipe.query_async(&mut self.conn).await?;
            if reply.is_some() {
                return Ok(Done {
                    ending: Ending::Committed,
                    retries: attempt,
                });
            }
        }
        Ok(Done {
            ending: Ending::Conflict,
            retries: WATCH_ATTEMPTS_MAX - 1,
        })
    }
}

/// Naive staging across `orders` and `ledger`.
#[derive(Debug)]
pub struct Naive {
    conns: [MultiplexedConnection; 2],
}

/// One client: its number names its temp keys.
#[derive(Debug)]
pub struct NaiveWorker {
    conns: [MultiplexedConnection; 2],
    client: usize,
    seq: u64,
}

impl Naive {
    pub fn new(stores: &Stores) -> Naive {
        Naive {
            conns: [stores.conn(0), stores.conn(1)],
        }
    }

    pub fn worker(&self, client: usize) -> NaiveWorker {
        NaiveWorker {
            conns: self.conns.clone(),
            client,
            seq: 0,
        }
    }
}

impl NaiveWorker {
    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        self.seq += 1;
        let id = format!("{}-{}", self.client, self.seq);
        let (stock, from, to) = keys(txn);
        let [orders, ledger] = &mut self.conns;

        // Read, on both stores at once.
        let read_stock = async {
            match &stock {
                Some(key) => redis::cmd("GET").arg(key).query_async(orders).await,
                None => Ok(None),
            }
        };
        let mut mget = redis::cmd("MGET");
        mget.arg(&from).arg(&to);
        let read_balances = mget.query_async(ledger);
        let (stock_value, balances): (Option<String>, Vec<Option<String>>) =
            tokio::try_join!(read_stock, read_balances)?;
        let [from_value, to_value]: [Option<String>; 2] = balances
            .try_into()
            .map_err(|_| anyhow::anyhow!("MGET of two keys answered otherwise"))?;
        let Ok((new_stock, new_from, new_to)) =
            txn.apply(parse(stock_value)?, parse(from_value)?, parse(to_value)?)
        else {
            return Ok(Done::first_try(Ending::Aborted));
        };

        // Stage: a temp key per write and a lock key, set without checking.
        let tmp = |key: &str| format!("naive:tmp:{id}:{key}");
        let lock = |key: &str| format!("naive:lock:{key}");
        let mut stage = [redis::pipe(), redis::pipe()];
        let mut apply = [redis::pipe(), redis::pipe()];
        let writes = stock
            .iter()
            .map(|k| (0, k, new_stock))
            .chain([(1, &from, new_from), (1, &to, new_to)]);
        for (store, key, value) in writes {
            stage[store]
                .set(tmp(key), value)
                .ignore()
                .set(lock(key), &id)
                .ignore();
            apply[store]
                .rename(tmp(key), key)
                .ignore()
                .del(lock(key))
                .ignore();
        }
        on_both(&mut self.conns, &stage).await?;
        // Commit: rename the temp keys over the data, drop the locks.
        on_both(&mut self.conns, &apply).await?;
        Ok(Done::first_try(Ending::Committed))
    }
}

/// Sends each store its pipeline, both at once.
async fn on_both(
    conns: &mut [MultiplexedConnection; 2],
    pipes: &[redis::Pipeline; 2],
) -> redis::RedisResult<()> {
    let [orders, ledger] = conns;
    tokio::try_join!(send(&pipes[0], orders), send(&pipes[1], ledger))?;
    Ok(())
}

/// An empty pipeline (a transfer has nothing for `orders`) is not sent.
async fn send(pipe: &redis::Pipeline, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
    match pipe.is_empty() {
        true => Ok(()),
        false => pipe.exec_async(conn).await,
    }
}

/// The hand-written two-phase commit across `orders` and `ledger`.
#[derive(Debug)]
pub struct TwoPhase {
    conns: [MultiplexedConnection; 2],
    /// Reserve, commit, apply.
    scripts: std::sync::Arc<[Script; 3]>,
}

/// One client: its number names its transactions.
#[derive(Debug)]
pub struct TwoPhaseWorker {
    conns: [MultiplexedConnection; 2],
    scripts: std::sync::Arc<[Script; 3]>,
    client: usize,
    seq: u64,
}

/// The index of [`TwoPhase`]'s reservations on `orders`.
const TWO_PHASE_INDEX: &str = "twophase:index";

impl TwoPhase {
    pub fn new(stores: &Stores) -> TwoPhase {
        TwoPhase::over([stores.conn(0), stores.conn(1)])
    }

    /// Over connections to `orders` and `ledger` (in that order).
    pub fn over(conns: [MultiplexedConnection; 2]) -> TwoPhase {
        TwoPhase {
            conns,
            scripts: std::sync::Arc::new(
                [TWO_PHASE_RESERVE, TWO_PHASE_COMMIT, TWO_PHASE_APPLY].map(Script::new),
            ),
        }
    }

    pub fn worker(&self, client: usize) -> TwoPhaseWorker {
        TwoPhaseWorker {
            conns: self.conns.clone(),
            scripts: self.scripts.clone(),
            client,
            seq: 0,
        }
    }
}

impl TwoPhaseWorker {
    pub async fn run(&mut self, txn: &Txn) -> anyhow::Result<Done> {
        self.seq += 1;
        let id = format!("{}-{}", self.client, self.seq);
        let (stock, from, to) = keys(txn);
        let [orders, ledger] = &mut self.conns;
        let [reserve, commit, apply] = &*self.scripts;
        let stock = stock.zip(txn.item.as_ref().map(|(_, qty)| *qty));
        let reservations = |stock: &str| format!("twophase:res:{stock}");
        if let Some((key, qty)) = &stock {
            let reply: String = reserve
                .key(key)
                .key(reservations(key))
                .key(TWO_PHASE_INDEX)
                .arg(&id)
                .arg(qty)
                .arg(TWO_PHASE_LEASE_MS)
                .invoke_async(orders)
                .await?;
            if reply != "ok" {
                return Ok(Done::first_try(Ending::Aborted));
            }
        }
        let reply: String = commit
            .key(&from)
            .key(&to)
            .key(format!("twophase:txn:{id}"))
            .arg(txn.amount)
            .arg(TWO_PHASE_RECORD_TTL_MS)
            .invoke_async(ledger)
            .await?;
        let committed = reply == "ok";
        if let Some((key, _)) = &stock {
            let _: i64 = apply
                .key(key)
                .key(reservations(key))
                .key(TWO_PHASE_INDEX)
                .arg(&id)
                .arg(if committed { "1" } else { "" })
                .invoke_async(orders)
                .await?;
        }
        Ok(Done::first_try(match committed {
            true => Ending::Committed,
            false => Ending::Aborted,
        }))
    }
}
