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
