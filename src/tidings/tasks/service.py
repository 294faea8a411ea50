"""The task service: ``hub.tasks.create / progress / file / complete / fail / cancel / ...``.

Every change follows one path: the store applies a pure transition atomically (the new
record has ``sequence + 1``), then the service appends the matching event on
``tasks/<task_id>`` through the engine's ``append`` and records the event's id as the
task's ``last_event_id``.

Decisions worth knowing before changing this file:

- **Order.** Each task has an ``asyncio.Lock`` (created on demand, dropped when idle), held
  from the store update to the recorded event id, so the events of one task reach the
  backend in ``sequence`` order, and a stream's snapshot (taken under the same lock) is
  never interleaved with a change of that task. That lock holds on one node only: a store
  shared by nodes and workers (Redis) is a :class:`PublishingTaskStore`, which commits the
  change and appends its event in one atomic step, so the order holds across nodes too.
- **Store first, then event.** Across processes the store is the arbiter: of two racing
  terminal requests it lets one commit, the other raises :class:`TaskFinished` before any
  event exists. The reverse order would publish an event that then loses the race.
- **A committed change is always published.** The update-then-append step runs shielded
  from the caller's cancellation (its task is owned by the service and awaited on close),
  so a client that disconnects mid-request cannot leave a change without its event. If
  the backend refuses the event, the change stands and the event is published later
  (:mod:`tidings.tasks.events`, which also keeps each task's latest event id until its next
  change, so a progress report is one store write). With a :class:`PublishingTaskStore`
  the change and its event stand or fall together: Redis down, nothing changed, the
  caller gets :class:`BackendUnavailable`.
- **Visibility.** A task may be changed by its owner, an admin, anyone when auth is off,
  and a principal allowed to publish on ``tasks/<id>`` (a worker's token); it may be read
  and streamed by those and by a principal allowed to subscribe to ``tasks/<id>``. Anyone
  else gets :class:`TaskNotFound`, exactly as for a missing task, so ids don't leak.
  ``principal=None`` means trusted application code: no check.
- **Clean-up.** The maintenance loop (:mod:`tidings.tasks.maintenance`, started by
  :meth:`TaskService.start`, cancelled by :meth:`TaskService.aclose`) purges tasks finished
  more than ``task_retention`` seconds ago, and unfinished ones not updated for that long
  (abandoned by a dead worker), and publishes ``task_deleted`` for each, so open streams
  end with a clear event.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

from tidings.auth.principal import Principal
from tidings.engine import Connection, Engine
from tidings.errors import (
    InvalidEvent,
    ShuttingDown,
    TaskNotFound,
)
from tidings.events import Draft, dumps_json
from tidings.tasks.events import TaskEvents
from tidings.tasks.locks import TaskLocks
from tidings.tasks.maintenance import maintain_forever
from tidings.tasks.model import (
    TASK_STATUSES,
    Number,
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
from tidings.tasks.rules import check_lookup_id, event_draft, may_change, may_read
from tidings.tasks.store import Mutation, PublishingTaskStore, TaskStore
from tidings.tasks.stores import open_store
from tidings.tasks.streams import TaskStreams
from tidings.tasks.tracing import traced, with_trace
from tidings.types import JSON

__all__ = [
    "MAX_LIST_LIMIT",
    "TaskService",
    "event_draft",
    "may_change",
    "may_read",
    "open_store",
]

logger = logging.getLogger("tidings.tasks")

#: Most tasks one ``list`` returns.
MAX_LIST_LIMIT: Final = 1000


class TaskService:
    """Tasks of one hub: their lifecycle, events and streams (``hub.tasks``).

    Example::

        task = await hub.tasks.create(owner="u1", total=10, title="Convert images")
        await hub.tasks.progress(task.task_id, current=3, message="3 of 10")
        await hub.tasks.complete(task.task_id, result={"files": 10})

    Every method that takes a ``principal`` checks that it may read the task (or change
    it, for changes; see :func:`may_read` and :func:`may_change`) and raises
    :class:`TaskNotFound` otherwise; ``None`` skips the check (trusted application code).
    Methods raise :class:`ShuttingDown` before :meth:`start`.

    Args:
        engine: the engine whose backend carries the task events.
        store: a store to use instead of the one ``engine.settings.store`` names.
    """

    def __init__(self, engine: Engine, *, store: TaskStore | None = None) -> None:
        self._engine = engine
        self._given_store = store
        self._store: TaskStore | None = None
        # The store, when it appends events itself (Redis): see PublishingTaskStore.
        self._publishing: PublishingTaskStore | None = None
        self._locks = TaskLocks()
        self._streams = TaskStreams(engine, self)
        self._maintainer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._events = TaskEvents(engine, self)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start the maintenance loop. Idempotent.

        Raises:
            ConfigError: the configured store is unknown or unavailable.
            BackendUnavailable: the store cannot be opened.
        """
        if self._store is not None:
            return
        store = self._given_store or open_store(self._engine.settings)
        await store.start()
        self._store = store
        self._publishing = store if isinstance(store, PublishingTaskStore) else None
        self._maintainer = asyncio.create_task(
            maintain_forever(
                pending=lambda: self._events.pending,
                republish=self._events.republish,
                purge=self.purge_expired,
                retention=self._engine.settings.task_retention,
            ),
            name="tidings-task-maintenance",
        )

    async def aclose(self) -> None:
        """Stop the maintenance loop, finish in-flight changes and close the store."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._events.write_latest_ids()
        store, self._store = self._store, None
        self._publishing = None
        if store is not None:
            await store.aclose()

    @property
    def store(self) -> TaskStore:
        """The open store.

        Raises:
            ShuttingDown: the service is not started (call ``await hub.start()``).
        """
        if self._store is None:
            raise ShuttingDown("the task service is not running; start the hub first")
        return self._store

    # -- queries -------------------------------------------------------------------------

    async def get(self, task_id: str, *, principal: Principal | None = None) -> Task:
        """The task ``task_id``.

        Raises:
            TaskNotFound: no such task, or ``principal`` may not see it.
        """
        check_lookup_id(task_id)
        task = self.current(await self.store.get(task_id))
        if not may_read(principal, task):
            raise TaskNotFound(f"no task {task_id}")
        return task

    async def list(
        self,
        *,
        principal: Principal | None = None,
        status: str | None = None,
        limit: int = 50,
    ) -> builtins.list[Task]:
        """Tasks newest first: every task for application code, an admin or with auth off;
        the principal's own tasks otherwise.

        Raises:
            InvalidEvent: an unknown ``status``, or ``limit`` outside 1..1000.
        """
        if status is not None and status not in TASK_STATUSES:
            raise InvalidEvent(
                "status must be one of " + ", ".join(TASK_STATUSES), code="invalid_request"
            )
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not (1 <= limit <= MAX_LIST_LIMIT)
        ):
            raise InvalidEvent(
                f"limit must be between 1 and {MAX_LIST_LIMIT}", code="invalid_request"
            )
        store = self.store
        if principal is None or principal.unrestricted or principal.admin:
            tasks = await store.list(status=status, limit=limit)
        elif principal.user is None:
            return []
        else:
            tasks = await store.list(owner=principal.user, status=status, limit=limit)
        return [self.current(task) for task in tasks]

    async def count_active(self) -> int:
        """How many tasks are pending or running (0 before :meth:`start`).

        Raises:
            BackendUnavailable: the store cannot be read (``/stats`` then shows ``null``).
        """
        if self._store is None:
            return 0
        return await self._store.count_active()

    # -- changes -------------------------------------------------------------------------

    @traced("create")
    async def create(
        self,
        *,
        owner: str | None = None,
        task_id: str | None = None,
        title: str | None = None,
        total: Number | None = None,
        metadata: Mapping[str, JSON] | None = None,
    ) -> Task:
        """Create a ``pending`` task and publish its first ``task_progress`` (sequence 1).

        Args:
            owner: the user id the task belongs to (``None``: anonymous).
            task_id: the id to use; a random one by default.
            title: a title for dashboards.
            total: the number of units of work, if known.
            metadata: any JSON object (``metadata["job_id"]`` becomes the completion's
                ``job_id``).

        Raises:
            TaskExists: ``task_id`` is taken.
            InvalidEvent: a bad id, ``total`` or ``metadata``.
        """
        task = new_task(
            task_id, owner=owner, title=title, total=total, metadata=metadata, now=time.time()
        )
        self._check_json(dict(task.metadata), "metadata")
        self.draft(task, progress_event(task))
        store, publishing = self.store, self._publishing

        async def apply() -> Task:
            async with self._locks.hold(task.task_id):
                if publishing is not None:
                    inserted = await publishing.insert_and_append(
                        task, lambda t: self.draft(t, progress_event(t))
                    )
                    self._engine.note_published()
                    return inserted
                created = await store.insert(task)
                return await self._events.publish(
                    created, self.draft(created, progress_event(created))
                )

        return await self._shielded(apply())

    @traced("progress")
    async def progress(
        self,
        task_id: str,
        *,
        current: Number | None = None,
        total: Number | None = None,
        progress: Number | None = None,
        message: str | None = None,
        principal: Principal | None = None,
    ) -> Task:
        """Report progress and publish ``task_progress``; the first moves pending → running.

        ``progress`` is a percent; counts alone set it to ``100 * current / total``.

        Raises:
            TaskNotFound: no such task (or not visible to ``principal``).
            TaskFinished: the task is terminal (409).
            InvalidEvent: ``current`` > ``total``, ``progress`` outside 0..100 (422); the
                task is unchanged.
        """
        now = time.time()
        return await self._change(
            task_id,
            principal,
            lambda t: apply_progress(
                t, current=current, total=total, progress=progress, message=message, now=now
            ),
            progress_event,
        )

    @traced("file")
    async def file(
        self,
        task_id: str,
        file_id: str,
        *,
        status: str,
        filename: str | None = None,
        progress: Number | None = None,
        message: str | None = None,
        principal: Principal | None = None,
    ) -> Task:
        """Report one file's state and publish ``file_update``.

        Raises:
            TaskNotFound, TaskFinished: as for :meth:`progress`.
            InvalidEvent: an unknown file status, ``progress`` outside 0..100.
        """
        now = time.time()
        return await self._change(
            task_id,
            principal,
            lambda t: apply_file(
                t,
                file_id,
                status=status,
                filename=filename,
                progress=progress,
                message=message,
                now=now,
            ),
            lambda t: file_event(t, file_id),
        )

    @traced("complete")
    async def complete(
        self, task_id: str, *, result: JSON = None, principal: Principal | None = None
    ) -> Task:
        """Finish the task and publish ``task_completed``; its streams end.

        Raises:
            TaskNotFound: no such task (or not visible).
            TaskFinished: the task is already terminal; nothing was published.
            InvalidEvent: ``result`` is not JSON; ``EventTooLarge`` if it is too big.
        """
        now = time.time()
        return await self._change(
            task_id,
            principal,
            lambda t: apply_complete(t, result=result, now=now),
            terminal_event,
        )

    @traced("fail")
    async def fail(
        self,
        task_id: str,
        *,
        error: str,
        details: JSON = None,
        principal: Principal | None = None,
    ) -> Task:
        """Finish the task as failed and publish ``task_failed``; its streams end.

        Raises:
            TaskNotFound, TaskFinished: as for :meth:`complete`.
            InvalidEvent: ``error`` is empty, ``details`` is not JSON.
        """
        now = time.time()
        return await self._change(
            task_id,
            principal,
            lambda t: apply_fail(t, error=error, details=details, now=now),
            terminal_event,
        )

    @traced("cancel")
    async def cancel(
        self, task_id: str, *, reason: str | None = None, principal: Principal | None = None
    ) -> Task:
        """Finish the task as cancelled and publish ``task_cancelled``; its streams end.

        A worker learns of it from its next update, which raises :class:`TaskFinished`.

        Raises:
            TaskNotFound, TaskFinished: as for :meth:`complete`.
        """
        now = time.time()
        return await self._change(
            task_id,
            principal,
            lambda t: apply_cancel(t, reason=reason, now=now),
            terminal_event,
        )

    @traced("delete")
    async def delete(
        self, task_id: str, *, principal: Principal | None = None, reason: str = "deleted"
    ) -> Task:
        """Delete the task and publish ``task_deleted``, which ends its open streams.

        Raises:
            TaskNotFound: no such task (or not visible).
        """
        task = await self.get(task_id, principal=principal)
        if not may_change(principal, task):
            raise TaskNotFound(f"no task {task_id}")
        store = self.store

        async def apply() -> Task:
            async with self._locks.hold(task_id):
                gone = self.current(await store.delete(task.task_id))
                self._events.forget(task.task_id)
                await self._events.announce_deleted(gone, reason)
                return gone

        return await self._shielded(apply())

    async def purge_expired(self, *, now: float | None = None) -> int:
        """Purge tasks finished more than ``task_retention`` seconds ago, and unfinished ones
        not updated for that long; publish ``task_deleted`` for each. Returns the count.

        The maintenance loop calls this about once a minute; tests may call it directly.
        """
        now = time.time() if now is None else now
        before = now - self._engine.settings.task_retention
        gone = [self.current(task) for task in await self.store.purge(before)]
        for task in gone:
            self._events.forget(task.task_id)
            async with self._locks.hold(task.task_id):
                await self._events.announce_deleted(task, "expired")
        if gone:
            logger.info("purged %d expired tasks", len(gone))
        return len(gone)

    # -- streams -------------------------------------------------------------------------

    async def open_stream(
        self,
        task_id: str,
        *,
        principal: Principal,
        last_event_id: str | None = None,
        ip: str | None = None,
        timed: bool = False,
    ) -> Connection | None:
        """Open the SSE stream of a task (see :meth:`TaskStreams.open_stream
        <tidings.tasks.streams.TaskStreams.open_stream>`); ``None`` means answer ``204``.

        Raises:
            TaskNotFound: no such task, or ``principal`` may not see it (404).
            InvalidTopic: ``last_event_id`` is over 256 bytes (400).
            ShuttingDown: the hub is stopping (503).
        """
        return await self._streams.open_stream(
            task_id, principal=principal, last_event_id=last_event_id, ip=ip, timed=timed
        )

    async def may_watch(self, task_id: str, principal: Principal) -> bool:
        """Whether the task ``task_id`` exists and ``principal`` may read it (the engine
        asks, for a ``tasks/<id>`` topic no grant allows).

        Raises:
            BackendUnavailable: the store cannot be read.
        """
        return await self._streams.may_watch(task_id, principal)

    def hold(self, task_id: str) -> AbstractAsyncContextManager[None]:
        """The lock of task ``task_id``: its changes and its streams' first reads take it."""
        return self._locks.hold(task_id)

    def current(self, task: Task) -> Task:
        """``task`` (read from the store) with its latest event id."""
        return self._events.current(task)

    def draft(self, task: Task, item: TaskEvent) -> Draft:
        """The draft of one of ``task``'s events, as this service publishes it."""
        return with_trace(
            self._engine, event_draft(task, item, max_bytes=self._engine.settings.max_event_bytes)
        )

    # -- internals -----------------------------------------------------------------------

    async def _change(
        self,
        task_id: str,
        principal: Principal | None,
        transition: Mutation,
        event: Callable[[Task], TaskEvent],
    ) -> Task:
        check_lookup_id(task_id)
        store, publishing = self.store, self._publishing

        drafted: list[tuple[Task, Draft]] = []

        def mutate(task: Task) -> Task:
            if not may_change(principal, task):
                raise TaskNotFound(f"no task {task_id}")
            # The previous event's id goes into the store with this change.
            new = transition(self.current(task))
            # Too large or not JSON: refused before anything is written.
            drafted.append((new, self.draft(new, event(new))))
            return new

        async def apply() -> Task:
            async with self._locks.hold(task_id):
                if publishing is not None:
                    # One atomic step: the event of sequence N+1 lands right after N's, on
                    # the wire, whichever node made either.
                    updated = await publishing.update_and_append(
                        task_id, mutate, lambda t: self.draft(t, event(t))
                    )
                    self._engine.note_published()
                    return updated
                task = await store.update(task_id, mutate)
                # The draft made in ``mutate`` is the event of the task it returned.
                if drafted and drafted[-1][0] is task:
                    return await self._events.publish(task, drafted[-1][1])
                return await self._events.publish(task, self.draft(task, event(task)))

        return await self._shielded(apply())

    async def _shielded(self, work: Coroutine[Any, Any, Task]) -> Task:
        """Run ``work`` to the end even if the caller is cancelled (see the module doc)."""
        job: asyncio.Task[Task] = asyncio.ensure_future(work)
        self._inflight.add(job)
        job.add_done_callback(self._settle)
        return await asyncio.shield(job)

    def _settle(self, job: asyncio.Task[Any]) -> None:
        self._inflight.discard(job)
        if not job.cancelled():
            # Retrieve the outcome: a caller cancelled meanwhile will never look at it (a
            # refused change, e.g. TaskFinished, needs no report; the caller is gone).
            job.exception()

    def _check_json(self, value: JSON, name: str) -> None:
        size = len(dumps_json(value, name))
        limit = self._engine.settings.max_event_bytes
        if size > limit:
            raise InvalidEvent(f"{name} is {size} bytes as JSON; the limit is {limit}")
