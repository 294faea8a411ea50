"""Watch one task from Python: ``async for update in watch_task(url, task_id)``.

A watch reads the task once (``GET /tasks/{id}``), so a missing task, a refused token or an
unreachable hub is an exception before anything streams, then follows
``GET /tasks/{id}/stream`` through :func:`~tidings.client.subscriber.subscribe`: the same
reconnect, ``Last-Event-ID`` and backoff, so a hub that restarts or a node that drains loses
the watcher nothing. Each event is folded into the task's state, and the watch ends after the
task's last event (``task_completed``, ``task_failed``, ``task_cancelled`` or
``task_deleted``).

Decisions that may surprise:

- Events whose ``sequence`` is lower than the state's are skipped, as the browser client
  does; a snapshot's events share the task's current ``sequence``, so equal ones are kept.
- ``watch_task_sync`` drives the async watch on a private event loop, one step per item:
  for scripts, not for code already inside an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from tidings.client.subscriber import subscribe
from tidings.client.transport import error_from_response
from tidings.errors import BackendUnavailable
from tidings.tasks.model import (
    FILE_STATUSES,
    STREAM_END_TYPES,
    FileState,
    Task,
    validate_task_id,
)

__all__ = ["TaskUpdate", "watch_task", "watch_task_sync"]


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One event of a watched task, and the task's state after it.

    Attributes:
        event: the event type: ``task_progress``, ``file_update``, ``task_completed``,
            ``task_failed``, ``task_cancelled`` or ``task_deleted``.
        id: the event's hub id (``Last-Event-ID`` to resume after it).
        data: the event's payload, as the hub sent it (docs/tasks.md, "Events").
        task: the task after this event. Fields no event carries (``title``,
            ``metadata``, ``created_at``...) are those read when the watch started.
    """

    event: str
    id: str
    data: Mapping[str, Any]
    task: Task

    @property
    def finished(self) -> bool:
        """Whether this is the task's last event: terminal, or ``task_deleted``."""
        return self.event in STREAM_END_TYPES

    @property
    def file(self) -> FileState | None:
        """The file a ``file_update`` is about (its new state); ``None`` for other events."""
        if self.event != "file_update":
            return None
        return self.task.files.get(str(self.data.get("file_id")))


def _task_path(task_id: str) -> str:
    return "/tasks/" + quote(task_id, safe="")


def _fold(task: Task, event: str, data: Mapping[str, Any]) -> Task:
    """``task`` after ``event`` (SPEC §3 "Tasks", the event payloads)."""
    sequence = int(data.get("sequence") or task.sequence)
    if event == "task_progress":
        return replace(
            task,
            status=data.get("status", task.status),
            progress=float(data.get("progress") or 0.0),
            current=data.get("current"),
            total=data.get("total"),
            message=data.get("message"),
            rate=data.get("rate"),
            eta=data.get("eta"),
            sequence=sequence,
        )
    if event == "file_update":
        file_id = str(data.get("file_id"))
        status = data.get("status")
        state = FileState(
            file_id=file_id,
            filename=data.get("filename"),
            status=status if status in FILE_STATUSES else "pending",
            progress=float(data.get("progress") or 0.0),
            message=data.get("message"),
        )
        return replace(
            task,
            status="running" if task.status == "pending" else task.status,
            files={**task.files, file_id: state},
            sequence=sequence,
        )
    if event == "task_completed":
        return replace(
            task, status="completed", progress=100.0, result=data.get("result"), sequence=sequence
        )
    if event == "task_failed":
        return replace(
            task,
            status="failed",
            error=data.get("error"),
            details=data.get("details"),
            sequence=sequence,
        )
    if event == "task_cancelled":
        # The task JSON keeps a cancelled task's reason in ``error`` (docs/tasks.md).
        return replace(task, status="cancelled", error=data.get("reason"), sequence=sequence)
    return replace(task, sequence=sequence)


async def watch_task(
    url: str,
    task_id: str,
    *,
    token: str | None = None,
    last_event_id: str | None = None,
    max_backoff: float = 30.0,
    client: httpx.AsyncClient | None = None,
) -> AsyncGenerator[TaskUpdate, None]:
    """Yield a :class:`TaskUpdate` for every event of task ``task_id`` until its last one.

    The first update restates where the task is (a late joiner never sees an empty bar);
    the last is ``task_completed``, ``task_failed``, ``task_cancelled`` or ``task_deleted``
    (``update.finished``), after which the iteration ends. A task that is already over
    yields its terminal event alone. While the hub is unreachable mid-watch, the watch
    reconnects with backoff and resumes after the last event it yielded.

    Args:
        url: the hub's base URL (``http://127.0.0.1:8000``, or with the prefix the routes
            are mounted under).
        task_id: the task to watch.
        token: a bearer token that may read the task (its owner's, an admin's, or one
            allowed to subscribe to ``tasks/<task_id>``).
        last_event_id: resume after this event id instead of starting from the state.
        max_backoff: the longest wait between reconnects, in seconds.
        client: an ``httpx.AsyncClient`` to use (one is made otherwise).

    Raises:
        TaskNotFound: no such task, or the token may not see it (the hub answers 404 for
            both, so ids don't leak).
        NotAuthorized: the hub wants a token (401) or refuses this one (403).
        LimitExceeded: the hub refused the watch for a limit (429); ``retry_after`` says
            when to try again.
        BackendUnavailable: the hub cannot be reached when the watch starts.
        InvalidEvent: ``task_id`` cannot name a task.

    Example::

        async for update in watch_task("http://127.0.0.1:8000", task_id):
            print(update.task.progress, update.task.message)
        if update.task.status != "completed":
            ...
    """
    validate_task_id(task_id)
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = url.rstrip("/")
    try:
        try:
            response = await http.get(base + _task_path(task_id), headers=headers)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the hub at {url}") from exc
        if response.status_code != 200:
            raise error_from_response(response)
        try:
            task = Task.from_record(response.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackendUnavailable(f"the hub at {url} did not answer with a task") from exc
        stream = subscribe(
            url,
            (),
            path=_task_path(task_id) + "/stream",
            token=token,
            last_event_id=last_event_id,
            max_backoff=max_backoff,
            client=http,
        )
        async with contextlib.aclosing(stream):
            async for event in stream:
                try:
                    data = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(data, dict):
                    continue
                sequence = data.get("sequence")
                if isinstance(sequence, int) and sequence < task.sequence:
                    continue  # older than what we show: a replay we already applied
                task = _fold(task, event.event, data)
                update = TaskUpdate(event.event, event.id, data, task)
                yield update
                if update.finished:
                    return
        # Here the hub answered 204: ``last_event_id`` was the task's last event already.
    finally:
        if own:
            await http.aclose()


def watch_task_sync(
    url: str,
    task_id: str,
    *,
    token: str | None = None,
    last_event_id: str | None = None,
    max_backoff: float = 30.0,
) -> Iterator[TaskUpdate]:
    """The sync twin of :func:`watch_task`, for scripts (same arguments and errors).

    It runs the watch on a private event loop, so call it from code that is not itself
    running in one::

        for update in watch_task_sync("http://127.0.0.1:8000", task_id):
            print(f"{update.task.progress:.0f}%  {update.task.message or ''}")
    """
    updates = watch_task(
        url, task_id, token=token, last_event_id=last_event_id, max_backoff=max_backoff
    )

    async def step() -> TaskUpdate:
        return await anext(updates)

    with asyncio.Runner() as runner:
        try:
            while True:
                try:
                    update = runner.run(step())
                except StopAsyncIteration:
                    return
                yield update
        finally:
            runner.run(updates.aclose())
