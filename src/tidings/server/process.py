"""Serve one process: build the application, run its server, and turn failures into a line.

Used by ``tidings serve`` directly (one process) and by every worker of ``--workers``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Callable
from typing import Any

from tidings.config import Settings
from tidings.errors import ConfigError, TidingsError, error_line
from tidings.server.lifespan import StartupFailed
from tidings.server.serve import Server

__all__ = ["AppFactory", "serve_process"]

logger = logging.getLogger("tidings.server")

#: Builds the application a server runs from its settings (a module-level function, so
#: that ``--workers`` can hand it to the processes it spawns).
AppFactory = Callable[[Settings], Callable[..., Any]]


def serve_process(
    settings: Settings,
    factory: AppFactory,
    *,
    sockets: list[socket.socket] | None = None,
    ready: Callable[[], None] | None = None,
    failed: Callable[[str], None] | None = None,
) -> int:
    """Serve ``factory(settings)`` until SIGTERM/SIGINT; the exit code.

    A failure to start is one line: given to ``failed`` if set, else logged. The code is
    2 when the application refused its settings, 1 when it could not start.
    """
    try:
        app = factory(settings)
    except TidingsError as exc:
        _report(error_line(exc), failed)
        return 2 if isinstance(exc, ConfigError) else 1
    server = Server(app, settings, sockets=sockets)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_serve(server, ready))
    except StartupFailed as exc:
        _report(exc.message, failed)
        return 1
    except OSError as exc:
        _report(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", failed)
        return 1
    return 0


async def _serve(server: Server, ready: Callable[[], None] | None) -> None:
    def started() -> None:
        # Everything built so far lives as long as the process: keep it out of the
        # collector's passes, and collect less often, since a hub allocates in bursts (a
        # stream, a publish) that rarely leave cycles (docs/performance.md).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        if ready is not None:
            ready()

    await server.serve(ready=started)


def _report(line: str, failed: Callable[[str], None] | None) -> None:
    if failed is not None:
        failed(line)
    else:
        logger.error("%s", line)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop where it is installed (Linux, macOS), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop
