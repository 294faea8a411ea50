"""The Redis task store (``--store redis``, the default with a Redis backend): tasks live in
the backend's Redis, so every node and every worker sees one set of tasks (SPEC §6).

Decisions worth knowing before changing this file:

- **One script per change, event included.** A change of a task and its event are one Lua
  script: :data:`PUBLISH_SCRIPT` checks the record's version, runs the backend's
  :data:`~tidings.backends.redis.APPEND_SCRIPT` (embedded as a function, not copied), and
  writes the new record with the event's id. The task service's per-task lock is per node;
  two nodes (or a node and a worker) changing one task would otherwise each commit a
  ``sequence`` and then append their events in either order. In one script, the event of
  ``sequence`` N+1 can only be appended on top of the record of N, atomically, so on the
  wire (the hub log and the ``tasks/<id>`` history) a task's ``sequence`` rises by exactly
  one per event, whichever node or worker made it. It also means a change is never
  committed without its event, nor published without being committed; a refused script
  (Redis down) changed nothing.
- **Compare-and-set by version.** Writers read the record and its version (``v``), apply
  the pure transition in Python, and send the result with the version they read; the
  script refuses it if the version moved and the writer retries on the newer record. So
  ``mutate`` may run more than once (the :class:`~tidings.tasks.store.TaskStore` contract),
  the loser of two racing terminal requests sees the winner's record and raises
  :class:`~tidings.errors.TaskFinished`, and nothing of the loser is written or
  published. This is the ``WATCH``/``MULTI`` loop done in a script, so the append can run
  in the same atomic step.
- **Order of writes inside the script.** Checks first (reads only), then the append (whose
  first write is its ``XADD``), then the record. Redis refuses a script for lack of memory
  only at its first write, so a script that started writing finishes: a change is never
  half applied.
- **Sans-I/O plans.** Every operation is a generator (:class:`TaskPlans`) that yields the
  Redis round trips it needs and receives their replies. :func:`run_async` drives it on
  ``redis.asyncio`` (this store, ``AsyncPublisher``), :func:`run_sync` on the blocking client
  (``Publisher("redis://...")`` in a Celery worker), so the hub and a worker run the same
  code and publish the same events.
- The event id of the latest event is kept beside the record (field ``e``), not in its
  JSON: the script learns it only when the append returns.
- ``redis-py``'s automatic retries are off, as in the backend: a script whose reply was
  lost may have run, and running a change twice would publish two events.

Keys (``prefix`` is the backend's, ``tidings`` by default)::

    {p}:task:<id>             hash    r record JSON, v version, e latest event id,
                                      o owner ('-' none, '+<user>'), s status, c order
    {p}:tasks:all             zset    task ids by creation order (score c)
    {p}:tasks:owner:<user>    zset    one owner's task ids by creation order
    {p}:tasks:status:<status> zset    task ids with that status, by creation order
    {p}:tasks:expiry          zset    task id -> finished_at, else updated_at (purge)
    {p}:tasks:created         string  the creation counter (scores c)

Like the backend's, the scripts touch keys they compute from the prefix: one Redis (or one
hash slot, ``{tidings}``), Redis 6.2+.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar

import orjson
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from tidings.backends.base import Appended
from tidings.backends.redis import (
    APPEND_SCRIPT,
    RedisKeys,
    append_arguments,
    parse_appended,
)
from tidings.backends.redis.client import CLIENT_OPTIONS
from tidings.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidEvent,
    TaskExists,
    TaskNotFound,
)
from tidings.events import Draft, EventId
from tidings.tasks.model import Task, evolve
from tidings.tasks.store import Mutation

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = [
    "PUBLISH_SCRIPT",
    "SCRIPTS",
    "Commands",
    "Plan",
    "RedisTaskStore",
    "Script",
    "ScriptName",
    "TaskKeys",
    "TaskPlans",
    "client_options",
    "open_store",
    "register_scripts",
    "run_async",
    "run_sync",
]

logger = logging.getLogger("tidings.tasks.redis")

T = TypeVar("T")

#: Compare-and-set rounds before a change gives up (each lost round means another writer
#: committed, so this is only reached under pathological contention).
MAX_ATTEMPTS: Final = 1000
#: Tasks deleted per purge script (the script runs in one go inside Redis).
PURGE_BATCH: Final = 200
#: Tasks read per page of :meth:`TaskPlans.list` when a filter may skip some.
LIST_PAGE: Final = 100

# Script reply codes (the second item; the first is the event id, if any).
_OK: Final = 0
_CONFLICT: Final = 2
_MISSING: Final = 3
_EXISTS: Final = 4

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


def client_options() -> dict[str, Any]:
    """Options of every Redis client of tasks and workers (as the backend's: no retries)."""
    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "socket_keepalive": True,
        # A script retried after Redis ran it would apply a change (and its event) twice.
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        **CLIENT_OPTIONS,
    }


# -- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Script:
    """A round trip: run the script ``name`` of :data:`SCRIPTS`; the reply is its result."""

    name: ScriptName
    keys: list[str]
    args: list[str | bytes]


@dataclass(frozen=True, slots=True)
class Commands:
    """A round trip: plain commands as one ``MULTI`` pipeline; the reply is their results.

    Each call is a redis-py method name and its arguments (``("hmget", (key, "r"))``).
    """

    calls: list[tuple[str, tuple[Any, ...]]]


#: An operation as a generator: it yields round trips and gets their replies back.
Plan: TypeAlias = Generator[Script | Commands, Any, T]


@dataclass(frozen=True, slots=True)
class TaskKeys:
    """The key names of tasks in Redis (see the module docstring for the layout)."""

    prefix: str = "tidings"

    def task(self, task_id: str) -> str:
        """The hash holding one task."""
        return f"{self.prefix}:task:{task_id}"

    @property
    def task_prefix(self) -> str:
        return f"{self.prefix}:task:"

    @property
    def index_prefix(self) -> str:
        return f"{self.prefix}:tasks:"

    @property
    def all(self) -> str:
        return f"{self.prefix}:tasks:all"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:tasks:owner:{owner}"

    def status(self, status: str) -> str:
        return f"{self.prefix}:tasks:status:{status}"


class TaskPlans:
    """Every task operation as a sans-I/O plan, for one key prefix.

    The store and the worker transports run these with :func:`run_async` or
    :func:`run_sync`. Plans raise the :class:`~tidings.tasks.store.TaskStore` errors
    (:class:`TaskNotFound`, :class:`TaskExists`, whatever ``mutate`` raises); the drivers
    add :class:`BackendUnavailable`.

    Args:
        prefix: the backend's key prefix (``tidings``).
    """

    def __init__(self, prefix: str = "tidings") -> None:
        self.keys = TaskKeys(prefix)
        self.events = RedisKeys(prefix)
        #: The highest event seq seen: the floor of a new epoch's counter (see the backend).
        self.floor = 0

    def get(self, task_id: str) -> Plan[Task]:
        """The task; :class:`TaskNotFound` if there is none."""
        (row,) = yield Commands([("hmget", (self.keys.task(task_id), "r", "e"))])
        if row[0] is None:
            raise TaskNotFound(f"no task {task_id}")
        return _decode(row[0], row[1])

    def insert(self, task: Task, event: Callable[[Task], Draft] | None = None) -> Plan[Task]:
        """Store a new task (and append ``event(task)`` in the same step, if given).

        Returns the task, with the event's id as ``last_event_id`` when one was appended.
        """
        reply = yield self._write(task, "", event)
        return self._result(task, reply)

    def update(
        self, task_id: str, mutate: Mutation, event: Callable[[Task], Draft] | None = None
    ) -> Plan[Task]:
        """Replace the task with ``mutate(task)`` by compare-and-set (and append
        ``event(new)`` in the same step, if given); ``mutate`` may run more than once."""
        key = self.keys.task(task_id)
        for _ in range(MAX_ATTEMPTS):
            (row,) = yield Commands([("hmget", (key, "r", "e", "v"))])
            if row[0] is None:
                raise TaskNotFound(f"no task {task_id}")
            new = mutate(_decode(row[0], row[1]))
            reply = yield self._write(new, row[2], event)
            if int(reply[1]) != _CONFLICT:
                return self._result(new, reply)
        raise BackendUnavailable(f"task {task_id}: too many concurrent writers; try again")

    def delete(self, task_id: str) -> Plan[Task]:
        """Delete the task and return its last record."""
        keys = self.keys
        reply = yield Script("delete", [], [keys.task(task_id), keys.index_prefix, task_id])
        if not reply:
            raise TaskNotFound(f"no task {task_id}")
        return _decode(reply[0], reply[1])

    def list(
        self, *, owner: str | None = None, status: str | None = None, limit: int = 50
    ) -> Plan[builtins.list[Task]]:
        """Up to ``limit`` tasks, newest first, of ``owner``, with ``status``."""
        found: builtins.list[Task] = []
        if limit <= 0:
            return found
        keys = self.keys
        if owner is not None:
            index, check = keys.owner(owner), status
        else:
            index, check = (keys.status(status) if status is not None else keys.all), None
        page = limit if check is None else max(limit, LIST_PAGE)
        upper = "+inf"
        while len(found) < limit:
            # Page by score, not by rank: tasks created meanwhile do not shift the pages.
            (entries,) = yield Commands(
                [("zrevrangebyscore", (index, upper, "-inf", 0, page, True))]
            )
            if not entries:
                break
            ids = [_text(name) for name, _ in entries]
            rows = yield Commands([("hmget", (keys.task(i), "r", "e")) for i in ids])
            for row in rows:
                if row[0] is None:  # deleted since the index was read
                    continue
                task = _decode(row[0], row[1])
                if check is not None and task.status != check:
                    continue
                found.append(task)
                if len(found) >= limit:
                    break
            if len(entries) < page:
                break
            upper = f"({entries[-1][1]!r}"
        return found

    def count_active(self) -> Plan[int]:
        """How many tasks are pending or running."""
        keys = self.keys
        counts = yield Commands(
            [("zcard", (keys.status("pending"),)), ("zcard", (keys.status("running"),))]
        )
        return sum(int(n) for n in counts)

    def purge(self, before: float) -> Plan[builtins.list[Task]]:
        """Delete tasks finished before ``before`` and unfinished ones not updated since."""
        keys = self.keys
        args: builtins.list[str | bytes] = [
            keys.task_prefix,
            keys.index_prefix,
            repr(float(before)),
            str(PURGE_BATCH),
        ]
        gone: builtins.list[Task] = []
        while True:
            examined, rows = yield Script("purge", [], args)
            gone.extend(_decode(rows[i], rows[i + 1]) for i in range(0, len(rows), 2))
            if int(examined) < PURGE_BATCH:
                return gone

    def publish(self, draft: Draft, *, idempotency_key: str | None = None) -> Plan[Appended]:
        """Append ``draft`` as the hub's nodes do (for publishers outside the hub)."""
        keys, args = append_arguments(
            self.events, draft, idempotency_key=idempotency_key, floor=self.floor
        )
        appended = parse_appended((yield Script("append", keys, args)))
        self._saw(appended.id)
        return appended

    # -- helpers -------------------------------------------------------------------------

    def _write(
        self, task: Task, expect: bytes | str, event: Callable[[Task], Draft] | None
    ) -> Script:
        args = self._task_args(task, expect)
        if event is None:
            return Script("write", [], args)
        # history_size and log_size are left to what the nodes stored in {prefix}:config.
        keys, append_args = append_arguments(self.events, event(task), floor=self.floor)
        return Script("publish", keys, [*append_args, *args])

    def _task_args(self, task: Task, expect: bytes | str) -> builtins.list[str | bytes]:
        record = task.to_record()
        record.pop("last_event_id", None)  # kept beside the record, in field e
        try:
            blob = orjson.dumps(record)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidEvent(f"the task is not JSON-serializable: {exc}") from exc
        expiry = task.finished_at if task.finished_at is not None else task.updated_at
        return [
            self.keys.task(task.task_id),
            self.keys.index_prefix,
            task.task_id,
            expect,
            blob,
            "-" if task.owner is None else "+" + task.owner,
            task.status,
            repr(float(expiry)),
            task.last_event_id or "",
        ]

    def _result(self, task: Task, reply: Any) -> Task:
        ident, code = _text(reply[0]), int(reply[1])
        if code == _EXISTS:
            raise TaskExists(f"task {task.task_id} exists")
        if code == _MISSING:
            raise TaskNotFound(f"no task {task.task_id}")
        if code != _OK:
            raise BackendUnavailable(f"unexpected reply {code} of a task script")
        if not ident:
            return task
        self._saw(ident)
        return evolve(task, last_event_id=ident)

    def _saw(self, ident: str) -> None:
        parsed = EventId.parse(ident)
        if parsed is not None and parsed.seq > self.floor:
            self.floor = parsed.seq


# -- drivers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Translate redis-py and socket errors into :class:`BackendUnavailable`."""
    try:
        yield
    except RedisError as exc:
        if isinstance(exc, ResponseError):
            # Not a lost link: a script error, an OOM, a read-only replica. Say what.
            logger.error("redis refused a task operation: %s", exc)
        raise BackendUnavailable("the task store is unavailable (redis)") from exc
    except OSError as exc:
        raise BackendUnavailable("the task store is unavailable (redis)") from exc


def register_scripts(client: Any) -> dict[ScriptName, Any]:
    """Register :data:`SCRIPTS` on a redis-py client (sync or asyncio)."""
    return {name: client.register_script(lua) for name, lua in SCRIPTS.items()}


async def run_async(
    plan: Plan[T], client: redis.asyncio.Redis, scripts: Mapping[ScriptName, Any]
) -> T:
    """Run ``plan`` on an asyncio client (scripts from :func:`register_scripts`)."""
    reply: Any = None
    try:
        while True:
            try:
                op = plan.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            with _unavailable():
                if isinstance(op, Script):
                    reply = await scripts[op.name](keys=op.keys, args=op.args)
                else:
                    pipe = client.pipeline(transaction=True)
                    for name, args in op.calls:
                        getattr(pipe, name)(*args)
                    reply = await pipe.execute()
    finally:
        plan.close()


def run_sync(plan: Plan[T], client: redis.Redis, scripts: Mapping[ScriptName, Any]) -> T:
    """Run ``plan`` on a blocking client (scripts from :func:`register_scripts`)."""
    reply: Any = None
    try:
        while True:
            try:
                op = plan.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            with _unavailable():
                if isinstance(op, Script):
                    reply = scripts[op.name](keys=op.keys, args=op.args)
                else:
                    pipe = client.pipeline(transaction=True)
                    for name, args in op.calls:
                        getattr(pipe, name)(*args)
                    reply = pipe.execute()
    finally:
        plan.close()


# -- the store -----------------------------------------------------------------------------


class RedisTaskStore:
    """A :class:`~tidings.tasks.store.TaskStore` in the backend's Redis, shared by every node.

    Besides the protocol it offers :meth:`insert_and_append` and :meth:`update_and_append`
    (a :class:`~tidings.tasks.store.PublishingTaskStore`): the task service uses them so a
    change and its event are one atomic step across nodes (see the module docstring).

    Args:
        url: the backend's ``redis://`` URL; the store writes events into that hub's keys.
        prefix: the backend's key prefix.
        max_connections: connections to Redis; more concurrent calls wait for one (5 s).

    :meth:`start` does not connect: while Redis is down, calls raise
    :class:`BackendUnavailable` and the hub keeps serving streams.
    """

    def __init__(self, url: str, *, prefix: str = "tidings", max_connections: int = 50) -> None:
        self.url = url
        self.plans = TaskPlans(prefix)
        self.max_connections = max_connections
        self._redis: redis.asyncio.Redis | None = None
        self._scripts: dict[ScriptName, Any] = {}

    def __repr__(self) -> str:
        return f"<RedisTaskStore prefix={self.plans.keys.prefix!r}>"

    async def start(self) -> None:
        """Make the connection pool (connections are opened on first use)."""
        if self._redis is not None:
            return
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url, max_connections=self.max_connections, timeout=5.0, **client_options()
        )
        self._redis = redis.asyncio.Redis(connection_pool=pool)
        self._scripts = register_scripts(self._redis)

    async def aclose(self) -> None:
        """Close the connection pool."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose(close_connection_pool=True)

    async def _run(self, plan: Plan[T]) -> T:
        if self._redis is None:
            plan.close()
            raise BackendUnavailable("the Redis task store is not open")
        return await run_async(plan, self._redis, self._scripts)

    # -- the TaskStore protocol --------------------------------------------------------

    async def insert(self, task: Task) -> Task:
        """Store a new task; :class:`TaskExists` if the id is taken."""
        return await self._run(self.plans.insert(task))

    async def get(self, task_id: str) -> Task:
        """The task; :class:`TaskNotFound` if there is none."""
        return await self._run(self.plans.get(task_id))

    async def update(self, task_id: str, mutate: Mutation) -> Task:
        """Apply ``mutate`` by compare-and-set (it may run more than once)."""
        return await self._run(self.plans.update(task_id, mutate))

    async def delete(self, task_id: str) -> Task:
        """Delete and return the task; :class:`TaskNotFound` if there is none."""
        return await self._run(self.plans.delete(task_id))

    async def list(
        self, *, owner: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[Task]:
        """Newest first (creation order), filtered by owner and status."""
        return await self._run(self.plans.list(owner=owner, status=status, limit=limit))

    async def count_active(self) -> int:
        """Tasks ``pending`` or ``running`` (on every node)."""
        return await self._run(self.plans.count_active())

    async def purge(self, before: float) -> builtins.list[Task]:
        """Delete finished tasks older than ``before`` and abandoned unfinished ones; each
        deleted task is returned to exactly one caller, whichever node purges."""
        return await self._run(self.plans.purge(before))

    # -- PublishingTaskStore -----------------------------------------------------------

    async def insert_and_append(self, task: Task, event: Callable[[Task], Draft]) -> Task:
        """Store a new task and append ``event(task)`` in one atomic step.

        Returns the task with the event's id as ``last_event_id``.

        Raises:
            TaskExists: the id is taken (nothing appended).
        """
        return await self._run(self.plans.insert(task, event))

    async def update_and_append(
        self, task_id: str, mutate: Mutation, event: Callable[[Task], Draft]
    ) -> Task:
        """Replace the task with ``mutate(task)`` and append ``event(new)`` in one atomic
        step; returns the new task with the event's id as ``last_event_id``.

        Raises:
            TaskNotFound: no such task. Whatever ``mutate`` or ``event`` raised: nothing
            was written or appended.
        """
        return await self._run(self.plans.update(task_id, mutate, event))


def open_store(settings: Settings) -> RedisTaskStore:
    """The Redis task store of a hub whose backend is ``settings.backend`` (not started).

    Raises:
        ConfigError: the backend is not a Redis URL (the store lives in the backend's Redis).
    """
    url = settings.backend
    if not url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            "invalid --store / TIDINGS_STORE: 'redis' keeps tasks in the backend's Redis; it "
            "needs --backend redis://..."
        )
    return RedisTaskStore(url)


# -- module helpers ------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(record: bytes, event_id: bytes | None) -> Task:
    try:
        data = orjson.loads(record)
        data["last_event_id"] = _text(event_id) if event_id else None
        return Task.from_record(data)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BackendUnavailable("a task record in Redis cannot be read") from exc
