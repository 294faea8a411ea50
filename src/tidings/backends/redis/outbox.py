"""The outbox: a node's publishes, sent to Redis as pipelines, one pipeline at a time.

Why pipelines: "One script per publish, pipelined" in :mod:`tidings.backends.redis`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

from tidings.backends.redis.scripts import APPEND_SCRIPT
from tidings.errors import BackendUnavailable

__all__ = ["PIPELINE_MAX", "Outbox"]

logger = logging.getLogger("tidings.backends.redis")

#: Most publishes sent in one pipeline.
PIPELINE_MAX: Final = 512


class Outbox:
    """The publishes of one node waiting to be sent, and the loop that sends them.

    :meth:`submit` queues a publish; :meth:`send_forever`, which the backend runs as a task,
    sends it and resolves its future with the append script's reply. A publish that cannot
    be sent fails its caller with :class:`BackendUnavailable`.

    Args:
        client: the client for publishes.
        append: :data:`~tidings.backends.redis.scripts.APPEND_SCRIPT`, registered on it.
    """

    def __init__(self, client: Redis, append: AsyncScript) -> None:
        self._redis = client
        self._append = append
        #: Checked by the loop: redis-py can lose a cancellation, so a cancel alone may not
        #: stop it (see ``RedisBackend.aclose``).
        self.closing = False
        # Publishes waiting for the sender: (keys, args, the caller's future).
        self._queue: list[tuple[list[str], list[str | bytes], asyncio.Future[Any]]] = []
        self._ready = asyncio.Event()

    def submit(self, keys: list[str], args: list[str | bytes]) -> asyncio.Future[Any]:
        """Queue a publish: the append script's ``keys`` and ``args``; the future of its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, future))
        self._ready.set()
        return future

    async def send_forever(self) -> None:
        """Send the publishes queued meanwhile as one pipeline, one pipeline at a time.

        Publishes made while a pipeline is out accumulate and leave together in the next:
        one round trip (and one write on each side) for many publishes under load, one per
        publish when idle. Ids follow the order of the ``append`` calls on this node.
        """
        while not self.closing:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch = self._queue[:PIPELINE_MAX]
                del self._queue[:PIPELINE_MAX]
                try:
                    replies = await self._send_batch(batch)
                except asyncio.CancelledError:
                    self._fail(batch, None)
                    raise
                except (RedisError, OSError) as exc:
                    self._fail(batch, exc)
                    continue
                except Exception as exc:
                    logger.exception("sending %d publishes to redis failed", len(batch))
                    self._fail(batch, exc)
                    continue
                for item, reply in zip(batch, replies, strict=True):
                    future = item[2]
                    if future.done():  # the caller went away; it was published anyway
                        continue
                    if isinstance(reply, Exception):
                        self._fail([item], reply)
                    else:
                        future.set_result(reply)

    async def _send_batch(
        self, batch: Sequence[tuple[list[str], list[str | bytes], asyncio.Future[Any]]]
    ) -> list[Any]:
        """Run the append script for each of ``batch`` in one pipeline; replies or errors."""
        sha = self._append.sha
        pending = list(range(len(batch)))
        replies: list[Any] = [None] * len(batch)
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for i in pending:
                keys, args, _ = batch[i]
                pipe.evalsha(sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            for i, result in zip(pending, results, strict=True):
                replies[i] = result
            # NOSCRIPT (a restarted or flushed Redis): those did not run; load and resend.
            pending = [i for i in pending if isinstance(replies[i], NoScriptError)]
            if not pending or attempt:
                break
            await self._redis.script_load(APPEND_SCRIPT)
        return replies

    def fail_all(self) -> None:
        """Fail the callers of every publish still queued (the backend is closing)."""
        self._fail(self._queue, None)
        self._queue = []

    @staticmethod
    def _fail(
        batch: Sequence[tuple[list[str], list[str | bytes], asyncio.Future[Any]]],
        cause: BaseException | None,
    ) -> None:
        """Fail the callers of ``batch`` with :class:`BackendUnavailable`."""
        for _, _, future in batch:
            if future.done():
                continue
            error = BackendUnavailable("the backend is unavailable (publish)")
            error.__cause__ = cause
            if isinstance(cause, ResponseError):
                logger.error("redis refused a publish: %s", cause)
            future.set_exception(error)
