"""What the web layer needs of a hub: a :class:`HubContext`.

The web layer sits below the :class:`tidings.Hub` facade, so it names what it uses as a
protocol instead of importing the facade: the settings, the engine, the task service and
how callers are authenticated. ``Hub`` is one; a test may build another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tidings.auth.jwt import TokenVerifier
from tidings.auth.proxy import AuthProxy
from tidings.config import Settings
from tidings.engine import Engine
from tidings.tasks.service import TaskService

__all__ = ["HubContext"]


class HubContext(Protocol):
    """A running hub, as the routes see it."""

    @property
    def settings(self) -> Settings:
        """The hub's settings."""
        ...

    @property
    def engine(self) -> Engine:
        """Publish, streams and statistics."""
        ...

    @property
    def tasks(self) -> TaskService:
        """The task service."""
        ...

    @property
    def authenticate(self) -> Callable[[Any], Any] | None:
        """The application's own ``authenticate(request) -> Principal | None``, if any."""
        ...

    @property
    def jwt_verifier(self) -> TokenVerifier | None:
        """Verifies bearer tokens when JWT auth is on (and no ``authenticate``)."""
        ...

    @property
    def auth_proxy(self) -> AuthProxy | None:
        """Asks the application who a caller is, when ``--auth-proxy`` is set (and no
        ``authenticate``)."""
        ...

    @property
    def started(self) -> bool:
        """Whether the hub was started (by its lifespan, or by :meth:`start_on_request`)."""
        ...

    async def start_on_request(self) -> None:
        """Start a hub that no lifespan started (a server without the lifespan protocol)."""
        ...
