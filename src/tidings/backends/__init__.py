"""Backends: ids, history and fan-out (memory, redis), chosen by URL."""

from __future__ import annotations

from tidings.backends.base import Backend
from tidings.config import Settings
from tidings.errors import ConfigError

__all__ = ["open_backend"]


def open_backend(url: str, settings: Settings) -> Backend:
    """The backend for ``url`` (checked by :class:`~tidings.config.Settings`), not started:
    ``memory`` or ``redis://...``.

    The Redis client is imported only when a Redis URL is given.

    Raises:
        ConfigError: the Redis client is not installed.
    """
    if url in ("memory", "memory://"):
        from tidings.backends.memory import MemoryBackend

        return MemoryBackend(history_size=settings.history_size, history_ttl=settings.history_ttl)
    try:
        from tidings.backends.redis import RedisBackend
    except ImportError as exc:
        raise ConfigError(
            f"--backend {url.split('://')[0]}://... needs the Redis client ({exc.name} is not "
            "installed): pip install 'tidings[redis]'"
        ) from None
    return RedisBackend(url, history_size=settings.history_size, history_ttl=settings.history_ttl)
