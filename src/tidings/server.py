"""``tidings serve``: run a hub under uvicorn (uvloop + httptools).

Shutdown: on SIGTERM the hub's signal hook ends every stream after flushing its queue, and
uvicorn stops listening, waits for the responses to finish, and runs the lifespan's exit.
A client that does not read is cut when ``shutdown_grace`` runs out, so the process exits
with code 0 within the grace period (see docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import re
import resource
import signal
from types import FrameType
from urllib.parse import unquote_plus

import uvicorn

from tidings.config import Settings, load_settings
from tidings.web.protocol import StreamingProtocol

__all__ = ["RedactTokens", "create_app_from_env", "run"]

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
    """App factory for worker processes: settings come from ``TIDINGS_*`` variables."""
    from tidings.hub import Hub

    hub = Hub(load_settings())
    return hub.asgi_app()


def run(settings: Settings) -> int:
    """Serve a hub with ``settings`` until SIGTERM/SIGINT; returns the exit code."""
    from tidings.hub import Hub

    _raise_open_files_limit()

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
        "timeout_graceful_shutdown": int(settings.shutdown_grace) + 1,
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
        uvicorn.run(
            "tidings.server:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
        return 0
    hub = Hub(settings)
    config = uvicorn.Config(hub.asgi_app(), **common)  # type: ignore[arg-type]
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
    server.run()
    return 0 if server.started else 1


def _stopped(signum: int, frame: FrameType | None) -> None:
    """The SIGTERM handler outside uvicorn's run: the server has already shut down."""


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: every stream holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
