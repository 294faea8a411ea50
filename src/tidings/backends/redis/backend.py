"""The Redis backend's :class:`RedisBackend`: publish, resume, and the node's background work.

A node publishes through its :class:`~tidings.backends.redis.outbox.Outbox`, delivers what
every node publishes with its :class:`~tidings.backends.redis.reader.LogReader`, replays
topic histories for a resume, and sweeps: it prunes topics idle beyond the window and
trims the hub log by age. The design is in :mod:`tidings.backends.redis`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Sequence
from typing import Final

from redis.exceptions import RedisError

from tidings.backends.base import (
    Appended,
    Control,
    Deliver,
    Disconnect,
    Gap,
    HistoryWindow,
    PresenceEntry,
    PresencePage,
    PresenceUpdate,
    Replay,
    TopicPage,
)
from tidings.backends.presence import NODE_TIMEOUT
from tidings.backends.redis.client import open_clients
from tidings.backends.redis.control import ControlChannel
from tidings.backends.redis.encoding import (
    append_arguments,
    as_text,
    history_event,
    parse_appended,
    seq_of,
)
from tidings.backends.redis.errors import unavailable
from tidings.backends.redis.history import read_history
from tidings.backends.redis.keys import RedisKeys
from tidings.backends.redis.outbox import Outbox
from tidings.backends.redis.presence import RedisPresence
from tidings.backends.redis.reader import BLOCK_MS, LogReader
from tidings.backends.redis.scripts import APPEND_SCRIPT, PRUNE_BATCH, START_SCRIPT, SWEEP_SCRIPT
from tidings.errors import BackendUnavailable
from tidings.events import Draft, Event, EventId, new_epoch
from tidings.topics import is_wildcard, pattern_matches

__all__ = ["RedisBackend"]

logger = logging.getLogger("tidings.backends.redis")

#: Largest seq that fits the ``<ms>`` part of a stream id.
_MAX_STREAM_MS: Final = 2**63


class RedisBackend:
    """Ids, history and cross-node fan-out in Redis, for hubs of many processes and hosts.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://``).
        history_size: events kept per topic.
        history_ttl: seconds an event stays in history.
        prefix: the prefix of every key; hubs sharing a Redis need different prefixes.
        log_size: events kept (at least, approximately) in the hub-wide log that readers
            follow; a node cut off for longer than the log holds recovers from topic
            histories.
        log_ttl: seconds events stay in the hub-wide log (default: ``history_ttl``).
        batch: events a reader takes from the log per read.
        max_connections: connections for publishes and resumes; more concurrent calls wait
            for one.
        node_timeout: seconds after which a node that stopped updating its presence is
            taken for dead, and its entries removed.

    Errors: every method raises :class:`~tidings.errors.BackendUnavailable` (with the
    redis-py error as ``__cause__``) while Redis cannot be reached; :meth:`ping` returns
    ``False`` instead. :meth:`start` does not fail when Redis is down: the reader keeps
    trying in the background and the node serves streams meanwhile (SPEC §3).
    """

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        prefix: str = "tidings",
        log_size: int = 100_000,
        log_ttl: float | None = None,
        batch: int = 512,
        max_connections: int = 50,
        node_timeout: float = NODE_TIMEOUT,
    ) -> None:
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.keys = RedisKeys(prefix)
        self.log_size = log_size
        self.log_ttl = history_ttl if log_ttl is None else log_ttl
        self.batch = batch
        # The reader's XREAD blocks for BLOCK_MS; its socket waits a little longer.
        self._redis, self._reader_redis = open_clients(
            url, max_connections=max_connections, read_timeout=BLOCK_MS / 1000 + 5
        )
        self._append = self._redis.register_script(APPEND_SCRIPT)
        self._start = self._redis.register_script(START_SCRIPT)
        self._sweep = self._redis.register_script(SWEEP_SCRIPT)
        # Checked by the background loops: redis-py can lose a cancellation (see aclose),
        # so a cancel alone may not stop a loop.
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._outbox = Outbox(self._redis, self._append)
        self._sender: asyncio.Task[None] | None = None
        #: The epoch last seen in Redis (replies checked against it).
        self._epoch: str | None = None
        #: The highest seq this node has seen: the floor of a new epoch's counter.
        self._high_seq = 0
        self._log = LogReader(self._reader_redis, self.keys, batch=batch, note_head=self._note_head)
        self._presence = RedisPresence(self._redis, self.keys, node_timeout=node_timeout)
        # The subscription takes a connection of the reader's pool, as the XREAD does.
        self._control = ControlChannel(self._reader_redis, self._redis, self.keys)
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<RedisBackend prefix={self.keys.prefix!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, deliver: Deliver, control: Control | None = None) -> None:
        """Find (or create) the epoch and the end of the log, then start the reader (and,
        with ``control``, the subscription to control commands).

        If Redis cannot be reached, the reader starts from "now" by the local clock and
        connects when Redis is back.
        """
        self._log.deliver = deliver
        try:
            await self._sync_start()
        except BackendUnavailable as exc:
            logger.warning(
                "redis is unreachable at start (%s); serving anyway and retrying", exc.__cause__
            )
            self._log.log_id = f"{int(time.time() * 1000)}-0"
        if control is not None:
            self._control.handler = control
            # Subscribed before start returns when Redis answers, so that a command sent
            # right after reaches this node too; else the listener keeps trying.
            if self._log.reading:
                await self._control.subscribe()
            self._listener = asyncio.create_task(
                self._control.listen_forever(), name="tidings-redis-control"
            )
        self._sender = asyncio.create_task(self._outbox.send_forever(), name="tidings-redis-sender")
        self._reader = asyncio.create_task(self._log.read_forever(), name="tidings-redis-reader")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="tidings-redis-sweeper")

    async def aclose(self) -> None:
        """Cancel and await the reader and the sweeper, then close the connection pools."""
        self._closing = True
        self._outbox.closing = self._log.closing = self._control.closing = True
        tasks = [
            t for t in (self._sender, self._reader, self._sweeper, self._listener) if t is not None
        ]
        for task in tasks:
            task.cancel()
        while pending := [task for task in tasks if not task.done()]:
            # On Python 3.11 redis-py can lose a cancel (its asyncio.wait_for returns the
            # result instead); an XREAD would then block on. Cutting the reader's sockets
            # ends that read, and the loop stops on seeing it is closing.
            await self._reader_redis.connection_pool.disconnect()
            await asyncio.wait(pending, timeout=0.5)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sender = self._reader = self._sweeper = self._listener = None
        await self._control.aclose()
        self._outbox.fail_all()
        self._log.deliver = None
        await self._reader_redis.aclose()
        await self._redis.aclose(close_connection_pool=True)  # a pool we made: close it

    # -- the Backend protocol ------------------------------------------------------------

    async def append(self, draft: Draft, *, idempotency_key: str | None = None) -> Appended:
        keys, args = append_arguments(
            self.keys,
            draft,
            idempotency_key=idempotency_key,
            history_size=self.history_size,
            log_size=self.log_size,
            floor=self._high_seq,
        )
        if self._sender is None or self._closing:  # not started, or closed
            with unavailable("publish"):
                reply = await self._append(keys=keys, args=args)
        else:
            reply = await self._outbox.submit(keys, args)
        appended = parse_appended(reply)
        if not appended.duplicate:
            parsed = EventId.parse(appended.id)
            if parsed is not None:
                self._epoch = parsed.epoch
                self._high_seq = max(self._high_seq, parsed.seq)
        return appended

    async def replay(self, patterns: Sequence[str], after: str) -> Replay:
        keys = self.keys
        parsed = EventId.parse(after)
        if parsed is None:
            return Replay(gap=Gap(after, "unknown", await self.latest_id()))
        if parsed.seq >= _MAX_STREAM_MS or parsed.epoch != self._epoch:
            # Most likely unknown; confirm cheaply before reading any history.
            epoch, seq = await self._head()
            if parsed.epoch != epoch or parsed.seq > seq:
                return Replay(gap=Gap(after, "unknown", f"{epoch}-{seq}"))
        since = parsed.seq
        topics = dict.fromkeys(p for p in patterns if not is_wildcard(p))
        wild = [p for p in patterns if is_wildcard(p)]
        upto = "+"
        first_epoch: str | None = None
        with unavailable("replay"):
            if wild:
                # The topic list and the counter in one snapshot; events after it reach the
                # stream live (it is registered before replay), so reading only up to that
                # counter below keeps a topic created in between from being half-replayed.
                pipe = self._redis.pipeline(transaction=True)
                pipe.get(keys.epoch)
                pipe.get(keys.seq)
                for pattern in wild:
                    prefix = _literal_prefix(pattern)
                    if prefix:
                        low = b"[" + prefix.encode()
                        pipe.zrangebylex(keys.topics, low, low + b"\xff")
                    else:
                        pipe.zrange(keys.topics, 0, -1)
                head = await pipe.execute()
                first_epoch = as_text(head[0]) if head[0] is not None else None
                upto = f"{int(head[1] or 0)}-0"
                for names in head[2:]:
                    for name in names:
                        topic = as_text(name)
                        if topic not in topics and any(pattern_matches(p, topic) for p in wild):
                            topics[topic] = None
            names = list(topics)
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(keys.epoch)
            pipe.get(keys.seq)
            pipe.get(keys.forgotten)
            if names:
                pipe.hmget(keys.evicted, names)
            for topic in names:
                pipe.xrange(keys.history(topic), f"({since}-0", upto)
            reply = await pipe.execute()
        if reply[0] is None:
            epoch, seq = await self._head()
            return Replay(gap=Gap(after, "unknown", f"{epoch}-{seq}"))
        epoch = as_text(reply[0])
        seq = int(reply[1] or 0)
        self._note_head(epoch, seq)
        latest = f"{epoch}-{seq}"
        if parsed.epoch != epoch or since > seq or (wild and first_epoch != epoch):
            return Replay(gap=Gap(after, "unknown", latest))
        if since < int(reply[2] or 0):
            return Replay(gap=Gap(after, "expired", latest))
        if names:
            for evicted in reply[3]:
                if evicted is not None and since < int(evicted):
                    return Replay(gap=Gap(after, "expired", latest))
        horizon = time.time() - self.history_ttl
        streams: list[list[Event]] = []
        for topic, entries in zip(names, reply[4:], strict=True):
            if not entries:
                continue
            events = [history_event(epoch, topic, entry) for entry in entries]
            if any(event.time < horizon for event in events):
                return Replay(gap=Gap(after, "expired", latest))
            streams.append(events)
        if len(streams) == 1:
            return Replay(events=streams[0])
        return Replay(events=list(heapq.merge(*streams, key=seq_of)))

    async def latest_id(self) -> str:
        epoch, seq = await self._head()
        return f"{epoch}-{seq}"

    async def ping(self) -> bool:
        if not self._log.reading:
            return False  # Redis may answer, but this node cannot follow the log yet
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def history(self, topic: str, *, after: str | None, limit: int) -> HistoryWindow:
        return await read_history(
            self._redis,
            self.keys,
            topic,
            after=after,
            limit=limit,
            history_ttl=self.history_ttl,
        )

    async def update_presence(
        self,
        node: str,
        joins: Sequence[PresenceEntry],
        leaves: Sequence[PresenceEntry],
        *,
        final: bool = False,
    ) -> PresenceUpdate:
        return await self._presence.update(node, joins, leaves, final=final)

    async def presence(self, topic: str, *, limit: int, cursor: str | None) -> PresencePage:
        return await self._presence.page(topic, limit=limit, cursor=cursor)

    async def presence_topics(self, *, limit: int, cursor: str | None) -> TopicPage:
        return await self._presence.topics(limit=limit, cursor=cursor)

    async def disconnect(self, command: Disconnect) -> int:
        return await self._control.disconnect(command)

    # -- helpers -------------------------------------------------------------------------

    async def _head(self) -> tuple[str, int]:
        """The current epoch (created if it vanished) and counter."""
        keys = self.keys
        with unavailable("read the head"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(keys.epoch)
            pipe.get(keys.seq)
            epoch, seq = await pipe.execute()
            if epoch is None:
                reply = await self._start(keys=keys.common, args=self._start_args())
                epoch, seq = reply[0], reply[2]
        head = (as_text(epoch), int(seq or 0))
        self._note_head(*head)
        return head

    def _note_head(self, epoch: str, seq: int) -> None:
        self._epoch = epoch
        if seq > self._high_seq:
            self._high_seq = seq

    def _start_args(self) -> list[str]:
        return [
            new_epoch(),
            str(self._high_seq),
            self.keys.topic_prefix,
            str(self.history_size),
            str(self.log_size),
        ]

    async def _sync_start(self) -> None:
        """Create the epoch if needed and place the reader at the end of the log."""
        with unavailable("start"):
            reply = await self._start(keys=self.keys.common, args=self._start_args())
        epoch, log_id, seq = as_text(reply[0]), as_text(reply[1]), int(reply[2])
        self._note_head(epoch, seq)
        self._log.log_id = log_id
        self._log.seen_epoch = epoch
        self._log.seen_seq = seq
        self._log.reading = True  # placed; the reader connects at once (and says if it cannot)

    # -- the sweeper ---------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        interval = max(1.0, min(60.0, self.history_ttl / 10))
        while not self._closing:
            await asyncio.sleep(interval)
            try:
                await self._sweep_once()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.debug("redis sweeper skipped a round: %s", exc)
            except Exception:
                logger.exception("redis sweeper failed; it runs again in %.0f s", interval)

    async def _sweep_once(self) -> None:
        """Prune topics idle beyond the window and trim the log by age."""
        args = [
            repr(time.time() - self.history_ttl),
            self.keys.topic_prefix,
            str(PRUNE_BATCH),
            str(int(self.log_ttl * 1000)),
        ]
        while int(await self._sweep(keys=self.keys.common, args=args)) >= PRUNE_BATCH:
            pass


def _literal_prefix(pattern: str) -> str:
    """The segments of ``pattern`` before its first wildcard, joined (``a/b`` of ``a/b/*``)."""
    literal: list[str] = []
    for segment in pattern.split("/"):
        if segment in ("*", "**"):
            break
        literal.append(segment)
    return "/".join(literal)
