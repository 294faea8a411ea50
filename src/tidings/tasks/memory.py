"""The in-memory task store: one process, nothing survives a restart (``--store memory``).

Atomicity comes from the event loop: :meth:`MemoryTaskStore.update` reads, mutates and
writes without awaiting in between, so no other coroutine can interleave.
"""

from __future__ import annotations

import builtins

from tidings.errors import TaskExists, TaskNotFound
from tidings.tasks.model import TERMINAL_STATUSES, Task
from tidings.tasks.store import Mutation

__all__ = ["MemoryTaskStore"]


class MemoryTaskStore:
    """A :class:`~tidings.tasks.store.TaskStore` in a dict (tests, embedded single-process
    apps). Records are immutable :class:`Task` values, so they are shared, never copied."""

    def __init__(self) -> None:
        # Insertion order is creation order: newest first is the reverse.
        self._tasks: dict[str, Task] = {}

    async def start(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Drop every task."""
        self._tasks.clear()

    async def insert(self, task: Task) -> Task:
        """Store a new task; :class:`TaskExists` if the id is taken."""
        if task.task_id in self._tasks:
            raise TaskExists(f"task {task.task_id} exists")
        self._tasks[task.task_id] = task
        return task

    async def get(self, task_id: str) -> Task:
        """The task; :class:`TaskNotFound` if there is none."""
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id}")
        return task

    async def update(self, task_id: str, mutate: Mutation) -> Task:
        """Apply ``mutate`` atomically (no await between read and write)."""
        task = self._tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id}")
        new = mutate(task)
        self._tasks[task_id] = new
        return new

    async def delete(self, task_id: str) -> Task:
        """Delete and return the task; :class:`TaskNotFound` if there is none."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            raise TaskNotFound(f"no task {task_id}")
        return task

    async def list(
        self, *, owner: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[Task]:
        """Newest first (reverse creation order), filtered by owner and status."""
        found: builtins.list[Task] = []
        if limit <= 0:
            return found
        for task in reversed(self._tasks.values()):
            if owner is not None and task.owner != owner:
                continue
            if status is not None and task.status != status:
                continue
            found.append(task)
            if len(found) >= limit:
                break
        return found

    async def count_active(self) -> int:
        """Tasks ``pending`` or ``running``."""
        return sum(1 for t in self._tasks.values() if t.status not in TERMINAL_STATUSES)

    async def purge(self, before: float) -> builtins.list[Task]:
        """Delete finished tasks older than ``before`` and abandoned unfinished ones."""
        gone = [t for t in self._tasks.values() if _expired(t, before)]
        for task in gone:
            del self._tasks[task.task_id]
        return gone


def _expired(task: Task, before: float) -> bool:
    if task.finished_at is not None:
        return task.finished_at < before
    return task.updated_at < before
