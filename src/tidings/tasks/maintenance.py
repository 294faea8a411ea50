"""The task service's maintenance loop: publish refused events again, purge expired tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from tidings.errors import BackendUnavailable

__all__ = ["maintain_forever"]

logger = logging.getLogger("tidings.tasks")

#: Seconds between maintenance steps (re-publishing refused events); purges run less often.
INTERVAL: Final = 1.0


async def maintain_forever(
    *,
    pending: Callable[[], bool],
    republish: Callable[[], Awaitable[None]],
    purge: Callable[[], Awaitable[int]],
    retention: float,
) -> None:
    """Republish refused events (while ``pending()``) and purge expired tasks (about every
    ``retention / 10`` seconds, at most a minute apart), until cancelled.

    A store that cannot be reached (Redis down) is an outage, not a bug: one warning when
    it starts and one line when it ends, as the Redis backend logs its link, and no
    traceback. Anything else is logged with its traceback and retried.
    """
    purge_every = min(60.0, max(INTERVAL, retention / 10))
    next_purge = time.monotonic() + INTERVAL
    down_since: float | None = None
    while True:
        await asyncio.sleep(INTERVAL)
        try:
            if pending():
                await republish()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + purge_every
                await purge()
        except asyncio.CancelledError:
            raise
        except BackendUnavailable as exc:
            if down_since is None:
                down_since = time.monotonic()
                logger.warning(
                    "task store is unreachable (%s); task maintenance paused, retrying",
                    exc.__cause__ or exc.message,
                )
            # Purge at the next step, not a minute later: its success ends the outage.
            next_purge = time.monotonic()
        except Exception:
            logger.exception("task maintenance failed; retrying in %.0f s", purge_every)
        else:
            if down_since is not None:
                logger.warning(
                    "task store is reachable again after %.1f s; task maintenance resumed",
                    time.monotonic() - down_since,
                )
                down_since = None
