//! The Lua scripts that read and change keys atomically on one store.
//!
//! Keys always travel in `KEYS` and values in `ARGV`, never spliced into the
//! script text, so a key with braces, quotes or newlines is just bytes here.
//! Every script checks everything before it changes anything: a Redis script
//! that fails half-way is not rolled back.
//!
//! Times are read from the Redis server (`TIME`), so leases mean the same to
//! every host whatever their clocks say.

/// Shared prologue: `now_ms` by the server's clock.
macro_rules! lua {
    ($body:expr) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            $body
        )
    };
}

/// Checks the metadata of key pair `i` (1-based): not locked by another txn,
/// version as expected. Returns nil when fine, else the conflict reply
/// `{'locked', i-1, holder, expired}` or `{'changed', i-1}`.
macro_rules! lua_check {
    () => {
        "local function check(meta_key, i, txn, expected_ver)\n\
           local m = redis.call('HMGET', meta_key, 'ver', 'lock', 'lease')\n\
           if m[2] and m[2] ~= txn then\n\
             local expired = 0\n\
             if tonumber(m[3]) <= now_ms then expired = 1 end\n\
             return {'locked', i - 1, m[2], expired}\n\
           end\n\
           if expected_ver and (m[1] or '0') ~= expected_ver then\n\
             return {'changed', i - 1}\n\
           end\n\
           return nil\n\
         end\n"
    };
}

/// KEYS: data1, meta1, data2, meta2, ...
/// Reply: per key `value|nil, ver, lock|nil, expired(0|1)`.
pub const READ: &str = lua!(
    "local out = {}
for i = 1, #KEYS, 2 do
  local m = redis.call('HMGET', KEYS[i + 1], 'ver', 'lock', 'lease')
  local expired = 0
  if m[2] and tonumber(m[3]) <= now_ms then expired = 1 end
  out[#out + 1] = redis.call('GET', KEYS[i])
  out[#out + 1] = m[1] or '0'
  out[#out + 1] = m[2]
  out[#out + 1] = expired
end
return out
"
);

/// Locks write keys, stages their new values, and records each lock in the
/// store's lock index (`txn \n key`, scored by lease deadline) so that the
/// recovery sweep finds it.
/// KEYS: data1, meta1, ..., index; ARGV: txn, lease_ms, primary, then per key
/// `expected_ver, op ('set'|'del'), value`.
/// Reply: `{'ok'}` or a conflict (see `check`).
pub const PREPARE: &str = lua!(concat!(
    lua_check!(),
    "assert(#KEYS % 2 == 1, 'expected KEYS: data/meta pairs, then the lock index')
local txn = ARGV[1]
local n = (#KEYS - 1) / 2
for i = 1, n do
  local c = check(KEYS[2 * i], i, txn, ARGV[3 + 3 * (i - 1) + 1])
  if c then return c end
end
local lease = now_ms + tonumber(ARGV[2])
for i = 1, n do
  local a = 3 + 3 * (i - 1)
  redis.call('HSET', KEYS[2 * i], 'lock', txn, 'lease', lease, 'primary', ARGV[3],
    'op', ARGV[a + 2], 'staged', ARGV[a + 3])
  redis.call('ZADD', KEYS[#KEYS], lease, txn .. '\\n' .. KEYS[2 * i - 1])
end
return {'ok'}
"
));

/// Checks that keys read (not written) are unchanged and unlocked.
/// KEYS: meta1, meta2, ...; ARGV: txn, ver1, ver2, ...
/// Reply: `{'ok'}` or a conflict.
pub const VALIDATE: &str = lua!(concat!(
    lua_check!(),
    "for i = 1, #KEYS do
  local c = check(KEYS[i], i, ARGV[1], ARGV[i + 1])
  if c then return c end
end
return {'ok'}
"
));

/// Applies the staged values of `txn`, bumps versions, clears the locks.
/// Idempotent: a key no longer locked by `txn` is left alone.
/// KEYS: data1, meta1, ..., index; ARGV: txn. Reply: number of keys applied.
pub const COMMIT: &str = lua!(
    "assert(#KEYS % 2 == 1, 'expected KEYS: data/meta pairs, then the lock index')
local n = 0
for i = 1, #KEYS - 1, 2 do
  redis.call('ZREM', KEYS[#KEYS], ARGV[1] .. '\\n' .. KEYS[i])
  local m = redis.call('HMGET', KEYS[i + 1], 'lock', 'op', 'staged')
  if m[1] == ARGV[1] then
    if m[2] == 'del' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], m[3])
    end
    redis.call('HINCRBY', KEYS[i + 1], 'ver', 1)
    redis.call('HDEL', KEYS[i + 1], 'lock', 'lease', 'primary', 'op', 'staged')
    n = n + 1
  end
end
return n
"
);

/// Drops the locks and staged values of `txn`. Idempotent. A metadata hash
/// left with no field (a key never committed) disappears with them.
/// KEYS: data1, meta1, ..., index; ARGV: txn. Reply: number of keys released.
pub const ROLLBACK: &str = lua!(
    "assert(#KEYS % 2 == 1, 'expected KEYS: data/meta pairs, then the lock index')
local n = 0
for i = 1, #KEYS - 1, 2 do
  redis.call('ZREM', KEYS[#KEYS], ARGV[1] .. '\\n' .. KEYS[i])
  if redis.call('HGET', KEYS[i + 1], 'lock') == ARGV[1] then
    redis.call('HDEL', KEYS[i + 1], 'lock', 'lease', 'primary', 'op', 'staged')
    n = n + 1
  end
end
return n
"
);

/// The one-phase shortcut for a transaction whose every key lives on this
/// store: check every version and lock, then apply every write, in one step.
/// KEYS: data1, meta1, ...; ARGV: txn, then per key
/// `expected_ver, op ('read'|'set'|'del'), value`.
/// Reply: `{'ok'}` or a conflict.
pub const COMMIT_ONE_PHASE: &str = lua!(concat!(
    lua_check!(),
    "local n = #KEYS / 2
for i = 1, n do
  local c = check(KEYS[2 * i], i, ARGV[1], ARGV[2 + 3 * (i - 1)])
  if c then return c end
end
for i = 1, n do
  local a = 2 + 3 * (i - 1)
  local op = ARGV[a + 1]
  if op ~= 'read' then
    if op == 'del' then
      redis.call('DEL', KEYS[2 * i - 1])
    else
      redis.call('SET', KEYS[2 * i - 1], ARGV[a + 2])
    end
    redis.call('HINCRBY', KEYS[2 * i], 'ver', 1)
  end
end
return {'ok'}
"
));

/// Locks whose lease has run out, oldest first, from the lock index.
/// KEYS: index; ARGV: max entries. Reply: `txn \n key` entries.
pub const EXPIRED_LOCKS: &str = lua!(
    "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
"
);

/// Claims an idempotency key for `owner`, unless a first request holds it.
/// KEYS: idempotency key; ARGV: owner, lease_ms, retention_ms.
/// Reply: `{'claimed'}`, `{'in_flight'}` while another owner's claim is
/// live, or `{'done', record}` once the first request has an outcome.
pub const CLAIM: &str = lua!(
    "local v = redis.call('GET', KEYS[1])
if v then
  local r = cjson.decode(v)
  if r.state ~= 'pending' then return {'done', v} end
  if tonumber(r.lease) > now_ms then return {'in_flight'} end
end
local claim = cjson.encode({state = 'pending', owner = ARGV[1],
  lease = tostring(now_ms + tonumber(ARGV[2]))})
redis.call('SET', KEYS[1], claim, 'PX', ARGV[3])
return {'claimed'}
"
);

/// Replaces `owner`'s claim on an idempotency key with `record` (the
/// outcome), or drops it when `record` is empty. A claim taken over by a
/// later request is left alone.
/// KEYS: idempotency key; ARGV: owner, record, retention_ms. Reply: 1 or 0.
pub const SETTLE_CLAIM: &str = lua!(
    "local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local r = cjson.decode(v)
if r.state ~= 'pending' or r.owner ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"
);

/// The commit point of a transaction with an idempotency key: writes the
/// decision record (NX) and, if ours stands, the outcome under the
/// idempotency key, in one step, so a retry can never miss a commit.
/// Refuses (`{'fenced'}`) when `owner` no longer holds the claim.
/// KEYS: txn record, idempotency key; ARGV: record, owner, retention_ms,
/// outcome. Reply: `{'standing', record}` or `{'fenced'}`.
pub const DECIDE_CLAIMED: &str = lua!(
    "local v = redis.call('GET', KEYS[2])
if not v then return {'fenced'} end
local r = cjson.decode(v)
if r.state ~= 'pending' or r.owner ~= ARGV[2] then return {'fenced'} end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[3])
local standing = redis.call('GET', KEYS[1])
if standing == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
end
return {'standing', standing}
"
);
