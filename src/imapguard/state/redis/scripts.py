"""The Lua scripts of the Redis counter store (`imapguard.state.redis.counters`).

Redis runs a script atomically: no other client's command runs between its
calls, on any node. Each check-and-set of the store is one script, so N gateway
nodes never see the same counter value or both win one compare-and-set.

The scripts reach keys they read from an index (`PURGE`) besides those passed
in KEYS, which a standalone Redis or a Sentinel-managed one allows and Redis
Cluster does not: the store does not support Cluster.

Every data key gets a real expiry (`PEXPIREAT deadline`, the deadline given by
the caller: the entry's logical expiry plus a grace), and every key added to an
index pushes the index's own expiry to at least that deadline (`touch`), so
nothing outlives what it describes for long, even if nobody purges.
"""

from __future__ import annotations

__all__ = ["INCR", "MEMBERS_ADD", "MEMBERS_COUNT", "MEMBERS_LIST", "PURGE", "PUT_VALUE"]

# Set the key's real expiry to at least `deadline` (ms since the epoch): NX
# sets it on a key without one, GT only moves it later.
_TOUCH = """
local function touch(key, deadline)
  redis.call('PEXPIREAT', key, deadline, 'NX')
  redis.call('PEXPIREAT', key, deadline, 'GT')
end
"""

# KEYS: counter hash, counter index. ARGV: amount, expires, now, deadline.
# The hash holds n (count) and e (logical expiry); an expired one restarts.
INCR = (
    _TOUCH
    + """
local e = tonumber(redis.call('HGET', KEYS[1], 'e'))
local n
if e and e > tonumber(ARGV[3]) then
  n = redis.call('HINCRBY', KEYS[1], 'n', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'n', ARGV[1])
  n = tonumber(ARGV[1])
end
redis.call('HSET', KEYS[1], 'e', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
touch(KEYS[2], ARGV[4])
return n
"""
)

# KEYS: set index, then one sorted set per entry. ARGV: expires, deadline, then
# the entries' members in KEYS' order. A set maps member -> logical expiry
# (GT: a member keeps the later one); the index holds each set at its earliest
# member expiry (LT), where the purge must look first.
MEMBERS_ADD = (
    _TOUCH
    + """
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'GT', ARGV[1], ARGV[i + 1])
  touch(KEYS[i], ARGV[2])
  redis.call('ZADD', KEYS[1], 'LT', ARGV[1], KEYS[i])
end
touch(KEYS[1], ARGV[2])
return #KEYS - 1
"""
)

# The union of the sets KEYS[2..] into KEYS[1] (a scratch key: scripts do not
# interleave, so one name serves every caller), without the members expired at
# ARGV[1].
_UNION = """
local function union(now)
  local args = {KEYS[1], #KEYS - 1}
  for i = 2, #KEYS do args[#args + 1] = KEYS[i] end
  args[#args + 1] = 'AGGREGATE'
  args[#args + 1] = 'MAX'
  redis.call('ZUNIONSTORE', unpack(args))
  redis.call('PEXPIRE', KEYS[1], 60000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end
"""

# KEYS: scratch, sets. ARGV: now. The number of distinct live members.
MEMBERS_COUNT = (
    _UNION
    + """
if #KEYS < 2 then return 0 end
union(ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"""
)

# KEYS: scratch, sets. ARGV: now, limit. The first `limit` distinct live
# members in byte order (all scores made 0, a sorted set orders by memcmp).
MEMBERS_LIST = (
    _UNION
    + """
if #KEYS < 2 then return {} end
union(ARGV[1])
redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', 0)
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('DEL', KEYS[1])
return members
"""
)

# KEYS: value hash, value index. ARGV: mode ("put": always; "swap": only if the
# live value equals ARGV[2]; "create": only if there is no live value),
# expected, value, expires ("" for never), now, deadline. 1 if set, else 0.
PUT_VALUE = (
    _TOUCH
    + """
local mode = ARGV[1]
if mode ~= 'put' then
  local cur = redis.call('HMGET', KEYS[1], 'v', 'e')
  local v = cur[1]
  if v and cur[2] and tonumber(cur[2]) <= tonumber(ARGV[5]) then v = false end
  if mode == 'create' then
    if v then return 0 end
  elseif v ~= ARGV[2] then
    return 0
  end
end
redis.call('DEL', KEYS[1])
if ARGV[4] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[3])
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[3], 'e', ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], ARGV[6])
  redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
  touch(KEYS[2], ARGV[6])
end
return 1
"""
)

# KEYS: counter, set, block and value indexes. ARGV: now, limit. Removes at
# most `limit` expired entries of each kind (counter buckets, set members,
# blocks, values) and returns how many it removed.
PURGE = """
local now, limit = ARGV[1], tonumber(ARGV[2])
local removed = 0
for _, i in ipairs({1, 3, 4}) do
  local keys = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, limit)
  for _, k in ipairs(keys) do
    redis.call('DEL', k)
    redis.call('ZREM', KEYS[i], k)
  end
  removed = removed + #keys
end
local budget = limit
local sets = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, k in ipairs(sets) do
  if budget <= 0 then break end
  local gone = redis.call('ZRANGEBYSCORE', k, '-inf', now, 'LIMIT', 0, budget)
  for first = 1, #gone, 500 do
    redis.call('ZREM', k, unpack(gone, first, math.min(first + 499, #gone)))
  end
  budget = budget - #gone
  removed = removed + #gone
  local earliest = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
  if #earliest == 0 then
    redis.call('ZREM', KEYS[2], k)
  else
    redis.call('ZADD', KEYS[2], earliest[2], k)
  end
end
return removed
"""
