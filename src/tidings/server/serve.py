"""One server process: listen, answer with the application, and stop cleanly.

Shutdown (SIGTERM or SIGINT, or :meth:`Server.stop`)::

    stop listening
      │
      ├─ every stream: ended cleanly (queue flushed, then the final empty chunk) so its
      │  client reconnects, with its Last-Event-ID, to another node
      ├─ every idle kept-alive connection: closed
      ├─ every request being answered: finishes, then its connection closes
      │
      ├─ wait until all are done, at most --shutdown-grace (less half a second):
      │  then abort what is left (a client that does not read)
      └─ the application's lifespan shutdown (the hub stops its backend and store)

so the process exits with code 0 within the grace, whatever the clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from tidings.config import Settings
from tidings.server.lifespan import Lifespan
from tidings.server.protocol import HttpProtocol
from tidings.server.proxy import TrustedProxies
from tidings.server.state import ServerState
from tidings.web.app import BEGIN_SHUTDOWN
from tidings.web.cors import CorsPolicy

__all__ = ["BACKLOG", "KEEP_ALIVE", "Server", "bind_sockets"]

logger = logging.getLogger("tidings.server")

#: Connections the kernel queues for ``accept``: a reconnect storm arrives all at once.
BACKLOG = 4096
#: Seconds an idle kept-alive connection is kept open.
KEEP_ALIVE = 5.0


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host:port`` (every address the host name has).

    Raises:
        OSError: an address cannot be bound.
    """
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Server:
    """Serves ``app`` on ``sockets`` (or binds ``settings.host:port``) until stopped.

    Args:
        app: the ASGI application (its lifespan is run around the serving).
        settings: limits, timeouts, CORS origins and trusted proxies.
        sockets: listening sockets to serve (``--workers`` shares them); bound if omitted.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        settings: Settings,
        *,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.sockets = sockets
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.state: ServerState | None = None
        #: Set once the server listens (for a thread that waits for it: the test kit).
        self.started = threading.Event()
        #: The port it listens on (the first socket's), once started.
        self.port: int | None = None

    def stop(self) -> None:
        """Begin a clean shutdown (safe from any thread, and from a signal handler)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    async def serve(self, *, ready: Callable[[], None] | None = None) -> None:
        """Start the application, serve until stopped, then shut down (see the module).

        Raises:
            StartupFailed: the application could not start (nothing was served).
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        settings = self.settings
        app_state: dict[str, Any] = {}
        lifespan = Lifespan(self.app, app_state)
        await lifespan.startup()
        sockets = self.sockets or bind_sockets(settings.host, settings.port)
        state = self.state = ServerState(
            app=self.app,
            loop=loop,
            address=_address(sockets[0], settings.host),
            max_head_bytes=settings.max_header_bytes,
            request_timeout=settings.request_timeout,
            keep_alive=KEEP_ALIVE,
            proxies=TrustedProxies(settings.forwarded_allow_ips),
            cors=CorsPolicy(settings.cors_origin),
            app_state=app_state,
        )
        servers = [
            await loop.create_server(lambda: HttpProtocol(state), sock=sock, backlog=BACKLOG)
            for sock in sockets
        ]
        self.port = sockets[0].getsockname()[1]
        handled = self._handle_signals(loop)
        where = ", ".join(_where(sock) for sock in sockets)
        logger.info("tidings serving on %s", where)
        self.started.set()
        if ready is not None:
            ready()
        try:
            await self._stop.wait()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await self._shutdown(state, servers)
            await lifespan.shutdown()

    def _handle_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []  # a server in a thread (the test kit) is stopped by its owner
        handled: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
                handled.append(sig)
        return handled

    async def _shutdown(self, state: ServerState, servers: list[asyncio.Server]) -> None:
        state.shutting_down = True
        for server in servers:
            server.close()
        # An app that ends its own streams (the hub: spread over its drain window) says
        # so in the lifespan state; other streams end now.
        begin = state.app_state.get(BEGIN_SHUTDOWN)
        if callable(begin):
            begin()
        connections = list(state.connections)
        logger.info("shutting down: ending %d connections", len(connections))
        for conn in connections:
            conn.shutdown(streams=not callable(begin))
        if state.connections or state.tasks:
            state.idle.clear()
            grace = max(0.0, self.settings.shutdown_grace - 0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle.wait(), grace)
        for task in list(state.tasks):
            task.cancel()
        for conn in list(state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)
        # Let the aborted connections tell the engine their streams are over.
        for _ in range(3):
            await asyncio.sleep(0)


def _address(sock: socket.socket, host: str) -> tuple[str, int] | None:
    """The scope's ``server``: the address the socket listens on, when it is one address."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name may stand for several addresses
        ip = None
    name = sock.getsockname()
    if ip is not None and ip.is_unspecified:
        return None
    return (str(name[0]), int(name[1]))


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"
