"""``tidings serve``: check what can be checked, then serve in one process or several."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket

from tidings.auth.jwks import JWKSVerifier
from tidings.config import Settings
from tidings.errors import ConfigError, TidingsError
from tidings.server.logs import configure_logging
from tidings.server.process import AppFactory, serve_process
from tidings.server.serve import bind_sockets
from tidings.server.workers import Supervisor
from tidings.tasks.sqlite import SQLiteTaskStore

__all__ = ["check_jwks", "check_listen", "check_store", "run"]


def run(settings: Settings, factory: AppFactory) -> int:
    """Serve ``factory(settings)`` until SIGTERM/SIGINT; returns the exit code.

    Before anything starts, an SQLite task store is opened and closed, the JWKS fetched
    and the address bound: each failing is a :class:`ConfigError` naming the setting. A
    start that still fails is one log line and exit code 1 (2 when a setting was refused).

    Raises:
        ConfigError: ``--store`` cannot be opened, ``--jwt-jwks-url`` fetched, or
            ``--host``/``--port`` listened on.
        TidingsError: a worker failed to start (``--workers``); the message says why.
    """
    configure_logging(settings.log_level)
    _raise_open_files_limit()
    check_store(settings.store)
    check_jwks(settings)
    sockets = check_listen(settings.host, settings.port)
    try:
        if settings.workers > 1:
            return Supervisor(settings, factory, sockets).run()
        return serve_process(settings, factory, sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def check_listen(host: str, port: int) -> list[socket.socket]:
    """Bind ``host:port`` (every address it names): the sockets the server will serve.

    So an address in use, a host name that does not resolve, or one that is not this
    machine's stops start-up with one line, before the hub starts anything.

    Raises:
        ConfigError: it cannot be bound; the message names ``--host``/``--port``.
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return bind_sockets(host, port)
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


def check_jwks(settings: Settings) -> None:
    """Fetch the JWKS of ``--jwt-jwks-url`` once (unset: nothing to do); each hub process
    fetches its own keys again when it starts.

    Raises:
        ConfigError: it cannot be fetched, or holds no usable key; the message names
            ``--jwt-jwks-url`` and says why.
    """
    verifier = JWKSVerifier.from_settings(settings)
    if verifier is None:
        return

    async def fetch() -> None:
        try:
            await verifier.start()
        finally:
            await verifier.aclose()

    asyncio.run(fetch())


def _reason(exc: BaseException) -> str:
    """An error's text for the end of a line: ``address already in use``."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text[:1].lower() + text[1:]


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: every stream holds a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
