"""The task state machine: every change of a :class:`~tidings.tasks.record.Task` (SPEC §3).

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from tidings.errors import InvalidEvent, TaskFinished
from tidings.events import EventId, dumps_json
from tidings.tasks.record import (
    FILE_STATUSES,
    FileState,
    Number,
    RateState,
    Task,
    TaskStatus,
    evolve,
    new_task_id,
    validate_task_id,
)
from tidings.types import JSON

__all__ = [
    "SMOOTHING",
    "apply_cancel",
    "apply_complete",
    "apply_fail",
    "apply_file",
    "apply_progress",
    "new_task",
    "record_event_id",
]

#: tqdm's default smoothing factor for the rate's moving averages.
SMOOTHING: Final = 0.3


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
