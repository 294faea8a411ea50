"""The hub: publish, dispatch to connections, keep-alive, and shutdown.

One data path for everyone: HTTP publishes, in-process ``hub.publish`` calls and the task
service all end in :meth:`Hub.append`, which hands the draft to the backend; the backend
gives it its id and calls :meth:`Hub._dispatch` on every node; dispatch looks the topic up in
the subscription index and writes the shared frame through to each matching connection when
the hub is idle, or queues it on each to be flushed in batches when the hub is busy.

Background work has one owner: :meth:`Hub.start` starts the backend and a single ticker task
(keep-alive, maximum age, token expiry, resumes waiting for the backend), and
:meth:`Hub.aclose` stops them. No task is created per event, and none per connection here
(the web layer runs each stream's writer in its request task).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson

from tidings.auth.jwt import JWTVerifier
from tidings.auth.principal import ANONYMOUS, Principal
from tidings.backends.base import Appended, Backend, Replay
from tidings.config import Settings, load_settings
from tidings.connection import Connection, fan_out, write_through
from tidings.errors import BackendUnavailable, InvalidTopic, NotAuthorized, ShuttingDown
from tidings.events import MAX_ID_BYTES, Draft, Event, EventId, make_draft
from tidings.limits import Limits
from tidings.topics import TopicIndex, validate_pattern
from tidings.types import JSON
from tidings.wire import KEEPALIVE, encode_comment, encode_event, encode_retry

if TYPE_CHECKING:
    from fastapi import APIRouter
    from starlette.types import ASGIApp

    from tidings.tasks.service import TaskService

__all__ = ["MAX_TOPICS", "Hub", "HubStatistics", "open_backend"]

logger = logging.getLogger("tidings.hub")

#: At most this many topics in one subscription (SPEC §3).
MAX_TOPICS = 32
#: Connections written per loop iteration by a flush pass (see ``Hub._flush``).
FLUSH_BATCH = 500
#: The rest of a write-through pass that reached every connection at once.
_NOTHING: list[Connection] = []
#: Seconds between retries of connections whose transport is full (direct writes).
BACKLOG_RETRY = 0.05
#: Topic prefix whose events only the task service writes.
RESERVED_PREFIX = "tasks/"

#: A step of a stream's start that may wait for the backend (see ``Hub.open_stream``).
_Step = Callable[[Connection], Awaitable[Any]]


@dataclass(slots=True)
class _Counters:
    published: int = 0
    delivered: int = 0
    conflated: int = 0
    dropped: int = 0
    slow_disconnects: int = 0


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of the hub for ``/stats`` and ``/metrics``."""

    connections: int
    by_topic: dict[str, int]
    by_task: dict[str, int]
    by_user: dict[str, int]
    published: int
    delivered: int
    conflated: int
    dropped: int
    slow_disconnects: int
    uptime_seconds: float
    queued_events: int = 0
    by_ip: dict[str, int] = field(default_factory=dict)


def open_backend(url: str, settings: Settings) -> Backend:
    """The backend for ``url``: ``memory`` or ``redis://…`` (imported only when used)."""
    if url in ("memory", "memory://"):
        from tidings.backends.memory import MemoryBackend

        return MemoryBackend(history_size=settings.history_size, history_ttl=settings.history_ttl)
    from tidings.backends.redis import RedisBackend

    return RedisBackend(url, history_size=settings.history_size, history_ttl=settings.history_ttl)


class Hub:
    """An SSE hub: topics, publish, resumable streams and tasks.

    Embed it in an ASGI app::

        hub = Hub()
        app = FastAPI(lifespan=hub.lifespan)
        app.include_router(hub.router)
        ...
        await hub.publish("chat/general", {"text": "hi"}, type="chat_message")

    Args:
        settings: a :class:`~tidings.config.Settings`; built from the environment if omitted.
        backend: a backend URL or instance; overrides ``settings.backend``.
        authenticate: ``authenticate(request) -> Principal | None`` for applications with
            their own auth; it replaces the built-in JWT check.
        **options: any other setting by name (``history_size=100``), over ``settings``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: str | Backend | None = None,
        authenticate: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> None:
        if settings is None:
            if isinstance(backend, str):
                options["backend"] = backend
            settings = load_settings(**options)
        elif options:
            settings = settings.model_copy(update=options)
        self.settings = settings
        self._backend_arg = backend
        self.backend: Backend = (
            backend
            if backend is not None and not isinstance(backend, str)
            else open_backend(settings.backend, settings)
        )
        self.authenticate = authenticate
        #: Verifies bearer tokens when JWT auth is configured (and no ``authenticate``);
        #: loaded by :meth:`start`, so a bad key stops start-up, not a request.
        self.jwt_verifier: JWTVerifier | None = None
        #: Rate limits and stream caps (SPEC §5); the web layer checks the rates, and
        #: :meth:`open_stream`/:meth:`close_stream` take and free the stream slots.
        self.limits = Limits(
            connect_rate=settings.connect_rate_limit,
            publish_rate=settings.publish_rate_limit,
            streams_per_user=settings.max_connections_per_user,
            streams_per_ip=settings.max_connections_per_ip,
        )
        self._index: TopicIndex[Connection] = TopicIndex()
        self._live: set[Connection] = set()
        #: Held streams whose start waits for the backend or the task store, with the
        #: steps left to take (see ``open_stream``); the ticker retries them.
        self._waiting: dict[Connection, list[_Step]] = {}
        #: Connections to write, in order (each at most once: see ``Connection._dirty``).
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        #: A write-through pass in progress: its event, the connections it had matched,
        #: and the position of the next batch (see ``Hub._dispatch``).
        self._pass: tuple[Event, list[Connection], int] | None = None
        self._pass_handle: asyncio.Handle | None = None
        #: The loop the hub runs on, from :meth:`start` (``asyncio.get_running_loop()``
        #: makes a ``getpid`` system call on every call, and this is the hot path).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlogged: set[Connection] = set()
        self._backlog_handle: asyncio.TimerHandle | None = None
        self._grace_handle: asyncio.TimerHandle | None = None
        self._stats = _Counters()
        self._started_at = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._running = False
        self._closing = False
        self._closed = asyncio.Event()
        self._previous_handlers: dict[int, Any] = {}
        self._opening = encode_retry(settings.retry)[:-1] + encode_comment("tidings")
        self._tasks: TaskService | None = None
        self._router: APIRouter | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the backend and start the ticker. Idempotent."""
        if self._running:
            return
        if self.authenticate is None:
            self.jwt_verifier = JWTVerifier.from_settings(self.settings)
        self._loop = asyncio.get_running_loop()
        await self.backend.start(self._dispatch)
        await self.tasks.start()
        self._running = True
        self._closing = False
        self._ticker = asyncio.create_task(self._tick_forever(), name="tidings-hub-ticker")

    async def aclose(self) -> None:
        """End every stream, stop background work and close the backend."""
        if not self._running:
            return
        self.begin_shutdown()
        await self.wait_streams_closed(self.settings.shutdown_grace)
        self._running = False
        self._settle_pass()
        for handle in (self._flush_handle, self._backlog_handle, self._grace_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._backlog_handle = self._grace_handle = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._tasks is not None:
            await self._tasks.aclose()
        await self.backend.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """ASGI lifespan: ``FastAPI(lifespan=hub.lifespan)``.

        Besides :meth:`start`/:meth:`aclose`, it chains a SIGTERM/SIGINT handler in front of
        the server's own, so open streams are flushed and ended the moment the server is
        asked to stop (an ASGI server waits for open responses before it runs the lifespan's
        shutdown; without this an SSE stream would hold it until its grace timeout).
        """
        await self.start()
        self._install_signal_handlers()
        try:
            yield
        finally:
            self._restore_signal_handlers()
            await self.aclose()

    def begin_shutdown(self) -> None:
        """Refuse new streams (503) and end every open one once its queue is flushed.

        Streams whose client does not read what is left are cut when ``shutdown_grace``
        runs out, so the server can exit within the grace whatever the clients do.
        """
        if self._closing:
            return
        self._closing = True
        for conn in list(self._live):
            conn.close("shutdown")
        logger.info("shutting down: ending %d streams", len(self._live))
        with contextlib.suppress(RuntimeError):  # no running loop: aclose() cuts them
            loop = asyncio.get_running_loop()
            self._grace_handle = loop.call_later(
                max(0.0, self.settings.shutdown_grace - 0.5), self._cut_stuck_streams
            )

    def _cut_stuck_streams(self) -> None:
        self._grace_handle = None
        for conn in list(self._live):
            logger.info("cutting a stream whose client did not read before the grace ran out")
            conn.close("slow")
            if conn.aborter is not None:
                conn.aborter()

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`begin_shutdown` was called."""
        return self._closing

    async def wait_streams_closed(self, timeout: float) -> bool:
        """Wait until every stream has ended; abort the ones still stuck after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._live and time.monotonic() < deadline:
            self._closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), deadline - time.monotonic())
        stuck = list(self._live)
        for conn in stuck:
            conn.close("slow")
            if conn.aborter is not None:
                conn.aborter()
            self.close_stream(conn)
        return not stuck

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(sig)
            except (ValueError, OSError):  # pragma: no cover - not the main thread
                continue

            def handler(
                signum: int,
                frame: FrameType | None,
                previous: Any = previous,
            ) -> None:
                loop.call_soon_threadsafe(self.begin_shutdown)
                if callable(previous):
                    previous(signum, frame)
                elif previous == signal.SIG_DFL and signum == signal.SIGINT:
                    raise KeyboardInterrupt

            try:
                signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover - not the main thread
                continue
            self._previous_handlers[sig] = previous

    def _restore_signal_handlers(self) -> None:
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, previous)
        self._previous_handlers.clear()

    # -- publish -------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        data: JSON = None,
        *,
        type: str = "message",
        priority: str = "normal",
        users: Iterable[str] | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish ``data`` on ``topic`` and return the event id.

        Raises:
            InvalidTopic, InvalidEvent, EventTooLarge: the event is invalid (nothing sent).
            NotAuthorized: ``topic`` is a reserved ``tasks/...`` topic; use ``hub.tasks``.
            BackendUnavailable: the backend is down (nothing published, key not used).
        """
        if topic.startswith(RESERVED_PREFIX):
            raise NotAuthorized(
                "tasks/... topics are written by the task service only", code="reserved_topic"
            )
        draft = make_draft(
            topic,
            data,
            type=type,
            priority=priority,
            users=tuple(users) if users is not None else None,
            retry=retry,
            max_bytes=self.settings.max_event_bytes,
        )
        appended = await self.append(draft, idempotency_key=idempotency_key)
        return appended.id

    async def append(self, draft: Draft, *, idempotency_key: str | None = None) -> Appended:
        """Publish a validated draft (any topic; the task service's entry point)."""
        if not self._running:
            raise ShuttingDown("the hub is not running")
        appended = await self.backend.append(draft, idempotency_key=idempotency_key)
        if not appended.duplicate:
            self._stats.published += 1
        return appended

    def note_published(self) -> None:
        """Count an event that was appended to the backend outside :meth:`append`.

        The Redis task store writes a task change and its event in one script; its events
        are published all the same and count in ``/stats`` like any other.
        """
        self._stats.published += 1

    def _dispatch(self, event: Event, more: bool = False) -> None:
        """Send ``event`` to every matching connection (called by the backend).

        When the hub is idle (nothing waits to be flushed, no pass under way), an event for
        everyone is written through: straight to each connection's transport,
        :data:`FLUSH_BATCH` connections per loop iteration, with no queue and no second
        pass. An event that arrives while such a pass is under way (or in the loop
        iteration after it) first queues the pass's event on the connections it has not
        reached, and is queued itself: while the hub is busy, events are queued on each
        connection and flushed in batches (:meth:`_flush`), so the events of a busy moment
        leave together, one ``write`` per connection. Either way each connection sees the
        events in order. ``more`` (from the backend: more events follow at once) queues the
        event, so that a batch leaves together too.
        """
        through = (
            not more
            and self._pass is None
            and self._flush_handle is None
            and event.users is None
            and not event.conflatable
        )
        self._settle_pass()
        conns = self._index.match(event.topic)
        if through:
            if len(conns) <= FLUSH_BATCH:
                self._stats.delivered += write_through(event, conns, time.monotonic())
                self._pass = (event, _NOTHING, 0)
            else:
                snapshot = list(conns)
                batch = snapshot[:FLUSH_BATCH]
                self._stats.delivered += write_through(event, batch, time.monotonic())
                self._pass = (event, snapshot, FLUSH_BATCH)
            self._pass_handle = self._running_loop().call_soon(self._write_pass)
            return
        grew = fan_out(event, conns, self._dirty)
        if grew and self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    def _write_pass(self) -> None:
        """Write the next :data:`FLUSH_BATCH` connections of the pass through.

        The pass ends one loop iteration after its last batch, so that the events which
        arrive together are queued together.
        """
        self._pass_handle = None
        current = self._pass
        if current is None:
            return
        event, conns, start = current
        if start >= len(conns):
            self._pass = None
            return
        end = start + FLUSH_BATCH
        self._stats.delivered += write_through(event, conns[start:end], time.monotonic())
        self._pass = (event, conns, end)
        self._pass_handle = self._running_loop().call_soon(self._write_pass)

    def _settle_pass(self) -> None:
        """Queue the pass's event on the connections it has not reached (if one is on)."""
        current = self._pass
        if current is None:
            return
        self._pass = None
        if self._pass_handle is not None:
            self._pass_handle.cancel()
            self._pass_handle = None
        event, conns, start = current
        if fan_out(event, conns[start:], self._dirty) and self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    # -- direct writes -------------------------------------------------------------------

    def _mark_dirty(self, conn: Connection) -> None:
        """Flush ``conn`` at the next tick, with every other connection written this tick."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return asyncio.get_running_loop() if loop is None else loop

    def _flush(self) -> None:
        """Write the dirty connections, at most :data:`FLUSH_BATCH` per loop iteration.

        Between batches the loop reads sockets, so publishes that arrive during a long
        pass (10,000 subscribers take tens of milliseconds) are queued on the connections
        not written yet and leave with the earlier events in one ``write``: a hub that
        falls behind coalesces more and catches up, instead of queueing whole passes.
        Connections marked dirty meanwhile are appended and written in their turn; the
        list holds each connection at most once, however long the hub stays behind.
        """
        self._flush_handle = None
        dirty = self._dirty
        batch = dirty[:FLUSH_BATCH]
        del dirty[:FLUSH_BATCH]
        now = time.monotonic()
        written = 0
        for conn in batch:
            written += conn.flush(now)
        self._stats.delivered += written
        if dirty and self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    def _backlog(self, conn: Connection) -> None:
        """Retry ``conn`` later: its transport holds too many unsent bytes."""
        self._backlogged.add(conn)
        if self._backlog_handle is None:
            self._backlog_handle = self._running_loop().call_later(
                BACKLOG_RETRY, self._retry_backlog
            )

    def _retry_backlog(self) -> None:
        self._backlog_handle = None
        waiting = self._backlogged
        self._backlogged = set()
        for conn in waiting:
            if conn.close_reason in ("slow", "client") or conn not in self._live:
                continue
            if conn.backlogged:
                self._backlogged.add(conn)
            else:
                self._stats.delivered += conn.flush(time.monotonic())
        if self._backlogged and self._backlog_handle is None:
            self._backlog_handle = self._running_loop().call_later(
                BACKLOG_RETRY, self._retry_backlog
            )

    # -- subscribe -----------------------------------------------------------------------

    async def open_stream(
        self,
        patterns: Sequence[str],
        *,
        principal: Principal = ANONYMOUS,
        last_event_id: str | None = None,
        end_types: frozenset[str] = frozenset(),
        task_id: str | None = None,
        ip: str | None = None,
        opening: Callable[[Connection], Awaitable[Any]] | None = None,
    ) -> Connection:
        """Register a stream on ``patterns`` and queue its opening bytes and replay.

        The connection is in the index *before* history is read, so no event can fall
        between replay and live delivery; :meth:`Connection.put_front` removes events seen
        twice.

        ``opening``, if given, is awaited after registration and before the replay, to put
        a first event (a task snapshot) on the stream.

        When the backend (or the task store) is down, the stream still opens (SPEC §3): it
        is held, sending its opening bytes and keep-alive comments only, and the ticker
        retries what is left of its start (the check of a task's owner, ``opening``, the
        replay, in that order) until the backend answers; nothing live is sent before
        (order is kept). A step that raises :class:`BackendUnavailable` is retried.

        Raises:
            InvalidTopic: a bad pattern, none, or more than 32; an id over 256 bytes.
            NotAuthorized: the principal may not subscribe to a pattern (403).
            LimitExceeded: the user or IP has its cap of open streams (429).
            ShuttingDown: the hub is stopping (503).
        """
        if self._closing or not self._running:
            raise ShuttingDown("the hub is shutting down; reconnect to another node")
        patterns = check_patterns(patterns)
        if last_event_id is not None and len(last_event_id.encode()) > MAX_ID_BYTES:
            raise InvalidTopic(
                f"Last-Event-ID is over {MAX_ID_BYTES} bytes", code="invalid_last_event_id"
            )
        # Task topics no grant allows: allowed if the principal may read the task (its
        # owner, SPEC §5; an admin; a worker allowed to publish on it).
        owned: list[str] = []
        for pattern in patterns:
            if principal.may_subscribe(pattern) or (
                task_id is not None and pattern == f"tasks/{task_id}"
            ):
                continue
            own = _task_of(pattern)
            if own is None:
                raise NotAuthorized(f"not allowed to subscribe to {pattern!r}", code="forbidden")
            owned.append(own)
        checking: _Step | None = None
        if owned:
            try:
                await self._check_owner(principal, owned)
            except BackendUnavailable:
                # Decided once the store answers; until then the stream sends nothing.
                checking = functools.partial(self._check_owner_later, principal, owned)
        settings = self.settings
        conn = Connection(
            self,
            patterns,
            principal,
            max_events=settings.queue_size,
            max_bytes=settings.queue_bytes,
            end_types=end_types,
            task_id=task_id,
            ip=ip,
        )
        if settings.max_connection_age is not None:
            age = settings.max_connection_age * random.uniform(0.85, 1.0)
            conn.retire_at = conn.created + age
        if principal.expires_at is not None:
            left = principal.expires_at - time.time()
            at = conn.created + max(0.0, left)
            conn.retire_at = at if conn.retire_at is None else min(conn.retire_at, at)
        # The slot is freed in close_stream, the one exit of every registered stream.
        self.limits.streams.acquire(conn, user=principal.user, ip=ip)
        self._register(conn)
        conn.push_raw(self._opening)
        steps: list[_Step] = []
        if checking is not None:
            steps.append(checking)
        if opening is not None:
            steps.append(opening)
        if last_event_id is not None:
            steps.append(functools.partial(self._resume, last_event_id))
        if not steps:
            conn.release()
            return conn
        try:
            await self._advance(conn, steps)
        except BackendUnavailable:
            self._waiting[conn] = steps
            # The client (and any proxy) sees the stream open now, though held.
            conn.send_ahead()
            return conn
        except BaseException:
            self.close_stream(conn)
            raise
        conn.release()
        return conn

    async def _advance(self, conn: Connection, steps: list[_Step]) -> None:
        """Take the ``steps`` of a stream's start in order, removing each once done.

        Raises:
            BackendUnavailable: a step could not be taken; it and the rest remain.
        """
        while steps:
            if conn.close_reason is not None and not conn.holding:
                steps.clear()  # the stream is ending (refused, finished, or its client left)
                return
            await steps[0](conn)
            del steps[0]

    async def _check_owner(self, principal: Principal, task_ids: list[str]) -> None:
        """Allow topics ``tasks/<id>`` of tasks that ``principal`` may read: its own (SPEC
        §5), any for an admin, those a worker may publish on.

        A task that does not exist and one that the principal may not read get the same
        403, so task ids don't leak.

        Raises:
            NotAuthorized: a task the principal may not read (403).
            BackendUnavailable: the task store cannot be read.
        """
        for task_id in task_ids:
            if not await self.tasks.may_watch(task_id, principal):
                topic = f"tasks/{task_id}"
                raise NotAuthorized(f"not allowed to subscribe to {topic!r}", code="forbidden")

    async def _check_owner_later(
        self, principal: Principal, task_ids: list[str], conn: Connection
    ) -> None:
        """:meth:`_check_owner` for a held stream, once the store answers: a refused stream
        has sent nothing but comments; it ends cleanly and its reconnect gets the 403."""
        try:
            await self._check_owner(principal, task_ids)
        except NotAuthorized:
            conn.drop_events()
            conn.close("end")

    async def _resume(self, last_event_id: str, conn: Connection) -> None:
        replay: Replay = await self.backend.replay(conn.patterns, last_event_id)
        if replay.gap is not None:
            gap = replay.gap
            data = orjson.dumps({"last_event_id": gap.last_event_id, "reason": gap.reason})
            head = encode_event(data.decode(), event="gap", id=gap.latest_id)
            # Live events queued meanwhile that are not newer than the gap's id are covered
            # by the state the client refetches; sending them would put ids out of order.
            latest = EventId.parse(gap.latest_id)
            conn.put_front([], head, min_seq=latest.seq if latest is not None else 0)
        else:
            # The client has everything up to its id: the node's reader may still deliver
            # events up to there live (it lags after a Redis outage), and they are dropped.
            resumed = EventId.parse(last_event_id)
            conn.put_front(list(replay.events), min_seq=resumed.seq if resumed else 0)

    def close_stream(self, conn: Connection) -> None:
        """Unregister ``conn`` (the writer calls this when the stream ends, however)."""
        self.limits.streams.release(conn)
        if conn not in self._live:
            return
        self._live.discard(conn)
        self._waiting.pop(conn, None)
        self._backlogged.discard(conn)
        for pattern in conn.patterns:
            self._index.discard(pattern, conn)
        if conn.close_reason is None:
            conn.close("client")
        if not self._live:
            self._closed.set()

    def _register(self, conn: Connection) -> None:
        self._live.add(conn)
        for pattern in conn.patterns:
            self._index.add(pattern, conn)

    # -- background ----------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        interval = min(1.0, self.settings.keepalive / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub ticker failed; retrying")

    async def _tick(self) -> None:
        now = time.monotonic()
        idle_after = self.settings.keepalive
        waiting = self._waiting
        for conn in list(self._live):
            if conn.retire_at is not None and now >= conn.retire_at:
                if conn.holding:
                    # Its events wait for what goes first (a replay, a check): sent alone
                    # they would skip it. Its client resumes from where it started.
                    conn.drop_events()
                if conn.principal.expires_at is not None and time.time() >= (
                    conn.principal.expires_at - 0.001
                ):
                    conn.push_raw(
                        encode_event(
                            orjson.dumps(
                                {"reason": "token expired", "last_event_id": conn.last_id}
                            ).decode(),
                            event="auth_expired",
                        )
                    )
                    conn.close("auth_expired")
                else:
                    conn.close("max_age")
            elif now - conn.last_write < idle_after:
                continue
            elif not conn.holding:
                if not conn.queued:
                    conn.push_raw(KEEPALIVE)
            elif conn in waiting:
                # Held until the backend answers: its client must still see it alive.
                conn.send_ahead(KEEPALIVE)
        for conn, steps in list(waiting.items()):
            if conn not in waiting:
                continue  # ended while an earlier one was retried
            try:
                await self._advance(conn, steps)
            except BackendUnavailable:
                break
            except Exception:
                logger.exception("starting a held stream failed; ending it")
                conn.drop_events()
                conn.close("end")
            waiting.pop(conn, None)
            conn.release()

    # -- introspection -------------------------------------------------------------------

    def statistics(self) -> HubStatistics:
        """Counts for ``/stats``: connections by topic, task, user and IP; event counters."""
        by_topic: Counter[str] = Counter()
        by_task: Counter[str] = Counter()
        by_user: Counter[str] = Counter()
        by_ip: Counter[str] = Counter()
        queued = 0
        for conn in self._live:
            by_topic.update(conn.patterns)
            if conn.task_id is not None:
                by_task[conn.task_id] += 1
            by_user[conn.user if conn.user is not None else "anonymous"] += 1
            if conn.ip is not None:
                by_ip[conn.ip] += 1
            queued += conn.queued
        stats = self._stats
        return HubStatistics(
            connections=len(self._live),
            by_topic=dict(by_topic),
            by_task=dict(by_task),
            by_user=dict(by_user),
            by_ip=dict(by_ip),
            published=stats.published,
            delivered=stats.delivered,
            conflated=stats.conflated,
            dropped=stats.dropped,
            slow_disconnects=stats.slow_disconnects,
            uptime_seconds=time.monotonic() - self._started_at,
            queued_events=queued,
        )

    def connections(self) -> list[Connection]:
        """The open streams (a copy)."""
        return list(self._live)

    # -- embedding -----------------------------------------------------------------------

    @property
    def tasks(self) -> TaskService:
        """The task service (``hub.tasks.create/progress/complete/...``)."""
        if self._tasks is None:
            from tidings.tasks.service import TaskService

            self._tasks = TaskService(self)
        return self._tasks

    @property
    def router(self) -> APIRouter:
        """A FastAPI router with every tidings endpoint, for ``app.include_router``."""
        if self._router is None:
            from tidings.web.routes import build_router

            self._router = build_router(self)
        return self._router

    def asgi_app(self) -> ASGIApp:
        """A complete ASGI app (routes, error handling, CORS) for ``app.mount`` or uvicorn."""
        from tidings.web.app import create_app

        return create_app(self)


def _task_of(pattern: str) -> str | None:
    """The task id of an exact task topic ``tasks/<id>`` (no wildcard), else ``None``."""
    prefix, _, rest = pattern.partition("/")
    if prefix != "tasks" or not rest or "/" in rest or rest in ("*", "**"):
        return None
    return rest


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Validate a subscription's patterns (1 to 32, each valid), without duplicates.

    Raises:
        InvalidTopic: no pattern, more than 32, or a bad one.
    """
    key = tuple(patterns)
    if 0 < len(key) <= MAX_TOPICS:
        return _checked_patterns(key)
    return _check_patterns(key)


def _check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    if not patterns:
        raise InvalidTopic("at least one topic is required", code="missing_topic")
    if len(patterns) > MAX_TOPICS:
        raise InvalidTopic(f"at most {MAX_TOPICS} topics per subscription", code="too_many_topics")
    return tuple(dict.fromkeys(validate_pattern(p) for p in patterns))


#: Every stream's patterns are checked when it opens, and most streams share a few sets.
_checked_patterns = functools.lru_cache(maxsize=256)(_check_patterns)
