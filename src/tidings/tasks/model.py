"""The task model in one place: the record, its state machine, and its events (SPEC §3 "Tasks").

This is the public home of :class:`Task` and the names that go with it. They live in three
pure modules, which other code may import directly:

- :mod:`tidings.tasks.record`: :class:`Task`, :class:`FileState`, :class:`RateState`,
  the statuses, task ids and :func:`evolve`;
- :mod:`tidings.tasks.transitions`: :func:`new_task` and the ``apply_*`` transitions;
- :mod:`tidings.tasks.task_events`: :class:`TaskEvent` and the events a task publishes.
"""

from __future__ import annotations

from tidings.tasks.record import (
    FILE_STATUSES,
    TASK_STATUSES,
    TERMINAL_STATUSES,
    FileState,
    FileStatus,
    RateState,
    Task,
    TaskStatus,
    evolve,
    new_task_id,
    validate_task_id,
)
from tidings.tasks.record import MAX_TASK_ID as MAX_TASK_ID
from tidings.tasks.record import Number as Number
from tidings.tasks.task_events import (
    STREAM_END_TYPES,
    TERMINAL_EVENTS,
    TaskEvent,
    deleted_event,
    file_event,
    progress_event,
    snapshot_events,
    terminal_event,
)
from tidings.tasks.transitions import (
    SMOOTHING,
    apply_cancel,
    apply_complete,
    apply_fail,
    apply_file,
    apply_progress,
    new_task,
    record_event_id,
)

__all__ = [
    "FILE_STATUSES",
    "SMOOTHING",
    "STREAM_END_TYPES",
    "TASK_STATUSES",
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "FileState",
    "FileStatus",
    "RateState",
    "Task",
    "TaskEvent",
    "TaskStatus",
    "apply_cancel",
    "apply_complete",
    "apply_fail",
    "apply_file",
    "apply_progress",
    "deleted_event",
    "evolve",
    "file_event",
    "new_task",
    "new_task_id",
    "progress_event",
    "record_event_id",
    "snapshot_events",
    "terminal_event",
    "validate_task_id",
]
