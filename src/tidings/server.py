"""``tidings serve``: run a hub under uvicorn (uvloop + httptools).

Shutdown: on SIGTERM the hub's signal hook ends every stream after flushing its queue, and
uvicorn stops listening, waits for the responses to finish, and runs the lifespan's exit.
A client that does not read is cut when ``shutdown_grace`` runs out, so the process exits
with code 0 within the grace period (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import os
import re
import resource
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

import uvicorn
from starlette.types import Message, Receive, Scope, Send
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from tidings.config import Settings, load_settings
from tidings.errors import ConfigError, TidingsError
from tidings.web.protocol import StreamingProtocol

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "RedactTokens",
    "check_listen",
    "check_store",
    "create_app_from_env",
    "run",
    "startup_error_line",
]

# A query parameter whose name decodes to "token" (``token=``, ``%74oken=``, ``TOKEN=`` is
# another name and not a token), its value running to the next separator.
_QUERY_PARAM = re.compile(r"(?P<sep>^|[?&;\s'\"])(?P<name>[^=&?;\s'\"]+)=(?P<value>[^&;\s'\"]*)")
# The Authorization header and the token cookie, as uvicorn's trace logs show them.
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_COOKIE = re.compile(r"(tidings_token=)[^;\s'\"]*")


def _redact(text: str) -> str:
    def query(match: re.Match[str]) -> str:
        if unquote_plus(match["name"]) != "token":
            return match[0]
        return f"{match['sep']}{match['name']}=[redacted]"

    text = _QUERY_PARAM.sub(query, text)
    text = _BEARER.sub(r"\1[redacted]", text)
    return _COOKIE.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Removes tokens from log records: access logs (and trace logs) never hold them.

    Redacted: a ``token`` query parameter however encoded, a bearer token, the
    ``tidings_token`` cookie, in the message and in every argument. Arguments keep their
    places (uvicorn's access formatter unpacks them); one that is not a string or a number
    (a scope dict in trace logs) is replaced by its redacted text when it held a token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_arg(arg) for key, arg in record.args.items()}
        return True


def _redact_arg(arg: object) -> object:
    if isinstance(arg, int | float) or arg is None:
        return arg
    text = str(arg)
    redacted = _redact(text)
    return arg if redacted == text else redacted


def _log_config(level: str) -> dict[str, object]:
    config = dict(uvicorn.config.LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": "tidings.server.RedactTokens"}}
    handlers = {name: dict(h) for name, h in config["handlers"].items()}
    for handler in handlers.values():
        handler["filters"] = ["redact"]
    config["handlers"] = handlers
    loggers = {name: dict(lg) for name, lg in config["loggers"].items()}
    loggers["tidings"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"] = loggers
    return config


def create_app_from_env() -> object:
    """App factory for worker processes: settings come from ``TIDINGS_*`` variables.

    A setting the worker refuses is one log line and uvicorn's start-up failure exit code,
    so the parent stops instead of starting the worker again and again.
    """
    from tidings.hub import Hub
    from tidings.web.app import create_app

    try:
        hub = Hub(load_settings())
    except TidingsError as exc:
        logging.getLogger("uvicorn.error").error("%s", exc.message)
        sys.exit(STARTUP_FAILURE)
    app = create_app(hub)
    _one_line_startup_failure(app, [])
    return app


def run(settings: Settings) -> int:
    """Serve a hub with ``settings`` until SIGTERM/SIGINT; returns the exit code.

    Before anything starts, the address is bound once and let go, and an SQLite task store
    is opened and closed: either failing is a :class:`ConfigError` naming the setting.
    A start-up that still fails (the hub's, or a worker's) is one log line and exit code 1
    (2 when the error is a bad setting).

    Raises:
        ConfigError: ``--host``/``--port`` cannot be listened on, or ``--store`` opened.
        TidingsError: a worker failed to start (``--workers``).
    """
    from tidings.hub import Hub
    from tidings.web.app import create_app

    _raise_open_files_limit()
    check_listen(settings.host, settings.port)
    check_store(settings.store)

    level = "trace" if settings.log_level == "trace" else settings.log_level
    common = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "ws": "none",
        "lifespan": "on",
        "log_level": level,
        "log_config": _log_config(level),
        "server_header": False,
        # Streams are ended by the hub within the grace; this is uvicorn's backstop.
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace) + 1,
        "timeout_keep_alive": 5,
        # Head size limits and the request deadline (slowloris); see tidings/_http.py.
        "http": functools.partial(
            StreamingProtocol,
            max_head_bytes=settings.max_header_bytes,
            request_timeout=settings.request_timeout,
        ),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        # Client IPs (per-IP limits) come from X-Forwarded-For only through these proxies.
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
    }
    if settings.workers > 1:
        # Each worker builds its hub from the environment; export what was given as flags.
        for name, value in settings.model_dump(mode="json").items():
            if value is None:
                continue
            if name == "jwt_secret" and settings.jwt_secret is not None:
                value = settings.jwt_secret.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            os.environ[f"TIDINGS_{name.upper()}"] = str(value)
        workers = uvicorn.Config(
            "tidings.server:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
        return _run_workers(workers)
    app = create_app(Hub(settings))
    failures: list[BaseException] = []
    _one_line_startup_failure(app, failures)
    config = uvicorn.Config(app, **common)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down, for the handler
    # that was in place before; a stop on SIGTERM is a normal exit here (code 0).
    signal.signal(signal.SIGTERM, _stopped)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # passes, and collect less often, since a hub allocates in bursts (a stream, a publish)
    # that rarely leave cycles (docs/performance.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    with contextlib.suppress(SystemExit):  # uvicorn's exit when start-up fails (logged)
        server.run()
    if server.started:
        return 0
    return 2 if any(isinstance(exc, ConfigError) for exc in failures) else 1


def check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` (every address it names) and let go.

    So an address in use, a host name that does not resolve, or one that is not this
    machine's stops start-up with one line, before the hub starts anything.

    Raises:
        ConfigError: it cannot be bound; the message names ``--host``/``--port``.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                # As the server's own socket will be (asyncio's create_server).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where} (--host/--port): {_reason(exc)}") from None


def check_store(url: str) -> None:
    """Open and close the SQLite task store at ``url`` (other stores: nothing to do).

    Raises:
        ConfigError: the file cannot be a database (a directory, no permission, not
            SQLite); the message names ``--store``.
    """
    if not url.startswith("sqlite:///"):
        return
    from tidings.tasks.sqlite import SQLiteTaskStore

    store = SQLiteTaskStore.from_url(url)

    async def open_and_close() -> None:
        await store.start()
        await store.aclose()

    try:
        asyncio.run(open_and_close())
    except (TidingsError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, TidingsError) and exc.__cause__ else exc
        raise ConfigError(
            f"invalid --store / TIDINGS_STORE: cannot open {url!r} as an SQLite database: "
            f"{_reason(cause)}"
        ) from None


def _reason(exc: BaseException) -> str:
    """An error's text for the end of a line: ``address already in use``."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text[:1].lower() + text[1:]


def _one_line_startup_failure(app: FastAPI, failures: list[BaseException]) -> None:
    """Make a failed start-up of ``app`` one log line, and keep the exception in ``failures``.

    Starlette reports a failed lifespan start with the exception's whole traceback, which
    uvicorn logs. The app's lifespan handler is wrapped so the report is the exception's
    own line instead (the setting it names, and its cause). Requests never pass through
    the wrapper: it only sees the lifespan.
    """
    router = app.router
    lifespan = router.lifespan

    async def one_line(scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None

        async def relay(message: Message) -> None:
            nonlocal held
            if message["type"] == "lifespan.startup.failed":
                held = message  # said below, in one line
                return
            await send(message)

        try:
            await lifespan(scope, receive, relay)
        except BaseException as exc:
            if held is None:
                raise
            failures.append(exc)
            await send({"type": "lifespan.startup.failed", "message": startup_error_line(exc)})
            if not isinstance(exc, Exception):
                raise  # a cancellation or an interrupt goes on
        else:
            if held is not None:  # reported without an exception: pass it on as it was
                await send(held)

    # An instance attribute: the router looks its lifespan handler up on itself.
    router.lifespan = one_line  # type: ignore[method-assign]


def startup_error_line(exc: BaseException) -> str:
    """One line for an exception that stopped start-up: its message, and its cause's."""
    message = exc.message if isinstance(exc, TidingsError) else f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in message:
        message = f"{message}: {cause}"
    return " ".join(message.split())


def _run_workers(config: uvicorn.Config) -> int:
    """Run ``config.workers`` worker processes until SIGTERM/SIGINT; the exit code.

    uvicorn's supervisor stops when a worker fails to start, but reports nothing to its
    caller; the workers' exit codes say it here.

    Raises:
        TidingsError: a worker failed to start (its own log line says why).
    """
    sock = config.bind_socket()
    supervisor = Multiprocess(config, sockets=[sock])
    with contextlib.suppress(KeyboardInterrupt):
        supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise TidingsError(
            f"{len(failed)} of {config.workers} workers failed to start (their ERROR lines above "
            "say why); stopped"
        )
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler outside uvicorn's run: the server has already shut down."""


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: every stream holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
