"""The rules of tasks: who may change or read one, and how its events are published."""

from __future__ import annotations

from typing import Final

from tidings.auth.principal import Principal
from tidings.errors import InvalidEvent, TaskNotFound
from tidings.events import Draft, make_draft
from tidings.tasks.model import Task, TaskEvent, validate_task_id
from tidings.topics import task_topic
from tidings.types import Priority

__all__ = ["check_lookup_id", "ended_at", "event_draft", "may_change", "may_read"]

_PRIORITY: Final[dict[str, Priority]] = {
    "task_progress": "normal",
    "file_update": "normal",
    "task_completed": "high",
    "task_failed": "high",
    "task_cancelled": "high",
    "task_deleted": "high",
}


def event_draft(task: Task, item: TaskEvent, *, max_bytes: int | None = None) -> Draft:
    """The draft of ``item`` on ``tasks/<task_id>``, as the task service publishes it
    (terminal and ``task_deleted`` events are ``high`` priority: never conflated or
    dropped). Workers that publish straight into Redis use it too.

    Raises:
        EventTooLarge: the payload is over ``max_bytes``.
        InvalidEvent: the payload is not JSON.
    """
    return make_draft(
        task_topic(task.task_id),
        item.data,
        type=item.type,
        priority=_PRIORITY.get(item.type, "normal"),
        max_bytes=max_bytes,
        # The values a client gave (metadata, result, details) were checked by the model;
        # the payload nests them one level down.
        limit_depth=False,
    )


def may_change(principal: Principal | None, task: Task) -> bool:
    """Whether ``principal`` may change ``task`` (``None``: application code, always).

    The owner, an admin, anyone when auth is off, and a principal allowed to publish on
    ``tasks/<id>`` (a worker's token).
    """
    if principal is None or principal.unrestricted or principal.admin:
        return True
    if task.owner is not None and task.owner == principal.user:
        return True
    return principal.may_publish(task_topic(task.task_id))


def may_read(principal: Principal | None, task: Task) -> bool:
    """Whether ``principal`` may read ``task`` and its stream: whoever may change it, and a
    principal allowed to subscribe to ``tasks/<id>`` (a watcher's token)."""
    if principal is None or may_change(principal, task):
        return True
    return principal.may_subscribe(task_topic(task.task_id))


def ended_at(task: Task, last_event_id: str | None) -> bool:
    """Whether ``last_event_id`` is the id of ``task``'s terminal event (answer 204)."""
    return bool(last_event_id) and task.terminal and last_event_id == task.last_event_id


def check_lookup_id(task_id: str) -> None:
    """A task id that cannot exist is simply not found (no need to tell why)."""
    try:
        validate_task_id(task_id)
    except InvalidEvent:
        raise TaskNotFound("no such task") from None
