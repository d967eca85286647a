//! The two Redis stores every system runs on: started here or given, then
//! flushed, seeded, measured and read back around every cell.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use redstage::embedded::{Persistence, RedisCluster, RedisServer};
use redstage::store::cluster::{SCHEME as CLUSTER_SCHEME, seeds};
use redstage::store::keys::key_slot;

use crate::workload::{
    KeySpace, Levels, OUTBOX_KEY, Placement, Profile, Workload, balance_key, graph_faults,
    social_key, stock_key, users,
};

/// Bounds one Redis reply in the bench's own connections: generous, since a
/// loaded 2-core machine can stall a reply far beyond the usual 500 ms.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Keys written by one `MSET` while seeding.
const SEED_CHUNK: usize = 500;

/// `orders` (index 0) and `ledger` (index 1).
#[derive(Debug)]
pub struct Stores {
    urls: Vec<String>,
    /// Each store's nodes: the server of a single Redis, or the masters of
    /// a Redis Cluster.
    nodes: Vec<Vec<Node>>,
    /// Servers started here; dropping them stops them.
    _servers: Vec<RedisServer>,
    _cluster: Option<RedisCluster>,
}

/// One server holding keys of a store.
#[derive(Debug, Clone)]
struct Node {
    url: String,
    /// Shared by the systems that multiplex.
    conn: MultiplexedConnection,
    /// On a cluster, the slot ranges it serves; none for a single Redis.
    slots: Option<Vec<(u16, u16)>>,
}

impl Node {
    fn serves(&self, key: &str) -> bool {
        let slot = key_slot(key.as_bytes());
        self.slots
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
    }
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

/// Adds to `pipe` (its replies ignored): the slow log's threshold (µs) and
/// length, then an empty log.
fn reset_slowlog<'p>(
    pipe: &'p mut redis::Pipeline,
    threshold_us: &str,
    max_len: &str,
) -> &'p mut redis::Pipeline {
    pipe.cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(threshold_us)
        .arg("slowlog-max-len")
        .arg(max_len)
        .ignore()
        .cmd("SLOWLOG")
        .arg("RESET")
        .ignore()
}

/// A server's slow log settings, as `CONFIG GET` gave them.
#[derive(Debug, Clone)]
pub struct SlowlogSettings {
    url: String,
    threshold_us: String,
    max_len: String,
}

/// One command a server ran, from its slow log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The command's name, upper case.
    pub command: String,
    /// For `EVALSHA`, the script's SHA1.
    pub sha: Option<String>,
    /// How long it ran inside Redis (wall time; a script's includes the
    /// commands it called).
    pub micros: u64,
    /// Called by a script rather than by a client.
    pub in_script: bool,
}

impl Logged {
    /// An entry of `SLOWLOG GET`: id, time, µs, arguments, client address
    /// (`?:0` for a script's own calls), client name.
    fn parse(entry: &redis::Value) -> anyhow::Result<Logged> {
        use redis::Value;
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let Value::Array(fields) = entry else {
            bail!("a slow log entry that is not an array: {entry:?}");
        };
        let (Some(Value::Int(micros)), Some(Value::Array(args))) = (fields.get(2), fields.get(3))
        else {
            bail!("a slow log entry without its time and arguments: {entry:?}");
        };
        let command = args
            .first()
            .and_then(text)
            .unwrap_or_default()
            .to_uppercase();
        let sha = (command == "EVALSHA")
            .then(|| args.get(1).and_then(text))
            .flatten();
        Ok(Logged {
            command,
            sha,
            micros: u64::try_from(*micros).unwrap_or(0),
            in_script: fields.get(4).and_then(text).as_deref() == Some("?:0"),
        })
    }
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
    /// `persistence`; with `cluster`, `orders` is a local Redis Cluster of
    /// three masters instead.
    pub async fn open(
        urls: &[String],
        persistence: crate::options::Persistence,
        cluster: bool,
    ) -> anyhow::Result<Stores> {
        let mut servers = Vec::new();
        let mut local_cluster = None;
        let persistence = match persistence {
            crate::options::Persistence::None => Persistence::None,
            crate::options::Persistence::Aof => Persistence::AofAlways,
        };
        let urls = match (urls.len(), cluster) {
            (0, false) => {
                for _ in 0..2 {
                    servers.push(RedisServer::start(persistence)?);
                }
                servers.iter().map(RedisServer::url).collect()
            }
            (0, true) => {
                let started = RedisCluster::start(3, 0, persistence)?;
                servers.push(RedisServer::start(persistence)?);
                let urls = vec![started.url(), servers[0].url()];
                local_cluster = Some(started);
                urls
            }
            (2, false) => urls.to_vec(),
            (2, true) => bail!("--cluster starts its own stores: leave out --stores"),
            (n, _) => bail!("--stores takes two URLs, `orders,ledger`; got {n}"),
        };
        let mut nodes = Vec::new();
        for url in &urls {
            nodes.push(match url.starts_with(CLUSTER_SCHEME) {
                true => cluster_nodes(url).await?,
                false => vec![Node {
                    url: url.clone(),
                    conn: connect(url).await?,
                    slots: None,
                }],
            });
        }
        Ok(Stores {
            urls,
            nodes,
            _servers: servers,
            _cluster: local_cluster,
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Whether store `index` is a Redis Cluster.
    pub fn is_cluster(&self, index: usize) -> bool {
        self.nodes[index][0].slots.is_some()
    }

    /// The shared connection to store `index` (a single Redis).
    pub fn conn(&self, index: usize) -> MultiplexedConnection {
        self.nodes[index][0].conn.clone()
    }

    /// A connection of its own to store `index` (for WATCH, whose state is
    /// per connection).
    pub async fn dedicated(&self, index: usize) -> anyhow::Result<MultiplexedConnection> {
        connect(&self.nodes[index][0].url).await
    }

    /// Each distinct server once (both URLs may name the same server).
    fn distinct(&self) -> Vec<MultiplexedConnection> {
        self.distinct_nodes()
            .into_iter()
            .map(|n| n.conn.clone())
            .collect()
    }

    /// Every server once, though both stores may be the same one.
    fn distinct_nodes(&self) -> Vec<&Node> {
        let all: Vec<&Node> = self.nodes.iter().flatten().collect();
        all.iter()
            .enumerate()
            .filter(|(i, n)| !all[..*i].iter().any(|m| m.url == n.url))
            .map(|(_, n)| *n)
            .collect()
    }

    /// `pairs` (or keys) of store `index`, by the node that serves them,
    /// in their order.
    fn by_node<'a, T>(
        &self,
        index: usize,
        items: &'a [T],
        key: impl Fn(&T) -> &str,
    ) -> Vec<(&Node, Vec<(usize, &'a T)>)> {
        self.nodes[index]
            .iter()
            .map(|node| {
                let mine = items
                    .iter()
                    .enumerate()
                    .filter(|(_, item)| node.serves(key(item)))
                    .collect();
                (node, mine)
            })
            .collect()
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
            for (node, mine) in self.by_node(index, &pairs, |(k, _)| k) {
                let mut conn = node.conn.clone();
                for chunk in mine.chunks(SEED_CHUNK) {
                    // One SET each on a cluster: an MSET may not span slots.
                    let mut pipe = redis::pipe();
                    for (_, (k, v)) in chunk {
                        pipe.cmd("SET").arg(k).arg(v).ignore();
                    }
                    pipe.exec_async(&mut conn).await.context("seeding")?;
                }
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

    /// Makes every server keep every command it runs in its slow log
    /// (threshold 0), up to `max` entries each, from an empty log. Returns
    /// each server's settings before, for [`Stores::logged`] to put back.
    pub async fn log_everything(&self, max: usize) -> anyhow::Result<Vec<SlowlogSettings>> {
        let mut before = Vec::new();
        for node in self.distinct_nodes() {
            let mut conn = node.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("CONFIG")
                .arg("GET")
                .arg("slowlog-log-slower-than")
                .cmd("CONFIG")
                .arg("GET")
                .arg("slowlog-max-len");
            let (threshold, len): ((String, String), (String, String)) =
                reset_slowlog(&mut pipe, "0", &max.to_string())
                    .query_async(&mut conn)
                    .await
                    .context("CONFIG SET slowlog-log-slower-than 0")?;
            before.push(SlowlogSettings {
                url: node.url.clone(),
                threshold_us: threshold.1,
                max_len: len.1,
            });
        }
        Ok(before)
    }

    /// What [`Stores::log_everything`] logged, per store (`orders`,
    /// `ledger`), oldest first; each slow log then back to its settings
    /// `before`, and empty.
    pub async fn logged(&self, before: &[SlowlogSettings]) -> anyhow::Result<[Vec<Logged>; 2]> {
        let mut out: [Vec<Logged>; 2] = Default::default();
        for node in self.distinct_nodes() {
            let index = self
                .nodes
                .iter()
                .position(|nodes| nodes.iter().any(|n| n.url == node.url))
                .expect("a node of a store");
            let settings = before
                .iter()
                .find(|s| s.url == node.url)
                .context("a server's slow log settings were not kept")?;
            let mut conn = node.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("SLOWLOG").arg("GET").arg(-1);
            let (entries,): (Vec<redis::Value>,) =
                reset_slowlog(&mut pipe, &settings.threshold_us, &settings.max_len)
                    .query_async(&mut conn)
                    .await
                    .context("SLOWLOG GET")?;
            let mut mine = entries
                .iter()
                .map(Logged::parse)
                .collect::<anyhow::Result<Vec<_>>>()?;
            mine.reverse();
            out[index].extend(mine);
        }
        Ok(out)
    }

    /// Stock of every SKU and the balance of every account.
    pub async fn levels(
        &self,
        workload: Workload,
        space: &KeySpace,
        placement: Placement,
    ) -> anyhow::Result<Levels> {
        let skus: Vec<String> = space.sku_names().iter().map(|s| stock_key(s)).collect();
        let accounts = space.accounts();
        let keys: Vec<String> = accounts.iter().map(|(a, _)| balance_key(a)).collect();
        let stock = self.numbers(placement.inventory, &skus).await?;
        let balances = self.numbers(placement.payments, &keys).await?;
        let graph = match workload {
            Workload::Social => graph_faults(&self.profiles(space).await?),
            _ => 0,
        };
        let events = match workload {
            Workload::Outbox => self.events().await?,
            _ => (0, 0),
        };
        Ok(Levels {
            stock,
            balances: accounts.into_iter().map(|(a, _)| a).zip(balances).collect(),
            graph,
            events,
        })
    }

    /// The connection to the node of store `index` serving `key`.
    fn node_of(&self, index: usize, key: &str) -> MultiplexedConnection {
        let nodes = &self.nodes[index];
        nodes
            .iter()
            .find(|n| n.serves(key))
            .unwrap_or(&nodes[0])
            .conn
            .clone()
    }

    /// Every `social` user's keys, as they stand (on `orders`, where every
    /// system keeps them).
    async fn profiles(&self, space: &KeySpace) -> anyhow::Result<BTreeMap<String, Profile>> {
        let mut profiles = BTreeMap::new();
        for user in users(space) {
            // A user's keys share a slot (their hash tag): one node, one pipeline.
            let mut conn = self.node_of(0, &social_key("user", &user));
            let (following, followers, counters, inbox): (
                BTreeSet<String>,
                BTreeSet<String>,
                Vec<Option<i64>>,
                usize,
            ) = redis::pipe()
                .cmd("SMEMBERS")
                .arg(social_key("following", &user))
                .cmd("SMEMBERS")
                .arg(social_key("followers", &user))
                .cmd("HMGET")
                .arg(social_key("user", &user))
                .arg(&["following", "followers", "sent", "unread"][..])
                .cmd("XLEN")
                .arg(social_key("inbox", &user))
                .query_async(&mut conn)
                .await
                .context("reading a user back")?;
            let mut numbers = [0; 4];
            for (n, c) in numbers.iter_mut().zip(counters) {
                *n = c.unwrap_or(0);
            }
            profiles.insert(
                user,
                Profile {
                    following,
                    followers,
                    counters: numbers,
                    inbox,
                },
            );
        }
        Ok(profiles)
    }

    /// The outbox's entries, and the distinct orders they name.
    async fn events(&self) -> anyhow::Result<(usize, usize)> {
        let mut conn = self.node_of(0, OUTBOX_KEY);
        let mut orders = BTreeSet::new();
        let mut entries = 0;
        let mut from = "-".to_owned();
        loop {
            let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(OUTBOX_KEY)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(SEED_CHUNK)
                .query_async(&mut conn)
                .await
                .context("reading the outbox back")?;
            let Some((last, _)) = page.last() else {
                break;
            };
            from = format!("({last}");
            for (_, fields) in &page {
                entries += 1;
                if let Some((_, order)) = fields.iter().find(|(f, _)| f == "order") {
                    orders.insert(order.clone());
                }
            }
        }
        Ok((entries, orders.len()))
    }

    async fn numbers(&self, index: usize, keys: &[String]) -> anyhow::Result<Vec<i64>> {
        let mut out = vec![0; keys.len()];
        for (node, mine) in self.by_node(index, keys, String::as_str) {
            let mut conn = node.conn.clone();
            for chunk in mine.chunks(SEED_CHUNK) {
                let mut pipe = redis::pipe();
                for (_, k) in chunk {
                    pipe.cmd("GET").arg(k);
                }
                let values: Vec<Option<i64>> = pipe
                    .query_async(&mut conn)
                    .await
                    .context("reading the levels back")?;
                for ((i, _), v) in chunk.iter().zip(values) {
                    out[*i] = v.unwrap_or_default();
                }
            }
        }
        Ok(out)
    }

    /// Locks and temporary keys left behind: redstage's lock index entries
    /// (`rs:locks`, and on a cluster one index per slot), the naive
    /// system's `naive:*` keys and the two-phase system's reservations.
    pub async fn leftovers(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        for mut conn in self.distinct() {
            for pattern in ["rs:*locks", "twophase:index"] {
                for index in keys_matching(&mut conn, pattern, Some("zset")).await? {
                    let locks: usize = redis::cmd("ZCARD")
                        .arg(index)
                        .query_async(&mut conn)
                        .await?;
                    n += locks;
                }
            }
            n += keys_matching(&mut conn, "naive:*", None).await?.len();
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

/// The masters of the cluster at `url`, each with the slots it serves, from
/// `CLUSTER SLOTS` asked of the first seed node that answers.
async fn cluster_nodes(url: &str) -> anyhow::Result<Vec<Node>> {
    let seeds = seeds(url).map_err(anyhow::Error::msg)?;
    let mut last = None;
    for seed in &seeds {
        let slots = async {
            let mut conn = connect(seed).await?;
            let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async(&mut conn)
                .await?;
            anyhow::Ok(ranges)
        };
        match slots.await {
            Ok(ranges) => return masters(seed, ranges).await,
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("a cluster URL names a seed")).context(format!("no seed of {url} answered"))
}

/// The masters named in a `CLUSTER SLOTS` reply, reached with the seed
/// URL's credentials.
async fn masters(seed: &str, ranges: Vec<Vec<redis::Value>>) -> anyhow::Result<Vec<Node>> {
    let mut masters: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
    for range in ranges {
        let [
            redis::Value::Int(first),
            redis::Value::Int(last),
            redis::Value::Array(master),
            ..,
        ] = range.as_slice()
        else {
            bail!("unreadable CLUSTER SLOTS entry {range:?}");
        };
        let (host, port): (String, u16) = redis::from_redis_value(redis::Value::Array(
            master.iter().take(2).cloned().collect(),
        ))?;
        let auth = seed
            .strip_prefix("redis://")
            .and_then(|rest| rest.rsplit_once('@'))
            .map_or(String::new(), |(auth, _)| format!("{auth}@"));
        masters
            .entry(format!("redis://{auth}{host}:{port}"))
            .or_default()
            .push((u16::try_from(*first)?, u16::try_from(*last)?));
    }
    let mut nodes = Vec::new();
    for (url, slots) in masters {
        nodes.push(Node {
            conn: connect(&url).await?,
            url,
            slots: Some(slots),
        });
    }
    Ok(nodes)
}

/// Every key of one server matching `pattern` (and of type `kind`), by
/// `SCAN`.
async fn keys_matching(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    kind: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let (mut all, mut cursor) = (Vec::new(), 0u64);
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        if let Some(kind) = kind {
            scan.arg("TYPE").arg(kind);
        }
        let (next, keys): (u64, Vec<String>) = scan.query_async(conn).await?;
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
    for keys in keys_matching(conn, "rs:*", None).await?.chunks(SCAN_COUNT) {
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
