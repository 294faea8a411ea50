"""Who may read a topic: its streams, its presence and its history (SPEC §3, §5).

A principal reads a topic if it may subscribe to it. A ``tasks/<id>`` topic that no grant
allows is also readable by whoever may read the task (its owner, an admin, a worker
allowed to publish on it), which the task service answers through :class:`TaskAccess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tidings.auth.principal import Principal
from tidings.errors import NotAuthorized
from tidings.topics import task_of, task_topic, validate_topic

__all__ = ["TaskAccess", "authorize", "check_owner"]


class TaskAccess(Protocol):
    """Whether a principal may follow a task's topic (the task service answers)."""

    async def may_watch(self, task_id: str, principal: Principal) -> bool:
        """Whether the task exists and ``principal`` may read it.

        Raises:
            BackendUnavailable: the task store cannot be read now.
        """
        ...


async def check_owner(
    access: TaskAccess | None, principal: Principal, task_ids: Sequence[str]
) -> None:
    """Allow topics ``tasks/<id>`` of tasks that ``principal`` may read: its own (SPEC
    §5), any for an admin, those a worker may publish on.

    A task that does not exist and one that the principal may not read get the same
    403, so task ids don't leak.

    Raises:
        NotAuthorized: a task the principal may not read (403).
        BackendUnavailable: the task store cannot be read.
    """
    for task_id in task_ids:
        if access is None or not await access.may_watch(task_id, principal):
            topic = task_topic(task_id)
            raise NotAuthorized(f"not allowed to subscribe to {topic!r}", code="forbidden")


async def authorize(access: TaskAccess | None, principal: Principal, topic: str) -> None:
    """Let ``principal`` read ``topic``'s presence and history: only if it may subscribe
    to it (SPEC §3); ``tasks/<id>`` as a stream of it would be.

    Raises:
        InvalidTopic: ``topic`` is not a topic (a pattern, say).
        NotAuthorized: (403) it may not.
        BackendUnavailable: the task store cannot be read (for ``tasks/<id>``).
    """
    validate_topic(topic)
    if principal.may_subscribe(topic):
        return
    own = task_of(topic)
    if own is None:
        raise NotAuthorized(f"not allowed to subscribe to {topic!r}", code="forbidden")
    await check_owner(access, principal, [own])
