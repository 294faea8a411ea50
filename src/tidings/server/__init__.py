"""The standalone server (``tidings serve``): its own HTTP/1.1 protocol on httptools and
uvloop, running any ASGI app, that writes the hub's streams straight to their sockets.

This is the only code that owns an HTTP connection; below it, the engine writes to a
transport it is given, and the web layer is plain ASGI.
"""

from __future__ import annotations

from tidings.server.lifespan import StartupFailed
from tidings.server.logs import RedactTokens, configure_logging
from tidings.server.process import AppFactory, serve_process
from tidings.server.run import check_listen, check_store, run
from tidings.server.serve import Server, bind_sockets

__all__ = [
    "AppFactory",
    "RedactTokens",
    "Server",
    "StartupFailed",
    "bind_sockets",
    "check_listen",
    "check_store",
    "configure_logging",
    "run",
    "serve_process",
]
