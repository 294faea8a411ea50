"""The log reader: each node follows the hub-wide log and delivers every event in it.

Fan-out reads a stream, not pub/sub (see :mod:`tidings.backends.redis`): a reader that
reconnects after an outage resumes from its last position in the log and delivers what
was published meanwhile, in order. Events trimmed from the log before the node read them
are recovered from the topic histories.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.backends.base import Deliver
from tidings.backends.redis.encoding import as_text, decode_event, history_event, seq_of
from tidings.backends.redis.keys import RedisKeys
from tidings.backends.redis.scripts import PRUNE_BATCH
from tidings.events import Event

__all__ = ["BLOCK_MS", "LogReader"]

logger = logging.getLogger("tidings.backends.redis")

#: After a reply of fewer entries than this, the reader waits ``COALESCE_SECONDS`` before
#: it reads again: events then leave in fewer, larger flushes (one ``send`` per connection
#: carries several), at the price of that wait in latency.
COALESCE_BELOW = 16
COALESCE_SECONDS = 0.002

#: How long one ``XREAD`` waits for new events before it asks again.
BLOCK_MS: Final = 5000
#: Reconnect backoff of the reader: exponential from this, up to ``BACKOFF_CAP``, jittered.
#: One reader per node, so the cap is low: a node delivers again (its own publishes
#: included, which Redis already accepts) at most about a second after Redis is back.
BACKOFF_BASE: Final = 0.05
BACKOFF_CAP: Final = 1.0


class LogReader:
    """Follows the hub-wide log and delivers every event, in log order; one per node.

    The backend places it (:attr:`log_id`, :attr:`seen_epoch`, :attr:`seen_seq`) when it
    starts, runs :meth:`read_forever` as a task, and reports :attr:`reading` as readiness.

    Args:
        client: the reader's own client (an ``XREAD`` holds its connection).
        keys: the hub's keys.
        batch: entries taken from the log per read.
        note_head: called with the epoch and seq of every event read, in order.
    """

    def __init__(
        self,
        client: Redis,
        keys: RedisKeys,
        *,
        batch: int,
        note_head: Callable[[str, int], None],
    ) -> None:
        self.client = client
        self.keys = keys
        self.batch = batch
        self._note_head = note_head
        self.deliver: Deliver | None = None
        #: Checked by the loop: redis-py can lose a cancellation, so a cancel alone may not
        #: stop it (see ``RedisBackend.aclose``).
        self.closing = False
        # Reader position: the log id after which to read, and the last event delivered.
        self.log_id = "0-0"
        self.seen_epoch: str | None = None
        #: Whether the log reader is connected: a node whose reader is down (or still
        #: reconnecting after an outage) delivers nothing others publish, so not ready.
        self.reading = False
        self.seen_seq: int | None = None

    async def read_forever(self) -> None:
        """Follow the hub-wide log and deliver every event; reconnect forever.

        One log line when the link goes down and one when it is back, not one per retry.
        """
        attempt = 0
        down_since: float | None = None
        while not self.closing:
            try:
                await self._resync()
                self.reading = True
                if down_since is not None:
                    logger.warning(
                        "redis is reachable again after %.1f s; delivering from log position %s",
                        time.monotonic() - down_since,
                        self.log_id,
                    )
                    down_since = None
                attempt = 0
                while not self.closing:
                    reply: Any = await self.client.xread(
                        {self.keys.log: self.log_id}, count=self.batch, block=BLOCK_MS
                    )
                    for _stream, entries in reply or ():
                        await self._consume(entries)
                        if len(entries) < COALESCE_BELOW:
                            # A short reply: let publishes gather in the log for a moment,
                            # so that the next reply, and the flush after it, carry several.
                            await asyncio.sleep(COALESCE_SECONDS)
                return
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.reading = False
                if self.closing:
                    return
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning(
                        "redis failed (%s: %s); fan-out paused at log position %s, retrying "
                        "with backoff",
                        type(exc).__name__,
                        exc,
                        self.log_id,
                    )
            except Exception:
                self.reading = False
                logger.exception(
                    "redis reader failed at log position %s; restarting it", self.log_id
                )
            attempt += 1
            await asyncio.sleep(_backoff(attempt))

    async def _resync(self) -> None:
        """On (re)connect: if the epoch changed meanwhile, read the new log from its start."""
        raw = await self.client.get(self.keys.epoch)
        epoch = as_text(raw) if raw is not None else None
        if self.seen_epoch is None:
            # Started while Redis was down: read from the start time onwards.
            self.seen_epoch = epoch
        elif epoch != self.seen_epoch:
            logger.warning(
                "the hub's history in redis was lost (epoch %s is gone); ids of it are now "
                "unknown, and new events are read from the start of the new log",
                self.seen_epoch,
            )
            self.log_id = "0-0"

    async def _consume(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Deliver a batch of log entries, in order, without awaiting between them.

        Only a hole in the seqs (log entries trimmed before this node read them) awaits: the
        missing events are recovered from the topic histories first.
        """
        deliver = self.deliver
        last_entry = len(entries) - 1
        for index, (entry_id, fields) in enumerate(entries):
            try:
                epoch = as_text(fields[b"e"])
                seq = int(fields[b"s"])
                topic = as_text(fields[b"t"])
                event = decode_event(epoch, seq, topic, fields[b"m"], fields[b"p"])
            except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
                logger.error("skipping a malformed entry %r of the hub log", entry_id)
                self.log_id = as_text(entry_id)
                continue
            last = self.seen_seq
            if epoch == self.seen_epoch and last is not None:
                if seq <= last:  # read again after a reset to the log's start
                    self.log_id = as_text(entry_id)
                    continue
                if seq > last + 1:
                    await self._recover(epoch, last, seq)
            self.log_id = as_text(entry_id)
            self.seen_epoch = epoch
            self.seen_seq = seq
            self._note_head(epoch, seq)
            if deliver is not None:
                try:
                    deliver(event, index < last_entry)
                except Exception:
                    logger.exception("deliver failed for event %s", event.id)

    async def _recover(self, epoch: str, after: int, before: int) -> None:
        """Deliver events ``after < seq < before`` missing from the log, from topic histories."""
        keys = self.keys
        raw: Any = await self.client.zrange(keys.topics, 0, -1)
        names = [as_text(n) for n in raw]
        found: list[Event] = []
        for start in range(0, len(names), PRUNE_BATCH):
            chunk = names[start : start + PRUNE_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for topic in chunk:
                pipe.xrange(keys.history(topic), f"({after}-0", f"({before}-0")
            for topic, entries in zip(chunk, await pipe.execute(), strict=True):
                found.extend(history_event(epoch, topic, entry) for entry in entries)
        found.sort(key=seq_of)
        missing = before - after - 1
        if len(found) < missing:
            logger.error(
                "%d events (seq %d to %d) left the hub log and history before this node read "
                "them; its clients miss them (raise log_size)",
                missing - len(found),
                after + 1,
                before - 1,
            )
        else:
            logger.warning("recovered %d events missing from the hub log", len(found))
        deliver = self.deliver
        for event in found:
            if deliver is not None:
                try:
                    deliver(event, True)
                except Exception:
                    logger.exception("deliver failed for event %s", event.id)


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter: half fixed, half random, capped."""
    delay: float = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 16))
    return delay / 2 + random.uniform(0, delay / 2)
