"""Every redis-py and socket error becomes :class:`~tidings.errors.BackendUnavailable` here."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from redis.exceptions import RedisError, ResponseError

from tidings.errors import BackendUnavailable

__all__ = ["unavailable"]

logger = logging.getLogger("tidings.backends.redis")


@contextlib.contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Translate every redis-py and socket error into :class:`BackendUnavailable`."""
    try:
        yield
    except RedisError as exc:
        if isinstance(exc, ResponseError):
            # Not a lost link: a script error, an OOM, a read-only replica. Say what.
            logger.error("redis refused to %s: %s", what, exc)
        raise BackendUnavailable(f"the backend is unavailable ({what})") from exc
    except OSError as exc:
        raise BackendUnavailable(f"the backend is unavailable ({what})") from exc
