"""A task's events after its changes: published, their ids kept, refused ones published later.

The id of a task's latest event is known only once its event is appended, after the change
is written. Writing it at once would make every progress report two store writes (with
SQLite, most of a report's cost), so the ledger keeps it and the store gets it with the
task's next change; a terminal event's id is written at once, and ids still kept are
written when the service closes. If the backend refuses an event (Redis down), the change
stands (the store is the truth) and :meth:`TaskEvents.republish` publishes the task's
current state as soon as it can: streams never wait forever for a terminal event.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from tidings.engine import Engine
from tidings.errors import BackendUnavailable, ShuttingDown, TaskNotFound
from tidings.events import Draft
from tidings.tasks.model import (
    Task,
    TaskEvent,
    deleted_event,
    progress_event,
    record_event_id,
    terminal_event,
)
from tidings.tasks.store import TaskStore

__all__ = ["TaskEvents"]

logger = logging.getLogger("tidings.tasks")


class _Tasks(Protocol):
    @property
    def store(self) -> TaskStore: ...

    def hold(self, task_id: str) -> AbstractAsyncContextManager[None]: ...

    def draft(self, task: Task, item: TaskEvent) -> Draft: ...


class TaskEvents:
    """Publishes the events of ``tasks``' changes on ``engine`` (see the module)."""

    def __init__(self, engine: Engine, tasks: _Tasks) -> None:
        self._engine = engine
        self._tasks = tasks
        #: Task id -> the id of its latest event, not yet in the store.
        self._latest_ids: dict[str, str] = {}
        #: Tasks whose latest event the backend refused.
        self._unpublished: set[str] = set()

    @property
    def pending(self) -> bool:
        """Whether a refused event waits to be published again."""
        return bool(self._unpublished)

    def current(self, task: Task) -> Task:
        """``task`` (read from the store) with its latest event id."""
        latest = self._latest_ids.get(task.task_id)
        return task if latest is None else record_event_id(task, latest)

    def forget(self, task_id: str) -> None:
        """The task is gone: keep nothing of it."""
        self._latest_ids.pop(task_id, None)

    async def publish(self, task: Task, draft: Draft) -> Task:
        """Append ``draft`` (an event of ``task``) and record its id (called under the
        task's lock)."""
        try:
            appended = await self._engine.append(draft)
        except (BackendUnavailable, ShuttingDown) as exc:
            self._unpublished.add(task.task_id)
            logger.warning(
                "task %s: %s not published (%s); will publish the task's state later",
                task.task_id,
                draft.type,
                exc.message,
            )
            return task
        return await self.record(task, appended.id)

    async def record(self, task: Task, event_id: str) -> Task:
        """``task`` with ``event_id`` as its latest event id: kept until the task's next
        change writes it, or written now when the task is finished (see the module)."""
        if not task.terminal:
            self._latest_ids[task.task_id] = event_id
            return record_event_id(task, event_id)
        self._latest_ids.pop(task.task_id, None)
        try:
            return await self._tasks.store.update(
                task.task_id, lambda t: record_event_id(t, event_id)
            )
        except TaskNotFound:
            return record_event_id(task, event_id)
        except BackendUnavailable:
            logger.warning("task %s: could not record event id %s", task.task_id, event_id)
            return record_event_id(task, event_id)

    async def write_latest_ids(self) -> None:
        """Write the ids still kept (the service is closing)."""
        latest, self._latest_ids = self._latest_ids, {}
        for task_id, event_id in latest.items():
            with contextlib.suppress(TaskNotFound, BackendUnavailable):
                await self._tasks.store.update(task_id, lambda t, i=event_id: record_event_id(t, i))  # type: ignore[misc]

    async def announce_deleted(self, task: Task, reason: str) -> None:
        self._unpublished.discard(task.task_id)
        try:
            await self._engine.append(self._tasks.draft(task, deleted_event(task, reason)))
        except (BackendUnavailable, ShuttingDown) as exc:
            logger.warning("task %s: task_deleted not published (%s)", task.task_id, exc.message)

    async def republish(self) -> None:
        """Publish the current state of tasks whose event the backend refused."""
        store = self._tasks.store
        for task_id in list(self._unpublished):
            async with self._tasks.hold(task_id):
                if task_id not in self._unpublished:
                    continue
                try:
                    task = self.current(await store.get(task_id))
                except TaskNotFound:
                    self._unpublished.discard(task_id)
                    continue
                item = terminal_event(task) if task.terminal else progress_event(task)
                try:
                    appended = await self._engine.append(self._tasks.draft(task, item))
                except (BackendUnavailable, ShuttingDown):
                    return  # still down; next round
                self._unpublished.discard(task_id)
                await self.record(task, appended.id)
