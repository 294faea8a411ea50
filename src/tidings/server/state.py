"""What every connection of one server shares: the application, the limits, the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.server.proxy import TrustedProxies
from tidings.web.cors import CorsPolicy

__all__ = ["ServerState"]


class _Cycle(Protocol):
    async def run(self, app: Callable[..., Any]) -> None: ...


class _Connection(Protocol):
    def shutdown(self, *, streams: bool) -> None: ...


@dataclass(eq=False)
class ServerState:
    """A server's shared state, looked up once (a protocol is made for every connection).

    Args:
        app: the ASGI application.
        loop: the loop the server runs on.
        address: the address every connection is made to, when the server listens on one.
        max_head_bytes: most bytes of request line plus headers.
        request_timeout: seconds to send a whole request, from connect or its first byte.
        keep_alive: seconds an idle kept-alive connection is kept.
        proxies: the peers trusted to name the client.
        cors: the CORS policy of the answers given before the application runs.
    """

    app: Callable[..., Any]
    loop: asyncio.AbstractEventLoop
    address: tuple[str, int] | None
    max_head_bytes: int
    request_timeout: float
    keep_alive: float
    proxies: TrustedProxies
    cors: CorsPolicy
    #: The lifespan's state, copied into every request's scope (ASGI ``state``).
    app_state: dict[str, Any] = field(default_factory=dict)
    connections: set[_Connection] = field(default_factory=set)
    #: Requests being answered: the application's tasks.
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    shutting_down: bool = False
    #: Set when no connection is open and no request is being answered.
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def run(self, cycle: _Cycle) -> None:
        """Answer a request: run the application on it in a task the server keeps."""
        task = self.loop.create_task(cycle.run(self.app))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def opened(self, conn: _Connection) -> None:
        """A connection is open."""
        self.connections.add(conn)
        self.idle.clear()

    def closed(self, conn: _Connection) -> None:
        """A connection is closed."""
        self.connections.discard(conn)
        if not self.connections and not self.tasks:
            self.idle.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.connections and not self.tasks:
            self.idle.set()
