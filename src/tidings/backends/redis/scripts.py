"""The Lua scripts of the Redis backend: publish one event, start a node, sweep.

Each script runs atomically inside Redis and takes the hub's common keys first (see
:attr:`RedisKeys.common <tidings.backends.redis.keys.RedisKeys.common>`). The task store
embeds :data:`APPEND_SCRIPT` in its own scripts (:mod:`tidings.tasks.redis`).
"""

from __future__ import annotations

from typing import Final

__all__ = ["APPEND_SCRIPT", "PRUNE_BATCH", "START_SCRIPT", "SWEEP_SCRIPT"]

#: Topics pruned per sweeper script call (the script runs in one go inside Redis).
PRUNE_BATCH: Final = 500

# The keys every script receives first, in this order.
_COMMON_LUA = """
local K_EPOCH, K_SEQ, K_LOG, K_TOPICS, K_ACTIVE, K_EVICTED, K_FORGOTTEN, K_CONFIG =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- The current epoch; if it vanished (data lost), start a new history: wipe what is left of
-- the old one and never let the counter restart below a seq someone has seen (the floor).
local function ensure_epoch(new_epoch, floor, topic_prefix)
  local epoch = redis.call('GET', K_EPOCH)
  if epoch then return epoch end
  local topics = redis.call('ZRANGE', K_TOPICS, 0, -1)
  for _, topic in ipairs(topics) do redis.call('DEL', topic_prefix .. topic) end
  redis.call('DEL', K_LOG, K_TOPICS, K_ACTIVE, K_EVICTED, K_FORGOTTEN)
  local seq = tonumber(redis.call('GET', K_SEQ) or '0')
  if tonumber(floor) > seq then redis.call('SET', K_SEQ, floor) end
  redis.call('SET', K_EPOCH, new_epoch)
  return new_epoch
end
"""

#: Publish one event. KEYS: the 8 common keys, the topic's history, [the idempotency key].
#: ARGV: topic, meta, payload, time, history_size ('' = from config), log_size ('' = from
#: config), new epoch, floor, idempotency ttl (ms), topic key prefix.
#: Returns ``{id, duplicate}``.
APPEND_SCRIPT: Final = (
    _COMMON_LUA
    + """
local K_HISTORY, K_IDEM = KEYS[9], KEYS[10]
local topic, meta, payload = ARGV[1], ARGV[2], ARGV[3]
if K_IDEM then
  local first = redis.call('GET', K_IDEM)
  if first then return {first, 1} end
end
local size = tonumber(ARGV[5]) or tonumber(redis.call('HGET', K_CONFIG, 'history_size') or '1000')
local log_size = ARGV[6]
if log_size == '' then log_size = redis.call('HGET', K_CONFIG, 'log_size') or '100000' end
local epoch = ensure_epoch(ARGV[7], ARGV[8], ARGV[10])
-- The history's XADD is the first write: if it fails, no seq was used (no hole in ids).
local seq = string.format('%d', tonumber(redis.call('GET', K_SEQ) or '0') + 1)
local sid = seq .. '-0'
local added = redis.pcall('XADD', K_HISTORY, sid, 'm', meta, 'p', payload)
if type(added) == 'table' and added.err then
  -- Leftovers of a lost history hold higher ids: they are not this epoch's, drop them.
  -- Any other error (OOM, WRONGTYPE) aborts the publish.
  if not string.find(added.err, 'equal or smaller', 1, true) then
    return redis.error_reply(added.err)
  end
  redis.call('DEL', K_HISTORY)
  redis.call('XADD', K_HISTORY, sid, 'm', meta, 'p', payload)
end
redis.call('SET', K_SEQ, seq)
local n = redis.call('XLEN', K_HISTORY)
if n > size then
  local old = redis.call('XRANGE', K_HISTORY, '-', '+', 'COUNT', n - size)
  redis.call('HSET', K_EVICTED, topic, string.match(old[#old][1], '^%d+'))
  redis.call('XTRIM', K_HISTORY, 'MAXLEN', size)
end
redis.call('ZADD', K_TOPICS, 0, topic)
redis.call('ZADD', K_ACTIVE, 'GT', ARGV[4], topic)
redis.call('XADD', K_LOG, 'MAXLEN', '~', log_size, '*',
  'e', epoch, 's', seq, 't', topic, 'm', meta, 'p', payload)
local ident = epoch .. '-' .. seq
if K_IDEM then redis.call('SET', K_IDEM, ident, 'PX', ARGV[9]) end
return {ident, 0}
"""
)

#: At start: the epoch (created if missing) and where the log ends.
#: ARGV: new epoch, floor, topic key prefix, history_size, log_size.
#: Returns ``{epoch, last log id, seq of the last logged event}``.
START_SCRIPT: Final = (
    _COMMON_LUA
    + """
redis.call('HSET', K_CONFIG, 'history_size', ARGV[4], 'log_size', ARGV[5])
local epoch = ensure_epoch(ARGV[1], ARGV[2], ARGV[3])
local last = redis.call('XREVRANGE', K_LOG, '+', '-', 'COUNT', 1)
if last[1] then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then return {epoch, last[1][1], fields[i + 1]} end
  end
end
return {epoch, '0-0', redis.call('GET', K_SEQ) or '0'}
"""
)

#: Prune topics idle since before ``ARGV[1]`` (every event older than the window) and fold
#: their highest seq into the hub-wide watermark; trim the log by age.
#: ARGV: horizon (seconds), topic key prefix, batch, log age (ms). Returns the topics pruned.
SWEEP_SCRIPT: Final = (
    _COMMON_LUA
    + """
local stale = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', '(' .. ARGV[1],
  'LIMIT', 0, tonumber(ARGV[3]))
if #stale > 0 then
  local high = tonumber(redis.call('GET', K_FORGOTTEN) or '0')
  for _, topic in ipairs(stale) do
    local key = ARGV[2] .. topic
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if last[1] then high = math.max(high, tonumber(string.match(last[1][1], '^%d+'))) end
    high = math.max(high, tonumber(redis.call('HGET', K_EVICTED, topic) or '0'))
    redis.call('DEL', key)
    redis.call('HDEL', K_EVICTED, topic)
    redis.call('ZREM', K_TOPICS, topic)
    redis.call('ZREM', K_ACTIVE, topic)
  end
  redis.call('SET', K_FORGOTTEN, string.format('%d', high))
end
local now = redis.call('TIME')
local minid = tonumber(now[1]) * 1000 - tonumber(ARGV[4])
if minid > 0 then redis.call('XTRIM', K_LOG, 'MINID', '~', string.format('%d', minid)) end
return #stale
"""
)
