//! The two Redis stores every system runs on: started here or given, then
//! flushed, seeded, measured and read back around every cell.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use redstage::embedded::{Persistence, RedisServer};

use crate::workload::{KeySpace, Levels, Placement, balance_key, stock_key};

/// Bounds one Redis reply in the bench's own connections: generous, since a
/// loaded 2-core machine can stall a reply far beyond the usual 500 ms.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Keys written by one `MSET` while seeding.
const SEED_CHUNK: usize = 500;

/// `orders` (index 0) and `ledger` (index 1).
#[derive(Debug)]
pub struct Stores {
    urls: Vec<String>,
    /// One connection per store, shared by the systems that multiplex.
    conns: Vec<MultiplexedConnection>,
    /// Servers started here; dropping them stops them.
    _servers: Vec<RedisServer>,
}

/// What the stores did between two readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Calls per command (`INFO commandstats`), every store together,
    /// commands run inside scripts included.
    pub calls: BTreeMap<String, u64>,
    /// CPU seconds of the redis-server processes (`INFO cpu`).
    pub cpu_s: f64,
    /// Bytes of redstage's own keys (`rs:*`: records, locks, indexes) the
    /// servers hold, by `MEMORY USAGE`, every store together (filled by
    /// [`Stores::kept_bytes`], not by [`Stores::stats`]).
    pub memory_bytes: i64,
}

impl Stats {
    /// `self` minus an earlier reading.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let calls = self
            .calls
            .iter()
            .map(|(c, n)| (c.clone(), n - earlier.calls.get(c).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Stats {
            calls,
            cpu_s: self.cpu_s - earlier.cpu_s,
            memory_bytes: self.memory_bytes - earlier.memory_bytes,
        }
    }
}

impl Stores {
    /// Connects to `urls` (two of them), or starts two local servers with
    /// `persistence`.
    pub async fn open(
        urls: &[String],
        persistence: crate::options::Persistence,
    ) -> anyhow::Result<Stores> {
        let mut servers = Vec::new();
        let persistence = match persistence {
            crate::options::Persistence::None => Persistence::None,
            crate::options::Persistence::Aof => Persistence::AofAlways,
        };
        let urls = match urls.len() {
            0 => {
                for _ in 0..2 {
                    servers.push(RedisServer::start(persistence)?);
                }
                servers.iter().map(RedisServer::url).collect()
            }
            2 => urls.to_vec(),
            n => bail!("--stores takes two URLs, `orders,ledger`; got {n}"),
        };
        let mut conns = Vec::new();
        for url in &urls {
            conns.push(connect(url).await?);
        }
        Ok(Stores {
            urls,
            conns,
            _servers: servers,
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The shared connection to store `index`.
    pub fn conn(&self, index: usize) -> MultiplexedConnection {
        self.conns[index].clone()
    }

    /// A connection of its own to store `index` (for WATCH, whose state is
    /// per connection).
    pub async fn dedicated(&self, index: usize) -> anyhow::Result<MultiplexedConnection> {
        connect(&self.urls[index]).await
    }

    /// Each distinct server once (both URLs may name the same server).
    fn distinct(&self) -> impl Iterator<Item = MultiplexedConnection> + '_ {
        self.urls
            .iter()
            .enumerate()
            .filter(|(i, url)| !self.urls[..*i].contains(url))
            .map(|(i, _)| self.conn(i))
    }

    /// Deletes every key on every store.
    pub async fn reset(&self) -> anyhow::Result<()> {
        for mut conn in self.distinct() {
            redis::cmd("FLUSHALL")
                .arg("SYNC")
                .exec_async(&mut conn)
                .await
                .context("FLUSHALL")?;
        }
        Ok(())
    }

    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        for mut conn in self.distinct() {
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec_async(&mut conn)
                .await
                .context("CONFIG RESETSTAT")?;
        }
        Ok(())
    }

    /// The same stock and balances for every system, where `placement`
    /// puts them.
    pub async fn seed(&self, space: &KeySpace, placement: Placement) -> anyhow::Result<()> {
        let stock: Vec<(String, String)> = space
            .sku_names()
            .iter()
            .map(|s| (stock_key(s), crate::workload::STOCK_SEED.to_string()))
            .collect();
        let balances: Vec<(String, String)> = space
            .accounts()
            .iter()
            .map(|(a, b)| (balance_key(a), b.to_string()))
            .collect();
        for (index, pairs) in [(placement.inventory, stock), (placement.payments, balances)] {
            let mut conn = self.conn(index);
            for chunk in pairs.chunks(SEED_CHUNK) {
                redis::cmd("MSET")
                    .arg(chunk)
                    .exec_async(&mut conn)
                    .await
                    .context("seeding")?;
            }
        }
        Ok(())
    }

    /// Command calls and CPU time so far, every store together.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        let mut stats = Stats::default();
        for mut conn in self.distinct() {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .arg("cpu")
                .query_async(&mut conn)
                .await
                .context("INFO")?;
            for line in info.lines() {
                if let Some((name, rest)) = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                {
                    let calls = rest
                        .split(',')
                        .find_map(|f| f.strip_prefix("calls="))
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    *stats.calls.entry(name.to_owned()).or_default() += calls;
                }
                for field in ["used_cpu_sys:", "used_cpu_user:"] {
                    if let Some(s) = line.strip_prefix(field) {
                        stats.cpu_s += s.trim().parse::<f64>().unwrap_or(0.0);
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Stock of every SKU and the balance of every account.
    pub async fn levels(&self, space: &KeySpace, placement: Placement) -> anyhow::Result<Levels> {
        let skus: Vec<String> = space.sku_names().iter().map(|s| stock_key(s)).collect();
        let accounts = space.accounts();
        let keys: Vec<String> = accounts.iter().map(|(a, _)| balance_key(a)).collect();
        let stock = self.numbers(placement.inventory, &skus).await?;
        let balances = self.numbers(placement.payments, &keys).await?;
        Ok(Levels {
            stock,
            balances: accounts.into_iter().map(|(a, _)| a).zip(balances).collect(),
        })
    }

    async fn numbers(&self, index: usize, keys: &[String]) -> anyhow::Result<Vec<i64>> {
        let mut conn = self.conn(index);
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SEED_CHUNK) {
            let values: Vec<Option<i64>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .context("reading the levels back")?;
            out.extend(values.into_iter().map(Option::unwrap_or_default));
        }
        Ok(out)
    }

    /// Locks and temporary keys left behind: redstage's lock index entries
    /// and the naive system's `naive:*` keys.
    pub async fn leftovers(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for mut conn in self.distinct() {
            let locks: usize = redis::cmd("ZCARD")
                .arg("rs:locks")
                .query_async(&mut conn)
                .await?;
            n += locks + keys_matching(&mut conn, "naive:*").await?.len();
        }
        Ok(n)
    }

    /// Bytes of redstage's own keys, every store together (see
    /// [`Stats::memory_bytes`]); read after the stats, so that its commands
    /// count in no cell.
    pub async fn kept_bytes(&self) -> anyhow::Result<i64> {
        let mut bytes = 0;
        for mut conn in self.distinct() {
            bytes += rs_bytes(&mut conn).await?;
        }
        Ok(bytes)
    }

    /// `redis_version` of the first store.
    pub async fn version(&self) -> Option<String> {
        let mut conn = self.conn(0);
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
    }
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Every key of one store matching `pattern`, by `SCAN`.
async fn keys_matching(
    conn: &mut MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<Vec<String>> {
    let (mut all, mut cursor) = (Vec::new(), 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        all.extend(keys);
        cursor = next;
        if cursor == 0 {
            return Ok(all);
        }
    }
}

/// Keys per `SCAN` page, and per pipeline of `MEMORY USAGE`.
const SCAN_COUNT: usize = 1000;

/// The bytes `MEMORY USAGE` counts for every `rs:*` key of one store.
async fn rs_bytes(conn: &mut MultiplexedConnection) -> anyhow::Result<i64> {
    let mut bytes = 0;
    for keys in keys_matching(conn, "rs:*").await?.chunks(SCAN_COUNT) {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(key);
        }
        // A key gone between SCAN and MEMORY USAGE is nil: 0 bytes.
        let sizes: Vec<Option<i64>> = pipe.query_async(conn).await?;
        bytes += sizes.into_iter().flatten().sum::<i64>();
    }
    Ok(bytes)
}
