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

/// `release(data, meta, txn, op, value)`: lets go of `txn`'s lock on one
/// key. Held exclusively: applies `op` first (`set` value, `del`, or `keep`
/// for none). Held shared: drops this holder. Once no holder is left the
/// lock table entry goes away, and if anyone waited for the key, its name
/// is published on the wake channel. Returns true when `txn` held the key
/// (so a repeated release, or one after recovery, changes nothing).
macro_rules! lua_release {
    () => {
        "local function release(data, meta, txn, op, value)
  local m = redis.call('HMGET', meta, 'lock', 'readers', 'wait')
  if m[1] == txn then
    if op == 'set' then
      redis.call('SET', data, value)
    elseif op == 'del' then
      redis.call('DEL', data)
    end
  elseif redis.call('HDEL', meta, 'r:' .. txn) == 1 then
    local left = tonumber(m[2]) - 1
    if left > 0 then
      redis.call('HSET', meta, 'readers', left)
      return true
    end
  else
    return false
  end
  redis.call('DEL', meta)
  if m[3] then redis.call('PUBLISH', 'rs:wake', data) end
  return true
end
"
    };
}

/// Locks and reads, in one step, every key a transaction declared on this
/// store: `x` locks exclusively (a key it may write), `s` shared (a key it
/// only reads, in a transaction that spans stores), `r` reads without
/// locking (a read-only transaction on this store alone, which this one
/// script makes atomic). All or nothing: on the first key held by another
/// transaction in a conflicting mode, nothing is locked, the key is marked
/// as waited for, and the holder is named.
///
/// KEYS: data1, meta1, ..., index; ARGV: txn, lease_ms, primary, index
/// entry, then one mode per key.
/// Reply: `{'ok', value1|nil, ...}` or
/// `{'locked', i (0-based), holder, remaining_ms, holder's primary}`.
pub const LOCK: &str = lua_clock!(
    "local txn = ARGV[1]
local n = (#KEYS - 1) / 2
local function holder_of(meta, mode)
  local m = redis.call('HMGET', meta, 'lock', 'lease', 'primary', 'readers')
  if m[1] and m[1] ~= txn then return m[1], m[2], m[3] end
  if mode == 'x' and m[4] then
    local all = redis.call('HGETALL', meta)
    for j = 1, #all, 2 do
      local f = all[j]
      if string.sub(f, 1, 2) == 'r:' and string.sub(f, 3) ~= txn then
        local v = all[j + 1]
        local sp = string.find(v, ' ', 1, true)
        return string.sub(f, 3), string.sub(v, 1, sp - 1), string.sub(v, sp + 1)
      end
    end
  end
  return nil
end
for i = 1, n do
  local holder, lease, primary = holder_of(KEYS[2 * i], ARGV[4 + i])
  if holder then
    redis.call('HSET', KEYS[2 * i], 'wait', '1')
    return {'locked', i - 1, holder, tonumber(lease) - now_ms, primary}
  end
end
local lease = now_ms + tonumber(ARGV[2])
local locked = false
for i = 1, n do
  local mode = ARGV[4 + i]
  if mode == 'x' then
    redis.call('HSET', KEYS[2 * i], 'lock', txn, 'lease', lease, 'primary', ARGV[3])
    locked = true
  elseif mode == 's' then
    if redis.call('HSETNX', KEYS[2 * i], 'r:' .. txn, lease .. ' ' .. ARGV[3]) == 1 then
      redis.call('HINCRBY', KEYS[2 * i], 'readers', 1)
    end
    locked = true
  end
end
if locked then redis.call('ZADD', KEYS[#KEYS], lease, ARGV[4]) end
local out = {'ok'}
for i = 1, n do out[i + 1] = redis.call('GET', KEYS[2 * i - 1]) end
return out
"
);

/// The commit point, on the transaction's primary store: writes the
/// decision record unless one stands (a recovering host's `aborted` fences
/// a coordinator that was too slow), and in the same step applies this
/// store's writes and releases this store's locks. With an idempotency
/// claim, only while the claim is still the owner's, and the outcome is
/// stored under the client's key at once, so that a retry can never miss a
/// commit. When other stores still have to apply, the record stays without
/// a TTL and an index entry without keys (the marker) lets the sweep find
/// it should the coordinator die before they are applied.
///
/// KEYS: record, index, idempotency key (or the record again), then data1,
/// meta1, ...
/// ARGV: txn, record, record_ttl_ms ('0': none), index entry of this
/// store's locks ('' if none), marker entry ('' if none), lease_ms, claim
/// owner ('' if none), outcome, retention_ms, then per key `op, value`.
/// Reply: `{'ok'}`, `{'decided', record}`, `{'superseded'}` or
/// `{'lost', i}` (a lock here is no longer the transaction's).
pub const COMMIT: &str = lua_clock!(concat!(
    lua_release!(),
    "local txn = ARGV[1]
local standing = redis.call('GET', KEYS[1])
if standing then return {'decided', standing} end
if ARGV[7] ~= '' then
  local v = redis.call('GET', KEYS[3])
  if not v then return {'superseded'} end
  local c = cjson.decode(v)
  if c.state ~= 'pending' or c.owner ~= ARGV[7] then return {'superseded'} end
end
for i = 4, #KEYS, 2 do
  local meta = KEYS[i + 1]
  if redis.call('HGET', meta, 'lock') ~= txn and redis.call('HEXISTS', meta, 'r:' .. txn) == 0 then
    return {'lost', (i - 4) / 2}
  end
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
if ARGV[7] ~= '' then redis.call('SET', KEYS[3], ARGV[8], 'PX', ARGV[9]) end
for i = 4, #KEYS, 2 do
  local a = 10 + (i - 4)
  release(KEYS[i], KEYS[i + 1], txn, ARGV[a], ARGV[a + 1])
end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[6]), ARGV[5]) end
return {'ok'}
"
));

/// Applies a decided transaction's writes on this store and releases its
/// locks here (or, with every op `keep`, just releases them: a rollback).
/// Idempotent: a key no longer held by the transaction is left alone.
/// KEYS: data1, meta1, ..., index; ARGV: txn, index entry ('' if none),
/// then per key `op, value`. Reply: how many keys the transaction held.
pub const APPLY: &str = concat!(
    lua_release!(),
    "local n = 0
for i = 1, #KEYS - 1, 2 do
  local a = 3 + (i - 1)
  if release(KEYS[i], KEYS[i + 1], ARGV[1], ARGV[a], ARGV[a + 1]) then n = n + 1 end
end
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[#KEYS], ARGV[2]) end
return n
"
);

/// Ends the life of decision records whose every store has applied: each
/// becomes the compact form with a TTL, or goes (`ttl` 0), and its marker
/// leaves the index. Only committed records are finalized, and only once
/// nothing points at them any more.
/// KEYS: index, record1, record2, ...; ARGV: compact record, then per
/// record `ttl_ms, marker ('' if none)`. Reply: number of records.
pub const FINALIZE: &str = "for i = 2, #KEYS do
  local a = 2 * (i - 1)
  if ARGV[a] == '0' then
    redis.call('DEL', KEYS[i])
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[a])
  end
  if ARGV[a + 1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[a + 1]) end
end
return #KEYS - 1
";

/// Index entries whose lease has run out, oldest first.
/// KEYS: index; ARGV: max entries. Reply: entries.
pub const EXPIRED: &str = lua_clock!(
    "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
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
/// different fingerprint), running or done, answers `reused`.
/// KEYS: idempotency key; ARGV: owner, lease_ms, retention_ms, fingerprint.
/// Reply: `{'claimed'}`, `{'in_flight'}` while another owner's claim is
/// live, `{'reused'}`, or `{'done', record}` once the first request has an
/// outcome.
pub const CLAIM: &str = lua_clock!(
    "local v = redis.call('GET', KEYS[1])
if v then
  local r = cjson.decode(v)
  if r.request and r.request ~= ARGV[4] then return {'reused'} end
  if r.state ~= 'pending' then return {'done', v} end
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
