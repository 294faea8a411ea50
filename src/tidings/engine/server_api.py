"""Presence, history and the server API of SPEC §3, as the engine offers them.

:class:`ServerApi` is a part of :class:`~tidings.engine.Engine` (which inherits it), kept
apart because none of it is on the way of a publish or a stream: each call checks its
arguments and the caller's right to read, then asks the backend, which answers for every
node.
"""

from __future__ import annotations

from tidings.auth.principal import Principal
from tidings.backends.base import Backend, PresencePage, TopicPage
from tidings.engine.access import TaskAccess, authorize
from tidings.engine.control import disconnect_command
from tidings.engine.history import PAGE_LIMIT, History, check_cursor, check_limit, read_history
from tidings.topics import validate_topic

__all__ = ["ServerApi"]


class ServerApi:
    """Presence, history, topics and disconnect, on the engine's backend."""

    backend: Backend
    task_access: TaskAccess | None

    async def authorize(self, principal: Principal, topic: str) -> None:
        """Whether ``principal`` may read ``topic``'s presence and history
        (:func:`~tidings.engine.access.authorize`)."""
        await authorize(self.task_access, principal, topic)

    async def presence(
        self,
        topic: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        principal: Principal | None = None,
    ) -> PresencePage:
        """Streams subscribed to ``topic`` on every node (:meth:`tidings.Hub.presence`)."""
        check_limit(limit, PAGE_LIMIT)
        check_cursor(cursor)
        validate_topic(topic)
        if principal is not None:
            await self.authorize(principal, topic)
        return await self.backend.presence(topic, limit=limit, cursor=cursor)

    async def history(
        self,
        topic: str,
        *,
        since: str | None = None,
        limit: int = 100,
        principal: Principal | None = None,
    ) -> History:
        """A page of ``topic``'s history (:meth:`tidings.Hub.history`)."""
        validate_topic(topic)
        if principal is not None:
            await self.authorize(principal, topic)
        return await read_history(
            self.backend, topic, since=since, limit=limit, principal=principal
        )

    async def topics(self, *, limit: int = 100, cursor: str | None = None) -> TopicPage:
        """The topics with subscribers on every node (:meth:`tidings.Hub.topics`)."""
        check_limit(limit, PAGE_LIMIT)
        return await self.backend.presence_topics(limit=limit, cursor=check_cursor(cursor))

    async def disconnect(
        self, *, user: str | None = None, topic: str | None = None, reason: str | None = None
    ) -> int:
        """End matching streams on every node (:meth:`tidings.Hub.disconnect`)."""
        command = disconnect_command(user=user, topic=topic, reason=reason)
        return await self.backend.disconnect(command)
