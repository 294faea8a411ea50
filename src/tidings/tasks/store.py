"""The ``TaskStore`` seam: where task records live (SQLite, memory, Redis).

A store keeps :class:`~tidings.tasks.model.Task` records and changes them atomically. It
knows nothing about events, the hub or principals: the task service decides what a change
is (a pure function from :mod:`tidings.tasks.model`) and what it publishes.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tidings.events import Draft
from tidings.tasks.model import Task

__all__ = ["Mutation", "PublishingTaskStore", "TaskStore"]

#: A pure function from the current record to the new one (see :meth:`TaskStore.update`).
Mutation = Callable[[Task], Task]


class TaskStore(Protocol):
    """Durable, atomic storage of task records.

    Contract:

    - :meth:`start` is awaited once before any other call (open files, connect), and
      :meth:`aclose` once at the end; the task service owns both. A store may be used
      from one event loop only.
    - **Atomic transitions.** :meth:`update` reads the latest committed record, calls
      ``mutate`` on it and commits the result as one atomic step across every process
      sharing the store: SQLite runs it in a ``BEGIN IMMEDIATE`` transaction; Redis in a
      compare-and-set loop (a record version checked by a Lua script), calling ``mutate``
      again on the newer record when another writer won. So ``mutate`` must be pure (no
      I/O, no clock: the caller captures ``now``) and may run more than once. If
      ``mutate`` raises, nothing is written and the exception escapes unchanged: that is
      how the loser of two racing terminal requests gets
      :class:`~tidings.errors.TaskFinished` and uses no sequence.
    - **Sequence assignment.** The store never changes ``sequence`` itself. Transitions
      that publish an event return ``sequence + 1``; because each runs atomically on the
      latest record, no two committed records of a task ever share a sequence, and
      concurrent progress updates each get their own.
    - **Records are values.** Methods return fresh :class:`Task` objects; a store never
      keeps a reference the caller could change, and callers never mutate what they get.
    - :meth:`list` returns newest first (creation time, then insertion order).
    - :meth:`purge` deletes, in one step per task, the finished tasks whose
      ``finished_at`` is before ``before`` and the unfinished ones not updated since
      ``before`` (abandoned by their worker), and returns what it deleted so the service
      can end their streams with a ``task_deleted`` event.

    Errors: :class:`~tidings.errors.TaskNotFound` (no such task),
    :class:`~tidings.errors.TaskExists` (:meth:`insert` with a taken id), whatever
    ``mutate`` raises, and :class:`~tidings.errors.BackendUnavailable` when the storage
    cannot be reached (its ``__cause__`` holds why). Nothing else escapes; a store
    translates its driver's errors at this seam.
    """

    async def start(self) -> None:
        """Open the storage (create the schema if needed)."""
        ...

    async def aclose(self) -> None:
        """Release the storage. Later calls are errors."""
        ...

    async def insert(self, task: Task) -> Task:
        """Store a new task and return it.

        Raises:
            TaskExists: a task with this ``task_id`` exists.
        """
        ...

    async def get(self, task_id: str) -> Task:
        """The task ``task_id``.

        Raises:
            TaskNotFound: no such task.
        """
        ...

    async def update(self, task_id: str, mutate: Mutation) -> Task:
        """Atomically replace the task with ``mutate(task)`` and return the new record.

        Raises:
            TaskNotFound: no such task.
            Exception: whatever ``mutate`` raised; nothing was written.
        """
        ...

    async def delete(self, task_id: str) -> Task:
        """Delete the task and return its last record.

        Raises:
            TaskNotFound: no such task.
        """
        ...

    async def list(
        self, *, owner: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[Task]:
        """Up to ``limit`` tasks, newest first, of ``owner`` (every owner when ``None``),
        with ``status`` when given."""
        ...

    async def count_active(self) -> int:
        """How many tasks are ``pending`` or ``running``."""
        ...

    async def purge(self, before: float) -> builtins.list[Task]:
        """Delete tasks finished before ``before`` (a Unix time), and unfinished ones not
        updated since; return the deleted records."""
        ...


@runtime_checkable
class PublishingTaskStore(TaskStore, Protocol):
    """A store that appends a change's event to the hub's backend in the same atomic step.

    A store that lives where the hub's events do (the Redis store, in the backend's Redis)
    can commit a change and its event together; the task service then calls these instead
    of :meth:`TaskStore.update` followed by ``hub.append``. Its per-task lock holds only on
    one node, so without this two nodes (or a node and a worker) changing one task could
    append their events out of ``sequence`` order.

    Contract, besides :class:`TaskStore`'s: ``event(new)`` is appended to the backend (and
    so delivered by every node) if and only if ``new`` is committed, and the returned record
    carries the event's id as ``last_event_id``. If ``mutate`` or ``event`` raises, nothing
    is written or appended and the exception escapes unchanged.
    """

    async def insert_and_append(self, task: Task, event: Callable[[Task], Draft]) -> Task:
        """Store a new task and append ``event(task)``; :class:`TaskExists` if taken."""
        ...

    async def update_and_append(
        self, task_id: str, mutate: Mutation, event: Callable[[Task], Draft]
    ) -> Task:
        """Atomically replace the task with ``mutate(task)`` and append ``event(new)``."""
        ...
