//! The Lua scripts that read and change keys atomically on one store.
//!
//! Keys always travel in `KEYS` and values in `ARGV`, never spliced into the
//! script text, so a key with braces, quotes or newlines is just bytes here.
//! Every script checks everything before it changes anything (the marks of
//! a key waited for aside): a Redis script that fails half-way is not
//! rolled back, so none may fail after its first write.
//!
//! Times are read from the Redis server (`TIME`), so leases mean the same to
//! every host whatever their clocks say. Only the scripts that grant leases
//! or compare them read the clock. Numbers go to Redis as strings built by
//! `int` (a Lua number passed as it is, or joined with `..`, loses digits).
//!
//! # The lock table of a key
//!
//! Everything redstage keeps of a locked data key `K` is one hash, `rs:{K}`
//! (in `K`'s slot), gone with its last lock:
//!
//! ```text
//!  field             value
//!  ----------------  -------------------------------------------------------
//!  w                 the lock on the key whole: mode, wait flag, holders
//!  p:<part>          the lock on one hash field or set member, the same way
//!  #                 how many `p:` locks there are (0: the field is gone)
//!  W                 `1` once a lock of the whole key waited for parts
//!  t:<txn>           an adjuster of the whole key: `<lease>\t<primary>\t<delta>`
//!  n, neg, pos       how many adjusters, the sums of their negative and
//!                    positive reservations
//!  A<len>:<part>:... the same four for the adjusters of one part
//! ```
//!
//! A lock entry is the mode (`x` exclusive, `s` shared, `a` adjusted) and a
//! wait flag (`1` once someone waited for it), then, for `x` and `s`, one
//! tab-separated `<txn>\t<lease>\t<primary>` per holder:
//!
//! ```text
//!  x0\t0193...e1\t1732700000123\torders
//!  s1\t0193...e7\t1732700000456\t\t0193...f2\t1732700000789\tledger
//!  a0
//! ```
//!
//! (A read-only transaction's holder names no primary; store names cannot
//! hold a tab.) The adjusters of an `a` lock, who may be many at once (a
//! flash sale), have a field each, so that joining, reserving and leaving
//! cost the same whether there are two of them or two hundred.
//!
//! Granularity: a part lock (`p:`) and a whole-key lock (`w`) never share a
//! key: whoever wants the key whole waits for every part lock to go (and
//! marks `W`, so that no new part lock starts meanwhile), and a part waits
//! for a whole-key lock. Different parts never wait for each other. Appends
//! (a stream's entries, a list's elements) take no lock at all: they
//! commute, and read nothing.
//!
//! A lock is fair: once someone waits for an entry, no new holder joins it
//! in shared or adjust mode, so that a writer waiting behind readers (or a
//! reader behind a flash sale's adjusters) gets its turn.
//!
//! Adjustments (escrow): a transaction holding a key (or a hash field, or a
//! sorted set member) in `a` mode neither reads it nor keeps others from
//! adjusting it. Before its decision it reserves its delta, checked against
//! its bounds as if every decrement in flight committed and no increment did
//! (for a lower bound; the reverse for an upper one), so that the bound holds
//! whichever of them commit; at the commit point or the apply it adds the
//! delta to the value (`INCRBY`, `HINCRBY`, `ZINCRBY`), and on a rollback
//! its reservation goes with its lock. Values are what `INCRBY` takes; bounds
//! are checked exactly within +-2^53.
//!
//! # What a script is told
//!
//! `KEYS` come in pairs per data key, the key and its lock table, after the
//! script's own keys; `ARGV`, after the script's own arguments, has one
//! block per data key, in the same order:
//!
//! ```text
//!  kind                       string, hash, set, zset, stream, list
//!  n, then n targets          `w` or `p`, the part (or ''), the mode (`x`, `s`,
//!                             `a`, `r`: read without a lock, `-`: no lock, the
//!                             key is only appended to), the adjustments to
//!                             reserve (`delta:lower:upper;...`, or '')
//!  n, then n reads            `get`; `hget f`; `sismember m`; `zscore m`;
//!                             `hgetall`; `smembers`; `zall`; `zrank a b`;
//!                             `zbyscore min max`
//!  n, then n ops              op, its target (1-based; 0: an append), args:
//!                             `set v ttl_ms|''`, `del`, `adj steps`, `hset f v`,
//!                             `hdel f`, `sadd m`, `srem m`, `zadd m score`,
//!                             `zrem m`, `xadd maxlen|'' n f v ...`,
//!                             `rpush n v ...`, `lpush n v ...`, `pexpire ms`
//! ```
//!
//! # Scripts for one shape
//!
//! Most transactions through redstage only adjust strings (escrow's
//! deductions and payments). For that shape, [`LOCK_ADJUSTED`],
//! [`COMMIT_ADJUSTED`] (a free commit point) and [`APPLY_ADJUSTED`] take a
//! key's adjustments as arguments of their own (the commit point's already
//! summed up into the two bounds its value must be within), and do what
//! the general scripts do when nothing is in the way, without building
//! each key's block into tables or running every target through helpers
//! written for every mode and type: about half a call's time. On anything else they find (a lock
//! in another mode or waited for, a refusal, a table of an earlier
//! protocol, a call delivered again) they change nothing and answer
//! `again`, and the caller sends the general script, which answers
//! precisely. A test runs each against the general script on twin keys, in
//! every state a key can be in.

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

/// Helpers the scripts on data keys share:
/// - `nxt()`: the next argument (from `c`, which each script sets past its
///   own arguments); `parse(n)`: the `n` key blocks (see the module essay),
///   as tables `{i, data, meta, kind, targets, reads, ops}`;
/// - `call_all(cmd, prefix, list)`: `redis.call(cmd, prefix..., list...)`
///   in chunks (Lua's `unpack` has a bound), results appended together;
/// - `int(x)`: a Lua number as a decimal integer string;
/// - `integer(raw)`: the value of `raw` if `INCRBY` takes it as an integer
///   (Redis's own rule: `0`, or an optional `-`, a digit 1-9 and more
///   digits, within a signed 64-bit integer), else nil;
/// - `bounded(raw, neg, pos, list)`: checks adjustments `list`
///   (`delta:lower:upper;...`) of a value `raw`, given the others'
///   reservations; returns their total, or nil and the refusal (`{'bound',
///   j}`, `{'nan'}`, or `{'range'}` past the +-2^53 within which Lua counts
///   exactly, so that no increment can fail half-way through a script);
///   `total(list)`: the sum of the deltas;
/// - `holders(v)`, `encode(mode, wait, hs)`, `holder(v)`: a lock entry's
///   parts, and back; the sole holder of an `x` entry;
/// - `field(part)`, `prefix(part)`: a target's lock entry field, and the
///   prefix of its adjusters' fields;
/// - `load(k, txn)`: reads key `k`'s lock table in one `HMGET` (`k.w`,
///   `k.n`, `k.W`, each target's entry `t.v`, and with `txn`, for each
///   adjusted target, `txn`'s adjuster field `t.adj` and the adjusters'
///   `t.counts`, which `held`, `release` and the bound checks then use), or
///   answers the reply refusing it: a table of an earlier protocol
///   (`{'stopped', message}`, `{'legacy', i, holder}`);
///   `forget(k)` drops what the first protocol left there without a lock
///   (its version of the key), where a transaction first writes the table;
/// - `held(k, t, txn)`: whether `txn` holds target `t` (loaded);
/// - `typed(k)`: nil, or the `{'wrong_type', i, type}` refusing a key that
///   holds another Redis type than declared;
/// - `value(k, t)`: the raw value a bounded delta of target `t` adds to, or
///   nil and the refusal of a key of another type; `appended(k)`: whether
///   some target of `k` is only appended to (takes no lock);
/// - `blocked(k, t, txn, now_ms)`: nil when `txn` may take target `t`, else
///   the reply naming someone in its way (the entry it met marked as waited
///   for);
/// - `take(k, t, txn, mine, lease, primary)`: takes target `t` (loaded and
///   checked), its reservation `t.total` included;
/// - `apply(k, o)`: carries out one op on its key;
/// - `release(k, t, txn, wake)`: lets go of `txn`'s lock on target `t`
///   (loaded), dropping what is left empty; a key someone waited for goes to
///   `wake`. Returns 1 if `txn` held it.
macro_rules! lua_keys {
    () => {
        "local c = 1
local function nxt()
  local v = ARGV[c]
  c = c + 1
  return v
end
local function parse(off, n)
  local ks = {}
  for i = 1, n do
    local k = {i = i, data = KEYS[off + 2 * i - 1], meta = KEYS[off + 2 * i], kind = nxt(),
      targets = {}, reads = {}, ops = {}}
    for j = 1, tonumber(nxt()) do
      local flag, part, mode, steps = nxt(), nxt(), nxt(), nxt()
      if flag ~= 'p' then part = nil end
      k.targets[j] = {j = j, part = part, mode = mode, steps = steps}
    end
    for j = 1, tonumber(nxt()) do
      local r = {code = nxt()}
      if r.code == 'hget' or r.code == 'sismember' or r.code == 'zscore' then
        r.a = nxt()
      elseif r.code == 'zrank' or r.code == 'zbyscore' then
        r.a, r.b = nxt(), nxt()
      end
      k.reads[j] = r
    end
    for j = 1, tonumber(nxt()) do
      local o = {code = nxt(), t = tonumber(nxt())}
      if o.code == 'set' or o.code == 'hset' or o.code == 'zadd' then
        o.a, o.b = nxt(), nxt()
      elseif o.code == 'xadd' or o.code == 'rpush' or o.code == 'lpush' then
        if o.code == 'xadd' then o.maxlen = nxt() end
        o.args = {}
        for x = 1, tonumber(nxt()) do o.args[x] = nxt() end
      elseif o.code ~= 'del' then
        o.a = nxt()
      end
      k.ops[j] = o
    end
    ks[i] = k
  end
  return ks
end
local function call_all(cmd, prefix, list)
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
local function int(x)
  return string.format('%.0f', x)
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
local function total(list)
  local sum = 0
  for d in string.gmatch(list, '(-?%d+):[^;]*') do sum = sum + tonumber(d) end
  return sum
end
local function holders(v)
  local fields = {}
  local pos = 3
  while pos <= #v do
    local nxt_tab = string.find(v, '\\t', pos + 1, true)
    fields[#fields + 1] = string.sub(v, pos + 1, (nxt_tab or (#v + 1)) - 1)
    if not nxt_tab then break end
    pos = nxt_tab
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
local function field(part)
  if part then return 'p:' .. part end
  return 'w'
end
local function prefix(part)
  if part then return 'A' .. #part .. ':' .. part .. ':' end
  return ''
end
local function load(k, txn)
  local f = {'w', '#', 'W', 'lock', 'ver'}
  for _, t in ipairs(k.targets) do
    if t.part then f[#f + 1] = 'p:' .. t.part end
    if txn and t.mode == 'a' then
      local p = prefix(t.part)
      f[#f + 1] = p .. 't:' .. txn
      f[#f + 1] = p .. 'neg'
      f[#f + 1] = p .. 'pos'
      f[#f + 1] = p .. 'n'
    end
  end
  local r = redis.pcall('HMGET', k.meta, unpack(f))
  if r.err then
    return {'stopped', 'key ' .. k.data .. ' is locked by an earlier redstage (protocol 2): ' ..
      'finish its transactions with that version (redstage recover --wait), then send this again'}
  end
  if r[4] then return {'legacy', k.i - 1, r[4]} end
  k.w, k.n, k.W, k.old = r[1] or nil, tonumber(r[2]) or 0, r[3] or nil, r[5] or nil
  local x = 6
  for _, t in ipairs(k.targets) do
    t.v, t.adj, t.counts = k.w, nil, nil
    if t.part then
      t.v = r[x] or nil
      x = x + 1
    end
    if txn and t.mode == 'a' then
      t.adj = r[x] or nil
      t.counts = {tonumber(r[x + 1]) or 0, tonumber(r[x + 2]) or 0, tonumber(r[x + 3]) or 0}
      x = x + 4
    end
  end
  return nil
end
local function forget(k)
  if k.old then redis.call('HDEL', k.meta, 'ver', 'lease', 'primary') end
end
local function held(k, t, txn)
  local v = t.v
  if not v then return false end
  local mode = string.sub(v, 1, 1)
  if mode == 'x' then return holder(v) == txn end
  if mode == 's' then return string.find(v, '\\t' .. txn .. '\\t', 1, true) ~= nil end
  if t.counts then return t.adj ~= nil end
  return redis.call('HEXISTS', k.meta, prefix(t.part) .. 't:' .. txn) == 1
end
local function typed(k)
  local found = redis.call('TYPE', k.data).ok
  if found ~= 'none' and found ~= k.kind then return {'wrong_type', k.i - 1, found} end
  return nil
end
local function value(k, t)
  local r
  if k.kind == 'hash' then r = redis.pcall('HGET', k.data, t.part)
  elseif k.kind == 'zset' then r = redis.pcall('ZSCORE', k.data, t.part)
  else r = redis.pcall('GET', k.data) end
  if type(r) == 'table' and r.err then return nil, typed(k) end
  return r or nil, nil
end
local function appended(k)
  for _, t in ipairs(k.targets) do
    if t.mode == '-' then return true end
  end
  return false
end
local function adjuster(meta, p, txn)
  local pattern = string.gsub(p, '[%*%?%[%]\\\\]', '\\\\%0') .. 't:*'
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', meta, cursor, 'MATCH', pattern, 'COUNT', 20)
    cursor = page[1]
    for j = 1, #page[2], 2 do
      local who = string.sub(page[2][j], #p + 3)
      if who ~= txn then
        local lease, primary = string.match(page[2][j + 1], '^([^\\t]*)\\t([^\\t]*)\\t')
        return {who, lease, primary}
      end
    end
  until cursor == '0'
  return {'', '0', ''}
end
local function in_entry(meta, part, v, txn)
  if string.sub(v, 1, 1) == 'a' then return adjuster(meta, prefix(part), txn) end
  local _, _, hs = holders(v)
  for _, h in ipairs(hs) do
    if h[1] ~= txn then return h end
  end
  return hs[1] or {'', '0', ''}
end
local function in_parts(meta, txn)
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', meta, cursor, 'MATCH', 'p:*', 'COUNT', 20)
    cursor = page[1]
    for j = 1, #page[2], 2 do
      local h = in_entry(meta, string.sub(page[2][j], 3), page[2][j + 1], txn)
      if h[1] ~= '' and h[1] ~= txn then return h end
    end
  until cursor == '0'
  return {'', '0', ''}
end
local function named(k, t, h, now_ms)
  return {'locked', k.i - 1, t.j - 1, h[1], tonumber(h[2]) - now_ms, h[3]}
end
local function waited(k, f, v)
  if string.sub(v, 2, 2) ~= '1' then
    redis.call('HSET', k.meta, f, string.sub(v, 1, 1) .. '1' .. string.sub(v, 3))
  end
end
local function joins(mode, v)
  local m, wait = string.sub(v, 1, 1), string.sub(v, 2, 2)
  if mode == 'r' then return m == 's' end
  return (mode == 's' or mode == 'a') and m == mode and wait ~= '1'
end
local function blocked(k, t, txn, now_ms)
  if t.mode == '-' then return nil end
  if t.part then
    if k.w and not (t.mode == 'r' and string.sub(k.w, 1, 1) == 's') then
      waited(k, 'w', k.w)
      return named(k, t, in_entry(k.meta, nil, k.w, txn), now_ms)
    end
    if k.W and t.mode ~= 'r' then return named(k, t, in_parts(k.meta, txn), now_ms) end
  elseif k.n > 0 then
    if not k.W then redis.call('HSET', k.meta, 'W', '1') end
    k.W = '1'
    return named(k, t, in_parts(k.meta, txn), now_ms)
  end
  if t.v and not joins(t.mode, t.v) then
    waited(k, field(t.part), t.v)
    return named(k, t, in_entry(k.meta, t.part, t.v, txn), now_ms)
  end
  return nil
end
local function take(k, t, txn, mine, lease, primary)
  if t.mode == 'r' or t.mode == '-' then return end
  local f = field(t.part)
  if t.mode == 'x' then
    redis.call('HSET', k.meta, f, 'x0\\t' .. mine)
  elseif t.mode == 's' then
    if t.v then redis.call('HSET', k.meta, f, t.v .. '\\t' .. mine)
    else redis.call('HSET', k.meta, f, 's0\\t' .. mine) end
  else
    local p, n, reserved = prefix(t.part), t.counts, t.total or 0
    local set = {p .. 't:' .. txn, lease .. '\\t' .. primary .. '\\t' .. int(reserved),
      p .. 'n', int(n[3] + 1), p .. 'neg', int(n[1] + math.min(reserved, 0)),
      p .. 'pos', int(n[2] + math.max(reserved, 0))}
    if not t.v then
      set[#set + 1] = f
      set[#set + 1] = 'a0'
    end
    redis.call('HSET', k.meta, unpack(set))
  end
  if t.part and not t.v then redis.call('HINCRBY', k.meta, '#', 1) end
end
local function apply(k, o)
  local code = o.code
  if code == 'set' then
    if o.b == '' then redis.call('SET', k.data, o.a, 'KEEPTTL')
    else redis.call('SET', k.data, o.a, 'PX', o.b) end
  elseif code == 'del' then
    redis.call('DEL', k.data)
  elseif code == 'adj' then
    local sum = total(o.a)
    if sum ~= 0 then
      local part = k.targets[o.t].part
      if k.kind == 'hash' then redis.call('HINCRBY', k.data, part, int(sum))
      elseif k.kind == 'zset' then redis.call('ZINCRBY', k.data, int(sum), part)
      else redis.call('INCRBY', k.data, int(sum)) end
    end
  elseif code == 'hset' then
    redis.call('HSET', k.data, o.a, o.b)
  elseif code == 'hdel' then
    redis.call('HDEL', k.data, o.a)
  elseif code == 'sadd' then
    redis.call('SADD', k.data, o.a)
  elseif code == 'srem' then
    redis.call('SREM', k.data, o.a)
  elseif code == 'zadd' then
    redis.call('ZADD', k.data, o.b, o.a)
  elseif code == 'zrem' then
    redis.call('ZREM', k.data, o.a)
  elseif code == 'pexpire' then
    redis.call('PEXPIRE', k.data, o.a)
  elseif code == 'xadd' then
    if o.maxlen ~= '' then
      redis.call('XADD', k.data, 'MAXLEN', '~', o.maxlen, '*', unpack(o.args))
    else
      redis.call('XADD', k.data, '*', unpack(o.args))
    end
  elseif code == 'rpush' or code == 'lpush' then
    call_all(string.upper(code), {k.data}, o.args)
  end
end
local function release(k, t, txn, wake)
  if t.mode == 'r' or t.mode == '-' or not t.v then return 0 end
  local f = field(t.part)
  local v = t.v
  local mode, wait = string.sub(v, 1, 1), string.sub(v, 2, 2)
  local gone, also = false, {}
  if mode == 'x' then
    if holder(v) ~= txn then return 0 end
    gone = true
  elseif mode == 's' then
    local _, _, hs = holders(v)
    local rest, mine = {}, false
    for _, h in ipairs(hs) do
      if h[1] == txn then mine = true else rest[#rest + 1] = h end
    end
    if not mine then return 0 end
    if #rest == 0 then gone = true else redis.call('HSET', k.meta, f, encode('s', wait, rest)) end
  else
    local p = prefix(t.part)
    local mine, n = t.adj, t.counts
    if not n then
      local r = redis.call('HMGET', k.meta, p .. 't:' .. txn, p .. 'neg', p .. 'pos', p .. 'n')
      mine, n = r[1] or nil, {tonumber(r[2]) or 0, tonumber(r[3]) or 0, tonumber(r[4]) or 0}
    end
    if not mine then return 0 end
    if n[3] <= 1 then
      also = {p .. 't:' .. txn, p .. 'n', p .. 'neg', p .. 'pos'}
      gone = true
    else
      local reserved = tonumber(string.match(mine, '([^\\t]*)$')) or 0
      redis.call('HDEL', k.meta, p .. 't:' .. txn)
      redis.call('HSET', k.meta, p .. 'n', int(n[3] - 1),
        p .. 'neg', int(n[1] - math.min(reserved, 0)), p .. 'pos', int(n[2] - math.max(reserved, 0)))
    end
  end
  if gone then
    redis.call('HDEL', k.meta, f, unpack(also))
    if wait == '1' then wake[#wake + 1] = k.data end
    if t.part and redis.call('HINCRBY', k.meta, '#', -1) <= 0 then
      redis.call('HDEL', k.meta, '#')
      if redis.call('HDEL', k.meta, 'W') == 1 then wake[#wake + 1] = k.data end
    end
  end
  return 1
end
"
    };
}

/// What [`COMMIT`] and [`COMMIT_ADJUSTED`] share, word for word: `claim`
/// answers `superseded` unless the idempotency claim (if any) is still the
/// owner's; `decide` writes the decision record unless one stands (then
/// answers it) and the outcome under the claim; `mark` adds the record's
/// marker to the lock index.
macro_rules! lua_commit_point {
    (claim) => {
        "if ARGV[6] ~= '' then
  local v = redis.call('GET', KEYS[3])
  if not v then return {'superseded'} end
  local claim = cjson.decode(v)
  if claim.state ~= 'pending' or claim.owner ~= ARGV[6] then return {'superseded'} end
end
"
    };
    (decide) => {
        "local decided
if ARGV[3] == '0' then
  decided = redis.call('SET', KEYS[1], ARGV[2], 'NX')
else
  decided = redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3])
end
if not decided then return {'decided', redis.call('GET', KEYS[1])} end
if ARGV[6] ~= '' then redis.call('SET', KEYS[3], ARGV[7], 'PX', ARGV[8]) end
"
    };
    (mark) => {
        "if ARGV[4] ~= '' then
  local tm = redis.call('TIME')
  local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
  redis.call('ZADD', KEYS[2], int(now + tonumber(ARGV[5])), ARGV[4])
end
"
    };
}

/// The helpers every script on data keys is written against.
const HELPERS: &str = lua_keys!();

/// `code` with only the helpers it calls (directly or through another
/// helper): Lua makes a closure of every `local function` on every call of
/// a script, so a script that carried them all would pay for helpers it
/// never calls. Code without the helpers is returned as it is. This is the
/// text sent to Redis (and whose SHA-1 `EVALSHA` names).
pub fn lean(code: &str) -> String {
    let Some(at) = code.find(HELPERS) else {
        return code.to_owned();
    };
    let (before, after) = (&code[..at], &code[at + HELPERS.len()..]);
    // The helpers, in order, each with its name; the first (`local c`)
    // goes with `nxt`, which moves it.
    let mut chunks: Vec<(&str, &str)> = Vec::new();
    let mut rest = HELPERS;
    let mut name = "c";
    while !rest.is_empty() {
        let next = rest[1..]
            .find("\nlocal function ")
            .map_or(rest.len(), |i| i + 2);
        chunks.push((name, &rest[..next]));
        rest = &rest[next..];
        if let Some(tail) = rest.strip_prefix("local function ") {
            name = &tail[..tail.find('(').unwrap_or(0)];
        }
    }
    let calls = |text: &str, name: &str| {
        text.match_indices(&format!("{name}(")).any(|(i, _)| {
            !text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == ':')
        })
    };
    let mut used: Vec<bool> = chunks
        .iter()
        .map(|(name, _)| calls(before, name) || calls(after, name))
        .collect();
    loop {
        let mut grew = false;
        for i in 0..chunks.len() {
            if used[i] {
                continue;
            }
            let needed = chunks
                .iter()
                .zip(&used)
                .any(|((_, text), &u)| u && calls(text, chunks[i].0))
                || (chunks[i].0 == "c" && used.get(1) == Some(&true));
            if needed {
                used[i] = true;
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let mut out = String::from(before);
    for ((_, text), u) in chunks.iter().zip(&used) {
        if *u {
            out += text;
        }
    }
    out += after;
    out
}

/// The SHA-1 by which `EVALSHA` names the script `code` (as [`lean`] makes
/// it).
pub fn sha(code: &str) -> String {
    redis::Script::new(&lean(code)).get_hash().to_owned()
}

/// Locks and reads, in one step, what a transaction declared on this
/// store: each target (a key whole, or one hash field or set member) in its
/// mode: `x` exclusively (it may write), `s` shared (it only reads, in a
/// transaction that spans stores or writes), `a` adjusted (other adjusters
/// share it, and its value is not needed), `r` read without a lock (a
/// read-only transaction on this store alone, which this one script makes
/// atomic), `-` no lock (a key only appended to: it gets no lock, but the
/// transaction's index entry here, which recovery and a second delivery of
/// the apply go by). All or nothing: everything is checked (the Redis type
/// of every key, the size of every read of a whole collection, every lock,
/// every reservation) before anything changes; on the first target held by
/// another transaction in a conflicting mode (or waited for, when this one
/// would join its holders), nothing is locked, the target is marked as
/// waited for, and a holder is named. When the transaction's index entry is
/// already there, this very call went through before (a client that
/// resends after a lost reply, as a cluster client does): the values are
/// read again and nothing changes.
///
/// A transaction whose adjustments are known before it locks (every key it
/// has is only adjusted, so its steps ran first) reserves them here, in the
/// same step as it joins their keys: checked against their bounds as
/// [`RESERVE`] does, and refused all or nothing (then nothing is locked).
///
/// A read that locks nothing (or a call delivered again) writes nothing
/// either, so the `WAIT` after it would cover none of what it read; with
/// `sync` (the store's writes must reach replicas), it makes a write that
/// changes nothing (an index member added and removed at once), so that the
/// `WAIT` covers every value it read (see [`DECISION`]): a value the master
/// holds and its replicas do not, which a failover could lose, is never
/// answered.
///
/// A lock table of the first protocol (a metadata hash with a `lock` field)
/// refuses the key, naming its holder, for an operator to finish with the
/// version that took it; one of the second (a string) stops the call.
///
/// KEYS: data1, table1, ..., index; ARGV: txn, lease_ms, primary, index
/// entry, sync (`1` or ''), read_items_max, then the key blocks.
/// Reply: `{'ok', read1_1, read1_2, ..., readN_M}` (each read's value, in
/// order: a string or nil, 0 or 1, a flat array), `{'locked', i, j, holder,
/// remaining_ms, holder's primary}` (key `i`, target `j`, 0-based),
/// `{'legacy', i, holder}`, `{'stopped', message}`, `{'wrong_type', i,
/// type}`, `{'too_many', i, count}` (a read of more than read_items_max
/// items), or a reservation's refusal (see [`RESERVE`]).
pub const LOCK: &str = lua_clock!(concat!(
    lua_keys!(),
    "local txn, max = ARGV[1], tonumber(ARGV[6])
c = 7
local index = KEYS[#KEYS]
local ks = parse(0, (#KEYS - 1) / 2)
local strs = {}
for _, k in ipairs(ks) do
  if k.kind == 'string' then strs[#strs + 1] = k
  else
    local wrong = typed(k)
    if wrong then return wrong end
  end
end
if #strs > 0 then
  local keys = {}
  for x, k in ipairs(strs) do keys[x] = k.data end
  local values = call_all('MGET', {}, keys)
  for x, k in ipairs(strs) do
    k.raw = values[x] or nil
    if not k.raw then
      local wrong = typed(k)
      if wrong then return wrong end
    end
  end
end
local out = {'ok'}
for _, k in ipairs(ks) do
  for _, r in ipairs(k.reads) do
    local code, got = r.code, nil
    local n = 0
    if code == 'hgetall' then n = redis.call('HLEN', k.data)
    elseif code == 'smembers' then n = redis.call('SCARD', k.data)
    elseif code == 'zall' then n = redis.call('ZCARD', k.data)
    elseif code == 'zbyscore' then n = redis.call('ZCOUNT', k.data, r.a, r.b)
    elseif code == 'zrank' then
      local card = redis.call('ZCARD', k.data)
      local a, b = tonumber(r.a), tonumber(r.b)
      if a < 0 then a = math.max(card + a, 0) end
      if b < 0 then b = card + b end
      n = math.max(math.min(b, card - 1) - a + 1, 0)
    end
    if n > max then return {'too_many', k.i - 1, n} end
    if code == 'get' then got = k.raw or false
    elseif code == 'hget' then got = redis.call('HGET', k.data, r.a)
    elseif code == 'sismember' then got = redis.call('SISMEMBER', k.data, r.a)
    elseif code == 'zscore' then got = redis.call('ZSCORE', k.data, r.a)
    elseif code == 'hgetall' then got = redis.call('HGETALL', k.data)
    elseif code == 'smembers' then got = redis.call('SMEMBERS', k.data)
    elseif code == 'zall' then got = redis.call('ZRANGE', k.data, 0, -1, 'WITHSCORES')
    elseif code == 'zrank' then got = redis.call('ZRANGE', k.data, r.a, r.b, 'WITHSCORES')
    elseif code == 'zbyscore' then
      got = redis.call('ZRANGE', k.data, r.a, r.b, 'BYSCORE', 'WITHSCORES')
    end
    out[#out + 1] = got
  end
end
local function sync()
  if ARGV[5] == '1' then
    redis.call('ZADD', index, 0, 'sync')
    redis.call('ZREM', index, 'sync')
  end
end
if redis.call('ZSCORE', index, ARGV[4]) then
  sync()
  return out
end
local locks = false
for _, k in ipairs(ks) do
  local refused = load(k, txn)
  if refused then return refused end
  for _, t in ipairs(k.targets) do
    if t.mode ~= 'r' then locks = true end
    if t.mode == 'a' then
      if t.steps ~= '' then
        local raw = k.raw
        if k.kind ~= 'string' then raw = value(k, t) end
        local sum, bad = bounded(raw, t.counts[1], t.counts[2], t.steps)
        if bad then return {bad[1], k.i - 1, t.j - 1, bad[2]} end
        t.total = sum
      end
    end
  end
end
for _, k in ipairs(ks) do
  for _, t in ipairs(k.targets) do
    local stop = blocked(k, t, txn, now_ms)
    if stop then return stop end
  end
end
if not locks then
  sync()
  return out
end
local lease = int(now_ms + tonumber(ARGV[2]))
local mine = txn .. '\\t' .. lease .. '\\t' .. ARGV[3]
for _, k in ipairs(ks) do
  forget(k)
  for _, t in ipairs(k.targets) do take(k, t, txn, mine, lease, ARGV[3]) end
end
redis.call('ZADD', index, lease, ARGV[4])
return out
"
));

/// Reserves a transaction's adjustments of targets it holds in `a` mode on
/// a store other than its primary, before its decision: each checked
/// against its bounds with what the other adjusters reserved (see the module
/// essay), and recorded with its adjuster, all or none. A target this
/// transaction already reserved is left as it is, so that the same call
/// delivered twice (a client that resends after a lost reply, as a cluster
/// client does) reserves once.
/// KEYS: data1, table1, ...; ARGV: txn, then the key blocks (targets with
/// the adjustments to reserve).
/// Reply: `{'ok'}`, `{'bound', i, j, s}` (adjustment `s`, 1-based, of
/// target `j` of key `i`), `{'nan', i, j}` (not an integer), `{'range', i,
/// j}`, `{'lost', i, j}` (recovery took the lock), or `{'wrong_type', i,
/// type}`.
pub const RESERVE: &str = concat!(
    lua_keys!(),
    "local txn = ARGV[1]
c = 2
local ks = parse(0, #KEYS / 2)
local todo = {}
for _, k in ipairs(ks) do
  for _, t in ipairs(k.targets) do
    if t.mode == 'a' and t.steps ~= '' then
      local p = prefix(t.part)
      local r = redis.call('HMGET', k.meta, p .. 't:' .. txn, p .. 'neg', p .. 'pos')
      if not r[1] then return {'lost', k.i - 1, t.j - 1} end
      if string.match(r[1], '\\t([^\\t]*)$') == '0' then
        local raw, wrong = value(k, t)
        if wrong then return wrong end
        local sum, bad = bounded(raw, tonumber(r[2]) or 0, tonumber(r[3]) or 0, t.steps)
        if bad then return {bad[1], k.i - 1, t.j - 1, bad[2]} end
        todo[#todo + 1] = {k = k, p = p, held = r[1], sum = sum}
      end
    end
  end
end
for _, d in ipairs(todo) do
  local lease, primary = string.match(d.held, '^([^\\t]*)\\t([^\\t]*)\\t')
  redis.call('HSET', d.k.meta, d.p .. 't:' .. txn, lease .. '\\t' .. primary .. '\\t' .. int(d.sum))
  if d.sum < 0 then
    redis.call('HINCRBY', d.k.meta, d.p .. 'neg', int(d.sum))
  elseif d.sum > 0 then
    redis.call('HINCRBY', d.k.meta, d.p .. 'pos', int(d.sum))
  end
end
return {'ok'}
"
);

/// The commit point, on the transaction's primary store: checks that every
/// lock of the transaction here is still its own (and that its adjustments
/// here keep their bounds), writes the decision record unless one stands
/// (a recovering host's `aborted` fences a coordinator that was too slow),
/// and in the same step applies this store's writes (appends included) and
/// releases its locks. With an idempotency claim, only while the claim is
/// still the owner's, and the outcome is stored under the client's key at
/// once, so that a retry can never miss a commit. The transaction's index
/// entry here stays, as the record's marker, until the record is finalized
/// (with no locks here and other stores to apply, a marker is added):
/// should the coordinator die before every store applied, the sweep finds
/// it.
///
/// `free`: the transaction holds no lock here. Every target of it here is
/// one it only adjusts or appends to, so its changes were known before it
/// locked anything, and they need no lock before this very step: each
/// adjusted target must be free, or held by adjusters only (whose
/// reservations count against the bounds), and gets its delta at once. A
/// target held otherwise is in the way, as for [`LOCK`], and nothing
/// changes.
///
/// KEYS: record, index, idempotency key (or the record again), then data1,
/// table1, ...
/// ARGV: txn, record, record_ttl_ms ('0': none), marker to add ('' if
/// none), lease_ms, claim owner ('' if none), outcome, retention_ms,
/// `held` or `free`, then the key blocks.
/// Reply: `{'ok'}`, `{'decided', record}`, `{'superseded'}`, `{'lost', i,
/// j}` (a lock here is no longer the transaction's), an adjustment's refusal
/// (see [`RESERVE`]), `{'wrong_type', i, type}`, `{'stopped', message}`, or,
/// when `free`, `{'locked', ...}` or `{'legacy', ...}` as [`LOCK`] answers
/// them.
pub const COMMIT: &str = concat!(
    lua_keys!(),
    "local txn = ARGV[1]\n",
    lua_commit_point!(claim),
    "c = 10
local ks = parse(3, (#KEYS - 3) / 2)
local free = ARGV[9] == 'free'
local clock = nil
for _, k in ipairs(ks) do
  local refused = load(k, txn)
  if refused then return refused end
  if appended(k) then
    local wrong = typed(k)
    if wrong then return wrong end
  end
  for _, t in ipairs(k.targets) do
    if free then
      if t.mode ~= '-' then
        local blocked_by = nil
        if t.part then
          if k.w then blocked_by = {'w', k.w, nil}
          elseif t.v and string.sub(t.v, 1, 1) ~= 'a' then blocked_by = {field(t.part), t.v, t.part} end
        elseif k.n > 0 then
          blocked_by = {'#'}
        elseif t.v and string.sub(t.v, 1, 1) ~= 'a' then
          blocked_by = {'w', t.v, nil}
        end
        if blocked_by then
          if not clock then
            local tm = redis.call('TIME')
            clock = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
          end
          if blocked_by[1] == '#' then
            if not k.W then redis.call('HSET', k.meta, 'W', '1') end
            return named(k, t, in_parts(k.meta, txn), clock)
          end
          waited(k, blocked_by[1], blocked_by[2])
          return named(k, t, in_entry(k.meta, blocked_by[3], blocked_by[2], txn), clock)
        end
      end
    elseif t.mode ~= '-' and t.mode ~= 'r' then
      if not held(k, t, txn) then return {'lost', k.i - 1, t.j - 1} end
    end
  end
  for _, o in ipairs(k.ops) do
    if o.code == 'adj' then
      local t = k.targets[o.t]
      if t.mode == 'a' then
        local raw, wrong = value(k, t)
        if wrong then return wrong end
        local _, bad = bounded(raw, t.counts[1], t.counts[2], o.a)
        if bad then return {bad[1], k.i - 1, t.j - 1, bad[2]} end
      end
    end
  end
end
",
    lua_commit_point!(decide),
    "local wake = {}
for _, k in ipairs(ks) do
  forget(k)
  for _, o in ipairs(k.ops) do apply(k, o) end
  if not free then
    for _, t in ipairs(k.targets) do release(k, t, txn, wake) end
  end
end
",
    lua_commit_point!(mark),
    "for _, key in ipairs(wake) do redis.call('PUBLISH', 'rs:wake', key) end
return {'ok'}
"
);

/// [`LOCK`] for the commonest shape, sent first when a call has it: every
/// key a string, adjusted whole, nothing read (an escrow deduction). When
/// nothing is in the way it checks and writes exactly what [`LOCK`] would
/// (the same entries, reservations and index entry); on anything else (a
/// lock in another mode, or waited for; a reservation [`LOCK`] would
/// refuse; a value that is not an integer or a key of another type; a
/// table of an earlier protocol; the call delivered again) it changes
/// nothing and answers `again`, and the caller sends [`LOCK`], which
/// answers precisely. The general scripts build every key's block into
/// tables and run each target through helpers written for every mode and
/// type; for this shape that bookkeeping is about half of a call's time.
/// KEYS: data1, table1, ..., index; ARGV: txn, lease_ms, primary, index
/// entry, then per key the adjustments to reserve ('' if none). Reply:
/// `ok` or `again`.
pub const LOCK_ADJUSTED: &str = lua_clock!(concat!(
    lua_keys!(),
    "local txn, index = ARGV[1], KEYS[#KEYS]
local n = (#KEYS - 1) / 2
if n > 1000 or redis.call('ZSCORE', index, ARGV[4]) then return 'again' end
local data, values = {}, {}
for i = 1, n do data[i] = KEYS[2 * i - 1] end
if n > 0 then values = redis.call('MGET', unpack(data)) end
local mine = 't:' .. txn
local plan = {}
for i = 1, n do
  local r = redis.pcall('HMGET', KEYS[2 * i], 'w', '#', 'W', 'lock', 'ver', mine, 'neg', 'pos', 'n')
  if r.err or r[2] or r[3] or r[4] or r[5] or r[6] or (r[1] and r[1] ~= 'a0') then
    return 'again'
  end
  local raw = values[i] or nil
  if not raw and redis.call('EXISTS', data[i]) == 1 then return 'again' end
  local neg, pos, sum = tonumber(r[7]) or 0, tonumber(r[8]) or 0, 0
  if ARGV[4 + i] ~= '' then
    local got, bad = bounded(raw, neg, pos, ARGV[4 + i])
    if bad then return 'again' end
    sum = got
  end
  plan[i] = {r[1], neg, pos, tonumber(r[9]) or 0, sum}
end
local lease = int(now_ms + tonumber(ARGV[2]))
local held = lease .. '\\t' .. ARGV[3] .. '\\t'
for i, p in ipairs(plan) do
  local sum = p[5]
  local set = {mine, held .. int(sum), 'n', int(p[4] + 1), 'neg', int(p[2] + math.min(sum, 0)),
    'pos', int(p[3] + math.max(sum, 0))}
  if not p[1] then set[9], set[10] = 'w', 'a0' end
  redis.call('HSET', KEYS[2 * i], unpack(set))
end
redis.call('ZADD', index, lease, ARGV[4])
return 'ok'
"
));

/// [`COMMIT`] for a commit point that holds no lock (`free`) whose keys
/// are all strings adjusted whole (a payment), sent first when a commit
/// point has that shape: the same decision, claim, increments and marker
/// as [`COMMIT`] when nothing is in the way (a key is free or held by
/// adjusters only, whose reservations count against the bounds), and
/// `again`, with nothing changed, on anything else (see [`LOCK_ADJUSTED`]).
/// When none of the keys' lock tables exists (nobody holds or reserves
/// them, the common case), one `EXISTS` of them all stands for reading
/// each.
/// KEYS: record, index, idempotency key (or the record again), then data1,
/// table1, ...; ARGV: txn, record, record_ttl_ms ('0': none), marker to
/// add ('' if none), lease_ms, claim owner ('' if none), outcome,
/// retention_ms, then per key its adjustments as their sum and the least
/// and the most its value may be (see `store::commit_bounds`). Reply:
/// `{'ok'}`, `{'decided', record}`, `{'superseded'}`, or `again`.
pub const COMMIT_ADJUSTED: &str = concat!(
    lua_keys!(),
    lua_commit_point!(claim),
    "local n = (#KEYS - 3) / 2
if n > 1000 then return 'again' end
local data, values = {}, {}
for i = 1, n do data[i] = KEYS[2 + 2 * i] end
if n > 0 then values = redis.call('MGET', unpack(data)) end
local tables = {}
for i = 1, n do tables[i] = KEYS[3 + 2 * i] end
local held = n > 0 and redis.call('EXISTS', unpack(tables)) > 0
for i = 1, n do
  local r = {}
  if held then
    r = redis.pcall('HMGET', tables[i], 'w', '#', 'W', 'lock', 'ver', 'neg', 'pos')
    if r.err or r[2] or r[3] or r[4] or r[5] or (r[1] and string.sub(r[1], 1, 1) ~= 'a') then
      return 'again'
    end
  end
  local raw = values[i] or nil
  if not raw and redis.call('EXISTS', data[i]) == 1 then return 'again' end
  local value = 0
  if raw then
    value = integer(raw)
    if not value then return 'again' end
  end
  local low, high = ARGV[7 + 3 * i], ARGV[8 + 3 * i]
  if (low ~= '' and value + (tonumber(r[6]) or 0) < tonumber(low))
    or (high ~= '' and value + (tonumber(r[7]) or 0) > tonumber(high)) then
    return 'again'
  end
end
",
    lua_commit_point!(decide),
    "for i = 1, n do
  local sum = ARGV[6 + 3 * i]
  if sum ~= '0' then redis.call('INCRBY', data[i], sum) end
end
",
    lua_commit_point!(mark),
    "return {'ok'}
"
);

/// [`APPLY`] for a batch whose every key is a string adjusted whole, each
/// with its adjustments or none (a release), sent first when a batch has
/// that shape: the same increments and releases as [`APPLY`] (a target no
/// longer held is left out), every check before the first write, and
/// `again`, with nothing changed, on anything [`APPLY`] would refuse or
/// that is not this shape's (a lock in another mode, a value that is not
/// an integer, a table of an earlier protocol). The lock tables the batch
/// shares are read once, before any write, and their counts carried from
/// one transaction's release to the next's.
/// KEYS: index, then per transaction its data1, table1, ...; ARGV: the
/// number of transactions, then per transaction its id, its index entry
/// ('' if none), its number of keys, and per key its adjustments ('' for
/// none). Reply: per transaction, how many of its targets it held; or
/// `again`.
pub const APPLY_ADJUSTED: &str = concat!(
    lua_keys!(),
    "local index = KEYS[1]
local at, off = 2, 1
local batch, tables, seen = {}, {}, {}
for x = 1, tonumber(ARGV[1]) do
  local b = {txn = ARGV[at], entry = ARGV[at + 1], keys = {}}
  local n = tonumber(ARGV[at + 2])
  at = at + 3
  for i = 1, n do
    b.keys[i] = {data = KEYS[off + 2 * i - 1], meta = KEYS[off + 2 * i], steps = ARGV[at]}
    at = at + 1
  end
  off = off + 2 * n
  b.skip = seen[b.txn]
  seen[b.txn] = true
  batch[x] = b
end
for _, b in ipairs(batch) do
  if not b.skip then
    for _, k in ipairs(b.keys) do
      local r = redis.pcall('HMGET', k.meta, 't:' .. b.txn, 'w', 'n', 'neg', 'pos', 'lock')
      if r.err or r[6] or (r[2] and string.sub(r[2], 1, 1) ~= 'a') or (r[1] and not r[2]) then
        return 'again'
      end
      k.mine = r[1] or nil
      if not tables[k.meta] then
        tables[k.meta] = {w = r[2] or nil, n = tonumber(r[3]) or 0, neg = tonumber(r[4]) or 0,
          pos = tonumber(r[5]) or 0}
      end
      if k.mine and k.steps ~= '' then
        local raw = redis.pcall('GET', k.data)
        if type(raw) == 'table' or (raw and not integer(raw)) then return 'again' end
      end
    end
  end
end
local out, entries, wake, woken = {}, {}, {}, {}
for x, b in ipairs(batch) do
  out[x] = 0
  if not b.skip then
    for _, k in ipairs(b.keys) do
      if k.mine then
        local sum = total(k.steps)
        if sum ~= 0 then redis.call('INCRBY', k.data, int(sum)) end
        local t = tables[k.meta]
        if t.n <= 1 then
          redis.call('HDEL', k.meta, 'w', 't:' .. b.txn, 'n', 'neg', 'pos')
          if t.w and string.sub(t.w, 2, 2) == '1' and not woken[k.data] then
            woken[k.data] = true
            wake[#wake + 1] = k.data
          end
          tables[k.meta] = {n = 0, neg = 0, pos = 0}
        else
          local reserved = tonumber(string.match(k.mine, '([^\\t]*)$')) or 0
          t.n, t.neg, t.pos = t.n - 1, t.neg - math.min(reserved, 0), t.pos - math.max(reserved, 0)
          redis.call('HDEL', k.meta, 't:' .. b.txn)
          redis.call('HSET', k.meta, 'n', int(t.n), 'neg', int(t.neg), 'pos', int(t.pos))
        end
        out[x] = out[x] + 1
      end
    end
    if b.entry ~= '' then entries[#entries + 1] = b.entry end
  end
end
if #entries > 0 then call_all('ZREM', {index}, entries) end
for _, key in ipairs(wake) do redis.call('PUBLISH', 'rs:wake', key) end
return out
"
);

/// Extends a live transaction's leases on this store: every lock it holds
/// here and its lock index entry get `lease_ms` from now, by the server's
/// clock. A coordinator renews while its transaction runs (a third of a
/// lease apart), so that a transaction within its limits is never taken for
/// dead because it is slow; one that dies stops renewing, and its leases
/// end as before. A target no longer held (recovery took it) is left alone
/// and counted; nothing is ever locked anew here.
/// KEYS: data1, table1, ..., index; ARGV: txn, lease_ms, index entry, then
/// the key blocks. Reply: how many of the targets the transaction no longer
/// holds.
pub const RENEW: &str = lua_clock!(concat!(
    lua_keys!(),
    "local txn = ARGV[1]
local lease = int(now_ms + tonumber(ARGV[2]))
c = 4
local ks = parse(0, (#KEYS - 1) / 2)
local lost = 0
for _, k in ipairs(ks) do
  if load(k, txn) then
    return redis.error_reply('key ' .. k.data .. ': a lock table of an earlier protocol is in the way')
  end
  for _, t in ipairs(k.targets) do
    local renewed = t.mode == '-' or t.mode == 'r'
    local v = t.v
    local mode = v and string.sub(v, 1, 1)
    if mode == 'x' or mode == 's' then
      local _, wait, hs = holders(v)
      for _, h in ipairs(hs) do
        if h[1] == txn then
          h[2] = lease
          renewed = true
        end
      end
      if renewed then redis.call('HSET', k.meta, field(t.part), encode(mode, wait, hs)) end
    elseif mode == 'a' then
      local f = prefix(t.part) .. 't:' .. txn
      local h = t.adj
      if not t.counts then h = redis.call('HGET', k.meta, f) end
      if h then
        redis.call('HSET', k.meta, f, lease .. string.match(h, '^[^\\t]*(.*)$'))
        renewed = true
      end
    end
    if not renewed then lost = lost + 1 end
  end
end
redis.call('ZADD', KEYS[#KEYS], 'XX', lease, ARGV[3])
return lost
"
));

/// Applies decided transactions' writes on this store and releases their
/// locks here (or, with no ops, just releases them: a rollback, which also
/// gives up its reservations), for one transaction or a batch of them, each
/// with its own reply. Idempotent: an op whose target is no longer held by
/// its transaction is left out, and its appends are made only while its
/// index entry is here (this call removes it), so that a second delivery
/// appends nothing. What the ops need is checked before anything changes:
/// through redstage an adjusted value is an integer (it was checked when
/// its delta was reserved, and only adjusters have touched it since) and an
/// appended key holds what it was declared as, but a value or a key written
/// behind redstage's back that an op would fail on refuses that
/// transaction (its reply is the message; it keeps its locks), rather than
/// failing half-way.
///
/// Every check of every transaction in the batch runs before the first
/// write of any: a check that another transaction of the batch could make
/// false would need it to change the type of a key the check reads, so the
/// caller never batches two transactions that declare one key as two Redis
/// types (see `Store::apply_queued`); adjusters of one value keep it an
/// integer within the bounds their reservations were checked against.
/// Lock tables another transaction of the batch released are read again
/// before they are changed. A transaction given twice is applied once.
/// KEYS: index, then per transaction its data1, table1, ...; ARGV: the
/// number of transactions, then per transaction its id, its index entry
/// ('' if none), its number of keys and their key blocks. Reply: per
/// transaction, how many of its targets it held, or why it was refused.
pub const APPLY: &str = concat!(
    lua_keys!(),
    "local index = KEYS[1]
c = 2
local batch, off = {}, 1
for x = 1, tonumber(ARGV[1]) do
  local b = {txn = nxt(), entry = nxt()}
  local n = tonumber(nxt())
  b.ks = parse(off, n)
  off = off + 2 * n
  batch[x] = b
end
local function check(b)
  for _, k in ipairs(b.ks) do
    if load(k, b.txn) then
      return 'key ' .. k.data .. ': a lock table of an earlier protocol is in the way'
    end
    for _, t in ipairs(k.targets) do t.mine = held(k, t, b.txn) end
    local checked = false
    for _, o in ipairs(k.ops) do
      o.go = (o.t == 0 and b.listed) or (o.t > 0 and k.targets[o.t].mine)
      if o.go and o.t == 0 and not checked then
        local wrong = typed(k)
        checked = true
        if wrong then
          return 'key ' .. k.data .. ' holds a ' .. wrong[3] .. ', not the ' ..
            k.kind .. ' declared: it was written behind redstage; nothing applied'
        end
      end
      if o.go and o.code == 'adj' then
        local raw, wrong = value(k, k.targets[o.t])
        if wrong or (raw and not integer(raw)) then
          return 'key ' .. k.data .. ' cannot be adjusted: something written ' ..
            'behind redstage that the increment refuses is in it; nothing applied'
        end
      end
    end
  end
  return nil
end
local out, seen = {}, {}
for x, b in ipairs(batch) do
  out[x] = 0
  if seen[b.txn] then
    b.skip = true
  else
    seen[b.txn] = true
    b.listed = b.entry ~= '' and redis.call('ZSCORE', index, b.entry) ~= false
    local refused = check(b)
    if refused then
      out[x] = refused
      b.skip = true
    end
  end
end
local wake, entries, touched = {}, {}, {}
for x, b in ipairs(batch) do
  if not b.skip then
    local n = 0
    for _, k in ipairs(b.ks) do
      if touched[k.meta] then load(k, b.txn) end
      for _, o in ipairs(k.ops) do
        if o.go then apply(k, o) end
      end
      for _, t in ipairs(k.targets) do n = n + release(k, t, b.txn, wake) end
      touched[k.meta] = true
    end
    out[x] = n
    if b.entry ~= '' then entries[#entries + 1] = b.entry end
  end
end
if #entries > 0 then call_all('ZREM', {index}, entries) end
local woken = {}
for _, key in ipairs(wake) do
  if not woken[key] then
    woken[key] = true
    redis.call('PUBLISH', 'rs:wake', key)
  end
end
return out
"
);

/// Ends the life of decision records whose every store has applied: each
/// becomes the compact form with a TTL, or goes (`ttl` 0), and its marker
/// leaves the index. Only committed records are finalized, and only once
/// nothing points at them any more.
/// A record already compact (a transaction of one store) only has its TTL
/// changed (`PEXPIRE`, which leaves a record that is gone gone, as `XX`).
/// KEYS: index, record1, record2, ...; ARGV: compact record, then per
/// record `ttl_ms, marker ('' if none), compact ('1' or '')`. Reply: number
/// of records.
pub const FINALIZE: &str = concat!(
    lua_keys!(),
    "local gone, markers = {}, {}
for i = 2, #KEYS do
  local a = 3 * i - 4
  if ARGV[a] == '0' then
    gone[#gone + 1] = KEYS[i]
  elseif ARGV[a + 2] == '1' then
    redis.call('PEXPIRE', KEYS[i], ARGV[a])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The helpers a script's text defines, and those it calls.
    fn defined_and_called(code: &str) -> (Vec<String>, Vec<String>) {
        let names: Vec<String> = HELPERS
            .split("local function ")
            .skip(1)
            .map(|s| s[..s.find('(').unwrap()].to_owned())
            .collect();
        let defined = names
            .iter()
            .filter(|n| code.contains(&format!("local function {n}(")))
            .cloned()
            .collect();
        let called = names
            .iter()
            .filter(|n| {
                code.match_indices(&format!("{n}(")).any(|(i, _)| {
                    !code[..i].ends_with("function ")
                        && !code[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || "_.:".contains(c))
                })
            })
            .cloned()
            .collect();
        (defined, called)
    }

    #[test]
    fn a_lean_script_defines_every_helper_it_calls_and_no_other() {
        for code in [
            LOCK,
            RESERVE,
            COMMIT,
            RENEW,
            APPLY,
            FINALIZE,
            LOCK_ADJUSTED,
            COMMIT_ADJUSTED,
            APPLY_ADJUSTED,
        ] {
            let lean = lean(code);
            let (defined, called) = defined_and_called(&lean);
            assert_eq!(defined, called, "{}", &lean[lean.len() - 200..]);
            assert!(lean.len() < code.len());
            assert_eq!(lean.contains("local c = 1"), called.contains(&"nxt".into()));
        }
        let (defined, _) = defined_and_called(&lean(FINALIZE));
        assert_eq!(defined, ["call_all"]);
        assert_eq!(lean(DECISION), DECISION);
    }
}
