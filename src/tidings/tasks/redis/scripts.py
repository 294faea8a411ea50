"""The Lua scripts of the Redis task store: a change of a task, with or without its event.

:data:`PUBLISH_SCRIPT` embeds the backend's
:data:`~tidings.backends.redis.scripts.APPEND_SCRIPT` as a function, so a change and its
event are one atomic step (see :mod:`tidings.tasks.redis`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

from tidings.backends.redis.scripts import APPEND_SCRIPT

__all__ = [
    "CONFLICT",
    "DELETE_SCRIPT",
    "EXISTS",
    "MISSING",
    "OK",
    "PUBLISH_SCRIPT",
    "PURGE_SCRIPT",
    "SCRIPTS",
    "WRITE_SCRIPT",
    "ScriptName",
]

# Script reply codes (the second item; the first is the event id, if any).
OK: Final = 0
CONFLICT: Final = 2
MISSING: Final = 3
EXISTS: Final = 4

# The task's arguments are the last nine of ARGV: after the append's in PUBLISH_SCRIPT.
_TASK_LUA = """
local TB = #ARGV - 9
local K_TASK, TP, TASK_ID, EXPECT = ARGV[TB + 1], ARGV[TB + 2], ARGV[TB + 3], ARGV[TB + 4]
local RECORD, OWNER, STATUS, EXPIRY, EVENT_ID =
  ARGV[TB + 5], ARGV[TB + 6], ARGV[TB + 7], ARGV[TB + 8], ARGV[TB + 9]

-- 0: the record is the version the writer read (or, EXPECT '', absent); 2: another writer
-- changed it; 3: it is gone; 4: it exists (insert).
local function check_version()
  local version = redis.call('HGET', K_TASK, 'v')
  if EXPECT == '' then
    if version then return 4 end
    return 0
  end
  if not version then return 3 end
  if version ~= EXPECT then return 2 end
  return 0
end

-- Write the record and keep the indexes in step with its owner, status and expiry.
local function write_task(event_id)
  local old = redis.call('HMGET', K_TASK, 'v', 'o', 's', 'c')
  local score = old[4]
  if not old[1] then
    score = redis.call('INCR', TP .. 'created')
    redis.call('ZADD', TP .. 'all', score, TASK_ID)
  end
  if old[2] ~= OWNER then
    if old[2] and old[2] ~= '-' then
      redis.call('ZREM', TP .. 'owner:' .. string.sub(old[2], 2), TASK_ID)
    end
    if OWNER ~= '-' then
      redis.call('ZADD', TP .. 'owner:' .. string.sub(OWNER, 2), score, TASK_ID)
    end
  end
  if old[3] ~= STATUS then
    if old[3] then redis.call('ZREM', TP .. 'status:' .. old[3], TASK_ID) end
    redis.call('ZADD', TP .. 'status:' .. STATUS, score, TASK_ID)
  end
  redis.call('ZADD', TP .. 'expiry', EXPIRY, TASK_ID)
  redis.call('HSET', K_TASK, 'r', RECORD, 'v', (tonumber(old[1]) or 0) + 1, 'o', OWNER,
    's', STATUS, 'c', score)
  if event_id == '' then
    redis.call('HDEL', K_TASK, 'e')
  else
    redis.call('HSET', K_TASK, 'e', event_id)
  end
end
"""

#: Insert or update a record without an event. ARGV: the nine task arguments (see
#: :meth:`TaskPlans._task_args`). Returns ``{'', code}``.
WRITE_SCRIPT: Final = (
    _TASK_LUA
    + """
local code = check_version()
if code ~= 0 then return {'', code} end
write_task(EVENT_ID)
return {'', 0}
"""
)

#: Insert or update a record and append its event, atomically. KEYS and the first ARGV: those
#: of :data:`~tidings.backends.redis.APPEND_SCRIPT` (:func:`append_arguments`); then the nine
#: task arguments. Returns ``{id, 0}``, or ``{'', code}`` when the check failed (nothing
#: written, no id used).
PUBLISH_SCRIPT: Final = (
    "local function append_event()\n"
    + APPEND_SCRIPT
    + "\nend\n"
    + _TASK_LUA
    + """
local code = check_version()
if code ~= 0 then return {'', code} end
local appended = append_event()
if appended.err then return appended end
write_task(appended[1])
return appended
"""
)

_REMOVE_LUA = """
local function remove_task(key, tp, id)
  redis.call('ZREM', tp .. 'all', id)
  redis.call('ZREM', tp .. 'expiry', id)
  local f = redis.call('HMGET', key, 'r', 'e', 'o', 's')
  if not f[1] then return false end
  if f[3] and f[3] ~= '-' then redis.call('ZREM', tp .. 'owner:' .. string.sub(f[3], 2), id) end
  if f[4] then redis.call('ZREM', tp .. 'status:' .. f[4], id) end
  redis.call('DEL', key)
  return {f[1], f[2] or ''}
end
"""

#: Delete one task. ARGV: its key, the index prefix, its id. Returns ``{record, event id}``
#: or nil.
DELETE_SCRIPT: Final = _REMOVE_LUA + "return remove_task(ARGV[1], ARGV[2], ARGV[3])\n"

#: Delete up to ARGV[4] tasks whose expiry score is below ARGV[3]. ARGV: the task key
#: prefix, the index prefix, before, batch. Returns ``{ids examined, {record, event id, ...}}``.
PURGE_SCRIPT: Final = (
    _REMOVE_LUA
    + """
local ids = redis.call('ZRANGEBYSCORE', ARGV[2] .. 'expiry', '-inf', '(' .. ARGV[3],
  'LIMIT', 0, tonumber(ARGV[4]))
local gone = {}
for _, id in ipairs(ids) do
  local removed = remove_task(ARGV[1] .. id, ARGV[2], id)
  if removed then
    gone[#gone + 1] = removed[1]
    gone[#gone + 1] = removed[2]
  end
end
return {#ids, gone}
"""
)

ScriptName: TypeAlias = Literal["append", "write", "publish", "delete", "purge"]

#: Every script the plans use, by name (a driver registers them once per client).
SCRIPTS: Final[Mapping[ScriptName, str]] = {
    "append": APPEND_SCRIPT,
    "write": WRITE_SCRIPT,
    "publish": PUBLISH_SCRIPT,
    "delete": DELETE_SCRIPT,
    "purge": PURGE_SCRIPT,
}
