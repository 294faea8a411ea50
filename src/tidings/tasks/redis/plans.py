"""Every task operation as a sans-I/O plan: :class:`TaskPlans`.

A plan is a generator that yields the Redis round trips it needs (:class:`Script`,
:class:`Commands`) and receives their replies; the drivers of
:mod:`tidings.tasks.redis.drivers` run it on an asyncio or a blocking client.

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
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

import orjson

from tidings.backends.base import Appended
from tidings.backends.redis.encoding import append_arguments, as_text, parse_appended
from tidings.backends.redis.keys import RedisKeys
from tidings.errors import BackendUnavailable, InvalidEvent, TaskExists, TaskNotFound
from tidings.events import Draft, EventId
from tidings.tasks.record import Task, evolve
from tidings.tasks.redis.scripts import CONFLICT, EXISTS, MISSING, OK, ScriptName
from tidings.tasks.store import Mutation

__all__ = ["Commands", "Plan", "Script", "TaskKeys", "TaskPlans"]

T = TypeVar("T")

#: Compare-and-set rounds before a change gives up (each lost round means another writer
#: committed, so this is only reached under pathological contention).
MAX_ATTEMPTS: Final = 1000
#: Tasks deleted per purge script (the script runs in one go inside Redis).
PURGE_BATCH: Final = 200
#: Tasks read per page of :meth:`TaskPlans.list` when a filter may skip some.
LIST_PAGE: Final = 100


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
            if int(reply[1]) != CONFLICT:
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
            ids = [as_text(name) for name, _ in entries]
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
        ident, code = as_text(reply[0]), int(reply[1])
        if code == EXISTS:
            raise TaskExists(f"task {task.task_id} exists")
        if code == MISSING:
            raise TaskNotFound(f"no task {task.task_id}")
        if code != OK:
            raise BackendUnavailable(f"unexpected reply {code} of a task script")
        if not ident:
            return task
        self._saw(ident)
        return evolve(task, last_event_id=ident)

    def _saw(self, ident: str) -> None:
        parsed = EventId.parse(ident)
        if parsed is not None and parsed.seq > self.floor:
            self.floor = parsed.seq


def _decode(record: bytes, event_id: bytes | None) -> Task:
    try:
        data = orjson.loads(record)
        data["last_event_id"] = as_text(event_id) if event_id else None
        return Task.from_record(data)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BackendUnavailable("a task record in Redis cannot be read") from exc
