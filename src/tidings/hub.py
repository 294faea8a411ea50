"""``tidings.Hub``: the facade users import, over the engine, the task service and the web.

The hub owns one :class:`~tidings.engine.Engine` (publish, streams), one
:class:`~tidings.tasks.service.TaskService` (``hub.tasks``) and the web layer's views of
them (``hub.router``, ``hub.asgi_app()``), and starts and stops them together. Everything
here delegates; the work is done in the layers below (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from types import FrameType
from typing import Any

from fastapi import APIRouter
from starlette.types import ASGIApp

from tidings._version import __version__
from tidings.auth.jwks import JWKSVerifier
from tidings.auth.jwt import JWTVerifier, TokenVerifier
from tidings.auth.principal import ANONYMOUS, Principal
from tidings.auth.proxy import AuthProxy
from tidings.backends import open_backend
from tidings.backends.base import Appended, Backend, PresencePage, TopicPage
from tidings.config import Settings, load_settings
from tidings.engine import Connection, Engine, History, HubStatistics
from tidings.events import Draft
from tidings.limits import Limits
from tidings.tasks.service import TaskService
from tidings.types import JSON
from tidings.web.app import create_app
from tidings.web.routes import DASHBOARD, build_router

__all__ = ["Hub", "HubStatistics", "app_from_env", "serve_app"]


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
            their own auth; it replaces the built-in JWT check and the auth proxy.
        handle_signals: whether :meth:`lifespan` ends streams on SIGTERM/SIGINT before the
            server waits for open responses (see :meth:`lifespan`). ``tidings serve`` ends
            them itself and passes ``False``.
        tracer_provider: an OpenTelemetry ``TracerProvider`` to trace publishes, deliveries
            and task changes with (the ``otel`` extra; docs/tracing.md). By default the
            global one, if one is set when the hub starts; without one, nothing is traced.
        **options: any other setting by name (``history_size=100``), over ``settings``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: str | Backend | None = None,
        authenticate: Callable[[Any], Any] | None = None,
        handle_signals: bool = True,
        tracer_provider: Any = None,
        **options: Any,
    ) -> None:
        if settings is None:
            if isinstance(backend, str):
                options["backend"] = backend
            settings = load_settings(**options)
        elif options:
            settings = settings.model_copy(update=options)
        self.settings = settings
        given = backend if backend is not None and not isinstance(backend, str) else None
        self.engine = Engine(settings, given or open_backend(settings.backend, settings))
        self.engine.tracer_provider = tracer_provider
        self.tasks = TaskService(self.engine)
        self.engine.task_access = self.tasks
        self.authenticate = authenticate
        #: Verifies bearer tokens when JWT auth is configured (and no ``authenticate``);
        #: loaded by :meth:`start`, so a bad key (or a JWKS that cannot be fetched) stops
        #: start-up, not a request.
        self.jwt_verifier: TokenVerifier | None = None
        #: Asks the application who a caller is (``--auth-proxy``, and no ``authenticate``);
        #: its connection pool is opened by :meth:`start` and closed by :meth:`aclose`.
        self.auth_proxy: AuthProxy | None = None
        self._jwks: JWKSVerifier | None = None
        self._handle_signals = handle_signals
        self._previous_handlers: dict[int, Any] = {}
        #: Started once (a stopped hub is not started again by a late request).
        self.started = False
        self._starting: asyncio.Lock | None = None
        self._router: APIRouter | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the backend, open the task store and start background work. Idempotent.

        Raises:
            ConfigError: a bad JWT key, a JWKS that cannot be fetched, or a bad task store.
            BackendUnavailable: the task store cannot be opened.
        """
        if self.engine.running:
            return
        self.started = True
        if self.authenticate is None:
            await self._start_auth()
        try:
            await self.engine.start()
            try:
                await self.tasks.start()
            except BaseException:
                await self.engine.aclose()
                raise
        except BaseException:
            await self._close_auth()
            raise

    async def _start_auth(self) -> None:
        """Load the JWT key or fetch the JWKS, and open the auth proxy's pool."""
        self.jwt_verifier = JWTVerifier.from_settings(self.settings)
        jwks = JWKSVerifier.from_settings(self.settings)
        if jwks is not None:
            await jwks.start()
            self._jwks = self.jwt_verifier = jwks
        proxy = AuthProxy.from_settings(self.settings)
        if proxy is not None:
            await proxy.start()
            self.auth_proxy = proxy

    async def _close_auth(self) -> None:
        if self.auth_proxy is not None:
            await self.auth_proxy.aclose()
        if self._jwks is not None:
            await self._jwks.aclose()

    async def start_on_request(self) -> None:
        """Start the hub for a request, when no lifespan did: some ASGI servers (daphne)
        run none. Later requests find it running; a hub stopped by :meth:`aclose` stays
        stopped (its requests get 503)."""
        if self.started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if not self.started:
                await self.start()

    async def aclose(self) -> None:
        """End every stream, stop background work and close the backend and the store."""
        if not self.engine.running:
            return
        self.engine.begin_shutdown()
        await self.engine.wait_streams_closed(self.settings.shutdown_grace)
        await self.tasks.aclose()
        await self.engine.aclose()
        await self._close_auth()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """ASGI lifespan: ``FastAPI(lifespan=hub.lifespan)``.

        Besides :meth:`start`/:meth:`aclose`, it chains a SIGTERM/SIGINT handler in front of
        the server's own, so open streams are flushed and ended the moment the server is
        asked to stop (an ASGI server waits for open responses before it runs the lifespan's
        shutdown; without this an SSE stream would hold it until its grace timeout).
        """
        await self.start()
        if self._handle_signals:
            self._install_signal_handlers()
        try:
            yield
        finally:
            self._restore_signal_handlers()
            await self.aclose()

    def begin_shutdown(self) -> None:
        """Refuse new streams (503) and end every open one once its queue is flushed."""
        self.engine.begin_shutdown()

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`begin_shutdown` was called."""
        return self.engine.shutting_down

    async def wait_streams_closed(self, timeout: float) -> bool:
        """Wait until every stream has ended; abort the ones still stuck after ``timeout``."""
        return await self.engine.wait_streams_closed(timeout)

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
        return await self.engine.publish(
            topic,
            data,
            type=type,
            priority=priority,
            users=users,
            retry=retry,
            idempotency_key=idempotency_key,
        )

    async def append(self, draft: Draft, *, idempotency_key: str | None = None) -> Appended:
        """Publish a validated draft (any topic, ``tasks/...`` included)."""
        return await self.engine.append(draft, idempotency_key=idempotency_key)

    # -- streams -------------------------------------------------------------------------

    async def open_stream(
        self,
        patterns: Sequence[str],
        *,
        principal: Principal = ANONYMOUS,
        last_event_id: str | None = None,
        ip: str | None = None,
    ) -> Connection:
        """Open a stream on ``patterns`` (see :meth:`Engine.open_stream
        <tidings.engine.Engine.open_stream>`); its server calls ``conn.finish()`` at the end.
        """
        return await self.engine.open_stream(
            patterns, principal=principal, last_event_id=last_event_id, ip=ip
        )

    def close_stream(self, conn: Connection) -> None:
        """Unregister ``conn`` and free its slot."""
        self.engine.close_stream(conn)

    def statistics(self) -> HubStatistics:
        """Counts for ``/stats``: connections by topic, task, user and IP; event counters."""
        return self.engine.statistics()

    # -- presence, history, the server API -------------------------------------------------

    async def presence(
        self,
        topic: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        principal: Principal | None = None,
    ) -> PresencePage:
        """The open streams subscribed to ``topic`` exactly (not through a pattern), on every
        node: ``count`` in all, and a page of ``connections`` (connection id, user, node,
        since) in connection-id order.

        Changes reach it within a tick (50 ms) of a stream opening or ending; a node that
        dies without cleaning up drops out within about 20 s. Pass ``next_cursor`` as ``cursor``
        for the next page (``None`` on the last).

        Args:
            limit: entries per page, 1 to 1000.
            principal: check that this caller may subscribe to ``topic`` (the HTTP API
                does); application code leaves it out.

        Raises:
            InvalidTopic: ``topic`` is not a topic.
            InvalidEvent: a bad ``limit`` or ``cursor``.
            NotAuthorized: ``principal`` may not subscribe to ``topic``.
            BackendUnavailable: the backend cannot be read.

        Example::

            page = await hub.presence("rooms/lobby")
            print(page.count, [entry.user for entry in page.connections])
        """
        return await self.engine.presence(topic, limit=limit, cursor=cursor, principal=principal)

    async def history(
        self,
        topic: str,
        *,
        since: str | None = None,
        limit: int = 100,
        principal: Principal | None = None,
    ) -> History:
        """The events of ``topic`` after the id ``since`` (from the oldest kept without it),
        oldest first, as a stream delivers them: at most ``limit`` (1 to 100) per page.

        ``complete`` is false when the history window no longer holds every event after
        ``since`` (evicted by size or age, or an id of another history): the events then
        start at the oldest kept, and the caller should refetch its state. ``next_since``
        is the id to ask from for the next page, ``None`` when nothing more is kept.

        Args:
            principal: check that this caller may subscribe to ``topic``, and leave out
                events targeted at other users (as a stream does).

        Raises:
            InvalidTopic: ``topic`` is not a topic.
            InvalidEvent: a bad ``limit``, or ``since`` over 256 bytes.
            NotAuthorized: ``principal`` may not subscribe to ``topic``.
            BackendUnavailable: the backend cannot be read.
        """
        return await self.engine.history(topic, since=since, limit=limit, principal=principal)

    async def topics(self, *, limit: int = 100, cursor: str | None = None) -> TopicPage:
        """The topics with at least one stream subscribed to them exactly, on every node,
        with their counts, in topic order: ``limit`` (1 to 1000) per page.

        Raises:
            InvalidEvent: a bad ``limit`` or ``cursor``.
            BackendUnavailable: the backend cannot be read.
        """
        return await self.engine.topics(limit=limit, cursor=cursor)

    async def disconnect(
        self, *, user: str | None = None, topic: str | None = None, reason: str | None = None
    ) -> int:
        """End the streams of ``user`` and/or on ``topic``, on every node; how many ended.

        ``topic`` may be a pattern: a stream is ended when one of its subscriptions lies
        within it (``rooms/**`` ends streams on ``rooms/a`` and ``rooms/*``; ``rooms/a``
        does not end one on ``rooms/**``). With both, a stream must match both. Each
        stream first gets ``event: disconnect`` with ``{"reason"}``, then a clean end; its
        client reconnects as usual, and its credentials decide whether it may come back.

        Raises:
            InvalidEvent: neither ``user`` nor ``topic``; a reason over 1024 characters.
            InvalidTopic: ``topic`` is not a topic or pattern.
            BackendUnavailable: the backend cannot be reached (nothing was ended).
        """
        return await self.engine.disconnect(user=user, topic=topic, reason=reason)

    def connections(self) -> list[Connection]:
        """The open streams (a copy)."""
        return self.engine.connections()

    @property
    def backend(self) -> Backend:
        """The backend (ids, history, fan-out between nodes)."""
        return self.engine.backend

    @property
    def limits(self) -> Limits:
        """Rate limits and stream caps."""
        return self.engine.limits

    # -- embedding -----------------------------------------------------------------------

    @property
    def router(self) -> APIRouter:
        """A FastAPI router with every tidings endpoint, for ``app.include_router``."""
        if self._router is None:
            self._router = build_router(self)
        return self._router

    @property
    def dashboard_router(self) -> APIRouter:
        """A FastAPI router of the live dashboard (``GET /`` and its files), for an embedded
        app that wants it: ``app.include_router(hub.dashboard_router, prefix="/sse")``."""
        return build_router(self, DASHBOARD)

    def asgi_app(self) -> ASGIApp:
        """A complete ASGI app (endpoints, dashboard, OpenAPI, CORS, and this hub's
        lifespan) for ``app.mount`` or any ASGI server."""
        return create_app(self, lifespan=self.lifespan, version=__version__)


def serve_app(settings: Settings) -> ASGIApp:
    """The app ``tidings serve`` runs: a hub on ``settings`` whose streams the server ends
    itself on SIGTERM (a module-level function, so ``--workers`` can spawn it).

    Raises:
        ConfigError: a setting the hub refuses (a bad JWT key, say).
    """
    hub = Hub(settings, handle_signals=False)
    # A bad key stops start-up here, in one line, not in the lifespan.
    JWTVerifier.from_settings(settings)
    return hub.asgi_app()


def app_from_env() -> ASGIApp:
    """A hub's ASGI app with settings from ``TIDINGS_*`` variables, for any ASGI server
    that takes a factory (``granian --factory tidings.hub:app_from_env``)."""
    return Hub(load_settings()).asgi_app()
