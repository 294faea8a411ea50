"""Tasks: long-running work whose progress users watch (SPEC §3 "Tasks").

- :mod:`tidings.tasks.model`: the :class:`Task` record, its state machine, event payloads
  (from :mod:`~tidings.tasks.record`, :mod:`~tidings.tasks.transitions` and
  :mod:`~tidings.tasks.task_events`).
- :mod:`tidings.tasks.store`: the :class:`TaskStore` seam; :mod:`~tidings.tasks.memory` and
  :mod:`~tidings.tasks.sqlite` implement it.
- :mod:`tidings.tasks.service`: :class:`TaskService`, reached as ``hub.tasks``.
"""

from __future__ import annotations

from tidings.tasks.memory import MemoryTaskStore
from tidings.tasks.model import (
    FILE_STATUSES,
    STREAM_END_TYPES,
    TASK_STATUSES,
    TERMINAL_STATUSES,
    FileState,
    FileStatus,
    Task,
    TaskEvent,
    TaskStatus,
)
from tidings.tasks.service import TaskService, open_store
from tidings.tasks.sqlite import SQLiteTaskStore
from tidings.tasks.store import Mutation, TaskStore

__all__ = [
    "FILE_STATUSES",
    "STREAM_END_TYPES",
    "TASK_STATUSES",
    "TERMINAL_STATUSES",
    "FileState",
    "FileStatus",
    "MemoryTaskStore",
    "Mutation",
    "SQLiteTaskStore",
    "Task",
    "TaskEvent",
    "TaskService",
    "TaskStatus",
    "TaskStore",
    "open_store",
]
