"""The Redis store: correct across hosts. Every check-and-update is one Lua script (Redis
runs a script alone, start to end), and every time comes from `redis.call('TIME')` inside
the script, so gateways with skewed clocks agree on windows and expiries.

Layout, under the prefix:
- `l:{key}` ZSET entry -> expires_at, and `la:{key}` HASH `e:{entry}` -> amount plus
  `total`: a ledger. Pruning reads the ZSET up to now, so it costs O(expired).
- `b:{key}` HASH `spent`, `total` (reserved) and `e:{entry}` -> amount, with `bz:{key}`
  ZSET entry -> expires_at: a budget and its reservations. A budget's period ends when
  its keys expire.
- `h:{key}` HASH: counters. `v:{key}` STRING: plain values.

Every key carries an expiry except spend and counters kept on purpose (no ttl given), so
abandoned ledgers and reservations vanish by themselves. Lua numbers are doubles and
Redis writes a number argument back at full precision, so sums match the other backends
bit for bit; results return as `%.17g` strings (a Lua number would come back truncated
to an integer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lockgate.kernel.context import OWNER_CHARS
from lockgate.kernel.store.base import Claim, ClaimResult, Reservation, Store

LEDGER_LUA = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function ms(seconds)
  return math.ceil(seconds * 1000)
end

-- expire `key` in at least `millis` (a ledger key lives until its last entry expires)
local function extend(key, millis)
  if redis.call('PTTL', key) < millis then
    redis.call('PEXPIRE', key, millis)
  end
end

local function total_of(h)
  return tonumber(redis.call('HGET', h, 'total')) or 0
end

-- take `amount` off an entry of ledger hash h (not below 0), keeping it and its expiry
local function take(h, entry, amount)
  local old = tonumber(redis.call('HGET', h, 'e:' .. entry))
  if old then
    local left = math.max(0, old - amount)
    redis.call('HSET', h, 'e:' .. entry, left, 'total', total_of(h) - old + left)
  end
end

-- drop the expired entries of ledger (z, h); returns its live total
local function prune(z, h, t)
  local total = total_of(h)
  local changed = false
  while true do
    local gone = redis.call('ZRANGEBYSCORE', z, '-inf', t, 'LIMIT', 0, 500)
    if #gone == 0 then break end
    local fields = {}
    for i, entry in ipairs(gone) do fields[i] = 'e:' .. entry end
    for _, amount in ipairs(redis.call('HMGET', h, unpack(fields))) do
      total = total - (tonumber(amount) or 0)
    end
    redis.call('ZREM', z, unpack(gone))
    redis.call('HDEL', h, unpack(fields))
    changed = true
  end
  if redis.call('ZCARD', z) == 0 then
    -- empty: no rounding residue carried into the next window
    redis.call('HDEL', h, 'total')
    return 0
  end
  if changed then redis.call('HSET', h, 'total', total) end
  return total
end

-- add or replace an entry; returns the new total
local function put(z, h, entry, amount, expires)
  local total = total_of(h)
  local old = tonumber(redis.call('HGET', h, 'e:' .. entry))
  if old then total = total - old end
  total = total + amount
  redis.call('ZADD', z, expires, entry)
  redis.call('HSET', h, 'e:' .. entry, amount, 'total', total)
  return total
end

local function remove(z, h, entry)
  local old = tonumber(redis.call('HGET', h, 'e:' .. entry))
  if not old then return end
  redis.call('ZREM', z, entry)
  redis.call('HDEL', h, 'e:' .. entry)
  if redis.call('ZCARD', z) == 0 then
    redis.call('HDEL', h, 'total')
  else
    redis.call('HSET', h, 'total', total_of(h) - old)
  end
end
"""

# KEYS: (zset, hash) per ledger. ARGV: entry, then (limit, amount, ttl_s) per ledger.
# Returns {ok, failed index or -1, retry_after, used...}.
CLAIM = LEDGER_LUA + """
local t = now()
local entry = ARGV[1]
local n = #KEYS / 2
local used = {}
for i = 1, n do used[i] = prune(KEYS[2 * i - 1], KEYS[2 * i], t) end
for i = 1, n do
  local limit, amount = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if used[i] + amount > limit then
    -- seconds until enough expires that the claim fits, reading only as far as needed
    local excess, retry, start = used[i] + amount - limit, math.huge, 0
    local z, h = KEYS[2 * i - 1], KEYS[2 * i]
    while retry == math.huge do
      local page = redis.call('ZRANGE', z, start, start + 99, 'WITHSCORES')
      if #page == 0 then break end
      local fields = {}
      for j = 1, #page, 2 do fields[#fields + 1] = 'e:' .. page[j] end
      local amounts = redis.call('HMGET', h, unpack(fields))
      for j = 1, #fields do
        excess = excess - (tonumber(amounts[j]) or 0)
        if excess <= 0 then
          retry = math.max(0, tonumber(page[2 * j]) - t)
          break
        end
      end
      start = start + 100
    end
    local result = {0, i - 1, fmt(retry)}
    for k = 1, n do result[k + 3] = fmt(used[k]) end
    return result
  end
end
for i = 1, n do
  local z, h, ttl = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[3 * i + 1])
  put(z, h, entry, tonumber(ARGV[3 * i]), t + ttl)
  extend(z, ms(ttl) + 1000)
  extend(h, ms(ttl) + 1000)
end
local result = {1, -1, '0'}
for i = 1, n do result[i + 3] = fmt(total_of(KEYS[2 * i])) end
return result
"""

# KEYS: zset, hash. ARGV: entry, amount ('' removes the entry).
ADJUST = LEDGER_LUA + """
local z, h, entry = KEYS[1], KEYS[2], ARGV[1]
if ARGV[2] == '' then
  remove(z, h, entry)
  return
end
local old = tonumber(redis.call('HGET', h, 'e:' .. entry))
if not old then return end
local amount = tonumber(ARGV[2])
redis.call('HSET', h, 'e:' .. entry, amount, 'total', total_of(h) - old + amount)
"""

# KEYS: a budget's hash. ARGV: entry, amount to take off it (not below 0).
SHRINK = LEDGER_LUA + """
take(KEYS[1], ARGV[1], tonumber(ARGV[2]))
"""

# KEYS: zset, hash.
USED = LEDGER_LUA + """
return fmt(prune(KEYS[1], KEYS[2], now()))
"""

# KEYS: (budget hash, reservations zset) per budget. ARGV: entry, then (limit, amount, ttl_s,
# alone) per budget. Returns {ok, failed index or -1, spent..., reserved...}.
RESERVE = LEDGER_LUA + """
local t = now()
local entry = ARGV[1]
local n = #KEYS / 2
local spent, reserved = {}, {}
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  reserved[i] = prune(z, h, t)
  spent[i] = tonumber(redis.call('HGET', h, 'spent')) or 0
end
local function result(ok, failed)
  local out = {ok, failed}
  for i = 1, n do
    out[i + 2] = fmt(spent[i])
    out[n + i + 2] = fmt(reserved[i])
  end
  return out
end
for i = 1, n do
  -- store.fits: within the limit with its whole reservation, or alone while not yet spent
  local limit, amount, alone = tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i - 1]), ARGV[4 * i + 1] == '1'
  local fits = spent[i] + reserved[i] + amount <= limit or (alone and reserved[i] <= 0 and spent[i] < limit)
  if not fits then return result(0, i - 1) end
end
for i = 1, n do
  local h, z, ttl = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[4 * i])
  put(z, h, entry, tonumber(ARGV[4 * i - 1]), t + ttl)
  local period = redis.call('PTTL', h)
  if redis.call('HEXISTS', h, 'spent') == 0 then
    -- nothing spent yet: the keys only need to outlive the reservation
    extend(h, ms(ttl) + 1000)
    extend(z, ms(ttl) + 1000)
  elseif period > 0 then
    -- reservations end with the period, as the spent does
    redis.call('PEXPIRE', z, period)
  else
    extend(z, ms(ttl) + 1000)
  end
end
for i = 1, n do reserved[i] = total_of(KEYS[2 * i - 1]) end
return result(1, -1)
"""

# KEYS: (budget hash, reservations zset) per budget, then one hash per counter. ARGV: cost,
# ttl_s ('' keeps the budget's expiry), the number of budgets, then (entry, keep) per budget,
# then (field, amount) per counter: a settle and its spend report in one script, one round
# trip. Returns each budget's new spent.
CHARGE = LEDGER_LUA + """
local t = now()
local cost, ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local entry, keep = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  prune(z, h, t)
  if keep == '1' then
    -- a lease goes on: take the cost off what it holds
    take(h, entry, cost)
  else
    remove(z, h, entry)
  end
  local first = redis.call('HEXISTS', h, 'spent') == 0
  local spent = (tonumber(redis.call('HGET', h, 'spent')) or 0) + cost
  -- nothing spent and no period (a lease given back, a request undone): the record is
  -- left as it is, not kept for good
  if cost ~= 0 or ttl then
    redis.call('HSET', h, 'spent', spent)
    if ttl then
      redis.call('PEXPIRE', h, ms(ttl))
      redis.call('PEXPIRE', z, ms(ttl))
    elseif first then
      -- the first spend without a period: kept for good (reserve gave the key a short life)
      redis.call('PERSIST', h)
    end
  end
  out[i] = fmt(spent)
end
local base = 3 + 2 * n
for j = 2 * n + 1, #KEYS do
  local k = j - 2 * n
  local field, amount = ARGV[base + 2 * k - 1], tonumber(ARGV[base + 2 * k])
  redis.call('HSET', KEYS[j], field, (tonumber(redis.call('HGET', KEYS[j], field)) or 0) + amount)
end
return out
"""

# KEYS: one hash per item. ARGV: ttl_s ('' keeps expiries), then (field, amount) per item.
INCR = LEDGER_LUA + """
local ttl = tonumber(ARGV[1])
for i, h in ipairs(KEYS) do
  local field = ARGV[2 * i]
  redis.call('HSET', h, field, (tonumber(redis.call('HGET', h, field)) or 0) + tonumber(ARGV[2 * i + 1]))
  if ttl then redis.call('PEXPIRE', h, ms(ttl)) end
end
"""

GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def text(reply: bytes | str) -> str:
    """A key or a value as text. This client leaves replies as bytes (no `decode_responses`),
    which redis-py's types cannot tell: they allow str as well."""
    return cast(bytes, reply).decode()


def seconds_to_ms(ttl_s: float) -> int:
    """Redis refuses an expiry of 0: the shortest is one millisecond."""
    return max(1, math.ceil(ttl_s * 1000))


class RedisStore(Store):
    backend = "redis"
    errors = (OSError, RedisError)

    def __init__(self, url: str, prefix: str = "lockgate:", max_connections: int = 64) -> None:
        # a blocking pool: a call past `max_connections` in flight waits for a connection
        # (a queue under load, which the guard's deadline tells from an outage) instead of
        # failing at once as redis-py's default pool does
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None)
        self.redis = aioredis.Redis.from_pool(pool)  # (closed with the client)
        self.prefix = prefix
        # register_script sends EVALSHA, loading the script only when Redis lacks it
        self._claim = self.redis.register_script(CLAIM)
        self._adjust = self.redis.register_script(ADJUST)
        self._shrink = self.redis.register_script(SHRINK)
        self._used = self.redis.register_script(USED)
        self._reserve = self.redis.register_script(RESERVE)
        self._charge = self.redis.register_script(CHARGE)
        self._incr = self.redis.register_script(INCR)

    def _ledger(self, key: str) -> list[str]:
        return [f"{self.prefix}l:{key}", f"{self.prefix}la:{key}"]

    def _budget(self, key: str) -> list[str]:
        return [f"{self.prefix}b:{key}", f"{self.prefix}bz:{key}"]

    # -- ledgers ----------------------------------------------------------------------
    async def claim(self, claims: Sequence[Claim], entry_id: str) -> ClaimResult:
        keys = [k for c in claims for k in self._ledger(c.key)]
        args: list[str | float] = [entry_id]
        for c in claims:
            args += [c.limit, c.amount, c.ttl_s]
        ok, failed, retry, *used = await self._claim(keys, args)
        totals = tuple(float(u) for u in used)
        if ok:
            return ClaimResult(True, totals)
        return ClaimResult(False, totals, int(failed), float(retry))

    async def adjust(self, key: str, entry_id: str, amount: float | None) -> None:
        await self._adjust(self._ledger(key), [entry_id, "" if amount is None else amount])

    async def adjust_many(self, items: Sequence[tuple[str, str, float | None]]) -> None:
        if len(items) == 1:
            await self.adjust(*items[0])
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, entry_id, amount in items:
                await self._adjust(self._ledger(key), [entry_id, "" if amount is None else amount], client=pipe)
            await pipe.execute()

    async def used(self, key: str) -> float:
        return float(await self._used(self._ledger(key)))

    async def ledger_totals(self, prefix: str) -> dict[str, float]:
        head = self.prefix + "l:"
        keys = [name.decode()[len(head) :] async for name in self.redis.scan_iter(match=(head + prefix).translate(GLOB_SPECIAL) + "*", count=1000)]
        totals = {key: await self.used(key) for key in keys}
        return {key: total for key, total in totals.items() if total > 0}

    # -- budgets ----------------------------------------------------------------------
    async def reserve(self, claims: Sequence[Claim], entry_id: str) -> Reservation:
        keys = [k for c in claims for k in self._budget(c.key)]
        args: list[str | float] = [entry_id]
        for c in claims:
            args += [c.limit, c.amount, c.ttl_s, "1" if c.alone else "0"]
        ok, failed, *values = await self._reserve(keys, args)
        n = len(claims)
        spent = tuple(float(v) for v in values[:n])
        reserved = tuple(float(v) for v in values[n:])
        return Reservation(bool(ok), spent, reserved, None if ok else int(failed))

    async def charge(
        self, items: Sequence[tuple[str, str, bool]], cost: float, ttl_s: float | None = None, counters: Sequence[tuple[str, str, float]] = ()
    ) -> tuple[float, ...]:
        keys = [k for key, _, _ in items for k in self._budget(key)]
        keys += [f"{self.prefix}h:{key}" for key, _, _ in counters]
        args: list[str | float] = [cost, "" if ttl_s is None else ttl_s, len(items)]
        for _, entry_id, keep in items:
            args += [entry_id, "1" if keep else "0"]
        for _, field, amount in counters:
            args += [field, amount]
        spent = await self._charge(keys, args)
        return tuple(float(s) for s in spent)

    async def shrink(self, key: str, entry_id: str, amount: float) -> None:
        await self._shrink([self._budget(key)[0]], [entry_id, amount])

    async def spent(self, key: str) -> float:
        # a budget whose period is over has expired in Redis: nothing to compute
        value = await self.redis.hget(self._budget(key)[0], "spent")
        return 0.0 if value is None else float(value)

    # -- counters -----------------------------------------------------------------------
    async def incr(self, items: Sequence[tuple[str, str, float]], ttl_s: float | None = None) -> None:
        await self._incr(*self._incr_args(items, ttl_s))

    def _incr_args(self, items: Sequence[tuple[str, str, float]], ttl_s: float | None) -> tuple[list[str], list[str | float]]:
        keys = [f"{self.prefix}h:{key}" for key, _, _ in items]
        args: list[str | float] = ["" if ttl_s is None else ttl_s]
        for _, field, amount in items:
            args += [field, amount]
        return keys, args

    async def counters(self, key: str) -> dict[str, float]:
        fields = await self.redis.hgetall(f"{self.prefix}h:{key}")
        return {text(field): float(value) for field, value in fields.items()}

    async def keys(self, prefix: str) -> list[str]:
        found: set[str] = set()
        for kind in ("h:", "v:", "b:"):
            head = self.prefix + kind
            async for name in self.redis.scan_iter(match=(head + prefix).translate(GLOB_SPECIAL) + "*", count=1000):
                found.add(text(name)[len(head) :])
        return sorted(found)

    # -- values -------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        return cast("bytes | None", await self.redis.get(f"{self.prefix}v:{key}"))  # bytes: see `text`

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        await self.redis.set(f"{self.prefix}v:{key}", value, px=None if ttl_s is None else seconds_to_ms(ttl_s))

    async def add(self, key: str, value: bytes, ttl_s: float | None = None) -> bool:
        done = await self.redis.set(f"{self.prefix}v:{key}", value, nx=True, px=None if ttl_s is None else seconds_to_ms(ttl_s))
        return bool(done)

    async def delete(self, key: str) -> None:
        await self.redis.delete(f"{self.prefix}v:{key}", f"{self.prefix}h:{key}")

    # -- owners -------------------------------------------------------------------------
    async def heartbeat(self, owner: str, info: str, ttl_s: float) -> None:
        await self.redis.set(f"{self.prefix}o:{owner}", info, px=seconds_to_ms(ttl_s))

    async def _lease_sets(self) -> list[tuple[str, str]]:
        """(zset, hash) of every lease ledger: budget reservations and `lease:` ledgers."""
        found: list[tuple[str, str]] = []
        async for name in self.redis.scan_iter(match=(self.prefix + "bz:").translate(GLOB_SPECIAL) + "*", count=1000):
            budget, reservations = self._budget(text(name)[len(self.prefix) + 3 :])
            found.append((reservations, budget))
        async for name in self.redis.scan_iter(match=(self.prefix + "l:lease:").translate(GLOB_SPECIAL) + "*", count=1000):
            zset, hash_key = self._ledger(text(name)[len(self.prefix) + 2 :])
            found.append((zset, hash_key))
        return found

    async def _members(self, zset: str) -> list[str]:
        # asked without scores, every reply is a member (redis-py's types allow pairs too)
        return [text(member) for member in cast("list[bytes]", await self.redis.zrange(zset, 0, -1))]

    async def lease_owners(self) -> dict[str, str | None]:
        owners: set[str] = set()
        for zset, _ in await self._lease_sets():
            owners.update(member[:OWNER_CHARS] for member in await self._members(zset))
        if not owners:
            return {}
        ordered = sorted(owners)
        infos = await self.redis.mget([f"{self.prefix}o:{owner}" for owner in ordered])
        return {owner: None if info is None else text(info) for owner, info in zip(ordered, infos, strict=True)}

    async def release_owner(self, owner: str) -> int:
        released = 0
        for zset, hash_key in await self._lease_sets():
            for entry in await self._members(zset):
                if entry.startswith(owner):
                    await self._adjust([zset, hash_key], [entry, ""])
                    released += 1
        await self.redis.delete(f"{self.prefix}o:{owner}")
        return released

    # -- life cycle -----------------------------------------------------------------------
    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()
