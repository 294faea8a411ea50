"""The Redis backend: any number of processes and hosts act as one hub (SPEC §6).

Decisions worth knowing before changing this file:

- **One script per publish, pipelined.** :data:`APPEND_SCRIPT` does everything atomically:
  the idempotency check, the epoch, the next value of the hub-wide counter, ``XADD`` to the
  topic's history (trimmed by size, with the highest evicted seq recorded), the topic
  registry, ``XADD`` to the hub-wide log, and, last, the idempotency key. Two nodes
  receiving the same key at the same instant publish once; a script that fails before its
  last write leaves the key unused (SPEC §3). One sender task per node sends the publishes
  made meanwhile as one pipeline: one round trip per publish when idle, one for many under
  load (about ten times the throughput of a round trip each, measured on a 2-core box).
- **Fan-out reads a stream, not pub/sub.** Each node runs one reader that follows the
  hub-wide log with ``XREAD BLOCK``. A stream keeps what was published while a node was
  cut off, so a reader that reconnects resumes from its last position and delivers the
  missed events in order (SPEC §6); pub/sub would drop them, and Redis cuts slow pub/sub
  readers. A node's own publishes come back through the same reader, so every node
  delivers in one order: the id order.
- **Two id spaces.** Topic histories use stream ids ``<seq>-0``, so a resume is one
  ``XRANGE`` per topic. The log uses Redis's own time-based ids, so it can be trimmed by age
  (``XTRIM MINID``) and a log recreated after data loss still sorts after a reader's old
  position.
- **Epochs.** The epoch lives in Redis (created with ``SET NX``). When it vanished (Redis
  flushed, or restarted without persistence) the next writer creates a new one and wipes
  what is left of the old history, so old ids become "unknown". The counter does not restart
  below the highest seq the writer has seen (``floor``): seqs keep rising across epochs, so
  de-duplication by seq (``Connection.min_seq``) stays valid on every node.
- **The age window uses each event's own time** (``Draft.time``), like the memory backend.
  Events older than ``history_ttl`` in a busy topic stay in Redis until trimmed by size but
  are never replayed (a resume that needs them gets ``gap`` "expired"); topics idle for
  longer than ``history_ttl`` are pruned by a sweeper, and their highest seq folds into one
  hub-wide watermark, as in the memory backend.

Keys (``prefix`` defaults to ``tidings``; every node and publisher must use the same)::

    {p}:epoch       string  the epoch of the current history
    {p}:seq         string  the hub-wide counter
    {p}:config      hash    history_size, log_size (for publishers that write straight here)
    {p}:log         stream  every event, fields e s t m p; MAXLEN ~ log_size, MINID by age
    {p}:t:<topic>   stream  one topic's history, ids <seq>-0, fields m p; MAXLEN history_size
    {p}:topics      zset    topic names, all scored 0 (ZRANGEBYLEX by a pattern's prefix)
    {p}:active      zset    topic -> time of its newest event (for pruning)
    {p}:evicted     hash    topic -> highest seq trimmed from its history
    {p}:forgotten   string  highest seq of the topics pruned altogether
    {p}:idem:<key>  string  the first id published with an idempotency key (PX 300 s)

Scripts touch keys they compute from the prefix, so this layout wants one Redis (or one
hash slot: put the prefix in braces, ``{tidings}``, on Redis Cluster). Needs Redis 6.2+.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import operator
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.asyncio.retry import Retry

from tidings.backends.base import Appended, Deliver, Gap, Replay
from tidings.errors import BackendUnavailable
from tidings.events import Draft, Event, EventId, new_epoch
from tidings.topics import is_wildcard, pattern_matches
from tidings.types import Priority

__all__ = ["APPEND_SCRIPT", "RedisBackend", "RedisKeys", "append_arguments", "parse_appended"]

logger = logging.getLogger("tidings.backends.redis")

#: Seconds an idempotency key is remembered (SPEC §3).
IDEMPOTENCY_TTL: Final = 300.0
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
#: Topics pruned per sweeper script call (the script runs in one go inside Redis).
PRUNE_BATCH: Final = 500
#: Most publishes sent in one pipeline.
PIPELINE_MAX: Final = 512
#: Largest seq that fits the ``<ms>`` part of a stream id.
_MAX_STREAM_MS: Final = 2**63


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


_CLIENT_OPTIONS: Final = _client_options()

# The keys every script receives first, in this order.
_COMMON_LUA = """
local K_EPOCH, K_SEQ, K_LOG, K_TOPICS, K_ACTIVE, K_EVICTED, K_FORGOTTEN, K_CONFIG =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- The current epoch; if it vanished (data lost), start a new history: wipe what is left of
-- the old one and never let the counter restart below a seq someone has seen (the floor).
local function ensure_epoch(new_epoch, floor, topic_prefix)
  local epoch = redis.call('GET', K_EPOCH)
  if epoch then return epoch end
  local topics = redis.call('ZRANGE', K_TOPICS, 0, -1)
  for _, topic in ipairs(topics) do redis.call('DEL', topic_prefix .. topic) end
  redis.call('DEL', K_LOG, K_TOPICS, K_ACTIVE, K_EVICTED, K_FORGOTTEN)
  local seq = tonumber(redis.call('GET', K_SEQ) or '0')
  if tonumber(floor) > seq then redis.call('SET', K_SEQ, floor) end
  redis.call('SET', K_EPOCH, new_epoch)
  return new_epoch
end
"""

#: Publish one event. KEYS: the 8 common keys, the topic's history, [the idempotency key].
#: ARGV: topic, meta, payload, time, history_size ('' = from config), log_size ('' = from
#: config), new epoch, floor, idempotency ttl (ms), topic key prefix.
#: Returns ``{id, duplicate}``.
APPEND_SCRIPT: Final = (
    _COMMON_LUA
    + """
local K_HISTORY, K_IDEM = KEYS[9], KEYS[10]
local topic, meta, payload = ARGV[1], ARGV[2], ARGV[3]
if K_IDEM then
  local first = redis.call('GET', K_IDEM)
  if first then return {first, 1} end
end
local size = tonumber(ARGV[5]) or tonumber(redis.call('HGET', K_CONFIG, 'history_size') or '1000')
local log_size = ARGV[6]
if log_size == '' then log_size = redis.call('HGET', K_CONFIG, 'log_size') or '100000' end
local epoch = ensure_epoch(ARGV[7], ARGV[8], ARGV[10])
-- The history's XADD is the first write: if it fails, no seq was used (no hole in ids).
local seq = string.format('%d', tonumber(redis.call('GET', K_SEQ) or '0') + 1)
local sid = seq .. '-0'
local added = redis.pcall('XADD', K_HISTORY, sid, 'm', meta, 'p', payload)
if type(added) == 'table' and added.err then
  -- Leftovers of a lost history hold higher ids: they are not this epoch's, drop them.
  -- Any other error (OOM, WRONGTYPE) aborts the publish.
  if not string.find(added.err, 'equal or smaller', 1, true) then
    return redis.error_reply(added.err)
  end
  redis.call('DEL', K_HISTORY)
  redis.call('XADD', K_HISTORY, sid, 'm', meta, 'p', payload)
end
redis.call('SET', K_SEQ, seq)
local n = redis.call('XLEN', K_HISTORY)
if n > size then
  local old = redis.call('XRANGE', K_HISTORY, '-', '+', 'COUNT', n - size)
  redis.call('HSET', K_EVICTED, topic, string.match(old[#old][1], '^%d+'))
  redis.call('XTRIM', K_HISTORY, 'MAXLEN', size)
end
redis.call('ZADD', K_TOPICS, 0, topic)
redis.call('ZADD', K_ACTIVE, 'GT', ARGV[4], topic)
redis.call('XADD', K_LOG, 'MAXLEN', '~', log_size, '*',
  'e', epoch, 's', seq, 't', topic, 'm', meta, 'p', payload)
local ident = epoch .. '-' .. seq
if K_IDEM then redis.call('SET', K_IDEM, ident, 'PX', ARGV[9]) end
return {ident, 0}
"""
)

#: At start: the epoch (created if missing) and where the log ends.
#: ARGV: new epoch, floor, topic key prefix, history_size, log_size.
#: Returns ``{epoch, last log id, seq of the last logged event}``.
_START_SCRIPT: Final = (
    _COMMON_LUA
    + """
redis.call('HSET', K_CONFIG, 'history_size', ARGV[4], 'log_size', ARGV[5])
local epoch = ensure_epoch(ARGV[1], ARGV[2], ARGV[3])
local last = redis.call('XREVRANGE', K_LOG, '+', '-', 'COUNT', 1)
if last[1] then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 's' then return {epoch, last[1][1], fields[i + 1]} end
  end
end
return {epoch, '0-0', redis.call('GET', K_SEQ) or '0'}
"""
)

#: Prune topics idle since before ``ARGV[1]`` (every event older than the window) and fold
#: their highest seq into the hub-wide watermark; trim the log by age.
#: ARGV: horizon (seconds), topic key prefix, batch, log age (ms). Returns the topics pruned.
_SWEEP_SCRIPT: Final = (
    _COMMON_LUA
    + """
local stale = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', '(' .. ARGV[1],
  'LIMIT', 0, tonumber(ARGV[3]))
if #stale > 0 then
  local high = tonumber(redis.call('GET', K_FORGOTTEN) or '0')
  for _, topic in ipairs(stale) do
    local key = ARGV[2] .. topic
    local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if last[1] then high = math.max(high, tonumber(string.match(last[1][1], '^%d+'))) end
    high = math.max(high, tonumber(redis.call('HGET', K_EVICTED, topic) or '0'))
    redis.call('DEL', key)
    redis.call('HDEL', K_EVICTED, topic)
    redis.call('ZREM', K_TOPICS, topic)
    redis.call('ZREM', K_ACTIVE, topic)
  end
  redis.call('SET', K_FORGOTTEN, string.format('%d', high))
end
local now = redis.call('TIME')
local minid = tonumber(now[1]) * 1000 - tonumber(ARGV[4])
if minid > 0 then redis.call('XTRIM', K_LOG, 'MINID', '~', string.format('%d', minid)) end
return #stale
"""
)


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key names of one hub in Redis (see the module docstring for the layout)."""

    prefix: str = "tidings"

    @property
    def common(self) -> list[str]:
        """The keys every script takes first, in order."""
        p = self.prefix
        return [
            f"{p}:epoch",
            f"{p}:seq",
            f"{p}:log",
            f"{p}:topics",
            f"{p}:active",
            f"{p}:evicted",
            f"{p}:forgotten",
            f"{p}:config",
        ]

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def log(self) -> str:
        return f"{self.prefix}:log"

    @property
    def topics(self) -> str:
        return f"{self.prefix}:topics"

    @property
    def evicted(self) -> str:
        return f"{self.prefix}:evicted"

    @property
    def forgotten(self) -> str:
        return f"{self.prefix}:forgotten"

    @property
    def topic_prefix(self) -> str:
        return f"{self.prefix}:t:"

    def history(self, topic: str) -> str:
        """The stream holding ``topic``'s history."""
        return f"{self.prefix}:t:{topic}"

    def idempotency(self, key: str) -> str:
        """The key remembering a publish's idempotency key."""
        return f"{self.prefix}:idem:{key}"


def append_arguments(
    keys: RedisKeys,
    draft: Draft,
    *,
    idempotency_key: str | None = None,
    history_size: int | None = None,
    log_size: int | None = None,
    floor: int = 0,
) -> tuple[list[str], list[str | bytes]]:
    """The ``keys`` and ``args`` of :data:`APPEND_SCRIPT` for publishing ``draft``.

    Publishers that write straight into Redis (the sync ``Publisher``) call the script with
    these; leave ``history_size`` and ``log_size`` unset to use what the hub's nodes stored
    in ``{prefix}:config``. ``floor`` is the highest seq the caller has seen (0 if none).
    """
    users = sorted(draft.users) if draft.users is not None else None
    meta = orjson.dumps([draft.type, draft.priority, users, draft.retry, draft.time])
    script_keys = [*keys.common, keys.history(draft.topic)]
    if idempotency_key is not None:
        script_keys.append(keys.idempotency(idempotency_key))
    args: list[str | bytes] = [
        draft.topic,
        meta,
        draft.payload,
        repr(draft.time),
        "" if history_size is None else str(history_size),
        "" if log_size is None else str(log_size),
        new_epoch(),
        str(floor),
        str(int(IDEMPOTENCY_TTL * 1000)),
        keys.topic_prefix,
    ]
    return script_keys, args


def parse_appended(reply: Any) -> Appended:
    """The :class:`Appended` of an :data:`APPEND_SCRIPT` reply."""
    ident, duplicate = reply
    return Appended(_text(ident), duplicate=bool(int(duplicate)))


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
    ) -> None:
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.keys = RedisKeys(prefix)
        self.log_size = log_size
        self.log_ttl = history_ttl if log_ttl is None else log_ttl
        self.batch = batch
        # No automatic retries: a publish retried after Redis ran it would publish twice.
        common: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            "socket_keepalive": True,
            "retry": Retry(NoBackoff(), 0),
            "decode_responses": False,
            **_CLIENT_OPTIONS,
        }
        # Publishes beyond max_connections wait for a free connection (up to 5 s, then 503)
        # instead of failing at once, as redis-py's default pool would.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5.0, socket_timeout=5.0, **common
        )
        self._redis = Redis(connection_pool=pool)
        # The reader's XREAD blocks for BLOCK_MS; its socket waits a little longer.
        self._reader_redis = Redis.from_url(url, socket_timeout=BLOCK_MS / 1000 + 5, **common)
        self._append = self._redis.register_script(APPEND_SCRIPT)
        self._start = self._redis.register_script(_START_SCRIPT)
        self._sweep = self._redis.register_script(_SWEEP_SCRIPT)
        self._deliver: Deliver | None = None
        # Checked by the background loops: redis-py can lose a cancellation (see aclose),
        # so a cancel alone may not stop a loop.
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Publishes waiting for the sender: (keys, args, the caller's future).
        self._outbox: list[tuple[list[str], list[str | bytes], asyncio.Future[Any]]] = []
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        #: The epoch last seen in Redis (replies checked against it).
        self._epoch: str | None = None
        #: The highest seq this node has seen: the floor of a new epoch's counter.
        self._high_seq = 0
        # Reader position: the log id after which to read, and the last event delivered.
        self._log_id = "0-0"
        self._seen_epoch: str | None = None
        #: Whether the log reader is connected: a node whose reader is down (or still
        #: reconnecting after an outage) delivers nothing others publish, so not ready.
        self._reading = False
        self._seen_seq: int | None = None

    def __repr__(self) -> str:
        return f"<RedisBackend prefix={self.keys.prefix!r}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Find (or create) the epoch and the end of the log, then start the reader.

        If Redis cannot be reached, the reader starts from "now" by the local clock and
        connects when Redis is back.
        """
        self._deliver = deliver
        try:
            await self._sync_start()
        except BackendUnavailable as exc:
            logger.warning(
                "redis is unreachable at start (%s); serving anyway and retrying", exc.__cause__
            )
            self._log_id = f"{int(time.time() * 1000)}-0"
        self._sender = asyncio.create_task(self._send_forever(), name="tidings-redis-sender")
        self._reader = asyncio.create_task(self._read_forever(), name="tidings-redis-reader")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="tidings-redis-sweeper")

    async def aclose(self) -> None:
        """Cancel and await the reader and the sweeper, then close the connection pools."""
        self._closing = True
        tasks = [t for t in (self._sender, self._reader, self._sweeper) if t is not None]
        for task in tasks:
            task.cancel()
        while pending := [task for task in tasks if not task.done()]:
            # On Python 3.11 redis-py can lose a cancel (its asyncio.wait_for returns the
            # result instead); an XREAD would then block on. Cutting the reader's sockets
            # ends that read, and the loop stops on seeing _closing.
            await self._reader_redis.connection_pool.disconnect()
            await asyncio.wait(pending, timeout=0.5)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sender = self._reader = self._sweeper = None
        self._fail(self._outbox, None)
        self._outbox = []
        self._deliver = None
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
            with _unavailable("publish"):
                reply = await self._append(keys=keys, args=args)
        else:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._outbox.append((keys, args, future))
            self._outbox_ready.set()
            reply = await future
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
        with _unavailable("replay"):
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
                first_epoch = _text(head[0]) if head[0] is not None else None
                upto = f"{int(head[1] or 0)}-0"
                for names in head[2:]:
                    for name in names:
                        topic = _text(name)
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
        epoch = _text(reply[0])
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
            events = [_history_event(epoch, topic, entry) for entry in entries]
            if any(event.time < horizon for event in events):
                return Replay(gap=Gap(after, "expired", latest))
            streams.append(events)
        if len(streams) == 1:
            return Replay(events=streams[0])
        return Replay(events=list(heapq.merge(*streams, key=_seq_of)))

    async def latest_id(self) -> str:
        epoch, seq = await self._head()
        return f"{epoch}-{seq}"

    async def ping(self) -> bool:
        if not self._reading:
            return False  # Redis may answer, but this node cannot follow the log yet
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    # -- helpers -------------------------------------------------------------------------

    async def _head(self) -> tuple[str, int]:
        """The current epoch (created if it vanished) and counter."""
        keys = self.keys
        with _unavailable("read the head"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.get(keys.epoch)
            pipe.get(keys.seq)
            epoch, seq = await pipe.execute()
            if epoch is None:
                reply = await self._start(keys=keys.common, args=self._start_args())
                epoch, seq = reply[0], reply[2]
        head = (_text(epoch), int(seq or 0))
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
        with _unavailable("start"):
            reply = await self._start(keys=self.keys.common, args=self._start_args())
        epoch, log_id, seq = _text(reply[0]), _text(reply[1]), int(reply[2])
        self._note_head(epoch, seq)
        self._log_id = log_id
        self._seen_epoch = epoch
        self._seen_seq = seq
        self._reading = True  # placed; the reader connects at once (and says if it cannot)

    # -- the sender ----------------------------------------------------------------------

    async def _send_forever(self) -> None:
        """Send the publishes queued meanwhile as one pipeline, one pipeline at a time.

        Publishes made while a pipeline is out accumulate and leave together in the next:
        one round trip (and one write on each side) for many publishes under load, one per
        publish when idle. Ids follow the order of the ``append`` calls on this node.
        """
        while not self._closing:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = self._outbox[:PIPELINE_MAX]
                del self._outbox[:PIPELINE_MAX]
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

    # -- the reader ----------------------------------------------------------------------

    async def _read_forever(self) -> None:
        """Follow the hub-wide log and deliver every event; reconnect forever.

        One log line when the link goes down and one when it is back, not one per retry.
        """
        attempt = 0
        down_since: float | None = None
        while not self._closing:
            try:
                await self._resync()
                self._reading = True
                if down_since is not None:
                    logger.warning(
                        "redis is reachable again after %.1f s; delivering from log position %s",
                        time.monotonic() - down_since,
                        self._log_id,
                    )
                    down_since = None
                attempt = 0
                while not self._closing:
                    reply: Any = await self._reader_redis.xread(
                        {self.keys.log: self._log_id}, count=self.batch, block=BLOCK_MS
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
                self._reading = False
                if self._closing:
                    return
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning(
                        "redis failed (%s: %s); fan-out paused at log position %s, retrying "
                        "with backoff",
                        type(exc).__name__,
                        exc,
                        self._log_id,
                    )
            except Exception:
                self._reading = False
                logger.exception(
                    "redis reader failed at log position %s; restarting it", self._log_id
                )
            attempt += 1
            await asyncio.sleep(_backoff(attempt))

    async def _resync(self) -> None:
        """On (re)connect: if the epoch changed meanwhile, read the new log from its start."""
        raw = await self._reader_redis.get(self.keys.epoch)
        epoch = _text(raw) if raw is not None else None
        if self._seen_epoch is None:
            # Started while Redis was down: read from the start time onwards.
            self._seen_epoch = epoch
        elif epoch != self._seen_epoch:
            logger.warning(
                "the hub's history in redis was lost (epoch %s is gone); ids of it are now "
                "unknown, and new events are read from the start of the new log",
                self._seen_epoch,
            )
            self._log_id = "0-0"

    async def _consume(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Deliver a batch of log entries, in order, without awaiting between them.

        Only a hole in the seqs (log entries trimmed before this node read them) awaits: the
        missing events are recovered from the topic histories first.
        """
        deliver = self._deliver
        last_entry = len(entries) - 1
        for index, (entry_id, fields) in enumerate(entries):
            try:
                epoch = _text(fields[b"e"])
                seq = int(fields[b"s"])
                topic = _text(fields[b"t"])
                event = _event(epoch, seq, topic, fields[b"m"], fields[b"p"])
            except (KeyError, ValueError, TypeError, orjson.JSONDecodeError):
                logger.error("skipping a malformed entry %r of the hub log", entry_id)
                self._log_id = _text(entry_id)
                continue
            last = self._seen_seq
            if epoch == self._seen_epoch and last is not None:
                if seq <= last:  # read again after a reset to the log's start
                    self._log_id = _text(entry_id)
                    continue
                if seq > last + 1:
                    await self._recover(epoch, last, seq)
            self._log_id = _text(entry_id)
            self._seen_epoch = epoch
            self._seen_seq = seq
            self._epoch = epoch
            if seq > self._high_seq:
                self._high_seq = seq
            if deliver is not None:
                try:
                    deliver(event, index < last_entry)
                except Exception:
                    logger.exception("deliver failed for event %s", event.id)

    async def _recover(self, epoch: str, after: int, before: int) -> None:
        """Deliver events ``after < seq < before`` missing from the log, from topic histories."""
        keys = self.keys
        raw: Any = await self._reader_redis.zrange(keys.topics, 0, -1)
        names = [_text(n) for n in raw]
        found: list[Event] = []
        for start in range(0, len(names), PRUNE_BATCH):
            chunk = names[start : start + PRUNE_BATCH]
            pipe = self._reader_redis.pipeline(transaction=False)
            for topic in chunk:
                pipe.xrange(keys.history(topic), f"({after}-0", f"({before}-0")
            for topic, entries in zip(chunk, await pipe.execute(), strict=True):
                found.extend(_history_event(epoch, topic, entry) for entry in entries)
        found.sort(key=_seq_of)
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
        deliver = self._deliver
        for event in found:
            if deliver is not None:
                try:
                    deliver(event, True)
                except Exception:
                    logger.exception("deliver failed for event %s", event.id)

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


# -- module helpers ----------------------------------------------------------------------


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
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


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter: half fixed, half random, capped."""
    delay: float = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt, 16))
    return delay / 2 + random.uniform(0, delay / 2)


def _literal_prefix(pattern: str) -> str:
    """The segments of ``pattern`` before its first wildcard, joined (``a/b`` of ``a/b/*``)."""
    literal: list[str] = []
    for segment in pattern.split("/"):
        if segment in ("*", "**"):
            break
        literal.append(segment)
    return "/".join(literal)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event(epoch: str, seq: int, topic: str, meta: bytes, payload: bytes) -> Event:
    type_, priority, users, retry, at = orjson.loads(meta)
    draft = Draft(
        topic=topic,
        type=type_,
        payload=payload,
        priority=_priority(priority),
        users=frozenset(users) if users is not None else None,
        retry=retry,
        time=at,
    )
    return Event.from_draft(draft, EventId(epoch, seq))


def _history_event(epoch: str, topic: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Event:
    entry_id, fields = entry
    seq = int(entry_id.partition(b"-")[0])
    return _event(epoch, seq, topic, fields[b"m"], fields[b"p"])


def _priority(value: str) -> Priority:
    if value == "low":
        return "low"
    if value == "high":
        return "high"
    return "normal"


_seq_of = operator.attrgetter("seq")
