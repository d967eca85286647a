//! What operators see: the transactions that hold locks or records, the
//! locked keys, and the transaction behind an idempotency key.
//!
//! A listing walks *sources* in a fixed order, each one page at a time
//! (see `store::inspect`: one `SCAN`/`ZSCAN` page per call, never a whole
//! keyspace), and stops when it has `limit` rows or has made
//! [`PAGE_CALLS_MAX`] page calls, whichever comes first. Its answer carries
//! a cursor to go on from; a page may hold fewer rows than `limit` (even
//! none) and still have a cursor: the walk is over only when there is no
//! cursor.
//!
//! ```text
//!  GET /v1/transactions          sources, in order
//!  ---------------------------   ------------------------------------------
//!  state=in_doubt                the lock index of each single Redis, then
//!                                of each Redis Cluster master, by name
//!  state=committed|aborted       the decision records of each single Redis
//!  (no state)                    both, locks first
//!  GET /v1/locks[?store=S]       the lock indexes of S (or of every store)
//! ```
//!
//! The cursor is opaque to clients (base64 of JSON): the source it is at,
//! the Redis cursor of the page there, and the sort key of the last item
//! it answered from that page. Items of one page are sorted by a digest of
//! their content, so that a page read again (Redis answers the same page
//! for the same cursor) goes on after the last item answered; an item
//! added meanwhile may be missed or an item listed twice, as with `SCAN`
//! itself, but an item that is there from the first page to the last is
//! listed.
//!
//! A transaction in doubt holds locks on every store it touched, so one
//! met in a store's index is listed only from the first single Redis (by
//! name) holding its locks, with every single Redis that does as its
//! `stores`: the other stores' indexes are walked once per page for the
//! transactions of that page (no single call of it is larger than a page).
//! Redis Cluster stores are not walked for this (it would take a `SCAN` of
//! every master): a transaction found there is listed unless a single Redis
//! holds its locks too, and lists the cluster store only when found there.
//!
//! A decided transaction is listed from its record, on its primary: with
//! the other stores it has yet to apply while it is `applying`.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::types::{AbortInfo, LookupStatus, Record};
use super::{Coordinator, TxnError, is_txn_id};
use crate::store::inspect::{Hold, Indexed};
use crate::store::{IndexEntry, Mode, Store, StoreError, Target};

/// The rows a listing answers when the request names no `limit`.
pub const LIST_LIMIT_DEFAULT: usize = 100;

/// The most rows one listing request answers. Bounds the answer's size
/// and the reads behind it.
pub const LIST_LIMIT_MAX: usize = 1000;

/// The most page calls one listing request makes (see the module essay):
/// bounds the time one request keeps Redis busy, whatever the filter
/// leaves out.
pub const PAGE_CALLS_MAX: usize = 32;

/// One transaction of `GET /v1/transactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TxnSummary {
    pub id: String,
    /// `in_doubt`: it holds locks and no decision is written (it runs, or
    /// its host died and recovery will finish it); else its decision.
    pub state: LookupStatus,
    /// When it started, in milliseconds since the Unix epoch: the time in
    /// its id (a UUIDv7), by the clock of the host that ran it.
    pub started_at_ms: u64,
    /// How long ago it started, by this host's clock.
    pub age_ms: u64,
    /// The store holding its decision; absent for a read-only transaction
    /// (which decides nothing) or when not known (an idempotency key's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The stores it holds locks on (in doubt), or that its record names
    /// (decided: the primary, and the stores it has yet to apply while
    /// `applying`).
    pub stores: Vec<String>,
    /// The participants whose keys its locks or its record name (the
    /// record of a decided transaction names the keys of its other stores
    /// only while `applying`), or whose step aborted it.
    pub participants: Vec<String>,
    /// In doubt: how long until the first of its leases ends, by the
    /// stores' clocks; zero or less once one has (then recovery may finish
    /// it, and `POST .../resolve` will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_left_ms: Option<i64>,
    /// Committed, and some store has not applied its writes yet (its
    /// record still carries them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub applying: bool,
    /// Aborted: why, when known (a transaction rolled back by recovery
    /// says so with code `recovered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortInfo>,
    /// With `?idempotency_key=`: the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The answer of `GET /v1/transactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TxnPage {
    pub transactions: Vec<TxnSummary>,
    /// Where the next page starts (send it as `cursor`); absent once the
    /// listing is over. A page may have fewer rows than `limit`, even none,
    /// and still a cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// How a key is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// By one transaction that may write it.
    Exclusive,
    /// By transactions that only read it.
    Shared,
    /// By transactions that only adjust it (escrow).
    Adjust,
}

/// One lock of `GET /v1/locks`: a key and one of its holders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LockSummary {
    pub store: String,
    /// The Redis key (the participant's prefix included).
    pub key: String,
    /// The hash field, set member or sorted set member locked, when the
    /// lock is on one of them rather than on the key whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// The participant whose prefix the key has, if any runs here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    pub mode: LockMode,
    /// The transaction holding it.
    pub txn: String,
    /// Where that transaction's decision lives; absent for a read-only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Until its lease ends, by the store's clock; zero or less once it has.
    pub lease_left_ms: i64,
    /// Another transaction is waiting for the key.
    pub waited: bool,
}

/// The answer of `GET /v1/locks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LockPage {
    pub locks: Vec<LockSummary>,
    /// As [`TxnPage::next_cursor`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a listing goes on: see the module essay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The listing it belongs to (kind and filter), so that a cursor is
    /// never taken for another listing's.
    #[serde(rename = "q")]
    query: String,
    #[serde(rename = "s")]
    source: usize,
    #[serde(rename = "c")]
    scan: u64,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

impl Cursor {
    fn start(query: &str) -> Cursor {
        Cursor {
            query: query.to_owned(),
            source: 0,
            scan: 0,
            after: None,
        }
    }

    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("cursors serialize");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// The cursor `text` names, if it is one of listing `query`.
    fn decode(text: Option<&str>, query: &str) -> Result<Cursor, TxnError> {
        let Some(text) = text else {
            return Ok(Cursor::start(query));
        };
        let bad = || TxnError::BadRequest {
            code: "bad_cursor",
            message: format!(
                "`cursor` must be a `next_cursor` of an earlier page of this same listing \
                 (same filters), as it answered it: {text:?} is not"
            ),
        };
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        let cursor: Cursor = serde_json::from_slice(&json).map_err(|_| bad())?;
        if cursor.query != query {
            return Err(bad());
        }
        Ok(cursor)
    }
}

/// The sort key of an item within its page.
fn digest(parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    crate::hex(&hash.finalize()[..12])
}

/// `limit` as asked: [`LIST_LIMIT_DEFAULT`] if absent, 1 to
/// [`LIST_LIMIT_MAX`].
pub fn check_limit(limit: Option<usize>) -> Result<usize, TxnError> {
    match limit {
        None => Ok(LIST_LIMIT_DEFAULT),
        Some(n) if (1..=LIST_LIMIT_MAX).contains(&n) => Ok(n),
        Some(n) => Err(TxnError::BadRequest {
            code: "bad_query",
            message: format!("`limit` is 1 to {LIST_LIMIT_MAX}, not {n}"),
        }),
    }
}

/// A listing: its sources, read a page at a time, and its rows.
trait Listing {
    type Item;
    type Row;

    /// How many sources it reads, in order.
    fn sources(&self) -> usize;

    /// The page of source `source` at Redis cursor `scan`: the next cursor
    /// (0 after the last page) and the items, each with its sort key.
    async fn fetch(
        &self,
        source: usize,
        scan: u64,
    ) -> Result<(u64, Vec<(String, Self::Item)>), TxnError>;

    /// The rows of `items` of `source`: one per item, `None` for an item
    /// that makes none.
    async fn rows(
        &self,
        source: usize,
        items: Vec<Self::Item>,
    ) -> Result<Vec<Option<Self::Row>>, TxnError>;
}

/// Walks `listing` from `at`, until `limit` rows or [`PAGE_CALLS_MAX`]
/// pages. The rows and where to go on, if anywhere.
async fn walk<L: Listing>(
    listing: &L,
    mut at: Cursor,
    limit: usize,
) -> Result<(Vec<L::Row>, Option<Cursor>), TxnError> {
    let sources = listing.sources();
    let mut out = Vec::new();
    for _ in 0..PAGE_CALLS_MAX {
        if at.source >= sources {
            return Ok((out, None));
        }
        let (next, mut items) = listing.fetch(at.source, at.scan).await?;
        items.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(after) = &at.after {
            items.retain(|(key, _)| key > after);
        }
        let (keys, items): (Vec<String>, Vec<L::Item>) = items.into_iter().unzip();
        let made = listing.rows(at.source, items).await?;
        let last = keys.len();
        for (i, (key, row)) in keys.into_iter().zip(made).enumerate() {
            out.extend(row);
            if out.len() == limit && i + 1 < last {
                at.after = Some(key);
                return Ok((out, Some(at)));
            }
        }
        at.after = None;
        match next {
            0 => {
                at.source += 1;
                at.scan = 0;
            }
            next => at.scan = next,
        }
        if out.len() == limit {
            break;
        }
    }
    let more = at.source < sources;
    Ok((out, more.then_some(at)))
}

/// Where a listing of transactions reads.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// Part `.1` of the lock indexes of a store.
    Index(&'a Store, usize),
    /// The decision records of a single Redis.
    Records(&'a Store),
}

/// An item of a listing of transactions.
enum TxnItem {
    Entry(Indexed),
    Record(String, Vec<u8>),
}

/// The time in a transaction id (a UUIDv7), in ms since the Unix epoch
/// (0 for what is no such id).
pub fn started_at_ms(id: &str) -> u64 {
    super::txn_started(id)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Coordinator {
    /// A page of the transactions that hold locks or records, those of
    /// `state` only if given (see the module essay).
    pub async fn list_transactions(
        &self,
        state: Option<LookupStatus>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<TxnPage, TxnError> {
        let query = format!("t:{}", state.as_ref().map_or("", LookupStatus::name));
        let at = Cursor::decode(cursor, &query)?;
        let listing = Transactions {
            coordinator: self,
            sources: self.txn_sources(state.as_ref()).await?,
            state,
        };
        let (transactions, next) = walk(&listing, at, limit).await?;
        Ok(TxnPage {
            transactions,
            next_cursor: next.map(|c| c.encode()),
        })
    }

    /// The sources of a listing of transactions of `state`.
    async fn txn_sources(&self, state: Option<&LookupStatus>) -> Result<Vec<Source<'_>>, TxnError> {
        let mut sources = Vec::new();
        if matches!(state, None | Some(LookupStatus::InDoubt)) {
            for store in self.stores.values().filter(|s| !s.is_cluster()) {
                sources.push(Source::Index(store, 0));
            }
            for store in self.stores.values().filter(|s| s.is_cluster()) {
                for part in 0..store.index_parts().await? {
                    sources.push(Source::Index(store, part));
                }
            }
        }
        if !matches!(state, Some(LookupStatus::InDoubt)) {
            for store in self.stores.values().filter(|s| !s.is_cluster()) {
                sources.push(Source::Records(store));
            }
        }
        Ok(sources)
    }

    /// The rows of a page of `store`'s index entries: one per undecided
    /// transaction, listed from the first single Redis holding its locks.
    async fn in_doubt_rows(
        &self,
        store: &Store,
        items: Vec<TxnItem>,
    ) -> Result<Vec<Option<TxnSummary>>, TxnError> {
        let entries: Vec<Option<Indexed>> = items
            .into_iter()
            .map(|item| match item {
                TxnItem::Entry(i) if i.entry.as_ref().is_ok_and(|e| !e.keys.is_empty()) => Some(i),
                _ => None,
            })
            .collect();
        let undecided = self.undecided(entries.iter().flatten()).await?;
        let txns: BTreeSet<&str> = undecided.iter().map(String::as_str).collect();
        // Every single Redis holding locks of these transactions, with
        // their entries there (this store's are in the page).
        let mut held: BTreeMap<&str, Vec<(&Store, Indexed)>> = BTreeMap::new();
        if !txns.is_empty() {
            let others = self
                .stores
                .values()
                .filter(|s| !s.is_cluster() && s.name() != store.name());
            for other in others {
                for found in other.entries_of_any(&txns).await? {
                    let txn = found
                        .entry
                        .as_ref()
                        .map(|e| e.txn.clone())
                        .unwrap_or_default();
                    if let Some(txn) = txns.get(txn.as_str()) {
                        held.entry(txn).or_default().push((other, found));
                    }
                }
            }
        }
        let mut clocks = BTreeMap::new();
        let mut listed = BTreeSet::new();
        let mut rows = Vec::with_capacity(entries.len());
        for indexed in entries {
            let Some(indexed) = indexed else {
                rows.push(None);
                continue;
            };
            let entry = indexed.entry.as_ref().expect("kept only readable entries");
            let elsewhere = held.get(entry.txn.as_str()).map_or(&[][..], Vec::as_slice);
            let earlier = elsewhere
                .iter()
                .any(|(s, _)| store.is_cluster() || s.name() < store.name());
            if !txns.contains(entry.txn.as_str()) || earlier || !listed.insert(entry.txn.clone()) {
                rows.push(None);
                continue;
            }
            let mut all: Vec<(&Store, &Indexed)> = vec![(store, &indexed)];
            all.extend(elsewhere.iter().map(|(s, i)| (*s, i)));
            rows.push(Some(self.in_doubt_row(entry, &all, &mut clocks).await?));
        }
        Ok(rows)
    }

    /// Which transactions of `entries` have no decision on their primary.
    async fn undecided<'e>(
        &self,
        entries: impl Iterator<Item = &'e Indexed>,
    ) -> Result<BTreeSet<String>, TxnError> {
        let mut by_primary: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut undecided = BTreeSet::new();
        for entry in entries.filter_map(|i| i.entry.as_ref().ok()) {
            match self.stores.get(&entry.primary) {
                Some(_) => {
                    by_primary
                        .entry(&entry.primary)
                        .or_default()
                        .insert(&entry.txn);
                }
                // Read-only (no primary), or a primary this host does not
                // know: nothing to read a decision from.
                None => {
                    undecided.insert(entry.txn.clone());
                }
            }
        }
        for (primary, txns) in by_primary {
            let txns: Vec<&str> = txns.into_iter().collect();
            let records = self.store(primary).records(&txns).await?;
            for (txn, record) in txns.into_iter().zip(records) {
                if record.is_none() {
                    undecided.insert(txn.to_owned());
                }
            }
        }
        Ok(undecided)
    }

    /// The row of a transaction in doubt, from its entries on every store
    /// found (`clocks`: each store's clock, read once per page).
    async fn in_doubt_row<'s>(
        &self,
        entry: &IndexEntry,
        all: &[(&'s Store, &Indexed)],
        clocks: &mut BTreeMap<&'s str, i64>,
    ) -> Result<TxnSummary, StoreError> {
        let mut lease_left_ms = i64::MAX;
        let mut participants = BTreeSet::new();
        let mut stores = BTreeSet::new();
        for (store, indexed) in all {
            let now = match clocks.get(store.name()) {
                Some(now) => *now,
                None => {
                    let now = store.now_ms().await?;
                    clocks.insert(store.name(), now);
                    now
                }
            };
            lease_left_ms = lease_left_ms.min(indexed.deadline_ms - now);
            stores.insert(store.name().to_owned());
            if let Ok(e) = &indexed.entry {
                participants.extend(
                    e.keys
                        .iter()
                        .filter_map(|k| self.owner(store.name(), &k.key)),
                );
            }
        }
        Ok(self.summary(
            &entry.txn,
            LookupStatus::InDoubt,
            (!entry.primary.is_empty()).then(|| entry.primary.clone()),
            stores,
            participants,
            Some(lease_left_ms),
        ))
    }

    /// The rows of a page of `store`'s decision records, of `state` only
    /// if given.
    fn record_rows(
        &self,
        store: &Store,
        items: Vec<TxnItem>,
        state: Option<&LookupStatus>,
    ) -> Vec<Option<TxnSummary>> {
        items
            .into_iter()
            .map(|item| {
                let TxnItem::Record(txn, bytes) = item else {
                    return None;
                };
                let row = self.record_row(store, &txn, &Record::decode(&bytes).ok()?);
                state.is_none_or(|s| *s == row.state).then_some(row)
            })
            .collect()
    }

    fn record_row(&self, store: &Store, txn: &str, record: &Record) -> TxnSummary {
        let mut stores = BTreeSet::from([store.name().to_owned()]);
        let mut participants = BTreeSet::new();
        let (state, applying, abort) = match record {
            Record::Committed { stores: works } => {
                for (name, work) in works {
                    stores.insert(name.clone());
                    participants.extend(work.keys.iter().filter_map(|k| self.owner(name, &k.key)));
                }
                (LookupStatus::Committed, !works.is_empty(), None)
            }
            Record::Aborted { abort } => {
                let step = abort.as_ref().and_then(|a| a.participant.clone());
                participants.extend(step);
                (LookupStatus::Aborted, false, abort.clone())
            }
        };
        TxnSummary {
            applying,
            abort,
            ..self.summary(
                txn,
                state,
                Some(store.name().to_owned()),
                stores,
                participants,
                None,
            )
        }
    }

    fn summary(
        &self,
        txn: &str,
        state: LookupStatus,
        primary: Option<String>,
        stores: BTreeSet<String>,
        participants: BTreeSet<String>,
        lease_left_ms: Option<i64>,
    ) -> TxnSummary {
        let started_at_ms = started_at_ms(txn);
        TxnSummary {
            id: txn.to_owned(),
            state,
            started_at_ms,
            age_ms: crate::now_ms().saturating_sub(started_at_ms),
            primary,
            stores: stores.into_iter().collect(),
            participants: participants.into_iter().collect(),
            lease_left_ms,
            applying: false,
            abort: None,
            idempotency_key: None,
        }
    }

    /// The participant whose prefix `key` of `store` has, if one runs here.
    fn owner(&self, store: &str, key: &str) -> Option<String> {
        self.registry
            .all()
            .into_iter()
            .find(|p| p.store == store && p.namespaces().iter().any(|n| key.starts_with(n)))
            .map(|p| p.name.clone())
    }

    /// A page of the keys locked on `store` (or on every store), one row
    /// per key and holder.
    pub async fn list_locks(
        &self,
        store: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<LockPage, TxnError> {
        let stores: Vec<&Store> = match store {
            Some(name) => vec![self.stores.get(name).ok_or_else(|| TxnError::BadRequest {
                code: "unknown_store",
                message: format!(
                    "no store named `{name}`; stores: {}",
                    self.stores.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?],
            None => self.stores.values().collect(),
        };
        let at = Cursor::decode(cursor, &format!("l:{}", store.unwrap_or("")))?;
        let mut sources = Vec::new();
        for store in stores {
            for part in 0..store.index_parts().await? {
                sources.push((store, part));
            }
        }
        let listing = Locks {
            coordinator: self,
            sources,
        };
        let (locks, next) = walk(&listing, at, limit).await?;
        Ok(LockPage {
            locks,
            next_cursor: next.map(|c| c.encode()),
        })
    }

    fn lock_row(
        &self,
        store: &Store,
        target: &Target,
        txn: &str,
        hold: Hold,
        now: i64,
    ) -> LockSummary {
        LockSummary {
            store: store.name().to_owned(),
            key: target.key.clone(),
            part: target.part.clone(),
            participant: self.owner(store.name(), &target.key),
            mode: match hold.mode {
                // Appends take no lock: a hold is never one.
                Mode::Shared | Mode::Read | Mode::Append => LockMode::Shared,
                Mode::Exclusive => LockMode::Exclusive,
                Mode::Adjust => LockMode::Adjust,
            },
            txn: txn.to_owned(),
            primary: (!hold.primary.is_empty()).then_some(hold.primary),
            lease_left_ms: hold.deadline_ms - now,
            waited: hold.waited,
        }
    }

    /// The transaction a request with idempotency key `key` ran (or runs),
    /// from the claim or the outcome kept under the key on the log store.
    pub async fn by_idempotency_key(&self, key: &str) -> Result<Option<TxnSummary>, TxnError> {
        super::idempotency::check_key(key)?;
        let Some(bytes) = self.log().idempotency(key).await? else {
            return Ok(None);
        };
        let unreadable = |e: &dyn std::fmt::Display| StoreError::Protocol {
            store: self.log_store.clone(),
            message: format!("unreadable idempotency key {key}: {e}"),
        };
        let kept: KeptUnderKey = serde_json::from_slice(&bytes).map_err(|e| unreadable(&e))?;
        let none = BTreeSet::new;
        let summary = match kept {
            KeptUnderKey::Pending { owner, lease } if is_txn_id(&owner) => {
                let left = match lease.parse::<i64>() {
                    Ok(lease) => Some(lease - self.log().now_ms().await?),
                    Err(_) => None,
                };
                self.summary(&owner, LookupStatus::InDoubt, None, none(), none(), left)
            }
            // The claim of a host that names its owner otherwise: no id.
            KeptUnderKey::Pending { .. } => return Ok(None),
            KeptUnderKey::Done { response } => {
                let state = match response.status {
                    super::types::Status::Committed => LookupStatus::Committed,
                    super::types::Status::Aborted => LookupStatus::Aborted,
                };
                let participants = response.steps.iter().map(|s| s.participant.clone());
                TxnSummary {
                    abort: response.abort.clone(),
                    ..self.summary(
                        &response.id,
                        state,
                        None,
                        none(),
                        participants.collect(),
                        None,
                    )
                }
            }
        };
        Ok(Some(TxnSummary {
            idempotency_key: Some(key.to_owned()),
            ..summary
        }))
    }
}

/// The listing of `GET /v1/transactions`.
struct Transactions<'a> {
    coordinator: &'a Coordinator,
    sources: Vec<Source<'a>>,
    state: Option<LookupStatus>,
}

impl Listing for Transactions<'_> {
    type Item = TxnItem;
    type Row = TxnSummary;

    fn sources(&self) -> usize {
        self.sources.len()
    }

    async fn fetch(
        &self,
        source: usize,
        scan: u64,
    ) -> Result<(u64, Vec<(String, TxnItem)>), TxnError> {
        Ok(match self.sources[source] {
            Source::Index(store, part) => {
                let (next, page) = store.index_page(part, scan).await?;
                let items = page
                    .into_iter()
                    .map(|i| {
                        let member = match &i.entry {
                            Ok(e) => e.encode(),
                            Err(raw) => raw.clone(),
                        };
                        (digest(&[member.as_bytes()]), TxnItem::Entry(i))
                    })
                    .collect();
                (next, items)
            }
            Source::Records(store) => {
                let (next, page) = store.record_page(scan).await?;
                let items = page
                    .into_iter()
                    .map(|(txn, bytes)| (digest(&[txn.as_bytes()]), TxnItem::Record(txn, bytes)))
                    .collect();
                (next, items)
            }
        })
    }

    async fn rows(
        &self,
        source: usize,
        items: Vec<TxnItem>,
    ) -> Result<Vec<Option<TxnSummary>>, TxnError> {
        match self.sources[source] {
            Source::Index(store, _) => self.coordinator.in_doubt_rows(store, items).await,
            Source::Records(store) => {
                Ok(self
                    .coordinator
                    .record_rows(store, items, self.state.as_ref()))
            }
        }
    }
}

/// The listing of `GET /v1/locks`: each store's index parts.
struct Locks<'a> {
    coordinator: &'a Coordinator,
    sources: Vec<(&'a Store, usize)>,
}

impl Listing for Locks<'_> {
    /// A holder and what it holds.
    type Item = (String, Target);
    type Row = LockSummary;

    fn sources(&self) -> usize {
        self.sources.len()
    }

    async fn fetch(
        &self,
        source: usize,
        scan: u64,
    ) -> Result<(u64, Vec<(String, Self::Item)>), TxnError> {
        let (store, part) = self.sources[source];
        let (next, page) = store.index_page(part, scan).await?;
        let mut items = Vec::new();
        for entry in page.into_iter().filter_map(|i| i.entry.ok()) {
            for target in &entry.keys {
                let mut parts = vec![entry.txn.as_bytes(), target.key.as_bytes()];
                parts.extend(target.part.as_ref().map(|p| p.as_bytes()));
                let sort = digest(&parts);
                items.push((sort, (entry.txn.clone(), target.clone())));
            }
        }
        Ok((next, items))
    }

    async fn rows(
        &self,
        source: usize,
        items: Vec<Self::Item>,
    ) -> Result<Vec<Option<LockSummary>>, TxnError> {
        let store = self.sources[source].0;
        let pairs: Vec<(&Target, &str)> = items.iter().map(|(t, k)| (k, t.as_str())).collect();
        let holds = store.holds(&pairs).await?;
        let now = store.now_ms().await?;
        Ok(items
            .iter()
            .zip(holds)
            .map(|((txn, key), hold)| Some(self.coordinator.lock_row(store, key, txn, hold?, now)))
            .collect())
    }
}

/// What `rs:idem:<key>` holds (see `idempotency`), as far as a lookup
/// needs it.
#[derive(Debug, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(super) enum KeptUnderKey {
    Pending {
        owner: String,
        /// Until when, by the log store's clock, in ms.
        lease: String,
    },
    Done {
        response: super::types::TxnResponse,
    },
}

impl LookupStatus {
    /// The name clients use (`in_doubt`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            LookupStatus::Committed => "committed",
            LookupStatus::Aborted => "aborted",
            LookupStatus::InDoubt => "in_doubt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sources of three pages each (page p of source s: items
    /// s*100 + p*10 + 0..5), of which the odd items make no row.
    struct Fake;

    impl Listing for Fake {
        type Item = u64;
        type Row = u64;

        fn sources(&self) -> usize {
            2
        }

        async fn fetch(
            &self,
            source: usize,
            scan: u64,
        ) -> Result<(u64, Vec<(String, u64)>), TxnError> {
            let next = if scan == 2 { 0 } else { scan + 1 };
            let items = (0..5)
                .map(|i| {
                    let n = source as u64 * 100 + scan * 10 + i;
                    (digest(&[&n.to_le_bytes()]), n)
                })
                .collect();
            Ok((next, items))
        }

        async fn rows(&self, _: usize, items: Vec<u64>) -> Result<Vec<Option<u64>>, TxnError> {
            Ok(items
                .into_iter()
                .map(|n| (n % 2 == 0).then_some(n))
                .collect())
        }
    }

    /// A walk lists every item once across pages whatever the limit, its
    /// cursor surviving a trip through its text form.
    #[tokio::test]
    async fn walks_list_every_item_once_whatever_the_limit() {
        for limit in [1, 2, 3, 5, 7, 30, 100] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            let mut requests = 0;
            loop {
                let at = Cursor::decode(cursor.as_deref(), "test").unwrap();
                let (page, next) = walk(&Fake, at, limit).await.unwrap();
                assert!(page.len() <= limit);
                seen.extend(page);
                requests += 1;
                assert!(requests < 100, "the walk never ends");
                match next {
                    Some(next) => cursor = Some(next.encode()),
                    None => break,
                }
            }
            seen.sort();
            let expected: Vec<u64> = (0..2)
                .flat_map(|s| (0..3).flat_map(move |p| (0..5).map(move |i| s * 100 + p * 10 + i)))
                .filter(|n| n % 2 == 0)
                .collect();
            assert_eq!(seen, expected, "limit {limit}");
        }
    }

    #[test]
    fn cursors_of_another_listing_or_garbage_are_refused() {
        let cursor = Cursor::start("t:in_doubt").encode();
        assert!(Cursor::decode(Some(&cursor), "t:in_doubt").is_ok());
        for (text, query) in [(cursor.as_str(), "t:"), ("%%%", "t:"), ("e30", "t:")] {
            let err = Cursor::decode(Some(text), query).unwrap_err();
            assert_eq!(err.code(), "bad_cursor", "{text}");
        }
    }

    #[test]
    fn ids_tell_when_they_started() {
        let id = uuid::Uuid::now_v7().to_string();
        let age = crate::now_ms() - started_at_ms(&id);
        assert!(age < 60_000, "{age}");
        assert_eq!(started_at_ms("not an id"), 0);
    }
}
