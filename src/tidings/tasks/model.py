"""The task record, its state machine, and the payloads of its events (SPEC §3 "Tasks").

Everything here is pure: no I/O, no clock, no event loop. Every transition takes the current
:class:`Task` and ``now`` and returns a new one, so a store can apply it inside a
transaction, or again after losing a compare-and-set race, with the same result.

Decisions worth knowing before changing this file:

- Every transition that publishes an event raises ``sequence`` by one: creation is event 1
  (a ``task_progress`` with status ``pending``), so every task has a latest event id and a
  late joiner's first event always carries one.
- Terminal states are final: any transition from one raises :class:`TaskFinished`, before
  anything is computed, so the loser of two racing terminal requests uses no ``sequence``.
- Validation raises :class:`InvalidEvent` before anything changes (``current`` over
  ``total``, ``progress`` outside 0..100, an unknown file status, a number that is not
  finite, ``metadata``/``result``/``details`` nested deeper than
  :data:`~tidings.events.MAX_JSON_DEPTH`): state is unchanged.
- ``progress`` is a percent. Sent alone it is taken as is; counts sent without it give
  ``100 * current / total``, computed as ``100 * (current / total)`` so that counts near
  the float maximum cannot overflow it; sent together, the explicit percent wins.
- No number a task holds is ever infinite or NaN (JSON has no such numbers: orjson would
  write ``null``): given ones are refused, and a rate or ETA that would overflow is
  unknown (``null``) instead.
- ``rate`` and ``eta`` follow tqdm: exponential moving averages (smoothing 0.3) of the
  units done and the seconds taken between updates; the rate is their ratio, so the bias
  corrections cancel. The unit is ``current`` when counts are known, else percent points.
  A position that goes backwards, or a change of unit, restarts the average.
- A cancelled task keeps its reason in ``error``.
- Times are Unix seconds (floats), like ``time.time()``.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from tidings.errors import InvalidEvent, TaskFinished
from tidings.events import EventId, dumps_json
from tidings.types import JSON

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
#: The event type each terminal status publishes.
TERMINAL_EVENTS: Final = frozenset({"task_completed", "task_failed", "task_cancelled"})
#: Event types after which a task stream ends (``task_deleted``: the task was purged).
STREAM_END_TYPES: Final = TERMINAL_EVENTS | {"task_deleted"}
#: tqdm's default smoothing factor for the rate's moving averages.
SMOOTHING: Final = 0.3
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


class TaskEvent(NamedTuple):
    """An event a task publishes: its SSE ``type`` and its ``data`` (a JSON object)."""

    type: str
    data: dict[str, JSON]


# -- transitions -----------------------------------------------------------------------


def new_task(
    task_id: str | None = None,
    *,
    owner: str | None = None,
    title: str | None = None,
    total: Number | None = None,
    metadata: Mapping[str, JSON] | None = None,
    now: float,
) -> Task:
    """A new ``pending`` task with ``sequence`` 1 (its creation event).

    Raises:
        InvalidEvent: a bad ``task_id``, ``total`` or ``metadata``.
    """
    task_id = new_task_id() if task_id is None else validate_task_id(task_id)
    if total is not None:
        _check_count(total, "total")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidEvent("metadata must be a JSON object", code="invalid_request")
    if metadata:
        _check_json(dict(metadata), "metadata")
    if title is not None and not isinstance(title, str):
        raise InvalidEvent("title must be a string", code="invalid_request")
    return Task(
        task_id=task_id,
        total=total,
        current=0 if total is not None else None,
        title=title,
        owner=owner,
        metadata=dict(metadata or {}),
        created_at=now,
        updated_at=now,
        sequence=1,
    )


def apply_progress(
    task: Task,
    *,
    current: Number | None = None,
    total: Number | None = None,
    progress: Number | None = None,
    message: str | None = None,
    now: float,
) -> Task:
    """Report progress. The first one moves ``pending`` to ``running``.

    Fields left ``None`` keep their value. Counts sent without ``progress`` set it to
    ``100 * current / total``.

    Raises:
        TaskFinished: the task is terminal.
        InvalidEvent: ``current`` over ``total``, a negative count, ``progress`` outside
            0..100, a non-string message. Nothing changes.
    """
    _check_open(task)
    if current is not None:
        _check_count(current, "current")
    if total is not None:
        _check_count(total, "total")
    if progress is not None:
        _check_percent(progress, "progress")
    _check_message(message)
    new_current = current if current is not None else task.current
    new_total = total if total is not None else task.total
    if new_current is not None and new_total is not None and new_current > new_total:
        raise InvalidEvent(
            f"current ({new_current}) is greater than total ({new_total})", code="invalid_request"
        )
    if progress is not None:
        percent = float(progress)
    elif (current is not None or total is not None) and new_current is not None and new_total:
        # Divide first: 100 * current overflows to infinity for counts near the float
        # maximum, while current / total is at most 1.
        percent = 100.0 * (new_current / new_total)
    else:
        percent = task.progress
    percent = round(percent, 2)
    started = task.started_at if task.started_at is not None else now
    rate_state, rate, eta = _sample(task, new_current, new_total, percent, now)
    return evolve(
        task,
        status="running",
        progress=percent,
        current=new_current,
        total=new_total,
        message=message if message is not None else task.message,
        rate=rate,
        eta=eta,
        rate_state=rate_state,
        started_at=started,
        updated_at=now,
        sequence=task.sequence + 1,
    )


def apply_file(
    task: Task,
    file_id: str,
    *,
    status: str,
    filename: str | None = None,
    progress: Number | None = None,
    message: str | None = None,
    now: float,
) -> Task:
    """Report one file's state; a new file id adds the file. Moves ``pending`` to ``running``.

    A new file's ``filename`` defaults to its id; ``completed`` without a ``progress`` sets
    the file's progress to 100. Other fields left ``None`` keep their value.

    Raises:
        TaskFinished: the task is terminal.
        InvalidEvent: an empty file id, an unknown status, ``progress`` outside 0..100.
    """
    _check_open(task)
    if not isinstance(file_id, str) or not file_id or len(file_id) > 256:
        raise InvalidEvent("file_id must be 1 to 256 characters", code="invalid_request")
    if status not in FILE_STATUSES:
        raise InvalidEvent(
            "status must be one of 'pending', 'processing', 'completed', 'failed'",
            code="invalid_request",
        )
    if progress is not None:
        _check_percent(progress, "progress")
    if filename is not None and not isinstance(filename, str):
        raise InvalidEvent("filename must be a string", code="invalid_request")
    _check_message(message)
    old = task.files.get(file_id)
    if progress is not None:
        percent = float(progress)
    elif status == "completed":
        percent = 100.0
    else:
        percent = old.progress if old is not None else 0.0
    state = FileState(
        file_id=file_id,
        filename=filename if filename is not None else (old.filename if old else file_id),
        status=status,
        progress=round(percent, 2),
        message=message if message is not None else (old.message if old else None),
    )
    return evolve(
        task,
        status="running",
        files={**task.files, file_id: state},
        started_at=task.started_at if task.started_at is not None else now,
        updated_at=now,
        sequence=task.sequence + 1,
    )


def apply_complete(task: Task, *, result: JSON = None, now: float) -> Task:
    """Finish the task successfully: ``completed``, progress 100, ``eta`` 0.

    Raises:
        TaskFinished: the task is already terminal.
        InvalidEvent: ``result`` is not JSON or nests too deep.
    """
    _check_open(task)
    _check_json(result, "result")
    return _finish(task, "completed", now, result=result, progress=100.0, eta=0.0)


def apply_fail(task: Task, *, error: str, details: JSON = None, now: float) -> Task:
    """Finish the task as ``failed`` with an error message and optional details.

    Raises:
        TaskFinished: the task is already terminal.
        InvalidEvent: ``error`` is not a non-empty string; ``details`` is not JSON or nests
            too deep.
    """
    _check_open(task)
    if not isinstance(error, str) or not error:
        raise InvalidEvent("error must be a non-empty string", code="invalid_request")
    _check_json(details, "details")
    return _finish(task, "failed", now, error=error, details=details)


def apply_cancel(task: Task, *, reason: str | None = None, now: float) -> Task:
    """Finish the task as ``cancelled``; the reason is kept in ``error``.

    Raises:
        TaskFinished: the task is already terminal.
        InvalidEvent: ``reason`` is not a string.
    """
    _check_open(task)
    if reason is not None and not isinstance(reason, str):
        raise InvalidEvent("reason must be a string", code="invalid_request")
    return _finish(task, "cancelled", now, error=reason)


def record_event_id(task: Task, event_id: str) -> Task:
    """``task`` with ``event_id`` as its latest event id, unless it knows a newer one.

    Ids of one hub are totally ordered by their ``seq``; an id that does not parse (or is
    from another epoch) replaces the old one.
    """
    old = EventId.parse(task.last_event_id) if task.last_event_id else None
    new = EventId.parse(event_id)
    if old is not None and new is not None and old.epoch == new.epoch and old.seq >= new.seq:
        return task
    return evolve(task, last_event_id=event_id)


def _finish(task: Task, status: TaskStatus, now: float, **changes: Any) -> Task:
    return evolve(
        task,
        status=status,
        finished_at=now,
        updated_at=now,
        eta=changes.pop("eta", None),
        sequence=task.sequence + 1,
        **changes,
    )


def _check_open(task: Task) -> None:
    if task.terminal:
        raise TaskFinished(f"task {task.task_id} is {task.status}; it takes no more updates")


def _check_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent(f"{name} must be a number", code="invalid_request")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise InvalidEvent(f"{name} must be finite", code="invalid_request")
    return number


def _check_json(value: JSON, name: str) -> None:
    """A value a client gives (metadata, result, details): JSON, at most
    :data:`~tidings.events.MAX_JSON_DEPTH` levels deep."""
    if value is not None:
        dumps_json(value, name)


def _check_count(value: object, name: str) -> None:
    if _check_number(value, name) < 0:
        raise InvalidEvent(f"{name} must not be negative", code="invalid_request")


def _check_percent(value: object, name: str) -> None:
    number = _check_number(value, name)
    if not 0.0 <= number <= 100.0:
        raise InvalidEvent(f"{name} must be between 0 and 100", code="invalid_request")


def _check_message(message: object) -> None:
    if message is not None and not isinstance(message, str):
        raise InvalidEvent("message must be a string", code="invalid_request")


def _sample(
    task: Task, current: Number | None, total: Number | None, percent: float, now: float
) -> tuple[RateState, float | None, float | None]:
    """The next rate state, rate and eta after a progress report at ``now`` (tqdm-style)."""
    if current is not None:
        unit, position = "count", float(current)
        remaining = float(total) - position if total is not None else None
    else:
        unit, position = "percent", percent
        remaining = 100.0 - percent
    state = task.rate_state
    if state.at is None or state.unit != unit or position < state.position:
        # First sample, a new unit, or the position went backwards: restart the averages.
        return RateState(unit=unit, at=now, position=position), None, None
    dt = now - state.at
    if dt <= 0:
        # Same instant: keep the older sample so the next report measures from it.
        return state, task.rate, task.eta
    dn = position - state.position
    beta = 1.0 - SMOOTHING
    ema_dn = SMOOTHING * dn + beta * state.ema_dn
    ema_dt = SMOOTHING * dt + beta * state.ema_dt
    rate = ema_dn / ema_dt if ema_dt > 0 else None
    if rate is not None and not (math.isfinite(ema_dn) and math.isfinite(rate)):
        # Counts near the float maximum over a tiny interval: no finite rate to show.
        return RateState(unit=unit, at=now, position=position), None, None
    eta = None
    if rate is not None and rate > 0 and remaining is not None:
        eta = round(remaining / rate, 1)
        if not math.isfinite(eta):  # a tiny rate and a huge remainder
            eta = None
    new_state = RateState(unit=unit, at=now, position=position, ema_dn=ema_dn, ema_dt=ema_dt)
    return new_state, round(rate, 4) if rate is not None else None, eta


# -- event payloads (SPEC §3, seed 004 compatible) ----------------------------------------


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
