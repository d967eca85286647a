//! The Lua scripts that read and change keys atomically on one store.
//!
//! Keys always travel in `KEYS` and values in `ARGV`, never spliced into the
//! script text, so a key with braces, quotes or newlines is just bytes here.
//! Every script checks everything before it changes anything: a Redis script
//! that fails half-way is not rolled back.
//!
//! Times are read from the Redis server (`TIME`), so leases mean the same to
//! every host whatever their clocks say. Only the scripts that grant leases
//! or compare them read the clock.
//!
//! Each `redis.call` inside a script costs far more than the command itself
//! (a write, several microseconds), so the scripts make as few as they can:
//! one `MGET`, `MSETNX`, `DEL` or `MSET` for all the keys of a store
//! rather than one call per key.
//!
//! # Lock table entries
//!
//! `rs:{K}` is a string: the mode (`x` exclusive, `s` shared, `a` adjusted)
//! and a wait flag (`1` once someone waited for the key), then, for `x` and
//! `s`, one tab-separated `<txn>\t<lease>\t<primary>` per holder (one for
//! `x`, one or more for `s`):
//!
//! ```text
//!  x0\t0193...e1\t1732700000123\torders
//!  s1\t0193...e7\t1732700000456\t\t0193...f2\t1732700000789\tledger
//!  a0
//! ```
//!
//! (A read-only transaction's holder names no primary.) The adjusters of a
//! key in `a` mode, who may be many at once (a flash sale), are in a hash
//! beside it, `rs:{K}:a`, so that joining, reserving and leaving cost the
//! same whether there are two of them or two hundred: `t:<txn>` ->
//! `<lease>\t<primary>\t<reserved delta>`, and `n` (how many), `neg` and
//! `pos` (the sums of their negative and positive reservations). Store
//! names cannot hold a tab (the config refuses them).
//!
//! A lock is fair: once someone waits for a key, no new holder joins it in
//! shared or adjust mode, so that a writer waiting behind readers (or a
//! reader behind a flash sale's adjusters) gets its turn.
//!
//! Adjustments (escrow): a transaction holding a key in `a` mode neither
//! reads it nor keeps others from adjusting it. Before its decision it
//! reserves its delta, checked against its bounds as if every decrement in
//! flight committed and no increment did (for a lower bound; the reverse
//! for an upper one), so that the bound holds whichever of them commit; at
//! the commit point or the apply it adds the delta to the value (`INCRBY`),
//! and on a rollback its reservation goes with its lock. Values are plain
//! decimal strings; bounds are checked exactly within +-2^53.

/// Shared prologue: `now_ms` by the server's clock.
macro_rules! lua_clock {
    ($body:expr) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            $body
        )
    };
}

/// Helpers every lock-table script shares (KEYS come in threes per data
/// key: data, entry, adjusters):
/// - `call_all(cmd, prefix, list)`: `redis.call(cmd, prefix..., list...)`
///   in chunks (Lua's `unpack` has a bound), results appended together;
/// - `holders(v)`: an `x` or `s` entry's mode, wait flag and holders
///   (`{txn, lease, primary}` each); `encode(mode, wait, hs)` the reverse;
/// - `holder(v)`: the sole holder of an exclusive entry, cheaply;
/// - `adjuster(adj, txn)`: some adjuster other than `txn`, as a holder;
/// - `strings(data)`: the values of the keys `data` (`MGET`), or nil and
///   `{'wrong_type', i, type}` naming the first of them (0-based) that
///   holds a value of another Redis type;
/// - `integer(raw)`: the value of `raw` if `INCRBY` takes it as an
///   integer (Redis's own rule: `0`, or an optional `-`, a digit 1-9 and
///   more digits, within a signed 64-bit integer), else nil: so `007`,
///   `-0`, `+5`, ` 5` or `1e3` are refused here, not by an `INCRBY` that
///   would fail after the script's first write;
/// - `int(x)`: a Lua number as a decimal integer, for a string built
///   from it (Lua's `..` keeps 14 digits: 123456789012345 would become
///   `1.2345678901234e+14`; a number passed to `redis.call` keeps 17);
/// - `bounded(raw, neg, pos, list)`: checks adjustments `list`
///   (`delta:lower:upper;...`) of a key whose value is `raw`, given the
///   others' reservations; returns their total, or nil and the refusal
///   (`{'bound', j}`, `{'nan'}`, or `{'range'}` past the +-2^53 within
///   which Lua counts exactly, so that no `INCRBY` can fail half-way
///   through a script);
/// - `locked(i, meta, adj, v, txn, now_ms)`: the reply naming a holder
///   (other than `txn`) of the entry `v` of the `i`-th key, which is in the
///   way; marks the key as waited for;
/// - `legacy(i, meta)`: for a lock table entry that is not a string (the
///   first protocol's metadata hash), the reply refusing the `i`-th key if
///   that protocol's lock is in it (or `{'stopped', message}` for an entry
///   of any other type); otherwise drops it and returns nil;
/// - `release_all(txn, data, metas, adjs, found, ops, values)`: lets go of
///   `txn`'s locks on keys whose entries `found` were read: a key held
///   exclusively gets its write first (`set`, `del`, or `keep` for none), a
///   shared one loses this holder, an adjusted one gets its delta (for
///   `adj`) and loses this adjuster (its last adjuster takes the entry and
///   the adjusters' hash with it); an entry left without holders is
///   deleted, and a key someone waited for is published on the wake
///   channel. Returns how many of the keys `txn` held.
macro_rules! lua_locks {
    () => {
        "local function call_all(cmd, prefix, list)
  local out = {}
  local i = 1
  repeat
    local args = {}
    for _, p in ipairs(prefix) do args[#args + 1] = p end
    for j = i, math.min(i + 999, #list) do args[#args + 1] = list[j] end
    local r = redis.call(cmd, unpack(args))
    if type(r) == 'table' then
      for _, x in ipairs(r) do out[#out + 1] = x end
    end
    i = i + 1000
  until i > #list
  return out
end
local function holders(v)
  local fields = {}
  local pos = 3
  while pos <= #v do
    local nxt = string.find(v, '\\t', pos + 1, true)
    fields[#fields + 1] = string.sub(v, pos + 1, (nxt or (#v + 1)) - 1)
    if not nxt then break end
    pos = nxt
  end
  local hs = {}
  for i = 1, #fields, 3 do hs[#hs + 1] = {fields[i], fields[i + 1], fields[i + 2]} end
  return string.sub(v, 1, 1), string.sub(v, 2, 2), hs
end
local function encode(mode, wait, hs)
  local parts = {mode .. wait}
  for _, h in ipairs(hs) do parts[#parts + 1] = h[1] .. '\\t' .. h[2] .. '\\t' .. h[3] end
  return table.concat(parts, '\\t')
end
local function holder(v)
  local tab = string.find(v, '\\t', 4, true)
  return string.sub(v, 4, tab - 1)
end
local function adjuster(adj, txn)
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', adj, cursor, 'MATCH', 't:*', 'COUNT', 20)
    cursor = page[1]
    for j = 1, #page[2], 2 do
      local who = string.sub(page[2][j], 3)
      if who ~= txn then
        local lease, primary = string.match(page[2][j + 1], '^([^\\t]*)\\t([^\\t]*)\\t')
        return {who, lease, primary}
      end
    end
  until cursor == '0'
  return {'', '0', ''}
end
local function strings(data)
  local values = call_all('MGET', {}, data)
  local absent = {}
  for i = 1, #data do
    if not values[i] then absent[#absent + 1] = i end
  end
  if #absent == 0 then return values end
  local keys = {}
  for j, i in ipairs(absent) do keys[j] = data[i] end
  local any = false
  for j = 1, #keys, 1000 do
    any = any or redis.call('EXISTS', unpack(keys, j, math.min(j + 999, #keys))) > 0
  end
  if not any then return values end
  for _, i in ipairs(absent) do
    local kind = redis.call('TYPE', data[i]).ok
    if kind ~= 'none' then return nil, {'wrong_type', i - 1, kind} end
  end
  return values
end
local function integer(raw)
  if raw == '0' then return 0 end
  local sign, digits = string.match(raw, '^(-?)([1-9]%d*)$')
  if not digits or #digits > 19 then return nil end
  if #digits == 19 then
    local max = '9223372036854775807'
    if sign == '-' then max = '9223372036854775808' end
    if digits > max then return nil end
  end
  return tonumber(raw)
end
local function int(x)
  return string.format('%.0f', x)
end
local function bounded(raw, neg, pos, list)
  local value = 0
  if raw then
    value = integer(raw)
    if not value then return nil, {'nan'} end
  end
  local cum, j = 0, 0
  local exact = 9007199254740992
  for item in string.gmatch(list, '[^;]+') do
    j = j + 1
    local d, l, u = string.match(item, '^(-?%d+):(-?%d*):(-?%d*)$')
    cum = cum + tonumber(d)
    if value + pos + cum > exact or value + neg + cum < -exact then
      return nil, {'range'}
    end
    if (l ~= '' and value + neg + cum < tonumber(l)) or (u ~= '' and value + pos + cum > tonumber(u)) then
      return nil, {'bound', j}
    end
  end
  return cum
end
local function locked(i, meta, adj, v, txn, now_ms)
  local mode, wait = string.sub(v, 1, 1), string.sub(v, 2, 2)
  local h
  if mode == 'a' then
    h = adjuster(adj, txn)
  else
    local _, _, hs = holders(v)
    h = hs[1]
    for _, x in ipairs(hs) do
      if x[1] ~= txn then h = x break end
    end
  end
  if wait ~= '1' then redis.call('SET', meta, mode .. '1' .. string.sub(v, 3)) end
  return {'locked', i - 1, h[1], tonumber(h[2]) - now_ms, h[3]}
end
local function legacy(i, meta)
  if redis.call('TYPE', meta).ok ~= 'hash' then
    return {'stopped', 'the lock table entry ' .. meta .. ' holds a value of another type'}
  end
  local held = redis.call('HGET', meta, 'lock')
  if held then return {'legacy', i - 1, held} end
  redis.call('DEL', meta)
  return nil
end
local function release_all(txn, data, metas, adjs, found, ops, values)
  local dels, sets, gone, wake = {}, {}, {}, {}
  local n = 0
  for i = 1, #metas do
    local v = found[i]
    local mode = v and string.sub(v, 1, 1)
    if mode == 'x' and holder(v) == txn then
      n = n + 1
      dels[#dels + 1] = metas[i]
      if ops[i] == 'set' then
        sets[#sets + 1] = data[i]
        sets[#sets + 1] = values[i]
      elseif ops[i] == 'del' then
        gone[#gone + 1] = data[i]
      end
      if string.sub(v, 2, 2) == '1' then wake[#wake + 1] = data[i] end
    elseif mode == 's' then
      local _, wait, hs = holders(v)
      local rest, mine = {}, false
      for _, h in ipairs(hs) do
        if h[1] == txn then mine = true else rest[#rest + 1] = h end
      end
      if mine then
        n = n + 1
        if #rest == 0 then
          dels[#dels + 1] = metas[i]
          if wait == '1' then wake[#wake + 1] = data[i] end
        else
          redis.call('SET', metas[i], encode('s', wait, rest))
        end
      end
    elseif mode == 'a' then
      local r = redis.call('HMGET', adjs[i], 't:' .. txn, 'n')
      local h = r[1]
      if h then
        n = n + 1
        if ops[i] == 'adj' then
          local total = 0
          for d in string.gmatch(values[i], '(-?%d+):[^;]*') do total = total + tonumber(d) end
          if total ~= 0 then redis.call('INCRBY', data[i], total) end
        end
        if (tonumber(r[2]) or 0) <= 1 then
          redis.call('DEL', metas[i], adjs[i])
          if string.sub(v, 2, 2) == '1' then wake[#wake + 1] = data[i] end
        else
          local reserved = tonumber(string.match(h, '([^\\t]*)$')) or 0
          redis.call('HDEL', adjs[i], 't:' .. txn)
          if reserved < 0 then
            redis.call('HINCRBY', adjs[i], 'neg', -reserved)
          elseif reserved > 0 then
            redis.call('HINCRBY', adjs[i], 'pos', -reserved)
          end
          redis.call('HINCRBY', adjs[i], 'n', -1)
        end
      end
    end
  end
  if #dels > 0 then call_all('DEL', {}, dels) end
  if #sets > 0 then call_all('MSET', {}, sets) end
  if #gone > 0 then call_all('DEL', {}, gone) end
  for _, k in ipairs(wake) do redis.call('PUBLISH', 'rs:wake', k) end
  return n
end
"
    };
}

/// Locks and reads, in one step, every key a transaction declared on this
/// store: `x` locks exclusively (a key it may write), `s` shared (a key it
/// only reads, in a transaction that spans stores or writes), `a` in adjust
/// mode (a key it only adjusts: other adjusters share it, and its value is
/// not needed), `r` reads without locking (a read-only transaction on this
/// store alone, which this one script makes atomic). All or nothing: on
/// the first key held by another transaction in a conflicting mode (or
/// waited for, when this one would join its holders), nothing is locked,
/// the key is marked as waited for, and a holder is named. A declared key
/// holding a value that is not a string is an error, before anything is
/// locked. When the transaction's index entry is already there, this very
/// call went through before (a client that resends after a lost reply, as
/// a cluster client does): the values are read again and nothing changes.
///
/// A transaction whose adjustments are known before it locks (every key it
/// has is only adjusted, so its steps ran first) reserves them here, in the
/// same step as it joins their keys: checked against their bounds as
/// [`RESERVE`] does, and refused all or nothing (then nothing is locked).
///
/// Stores written by the first protocol keep a metadata hash at a key's
/// lock table entry, with the key's version, for every key it ever
/// committed. Such a hash is dropped where it is met (versions mean nothing
/// now), unless it holds that protocol's lock: then nothing is locked and
/// its holder is named, for an operator to finish with the version that
/// took it.
///
/// A read that locks nothing (or a call delivered again) writes nothing
/// either, so the `WAIT` after it would cover none of what it read; with
/// `sync` (the store's writes must reach replicas), it makes a write that
/// changes nothing (an index member added and removed at once), so that the
/// `WAIT` covers every value it read (see [`DECISION`]): a value the master
/// holds and its replicas do not, which a failover could lose, is never
/// answered.
///
/// KEYS: data1, meta1, adjusters1, ..., index; ARGV: txn, lease_ms,
/// primary, index entry, sync (`1` or ''), then one mode per key, then
/// (only to reserve) one `delta:lower:upper;...` per key ('' for none).
/// Reply: `{'ok', value1|nil, ...}`,
/// `{'locked', i (0-based), holder, remaining_ms, holder's primary}`,
/// `{'legacy', i, holder}`, or a reservation's refusal (see [`RESERVE`]).
pub const LOCK: &str = lua_clock!(concat!(
    lua_locks!(),
    "local txn = ARGV[1]
local n = (#KEYS - 1) / 3
local data, metas, adjs = {}, {}, {}
for i = 1, n do
  data[i] = KEYS[3 * i - 2]
  metas[i] = KEYS[3 * i - 1]
  adjs[i] = KEYS[3 * i]
end
local values, wrong = strings(data)
if not values then return wrong end
local function sync()
  if ARGV[5] == '1' then
    redis.call('ZADD', KEYS[#KEYS], 0, 'sync')
    redis.call('ZREM', KEYS[#KEYS], 'sync')
  end
end
if redis.call('ZSCORE', KEYS[#KEYS], ARGV[4]) then
  sync()
  local out = {'ok'}
  for i = 1, n do out[i + 1] = values[i] end
  return out
end
local lease = now_ms + tonumber(ARGV[2])
local mine = txn .. '\\t' .. lease .. '\\t' .. ARGV[3]
local function conflict(i, v)
  return locked(i, metas[i], adjs[i], v, txn, now_ms)
end
local xs, xi, joins, ri = {}, {}, {}, {}
for i = 1, n do
  local mode = ARGV[5 + i]
  if mode == 'x' then
    xs[#xs + 1] = metas[i]
    xs[#xs + 1] = 'x0\\t' .. mine
    xi[#xi + 1] = i
  elseif mode == 's' or mode == 'a' then
    joins[#joins + 1] = i
  else
    ri[#ri + 1] = i
  end
end
if #ri > 0 then
  local keys = {}
  for j, i in ipairs(ri) do keys[j] = metas[i] end
  local found = call_all('MGET', {}, keys)
  for j, i in ipairs(ri) do
    if found[j] and string.sub(found[j], 1, 1) ~= 's' then return conflict(i, found[j]) end
  end
end
local function taken(keys)
  local found = call_all('MGET', {}, keys)
  for j = 1, #keys do
    if found[j] then return j, found[j] end
  end
  return nil
end
if #xs > 0 then
  local keys = {}
  for j, i in ipairs(xi) do keys[j] = metas[i] end
  local function lock_all()
    if #xs <= 2000 then return redis.call('MSETNX', unpack(xs)) end
    if taken(keys) then return 0 end
    call_all('MSET', {}, xs)
    return 1
  end
  local set = lock_all()
  if set == 0 then
    local j, v = taken(keys)
    if j then return conflict(xi[j], v) end
    for _, i in ipairs(xi) do
      if redis.call('EXISTS', metas[i]) == 1 then
        local refused = legacy(i, metas[i])
        if refused then return refused end
      end
    end
    if lock_all() == 0 then
      return {'stopped', 'a lock table entry of another type is in the way'}
    end
  end
end
local undo = {}
local function rollback()
  for j = 1, #xs, 2 do redis.call('DEL', xs[j]) end
  for _, u in ipairs(undo) do
    if u.adj then
      redis.call('HDEL', u.adj, 't:' .. txn)
      if redis.call('HINCRBY', u.adj, 'n', -1) <= 0 then
        redis.call('DEL', u.adj)
      elseif u.reserved < 0 then
        redis.call('HINCRBY', u.adj, 'neg', -u.reserved)
      elseif u.reserved > 0 then
        redis.call('HINCRBY', u.adj, 'pos', -u.reserved)
      end
    end
    if u.old then redis.call('SET', u.meta, u.old) else redis.call('DEL', u.meta) end
  end
end
for _, i in ipairs(joins) do
  local mode = ARGV[5 + i]
  local first = mode .. '0'
  if mode == 's' then first = first .. '\\t' .. mine end
  local old = redis.pcall('SET', metas[i], first, 'NX', 'GET')
  if type(old) == 'table' and old.err then
    local refused = legacy(i, metas[i])
    if refused then
      rollback()
      return refused
    end
    old = redis.call('SET', metas[i], first, 'NX', 'GET')
  end
  if old and (string.sub(old, 1, 1) ~= mode or string.sub(old, 2, 2) == '1') then
    rollback()
    return conflict(i, old)
  end
  if mode == 's' then
    undo[#undo + 1] = {meta = metas[i], old = old}
    if old then redis.call('SET', metas[i], old .. '\\t' .. mine) end
  else
    local wanted = ARGV[5 + n + i]
    local held = 't:' .. txn
    if wanted and wanted ~= '' then
      local r = redis.call('HMGET', adjs[i], 'neg', 'pos', 'n')
      local neg, pos = tonumber(r[1]) or 0, tonumber(r[2]) or 0
      local total, refused = bounded(values[i], neg, pos, wanted)
      if refused then
        undo[#undo + 1] = {meta = metas[i], old = old}
        rollback()
        return {refused[1], i - 1, refused[2]}
      end
      undo[#undo + 1] = {meta = metas[i], old = old, adj = adjs[i], reserved = total}
      redis.call('HSET', adjs[i], held, lease .. '\\t' .. ARGV[3] .. '\\t' .. int(total),
        'n', (tonumber(r[3]) or 0) + 1, 'neg', neg + math.min(total, 0), 'pos', pos + math.max(total, 0))
    else
      undo[#undo + 1] = {meta = metas[i], old = old, adj = adjs[i], reserved = 0}
      redis.call('HSET', adjs[i], held, lease .. '\\t' .. ARGV[3] .. '\\t0')
      redis.call('HINCRBY', adjs[i], 'n', 1)
    end
  end
end
if #xs > 0 or #joins > 0 then
  redis.call('ZADD', KEYS[#KEYS], lease, ARGV[4])
else
  sync()
end
local out = {'ok'}
for i = 1, n do out[i + 1] = values[i] end
return out
"
));

/// Reserves a transaction's adjustments of keys it holds in `a` mode on a
/// store other than its primary, before its decision: each checked against
/// its bounds with what the other adjusters reserved (see the module
/// essay), and recorded with its adjuster, all or none. A key this
/// transaction already reserved is left as it is, so that the same call
/// delivered twice (a client that resends after a lost reply, as a
/// cluster client does) reserves once.
/// KEYS: data1, meta1, adjusters1, ...; ARGV: txn, then per key its
/// adjustments `delta:lower:upper;...`.
/// Reply: `{'ok'}`, `{'bound', i, j}` (adjustment `j`, 1-based, of key `i`),
/// `{'nan', i}` (not an integer), `{'range', i}`, `{'lost', i}` or
/// `{'wrong_type', i, type}` (a key of another Redis type).
pub const RESERVE: &str = concat!(
    lua_locks!(),
    "local txn = ARGV[1]
local n = #KEYS / 3
local data = {}
for i = 1, n do data[i] = KEYS[3 * i - 2] end
local raws, wrong = strings(data)
if not raws then return wrong end
local held, totals = {}, {}
for i = 1, n do
  local r = redis.call('HMGET', KEYS[3 * i], 't:' .. txn, 'neg', 'pos')
  if not r[1] then return {'lost', i - 1} end
  if string.match(r[1], '\\t([^\\t]*)$') == '0' then
    local total, refused = bounded(raws[i], tonumber(r[2]) or 0, tonumber(r[3]) or 0, ARGV[1 + i])
    if refused then return {refused[1], i - 1, refused[2]} end
    held[i], totals[i] = r[1], total
  end
end
for i = 1, n do
  if held[i] then
    local lease, primary = string.match(held[i], '^([^\\t]*)\\t([^\\t]*)\\t')
    redis.call('HSET', KEYS[3 * i], 't:' .. txn, lease .. '\\t' .. primary .. '\\t' .. int(totals[i]))
    if totals[i] < 0 then
      redis.call('HINCRBY', KEYS[3 * i], 'neg', totals[i])
    elseif totals[i] > 0 then
      redis.call('HINCRBY', KEYS[3 * i], 'pos', totals[i])
    end
  end
end
return {'ok'}
"
);

/// The commit point, on the transaction's primary store: checks that every
/// lock of the transaction here is still its own (and that its adjustments
/// here keep their bounds), writes the decision record unless one stands
/// (a recovering host's `aborted` fences a coordinator that was too slow),
/// and in the same step applies this store's writes and releases its
/// locks. With an idempotency claim, only while the claim is still the
/// owner's, and the outcome is stored under the client's key at once, so
/// that a retry can never miss a commit. The transaction's index entry here
/// stays, as the record's marker, until the record is finalized (with no
/// keys here and other stores to apply, a marker is added): should the
/// coordinator die before every store applied, the sweep finds it.
///
/// `free`: the transaction holds no lock here. Every key of it here is one
/// it only adjusts, so its adjustments were known before it locked
/// anything, and its keys here need no lock before this very step: each
/// must be free, or held by adjusters only (whose reservations count
/// against the bounds), and gets its delta at once. A key held otherwise
/// is in the way, as for [`LOCK`], and nothing changes.
///
/// KEYS: record, index, idempotency key (or the record again), then data1,
/// meta1, adjusters1, ...
/// ARGV: txn, record, record_ttl_ms ('0': none), marker to add ('' if
/// none), lease_ms, claim owner ('' if none), outcome, retention_ms,
/// `held` or `free`, then per key `op, value`.
/// Reply: `{'ok'}`, `{'decided', record}`, `{'superseded'}`, `{'lost', i}`
/// (a lock here is no longer the transaction's), an adjustment's refusal
/// (see [`RESERVE`]), or, when `free`, `{'locked', ...}` or `{'legacy',
/// ...}` as [`LOCK`] answers them.
pub const COMMIT: &str = concat!(
    lua_locks!(),
    "local txn = ARGV[1]
if ARGV[6] ~= '' then
  local v = redis.call('GET', KEYS[3])
  if not v then return {'superseded'} end
  local c = cjson.decode(v)
  if c.state ~= 'pending' or c.owner ~= ARGV[6] then return {'superseded'} end
end
local n = (#KEYS - 3) / 3
local data, metas, adjs, ops, values = {}, {}, {}, {}, {}
for i = 1, n do
  data[i] = KEYS[1 + 3 * i]
  metas[i] = KEYS[2 + 3 * i]
  adjs[i] = KEYS[3 + 3 * i]
  ops[i] = ARGV[8 + 2 * i]
  values[i] = ARGV[9 + 2 * i]
end
local free = ARGV[9] == 'free'
local found = {}
if n > 0 then found = call_all('MGET', {}, metas) end
if free then
  local absent = {}
  for i = 1, n do
    if not found[i] then absent[#absent + 1] = metas[i] end
  end
  if #absent > 0 and redis.call('EXISTS', unpack(absent)) > 0 then
    for i = 1, n do
      if not found[i] and redis.call('EXISTS', metas[i]) == 1 then
        local refused = legacy(i, metas[i])
        if refused then return refused end
      end
    end
  end
end
local raws, adjusted = {}, {}
for i = 1, n do
  if ops[i] == 'adj' then adjusted[#adjusted + 1] = i end
end
if #adjusted > 0 then
  local keys = {}
  for j, i in ipairs(adjusted) do keys[j] = data[i] end
  local got, wrong = strings(keys)
  if not got then return {wrong[1], adjusted[wrong[2] + 1] - 1, wrong[3]} end
  for j, i in ipairs(adjusted) do raws[i] = got[j] end
end
local totals = {}
for i = 1, n do
  local v = found[i]
  local mode = v and string.sub(v, 1, 1)
  if free then
    if v and mode ~= 'a' then
      local t = redis.call('TIME')
      return locked(i, metas[i], adjs[i], v, txn, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
    end
    if ops[i] == 'set' or ops[i] == 'del' then
      return {'stopped', 'key ' .. data[i] .. ' would be written without its lock'}
    elseif ops[i] == 'adj' then
      local neg, pos = 0, 0
      if v then
        local r = redis.call('HMGET', adjs[i], 'neg', 'pos')
        neg, pos = tonumber(r[1]) or 0, tonumber(r[2]) or 0
      end
      local total, refused = bounded(raws[i], neg, pos, values[i])
      if refused then return {refused[1], i - 1, refused[2]} end
      totals[i] = total
    end
  elseif mode == 'a' then
    local r = redis.call('HMGET', adjs[i], 't:' .. txn, 'neg', 'pos')
    if not r[1] then return {'lost', i - 1} end
    if ops[i] == 'adj' then
      local _, refused = bounded(raws[i], tonumber(r[2]) or 0, tonumber(r[3]) or 0, values[i])
      if refused then return {refused[1], i - 1, refused[2]} end
    end
  elseif not ((mode == 'x' and holder(v) == txn)
    or (mode == 's' and string.find(v, '\\t' .. txn .. '\\t', 1, true))) then
    return {'lost', i - 1}
  end
end
local decided
if ARGV[3] == '0' then
  decided = redis.call('SET', KEYS[1], ARGV[2], 'NX')
else
  decided = redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3])
end
if not decided then return {'decided', redis.call('GET', KEYS[1])} end
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[8]) end
if free then
  for i = 1, n do
    if totals[i] and totals[i] ~= 0 then redis.call('INCRBY', data[i], totals[i]) end
  end
else
  release_all(txn, data, metas, adjs, found, ops, values)
end
if ARGV[4] ~= '' then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[5]), ARGV[4])
end
return {'ok'}
"
);

/// Extends a live transaction's leases on this store: every lock it holds
/// here and its lock index entry get `lease_ms` from now, by the server's
/// clock. A coordinator renews while its transaction runs (a third of a
/// lease apart), so that a transaction within its limits is never taken for
/// dead because it is slow; one that dies stops renewing, and its leases
/// end as before. A key no longer held (recovery took it) is left alone
/// and counted; nothing is ever locked anew here.
/// KEYS: data1, meta1, adjusters1, ..., index; ARGV: txn, lease_ms, index
/// entry. Reply: how many of the keys the transaction no longer holds.
pub const RENEW: &str = lua_clock!(concat!(
    lua_locks!(),
    "local txn = ARGV[1]
local lease = tostring(now_ms + tonumber(ARGV[2]))
local n = (#KEYS - 1) / 3
local lost = 0
for i = 1, n do
  local meta, adj = KEYS[3 * i - 1], KEYS[3 * i]
  local v = redis.call('GET', meta)
  local mode = v and string.sub(v, 1, 1)
  local renewed = false
  if mode == 'x' or mode == 's' then
    local _, wait, hs = holders(v)
    for _, h in ipairs(hs) do
      if h[1] == txn then
        h[2] = lease
        renewed = true
      end
    end
    if renewed then redis.call('SET', meta, encode(mode, wait, hs)) end
  elseif mode == 'a' then
    local h = redis.call('HGET', adj, 't:' .. txn)
    if h then
      redis.call('HSET', adj, 't:' .. txn, lease .. string.match(h, '^[^\\t]*(.*)$'))
      renewed = true
    end
  end
  if not renewed then lost = lost + 1 end
end
redis.call('ZADD', KEYS[#KEYS], 'XX', lease, ARGV[3])
return lost
"
));

/// Applies a decided transaction's writes on this store and releases its
/// locks here (or, with every op `keep`, just releases them: a rollback,
/// which also gives up its reservations). Idempotent: a key no longer held
/// by the transaction is left alone. The values its adjustments add to are
/// checked before anything changes: through redstage they are integers
/// (each was checked when its delta was reserved, and only adjusters have
/// touched it since), but a value written behind redstage's back that
/// `INCRBY` refuses makes the whole call an error that changes nothing,
/// rather than one that fails half-way.
/// KEYS: data1, meta1, adjusters1, ..., index; ARGV: txn, index entry (''
/// if none), then per key `op, value`. Reply: how many keys the transaction
/// held.
pub const APPLY: &str = concat!(
    lua_locks!(),
    "local n = (#KEYS - 1) / 3
local data, metas, adjs, ops, values = {}, {}, {}, {}, {}
local adjusted = {}
for i = 1, n do
  data[i] = KEYS[3 * i - 2]
  metas[i] = KEYS[3 * i - 1]
  adjs[i] = KEYS[3 * i]
  ops[i] = ARGV[1 + 2 * i]
  values[i] = ARGV[2 + 2 * i]
  if ops[i] == 'adj' then adjusted[#adjusted + 1] = data[i] end
end
if #adjusted > 0 then
  local raws, wrong = strings(adjusted)
  local bad = wrong and adjusted[wrong[2] + 1]
  for j = 1, #adjusted do
    if raws and raws[j] and not integer(raws[j]) then bad = adjusted[j] end
  end
  if bad then
    return redis.error_reply('key ' .. bad .. ' cannot be adjusted: something written behind redstage that INCRBY refuses is in it; nothing applied')
  end
end
local held = 0
if n > 0 then
  held = release_all(ARGV[1], data, metas, adjs, call_all('MGET', {}, metas), ops, values)
end
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[#KEYS], ARGV[2]) end
return held
"
);

/// Ends the life of decision records whose every store has applied: each
/// becomes the compact form with a TTL, or goes (`ttl` 0), and its marker
/// leaves the index. Only committed records are finalized, and only once
/// nothing points at them any more.
/// KEYS: index, record1, record2, ...; ARGV: compact record, then per
/// record `ttl_ms, marker ('' if none)`. Reply: number of records.
pub const FINALIZE: &str = concat!(
    lua_locks!(),
    "local gone, markers = {}, {}
for i = 2, #KEYS do
  local a = 2 * (i - 1)
  if ARGV[a] == '0' then
    gone[#gone + 1] = KEYS[i]
  else
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[a], 'XX')
  end
  if ARGV[a + 1] ~= '' then markers[#markers + 1] = ARGV[a + 1] end
end
if #gone > 0 then call_all('DEL', {}, gone) end
if #markers > 0 then call_all('ZREM', {KEYS[1]}, markers) end
return #KEYS - 1
"
);

/// Reads the decision record of a transaction, so that it can be acted on:
/// with `fence`, writes `aborted` first unless a record stands (how
/// recovery fences a transaction whose lease ran out). With `reassert`
/// (the store's writes must reach replicas), a record found is written
/// again as it is: a `WAIT` after a pure read covers nothing (Redis counts
/// only the connection's own writes), but after this write it covers every
/// write the master made before it, the record's included. So a decision
/// is acted on only once it is as durable as the store's setting demands:
/// one the master holds but its replicas do not yet (its own commit's
/// `WAIT` timed out) could be lost in a failover, after recovery acted on
/// it on other stores.
/// KEYS: record; ARGV: `read` or `fence`, reassert (`1` or ''), the record
/// to fence with, its TTL in ms. Reply: the record that stands, or nil.
pub const DECISION: &str = "local v = redis.call('GET', KEYS[1])
if v then
  if ARGV[2] == '1' then redis.call('SET', KEYS[1], v, 'KEEPTTL') end
  return v
end
if ARGV[1] ~= 'fence' then return false end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return ARGV[3]
";

/// Index entries whose lease has run out, oldest first, each with its
/// deadline (the score).
/// KEYS: index; ARGV: max entries. Reply: entry, deadline, entry, ...
pub const EXPIRED: &str = lua_clock!(
    "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
"
);

/// How many locks the index holds, and how many of them are past their
/// lease by the server's clock: what `/metrics` reports per store.
/// KEYS: index. Reply: {held, expired}.
pub const LOCK_COUNTS: &str = lua_clock!(
    "return {redis.call('ZCARD', KEYS[1]), redis.call('ZCOUNT', KEYS[1], '-inf', now_ms)}
"
);

/// Puts an index entry the sweep could not resolve back in line, `ARGV[2]`
/// ms from now by the server's clock, behind the others, so that an entry
/// that fails every time cannot starve the rest.
/// KEYS: index; ARGV: entry, delay_ms. Reply: 1 if the entry was there.
pub const RESCORE: &str = lua_clock!(
    "return redis.call('ZADD', KEYS[1], 'XX', 'CH', now_ms + tonumber(ARGV[2]), ARGV[1])
"
);

/// Claims an idempotency key for `owner`, unless a first request holds it.
/// Claiming again with the same owner answers `claimed` (a reply lost on the
/// way is simply asked again). A key first used for another request (a
/// different fingerprint), running or done, answers `reused`. A stored
/// outcome is written again as it is before it is answered, with
/// `reassert`, for the reason [`DECISION`] gives: it is answered only once
/// it has reached the replicas.
/// KEYS: idempotency key; ARGV: owner, lease_ms, retention_ms, fingerprint,
/// reassert (`1` or '').
/// Reply: `{'claimed'}`, `{'in_flight'}` while another owner's claim is
/// live, `{'reused'}`, or `{'done', record}` once the first request has an
/// outcome.
pub const CLAIM: &str = lua_clock!(
    "local v = redis.call('GET', KEYS[1])
if v then
  local r = cjson.decode(v)
  if r.request and r.request ~= ARGV[4] then return {'reused'} end
  if r.state ~= 'pending' then
    if ARGV[5] == '1' then redis.call('SET', KEYS[1], v, 'KEEPTTL') end
    return {'done', v}
  end
  if r.owner == ARGV[1] then return {'claimed'} end
  if tonumber(r.lease) > now_ms then return {'in_flight'} end
end
local claim = cjson.encode({state = 'pending', owner = ARGV[1],
  lease = tostring(now_ms + tonumber(ARGV[2])), request = ARGV[4]})
redis.call('SET', KEYS[1], claim, 'PX', ARGV[3])
return {'claimed'}
"
);

/// Replaces `owner`'s claim on an idempotency key with `record` (the
/// outcome), or drops it when `record` is empty. A claim taken over by a
/// later request is left alone.
/// KEYS: idempotency key; ARGV: owner, record, retention_ms. Reply: 1 or 0.
pub const SETTLE_CLAIM: &str = "local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local r = cjson.decode(v)
if r.state ~= 'pending' or r.owner ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";
