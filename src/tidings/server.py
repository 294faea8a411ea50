"""``tidings serve``: run a hub under uvicorn (uvloop + httptools).

Shutdown: on SIGTERM the hub's signal hook ends every stream after flushing its queue, and
uvicorn stops listening, waits for the responses to finish, and runs the lifespan's exit.
A client that does not read is cut when ``shutdown_grace`` runs out, so the process exits
with code 0 within the grace period (see docs/architecture.md).
"""

from __future__ import annotations

import logging
import os
import re

import uvicorn

from tidings.config import Settings, load_settings

__all__ = ["RedactTokens", "create_app_from_env", "run"]

_TOKEN = re.compile(r"([?&]token=)[^&\s\"]*")


def _redact(text: str) -> str:
    return _TOKEN.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Removes ``token=`` query values from log records: access logs never hold tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        return True


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

    level = "trace" if settings.log_level == "trace" else settings.log_level
    common = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "none",
        "lifespan": "on",
        "log_level": level,
        "log_config": _log_config(level),
        "server_header": False,
        # Streams are ended by the hub within the grace; this is uvicorn's backstop.
        "timeout_graceful_shutdown": int(settings.shutdown_grace) + 1,
        "timeout_keep_alive": 5,
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
    server.run()
    return 0 if server.started else 1
