"""The redis-py clients of the backend: a pool for publishes and resumes, and the log
reader's own connection.
"""

from __future__ import annotations

from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["CLIENT_OPTIONS", "open_clients"]


def _client_options() -> dict[str, Any]:
    """Options for redis-py versions that have them.

    redis-py 6.3+ negotiates "maintenance notifications" and, while they are on, skips its
    check that a pooled connection is still open. Without that check the first command
    after a Redis restart fails on every pooled connection (a publish would get a 503 with
    Redis back up), so they are turned off.
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # pragma: no cover - older redis-py
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


#: Options for every client of tidings' Redis (the task store's too).
CLIENT_OPTIONS: Final = _client_options()


def open_clients(url: str, *, max_connections: int, read_timeout: float) -> tuple[Redis, Redis]:
    """The client for publishes and resumes, and the log reader's, both for ``url``.

    The first holds up to ``max_connections`` connections; the reader's socket waits
    ``read_timeout`` seconds for a reply. Neither connects before its first command.
    """
    # No automatic retries: a publish retried after Redis ran it would publish twice.
    common: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
        **CLIENT_OPTIONS,
    }
    # Publishes beyond max_connections wait for a free connection (up to 5 s, then 503)
    # instead of failing at once, as redis-py's default pool would.
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, socket_timeout=5.0, **common
    )
    publisher = Redis(connection_pool=pool)
    reader = Redis.from_url(url, socket_timeout=read_timeout, **common)
    return publisher, reader
