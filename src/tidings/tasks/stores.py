"""Task stores by URL: ``memory``, ``sqlite:///path``, or ``redis`` (the backend's Redis)."""

from __future__ import annotations

from tidings.config import Settings
from tidings.errors import ConfigError
from tidings.tasks.memory import MemoryTaskStore
from tidings.tasks.sqlite import SQLiteTaskStore
from tidings.tasks.store import TaskStore

__all__ = ["open_store"]


def open_store(settings: Settings) -> TaskStore:
    """The task store named by ``settings.store`` (not started yet).

    ``memory`` → :class:`MemoryTaskStore`; ``sqlite:///path`` → :class:`SQLiteTaskStore`;
    ``redis`` → the Redis store on the backend's Redis (its client is imported only then).

    Raises:
        ConfigError: an unknown store, or ``redis`` without the Redis client installed.
    """
    url = settings.store
    if url in ("memory", "memory://"):
        return MemoryTaskStore()
    if url.startswith("sqlite:///"):
        return SQLiteTaskStore.from_url(url)
    if url == "redis" or url.startswith(("redis://", "rediss://")):
        try:
            from tidings.tasks.redis import open_store as open_redis_store
        except ImportError as exc:
            raise ConfigError(
                f"--store redis needs the Redis client ({exc.name} is not installed): "
                "pip install 'tidings[redis]'"
            ) from None
        return open_redis_store(settings)
    raise ConfigError(
        f"invalid --store / TIDINGS_STORE: expected 'sqlite:///path' or 'memory' (got {url!r})"
    )
