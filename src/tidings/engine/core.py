"""The engine: publish, streams, keep-alive and shutdown, on one backend.

One data path for everyone: HTTP publishes, in-process ``hub.publish`` calls and the task
service all end in :meth:`Engine.append`, which hands the draft to the backend; the backend
gives it its id and calls the dispatcher (:mod:`tidings.engine.dispatch`) on every node.

Presence (:mod:`tidings.engine.presence`) follows the streams that open and end, history
and presence are read page by page (:mod:`tidings.engine.history`), and an administrator's
disconnect ends streams on every node (:mod:`tidings.engine.control`).

The engine knows no HTTP server and no task service. Whoever serves a stream gets a
:class:`~tidings.engine.connection.Connection` from :meth:`Engine.open_stream`, writes it
to its client (a sink or ASGI ``send``), and calls :meth:`Connection.finish` when it is
over. A stream on a ``tasks/<id>`` topic that no grant allows is checked through
:attr:`Engine.task_access`, which the task service provides.

Background work has one owner: :meth:`Engine.start` starts the backend and a single ticker
task (keep-alive, maximum age, token expiry, resumes waiting for the backend), and
:meth:`Engine.aclose` stops them. No task is created per event, and none per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.backends.base import Appended, Backend, Disconnect, Replay
from tidings.config import Settings
from tidings.engine.access import TaskAccess, check_owner
from tidings.engine.connection import Connection
from tidings.engine.control import end_streams
from tidings.engine.dispatch import Dispatcher
from tidings.engine.drain import drain
from tidings.engine.presence import PresenceTracker
from tidings.engine.server_api import ServerApi
from tidings.engine.stats import HubStatistics, statistics
from tidings.errors import BackendUnavailable, InvalidTopic, NotAuthorized, ShuttingDown
from tidings.events import MAX_ID_BYTES, Draft, EventId, make_draft
from tidings.limits import Limits
from tidings.topics import check_patterns, check_publishable, task_of, task_topic
from tidings.tracing import make_tracer, note_appended, publish_span
from tidings.types import JSON
from tidings.wire import KEEPALIVE, encode_comment, encode_event, encode_retry

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["Engine", "HubStatistics", "TaskAccess"]

logger = logging.getLogger("tidings.hub")

#: A step of a stream's start that may wait for the backend (see ``Engine.open_stream``).
_Step = Callable[[Connection], Awaitable[Any]]


class Engine(ServerApi):
    """Publish and stream on one backend: the core under :class:`tidings.Hub`.

    Presence, history and the server API are :class:`~tidings.engine.server_api.ServerApi`'s.

    Args:
        settings: the hub's settings (queue bounds, keep-alive, limits, ...).
        backend: the backend, not started yet; the engine starts and closes it.
    """

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        #: Rate limits and stream caps (SPEC §5); the web layer checks the rates, and
        #: :meth:`open_stream` and :meth:`close_stream` take and free the stream slots.
        self.limits = Limits(
            connect_rate=settings.connect_rate_limit,
            publish_rate=settings.publish_rate_limit,
            streams_per_user=settings.max_connections_per_user,
            streams_per_ip=settings.max_connections_per_ip,
        )
        #: Answers for ``tasks/<id>`` topics that no grant allows (set by the task service's
        #: owner); without it such topics are refused.
        self.task_access: TaskAccess | None = None
        #: An OpenTelemetry ``TracerProvider`` to trace with instead of the global one.
        self.tracer_provider: Any = None
        #: The tracer, from :meth:`start` when tracing is on (:mod:`tidings.tracing`);
        #: ``None`` (off) costs the hot path nothing but this check.
        self.tracer: Tracer | None = None
        self.dispatcher = Dispatcher()
        tag = secrets.token_hex(4)
        #: This process in the hub: in presence entries, and where dead nodes are found.
        self.node = f"{socket.gethostname()}:{os.getpid()}:{tag}"
        self._connection_ids = (f"{tag}-{n:010x}" for n in itertools.count(1))
        #: This node's streams per topic, sent to the backend (:mod:`.presence`).
        self.presence_tracker = PresenceTracker(
            backend, node=self.node, announce=settings.presence_events, publish=self.append
        )
        #: Held streams whose start waits for the backend or the task store, with the
        #: steps left to take (see ``open_stream``); the ticker retries them.
        self._waiting: dict[Connection, list[_Step]] = {}
        self._grace_handle: asyncio.TimerHandle | None = None
        self._started_at = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._running = False
        self._closing = False
        self._closed = asyncio.Event()
        self._opening = encode_retry(settings.retry)[:-1] + encode_comment("tidings")

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was awaited and :meth:`aclose` not yet."""
        return self._running

    async def start(self) -> None:
        """Connect the backend and start the ticker. Idempotent."""
        if self._running:
            return
        self.dispatcher.bind(asyncio.get_running_loop())
        self.tracer = tracer = make_tracer(self.tracer_provider)
        dispatcher = self.dispatcher
        await self.backend.start(
            dispatcher.dispatch if tracer is None else dispatcher.traced(tracer),
            self._run_control,
        )
        self._running = True
        self._closing = False
        self._ticker = asyncio.create_task(self._tick_forever(), name="tidings-hub-ticker")
        self.presence_tracker.start()

    async def aclose(self) -> None:
        """End every stream, stop background work and close the backend."""
        if not self._running:
            return
        self.begin_shutdown()
        await self.wait_streams_closed(self.settings.shutdown_grace)
        await self.presence_tracker.aclose()  # announcements go out while still running
        self._running = False
        self.dispatcher.stop()
        if self._grace_handle is not None:
            self._grace_handle.cancel()
            self._grace_handle = None
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.backend.aclose()

    def begin_shutdown(self) -> None:
        """Refuse new streams (503) and end the open ones, spread over the drain window.

        Each stream ends once its queue is flushed, with a ``retry:`` of its own, so that
        its client comes back to another node at its own moment (:mod:`tidings.engine.drain`).
        The window is ``drain_window``, and at most ``shutdown_grace`` less a second. Streams
        whose client does not read what is left are cut when ``shutdown_grace`` runs out,
        so the server can exit within the grace whatever the clients do.
        """
        if self._closing:
            return
        self._closing = True
        settings = self.settings
        live = list(self.dispatcher.live)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: everything ends now, aclose() cuts the rest
            for conn in live:
                conn.close("shutdown")
            return
        window = max(0.0, min(settings.drain_window, settings.shutdown_grace - 1.0))
        batches = drain(live, window=window, retry_ms=settings.retry, call_later=loop.call_later)
        logger.info(
            "shutting down: ending %d streams in %d batches over %.1f s",
            len(live),
            batches,
            window if batches > 1 else 0.0,
        )
        self._grace_handle = loop.call_later(
            max(0.0, settings.shutdown_grace - 0.5), self._cut_stuck_streams
        )

    def _cut_stuck_streams(self) -> None:
        self._grace_handle = None
        for conn in list(self.dispatcher.live):
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
        live = self.dispatcher.live
        deadline = time.monotonic() + timeout
        while live and time.monotonic() < deadline:
            self._closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), deadline - time.monotonic())
        stuck = list(live)
        for conn in stuck:
            conn.close("slow")
            if conn.aborter is not None:
                conn.aborter()
            self.close_stream(conn)
        return not stuck

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
        """Publish ``data`` on ``topic`` and return the event id (see :meth:`tidings.Hub.publish`).

        Raises:
            InvalidTopic, InvalidEvent, EventTooLarge: the event is invalid (nothing sent).
            NotAuthorized: ``topic`` is a reserved ``tasks/...`` topic; use the task service.
            BackendUnavailable: the backend is down (nothing published, key not used).
        """
        draft = make_draft(
            check_publishable(topic),
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
        if self.tracer is None:
            appended = await self.backend.append(draft, idempotency_key=idempotency_key)
        else:
            with publish_span(self.tracer, draft) as (span, draft):
                appended = await self.backend.append(draft, idempotency_key=idempotency_key)
                note_appended(span, appended.id, duplicate=appended.duplicate)
        if not appended.duplicate:
            self.dispatcher.counters.published += 1
        return appended

    def note_published(self) -> None:
        """Count an event that was appended to the backend outside :meth:`append`.

        The Redis task store writes a task change and its event in one script; its events
        are published all the same and count in ``/stats`` like any other.
        """
        self.dispatcher.counters.published += 1

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
        timed: bool = False,
    ) -> Connection:
        """Register a stream on ``patterns`` and queue its opening bytes and replay.

        The connection is in the index *before* history is read, so no event can fall
        between replay and live delivery; :meth:`Connection.put_front` removes events seen
        twice.

        ``opening``, if given, is awaited after registration and before the replay, to put
        a first event (a task snapshot) on the stream. ``timed`` streams get each event's
        publish time in a ``time:`` field (:meth:`Event.timed <tidings.events.Event.timed>`).

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
                task_id is not None and pattern == task_topic(task_id)
            ):
                continue
            own = task_of(pattern)
            if own is None or self.task_access is None:
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
            self.dispatcher,
            patterns,
            principal,
            max_events=settings.queue_size,
            max_bytes=settings.queue_bytes,
            end_types=end_types,
            task_id=task_id,
            ip=ip,
            release=self.close_stream,
            timed=timed,
            connection_id=next(self._connection_ids),
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
        self.dispatcher.register(conn)
        self.presence_tracker.joined(conn)
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
        """:func:`~tidings.engine.access.check_owner` with the engine's task access."""
        await check_owner(self.task_access, principal, task_ids)

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
        """Unregister ``conn`` and free its slot (:meth:`Connection.finish` calls this)."""
        self.limits.streams.release(conn)
        if not self.dispatcher.unregister(conn):
            return
        self.presence_tracker.left(conn)
        self._waiting.pop(conn, None)
        if conn.close_reason is None:
            conn.close("client")
        if not self.dispatcher.live:
            self._closed.set()

    def _run_control(self, command: Disconnect) -> int:
        """A command from the backend, for this node's streams."""
        return end_streams(self.dispatcher.live, command)

    # -- background ----------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        interval = min(1.0, self.settings.keepalive / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("hub ticker failed; retrying")

    async def tick(self) -> None:
        """One pass of the ticker: keep-alive comments, streams past their maximum age or
        their token's expiry, and held streams whose start waits for the backend."""
        now = time.monotonic()
        idle_after = self.settings.keepalive
        waiting = self._waiting
        for conn in list(self.dispatcher.live):
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
        return statistics(self.dispatcher.live, self.dispatcher.counters, self._started_at)

    def connections(self) -> list[Connection]:
        """The open streams (a copy)."""
        return list(self.dispatcher.live)
