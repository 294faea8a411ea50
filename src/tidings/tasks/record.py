"""The task record: :class:`Task`, the states it holds, its ids and statuses (SPEC §3 "Tasks").

Pure data: no I/O, no clock. The transitions that change a task are in
:mod:`tidings.tasks.transitions`; the events it publishes in :mod:`tidings.tasks.task_events`.
Times are Unix seconds (floats), like ``time.time()``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, TypeAlias

from tidings.errors import InvalidEvent
from tidings.types import JSON

__all__ = [
    "FILE_STATUSES",
    "MAX_TASK_ID",
    "TASK_STATUSES",
    "TERMINAL_STATUSES",
    "FileState",
    "FileStatus",
    "Number",
    "RateState",
    "Task",
    "TaskStatus",
    "evolve",
    "new_task_id",
    "validate_task_id",
]

TaskStatus: TypeAlias = Literal["pending", "running", "completed", "failed", "cancelled"]
FileStatus: TypeAlias = Literal["pending", "processing", "completed", "failed"]
Number: TypeAlias = int | float

TASK_STATUSES: Final[tuple[TaskStatus, ...]] = (
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
)
FILE_STATUSES: Final[tuple[FileStatus, ...]] = ("pending", "processing", "completed", "failed")
#: Statuses that are final: later updates raise :class:`TaskFinished` (HTTP 409).
TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
#: Longest task id; ids are one topic segment (``tasks/<task_id>``).
MAX_TASK_ID: Final = 128

_TASK_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]+")


def new_task_id() -> str:
    """A fresh random task id: 32 lowercase hex characters."""
    return secrets.token_hex(16)


def validate_task_id(task_id: str) -> str:
    """Check that ``task_id`` can name a task (one topic segment, at most 128 characters).

    Raises:
        InvalidEvent: the id is empty, too long, or holds a character outside
            ``A-Z a-z 0-9 _ . : @ -``.
    """
    if not isinstance(task_id, str) or not task_id:
        raise InvalidEvent("task_id must be a non-empty string", code="invalid_request")
    if len(task_id) > MAX_TASK_ID:
        raise InvalidEvent(
            f"task_id is longer than {MAX_TASK_ID} characters", code="invalid_request"
        )
    if not _TASK_ID_RE.fullmatch(task_id):
        raise InvalidEvent("task_id may only hold A-Z a-z 0-9 _ . : @ -", code="invalid_request")
    return task_id


@dataclass(frozen=True, slots=True)
class FileState:
    """The state of one file of a task (``files[file_id]`` in the task JSON)."""

    file_id: str
    filename: str | None = None
    status: FileStatus = "pending"
    progress: float = 0.0
    message: str | None = None

    def to_json(self) -> dict[str, JSON]:
        """``{file_id, filename, status, progress, message}``."""
        return {
            "file_id": self.file_id,
            "filename": self.filename,
            "status": self.status,
            "progress": self.progress,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileState:
        """Rebuild from :meth:`to_json` output (unknown keys are ignored)."""
        return cls(
            file_id=str(data["file_id"]),
            filename=data.get("filename"),
            status=data.get("status", "pending"),
            progress=float(data.get("progress") or 0.0),
            message=data.get("message"),
        )


@dataclass(frozen=True, slots=True)
class RateState:
    """The moving averages behind ``rate`` and ``eta`` (internal; stored, never shown).

    ``at`` and ``position`` are the last sample; ``ema_dn`` and ``ema_dt`` the smoothed units
    and seconds between samples; ``unit`` is ``"count"`` or ``"percent"``.
    """

    unit: str = "count"
    at: float | None = None
    position: float = 0.0
    ema_dn: float = 0.0
    ema_dt: float = 0.0

    def to_json(self) -> dict[str, JSON]:
        """A JSON object for the store."""
        return {
            "unit": self.unit,
            "at": self.at,
            "position": self.position,
            "ema_dn": self.ema_dn,
            "ema_dt": self.ema_dt,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RateState:
        """Rebuild from :meth:`to_json` output; defaults when ``data`` is missing."""
        if not data:
            return cls()
        return cls(
            unit=str(data.get("unit", "count")),
            at=data.get("at"),
            position=float(data.get("position") or 0.0),
            ema_dn=float(data.get("ema_dn") or 0.0),
            ema_dt=float(data.get("ema_dt") or 0.0),
        )


@dataclass(frozen=True, slots=True)
class Task:
    """A task: long-running work whose progress users watch.

    Immutable: transitions (:func:`apply_progress`, :func:`apply_complete`, ...) return a
    new record. ``metadata`` and ``files`` must be treated as read-only.

    Attributes:
        task_id: the id; its events are published on ``tasks/<task_id>``.
        status: ``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``.
        progress: percent done, 0..100.
        current, total: counts of units done and to do, when the worker sends them.
        message: a human-readable status line.
        title, owner, metadata: set at creation; ``owner`` is the creator's user id.
        files: per-file states by file id.
        result: what ``complete`` was given. ``error``/``details``: what ``fail`` was given
            (``error`` holds the reason of a cancelled task).
        rate: units (or percent points) per second, smoothed; ``eta``: seconds left.
        created_at, started_at, updated_at, finished_at: Unix times.
        sequence: rises by one with every event of the task.
        last_event_id: the hub id of the task's latest event (internal; not in the JSON).
    """

    task_id: str
    status: TaskStatus = "pending"
    progress: float = 0.0
    current: Number | None = None
    total: Number | None = None
    message: str | None = None
    title: str | None = None
    owner: str | None = None
    metadata: Mapping[str, JSON] = field(default_factory=dict)
    files: Mapping[str, FileState] = field(default_factory=dict)
    result: JSON = None
    error: str | None = None
    details: JSON = None
    rate: float | None = None
    eta: float | None = None
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float = 0.0
    finished_at: float | None = None
    sequence: int = 0
    last_event_id: str | None = None
    rate_state: RateState = field(default_factory=RateState)

    @property
    def terminal(self) -> bool:
        """Whether the task is completed, failed or cancelled (final)."""
        return self.status in TERMINAL_STATUSES

    @property
    def total_files(self) -> Number | None:
        """The batch's size (seed 004's "alternative total count"): ``total``, or the files
        reported so far when there are more of them or no ``total``."""
        if self.total is None:
            return len(self.files) if self.files else None
        return max(self.total, len(self.files))

    @property
    def processing_time(self) -> float | None:
        """Seconds from start (or creation) to finish; ``None`` while unfinished."""
        if self.finished_at is None:
            return None
        start = self.started_at if self.started_at is not None else self.created_at
        return round(max(0.0, self.finished_at - start), 3)

    @property
    def job_id(self) -> JSON:
        """``metadata["job_id"]`` when set, else the task id (seed 004's ``job_id``)."""
        value = self.metadata.get("job_id")
        return value if value is not None else self.task_id

    def to_json(self) -> dict[str, JSON]:
        """The task JSON of the HTTP API (SPEC §3): public fields only."""
        return {
            "task_id": self.task_id,
            "status": self.status,
            "progress": self.progress,
            "current": self.current,
            "total": self.total,
            "message": self.message,
            "title": self.title,
            "owner": self.owner,
            "metadata": dict(self.metadata),
            "files": {fid: f.to_json() for fid, f in self.files.items()},
            "result": self.result,
            "error": self.error,
            "details": self.details,
            "rate": self.rate,
            "eta": self.eta,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "sequence": self.sequence,
        }

    def to_record(self) -> dict[str, JSON]:
        """Everything a store keeps: :meth:`to_json` plus the internal fields."""
        record = self.to_json()
        record["last_event_id"] = self.last_event_id
        record["rate_state"] = self.rate_state.to_json()
        return record

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Task:
        """Rebuild a task from :meth:`to_record` or :meth:`to_json` output.

        Unknown keys are ignored, so a client can read the JSON of a newer hub.
        """
        files = data.get("files") or {}
        return cls(
            task_id=str(data["task_id"]),
            status=data.get("status", "pending"),
            progress=float(data.get("progress") or 0.0),
            current=data.get("current"),
            total=data.get("total"),
            message=data.get("message"),
            title=data.get("title"),
            owner=data.get("owner"),
            metadata=dict(data.get("metadata") or {}),
            files={str(fid): FileState.from_json(f) for fid, f in files.items()},
            result=data.get("result"),
            error=data.get("error"),
            details=data.get("details"),
            rate=data.get("rate"),
            eta=data.get("eta"),
            created_at=float(data.get("created_at") or 0.0),
            started_at=data.get("started_at"),
            updated_at=float(data.get("updated_at") or 0.0),
            finished_at=data.get("finished_at"),
            sequence=int(data.get("sequence") or 0),
            last_event_id=data.get("last_event_id"),
            rate_state=RateState.from_json(data.get("rate_state")),
        )


_TASK_FIELDS = tuple(f.name for f in fields(Task))
_TASK_FIELD_SET = frozenset(_TASK_FIELDS)
_set = object.__setattr__


def evolve(task: Task, **changes: Any) -> Task:
    """``dataclasses.replace`` for a :class:`Task`, at half the cost: a transition runs
    on every progress report. ``Task`` has no ``__post_init__``, so nothing is skipped."""
    if not changes.keys() <= _TASK_FIELD_SET:
        raise TypeError(f"Task has no field {sorted(changes.keys() - _TASK_FIELD_SET)[0]!r}")
    new = object.__new__(Task)
    for name in _TASK_FIELDS:
        _set(new, name, changes[name] if name in changes else getattr(task, name))
    return new
