"""Publish straight into the hub's Redis: the transport behind ``Publisher("redis://...")``.

Celery and RQ workers, cron jobs and scripts that can reach the hub's Redis report tasks and
publish events without an HTTP hop and without running a web server::

    from tidings.client import Publisher

    pub = Publisher("redis://redis.internal:6379/0")     # the hub's --backend URL
    with pub.track(task_id, total=len(files)) as t:
        for f in t.iter(files):
            convert(f)

What a worker needs:

- **The hub's Redis URL**, exactly the nodes' ``--backend`` (same database). The hub must run
  with the Redis backend and the Redis task store (``--store redis``, the default with a
  Redis backend); every node then delivers what the worker writes, and a browser watching
  ``GET /tasks/{id}/stream`` on any node sees the worker's progress.
- Nothing else: no token (access to Redis is the credential, so guard it as you would the
  hub's own; auth, rate limits and ownership checks of the HTTP API do not apply), no
  running node (events written while every node is down are delivered from history when a
  client resumes).

Decisions worth knowing:

- **Same events, same code.** A change runs the same pure transition
  (:mod:`tidings.tasks.model`), builds the same draft (:func:`~tidings.tasks.service.event_draft`)
  and goes through the same Lua script (:data:`~tidings.tasks.redis.PUBLISH_SCRIPT`, built on
  the backend's append script) as a change made on a node, through the same sans-I/O plans
  (:class:`~tidings.tasks.redis.TaskPlans`). Ids, ``sequence`` and payloads are therefore
  exactly what a hub would produce, and a worker racing a node (or another worker) on one
  task is as atomic as two nodes racing: one terminal request wins, the other gets
  :class:`~tidings.errors.TaskFinished` and publishes nothing.
- Answers are what the HTTP API answers: the task JSON for task calls, ``{"id": ...}`` for a
  publish. Errors are the same :mod:`tidings.errors` exceptions; Redis errors become
  :class:`~tidings.errors.BackendUnavailable`. Calls are not retried: a call whose reply was
  lost may have been applied.
- ``tasks/...`` topics are refused by :meth:`publish` (``reserved_topic``), as by the HTTP
  API: only task calls write them.
- A task created here has no owner (there is no token user): with auth on, let users watch
  it with a token whose ``subscribe`` grant covers ``tasks/<id>``, or create it over HTTP
  with the user's token and report on it from here.
- Events larger than the default ``--max-event-bytes`` (65536) are refused, as a hub with the
  default would (pass ``max_event_bytes`` to :class:`RedisTransport` to match another limit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import redis
import redis.asyncio

from tidings.client.transport import Call, Operation
from tidings.config import Settings
from tidings.errors import InvalidEvent
from tidings.events import Draft, dumps_json, make_draft
from tidings.tasks.model import (
    Task,
    TaskEvent,
    apply_cancel,
    apply_complete,
    apply_fail,
    apply_file,
    apply_progress,
    file_event,
    new_task,
    progress_event,
    terminal_event,
)
from tidings.tasks.redis import (
    Plan,
    ScriptName,
    TaskPlans,
    client_options,
    register_scripts,
    run_async,
    run_sync,
)
from tidings.tasks.rules import event_draft
from tidings.topics import check_publishable
from tidings.types import JSON

__all__ = ["AsyncRedisTransport", "RedisTransport", "open_async_transport", "open_transport"]

#: The hub's default ``--max-event-bytes``.
DEFAULT_MAX_EVENT_BYTES: Final[int] = Settings.model_fields["max_event_bytes"].default

# The fields each call may carry, as the HTTP API accepts them.
_FIELDS: Final[Mapping[Operation, frozenset[str]]] = {
    "publish": frozenset(
        {"topic", "type", "data", "priority", "users", "retry", "idempotency_key"}
    ),
    "create_task": frozenset({"task_id", "title", "total", "metadata"}),
    "get_task": frozenset(),
    "progress": frozenset({"current", "total", "progress", "message"}),
    "file": frozenset({"status", "filename", "progress", "message"}),
    "complete": frozenset({"result"}),
    "fail": frozenset({"error", "details"}),
    "cancel": frozenset({"reason"}),
}


def call_plan(plans: TaskPlans, call: Call, *, max_event_bytes: int) -> Plan[JSON]:
    """The plan of one publisher call: what a hub does for the same HTTP request.

    Raises (when run): the errors of the HTTP API as :mod:`tidings.errors` exceptions.
    """
    body = call.body
    unknown = set(body) - _FIELDS[call.op]
    if unknown:
        raise InvalidEvent("unknown fields: " + ", ".join(sorted(unknown)), code="invalid_request")
    if call.op == "publish":
        return (yield from _publish(plans, body, max_event_bytes))
    if call.op == "create_task":
        task = new_task(
            body.get("task_id"),
            title=body.get("title"),
            total=body.get("total"),
            metadata=body.get("metadata"),
            now=time.time(),
        )
        _check_size(task.metadata, "metadata", max_event_bytes)
        created = yield from plans.insert(task, _drafts(progress_event, max_event_bytes))
        return created.to_json()
    task_id = call.task_id or ""
    if call.op == "get_task":
        return (yield from plans.get(task_id)).to_json()
    transition, event = _change(call)
    changed = yield from plans.update(task_id, transition, _drafts(event, max_event_bytes))
    return changed.to_json()


def _publish(plans: TaskPlans, body: Mapping[str, JSON], max_event_bytes: int) -> Plan[JSON]:
    topic = body.get("topic")
    if not isinstance(topic, str):
        raise InvalidEvent("topic must be a string", code="invalid_request")
    check_publishable(topic)
    users = body.get("users")
    draft = make_draft(
        topic,
        body.get("data"),
        type=body.get("type", "message"),
        priority=body.get("priority", "normal"),
        users=tuple(users) if users is not None else None,
        retry=body.get("retry"),
        max_bytes=max_event_bytes,
    )
    appended = yield from plans.publish(draft, idempotency_key=body.get("idempotency_key"))
    return {"id": appended.id}


def _change(call: Call) -> tuple[Callable[[Task], Task], Callable[[Task], TaskEvent]]:
    """The transition of a task call (``now`` taken once: it may run again) and its event."""
    body, now = call.body, time.time()
    if call.op == "progress":
        return lambda t: apply_progress(
            t,
            current=body.get("current"),
            total=body.get("total"),
            progress=body.get("progress"),
            message=body.get("message"),
            now=now,
        ), progress_event
    if call.op == "file":
        file_id = call.file_id or ""
        return lambda t: apply_file(
            t,
            file_id,
            status=cast(str, body.get("status")),  # apply_file refuses a missing one
            filename=body.get("filename"),
            progress=body.get("progress"),
            message=body.get("message"),
            now=now,
        ), lambda t: file_event(t, file_id)
    if call.op == "complete":
        return lambda t: apply_complete(t, result=body.get("result"), now=now), terminal_event
    if call.op == "fail":
        return lambda t: apply_fail(
            t,
            error=cast(str, body.get("error")),  # apply_fail refuses a missing one
            details=body.get("details"),
            now=now,
        ), terminal_event
    return lambda t: apply_cancel(t, reason=body.get("reason"), now=now), terminal_event


def _drafts(event: Callable[[Task], TaskEvent], max_bytes: int) -> Callable[[Task], Draft]:
    return lambda task: event_draft(task, event(task), max_bytes=max_bytes)


def _check_size(value: JSON, name: str, limit: int) -> None:
    """As a hub checks ``metadata``: JSON, and no larger than an event may be."""
    size = len(dumps_json(value, name))
    if size > limit:
        raise InvalidEvent(f"{name} is {size} bytes as JSON; the limit is {limit}")


class RedisTransport:
    """A :class:`~tidings.client.transport.Transport` that writes into the hub's Redis
    (blocking ``redis`` client; safe to share between threads and across ``fork``).

    Args:
        url: the hub's ``--backend`` URL (``redis://host:port/db`` or ``rediss://``).
        prefix: the hub's key prefix (``tidings``).
        max_event_bytes: the hub's ``--max-event-bytes``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.url = url
        self.max_event_bytes = max_event_bytes
        self._plans = TaskPlans(prefix)
        self._redis: redis.Redis = redis.Redis.from_url(url, **client_options(blocking=True))
        self._scripts: dict[ScriptName, Any] = register_scripts(self._redis)

    def handle(self, call: Call) -> JSON:
        """Perform ``call`` in Redis; the hub's answer for it (see the module docstring)."""
        plan = call_plan(self._plans, call, max_event_bytes=self.max_event_bytes)
        return run_sync(plan, self._redis, self._scripts)

    def close(self) -> None:
        """Close the connections."""
        self._redis.close()


class AsyncRedisTransport:
    """The async twin of :class:`RedisTransport` (``redis.asyncio``), for ``AsyncPublisher``.

    Use it from one event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tidings",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.url = url
        self.max_event_bytes = max_event_bytes
        self._plans = TaskPlans(prefix)
        self._redis: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, **client_options(blocking=False)
        )
        self._scripts: dict[ScriptName, Any] = register_scripts(self._redis)

    async def handle(self, call: Call) -> JSON:
        """Perform ``call`` in Redis; the hub's answer for it."""
        plan = call_plan(self._plans, call, max_event_bytes=self.max_event_bytes)
        return await run_async(plan, self._redis, self._scripts)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._redis.aclose()


def open_transport(url: str) -> RedisTransport:
    """The sync transport for ``url`` (called by ``Publisher("redis://...")``)."""
    return RedisTransport(url)


def open_async_transport(url: str) -> AsyncRedisTransport:
    """The async transport for ``url`` (called by ``AsyncPublisher("redis://...")``)."""
    return AsyncRedisTransport(url)
