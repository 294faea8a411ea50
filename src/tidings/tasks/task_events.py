"""The events a task publishes, built from its record (SPEC §3, seed 004 compatible).

Pure: each function maps a :class:`~tidings.tasks.record.Task` to a :class:`TaskEvent`, the
SSE ``type`` and ``data`` the task service publishes on ``tasks/<task_id>``.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from tidings.tasks.record import Task
from tidings.types import JSON

__all__ = [
    "STREAM_END_TYPES",
    "TERMINAL_EVENTS",
    "TaskEvent",
    "deleted_event",
    "file_event",
    "progress_event",
    "snapshot_events",
    "terminal_event",
]

#: The event type each terminal status publishes.
TERMINAL_EVENTS: Final = frozenset({"task_completed", "task_failed", "task_cancelled"})
#: Event types after which a task stream ends (``task_deleted``: the task was purged).
STREAM_END_TYPES: Final = TERMINAL_EVENTS | {"task_deleted"}


class TaskEvent(NamedTuple):
    """An event a task publishes: its SSE ``type`` and its ``data`` (a JSON object)."""

    type: str
    data: dict[str, JSON]


def progress_event(task: Task) -> TaskEvent:
    """``task_progress``: ``{task_id, status, progress, current, total, total_files, message,
    rate, eta, sequence}``."""
    return TaskEvent(
        "task_progress",
        {
            "task_id": task.task_id,
            "status": task.status,
            "progress": task.progress,
            "current": task.current,
            "total": task.total,
            "total_files": task.total_files,
            "message": task.message,
            "rate": task.rate,
            "eta": task.eta,
            "sequence": task.sequence,
        },
    )


def file_event(task: Task, file_id: str) -> TaskEvent:
    """``file_update``: ``{task_id, file_id, filename, status, progress, message, sequence}``.

    Raises:
        KeyError: the task has no file ``file_id``.
    """
    state = task.files[file_id]
    return TaskEvent(
        "file_update",
        {
            "task_id": task.task_id,
            "file_id": state.file_id,
            "filename": state.filename,
            "status": state.status,
            "progress": state.progress,
            "message": state.message,
            "sequence": task.sequence,
        },
    )


def terminal_event(task: Task) -> TaskEvent:
    """The event of a finished task: ``task_completed``, ``task_failed`` or ``task_cancelled``.

    Raises:
        ValueError: the task is not terminal.
    """
    if task.status == "completed":
        return TaskEvent(
            "task_completed",
            {
                "task_id": task.task_id,
                "job_id": task.job_id,
                "result": task.result,
                "processing_time": task.processing_time,
                "sequence": task.sequence,
            },
        )
    if task.status == "failed":
        return TaskEvent(
            "task_failed",
            {
                "task_id": task.task_id,
                "error": task.error,
                "details": task.details,
                "sequence": task.sequence,
            },
        )
    if task.status == "cancelled":
        return TaskEvent(
            "task_cancelled",
            {"task_id": task.task_id, "reason": task.error, "sequence": task.sequence},
        )
    raise ValueError(f"task {task.task_id} is {task.status}, not terminal")


def deleted_event(task: Task, reason: str) -> TaskEvent:
    """``task_deleted``: ``{task_id, reason, sequence}``; the task's streams end with it.

    ``reason`` is ``"expired"`` (purged after the retention time) or ``"deleted"``.
    """
    return TaskEvent(
        "task_deleted",
        {"task_id": task.task_id, "reason": reason, "sequence": task.sequence + 1},
    )


def snapshot_events(task: Task) -> list[TaskEvent]:
    """The task's state as events, for a late joiner or a reconnect past the history window.

    A finished task is its terminal event alone. Otherwise a ``task_progress`` comes first,
    then one ``file_update`` per file; all carry the task's current ``sequence`` (they
    restate state, they are not new events).
    """
    if task.terminal:
        return [terminal_event(task)]
    return [progress_event(task), *(file_event(task, fid) for fid in task.files)]
