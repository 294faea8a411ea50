"""Celery states and tidings statuses: :data:`CELERY_STATES` and :func:`tidings_status`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from celery import states

from tidings.tasks.record import TaskStatus

__all__ = ["CELERY_STATES", "tidings_status"]

#: Celery state -> tidings status (the table in :mod:`tidings.integrations.celery`).
#: ``IGNORED`` has no counterpart; custom states (``PROGRESS``, ``DOWNLOADING``...) are
#: ``running``.
CELERY_STATES: Final[Mapping[str, TaskStatus]] = MappingProxyType(
    {
        states.PENDING: "pending",
        states.RECEIVED: "pending",
        states.STARTED: "running",
        "PROGRESS": "running",
        states.RETRY: "running",
        states.SUCCESS: "completed",
        states.FAILURE: "failed",
        states.REJECTED: "failed",
        states.REVOKED: "cancelled",
    }
)


def tidings_status(state: str) -> TaskStatus | None:
    """The tidings status of a Celery state; ``None`` for ``IGNORED``.

    States Celery does not define (custom ones such as ``PROGRESS``) are in progress, as
    Celery itself treats them: ``running``.

    Example::

        tidings_status(AsyncResult(task_id).state)   # "running"
    """
    if state == states.IGNORED:
        return None
    return CELERY_STATES.get(state, "running")
