"""``TestHub``: a hub on a real loopback server (tidings' own), run in a background thread.

The server gets a socket bound to port 0 (a free port, with no race to take it) and tells
the test it is ready from its own start-up, not by polling. The hub lives on the
server's loop: the test reaches it through :meth:`TestHub.run` and over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx

from tidings.client.publisher import AsyncPublisher, Publisher
from tidings.engine import Connection
from tidings.hub import Hub, HubStatistics
from tidings.server import Server
from tidings.testing.streams import FROM_START, AsyncStream, Since, Stream, _FromStart
from tidings.types import JSON, Priority
from tidings.wire import ServerSentEvent

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = ["TestHub"]

T = TypeVar("T")


async def _statistics(hub: Hub) -> HubStatistics:
    return hub.statistics()


async def _connections(hub: Hub) -> list[Connection]:
    return hub.connections()


class _Server:
    """tidings' server in a thread, with a readiness signal instead of polling."""

    def __init__(self, app: ASGIApp, hub: Hub, sock: socket.socket) -> None:
        self.hub = hub
        self.sock = sock
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server = Server(app, hub.settings, sockets=[sock])
        self.started = False
        self.thread = threading.Thread(target=self._run, name="tidings-test-hub", daemon=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            # The hub is started before the app's lifespan (which may start it again, a
            # no-op), so it runs even in an app that forgot ``lifespan=hub.lifespan``.
            loop.run_until_complete(self.hub.start())
            loop.run_until_complete(self.server.serve(ready=self._started))
            loop.run_until_complete(self.hub.aclose())
        except BaseException as exc:  # reported to the thread that waits for the server
            self.error = exc
        finally:
            self.ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _started(self) -> None:
        self.started = True
        self.ready.set()

    def start(self, timeout: float) -> None:
        self.thread.start()
        if not self.ready.wait(timeout):
            raise TimeoutError(f"the test hub did not start within {timeout:g}s")
        if self.error is not None:
            raise RuntimeError(f"the test hub did not start: {self.error!r}") from self.error
        if not self.started:
            raise RuntimeError("the test hub did not start (see the log)")

    def stop(self, timeout: float) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.hub.begin_shutdown)
        self.server.stop()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the test hub did not stop within {timeout:g}s")
        if self.error is not None and self.started:
            raise RuntimeError(f"the test hub failed: {self.error!r}") from self.error


class TestHub:
    """A hub on a real loopback server, for tests: sync and async helpers.

    Args:
        app: your ASGI app, with ``hub``'s routes mounted (under ``prefix``); omit it to
            serve a standalone hub (``hub.asgi_app()``).
        hub: the :class:`~tidings.Hub` your app embeds (required with ``app``). Without
            either, a hub is made: memory backend, memory store, ``shutdown_grace=1``, and
            ``**settings`` over those (``queue_size=10``...).
        prefix: where the hub's routes are mounted in ``app`` (``"/sse"``).
        start_timeout: seconds to wait for the server to start.

    Use it as a context manager (sync or async), or call :meth:`start` and :meth:`close`.

    Attributes:
        url: the server's base URL (``http://127.0.0.1:<port>``): your app's routes.
        hub_url: where the hub's routes are (``url + prefix``): give it to a
            ``Publisher``, ``subscribe()`` or ``watch_task()``.
        start_id: the hub's newest event id when the server started:
            ``collect(..., since=FROM_START)`` replays from there.
    """

    __test__ = False

    def __init__(
        self,
        app: ASGIApp | None = None,
        *,
        hub: Hub | None = None,
        prefix: str = "",
        start_timeout: float = 20.0,
        **settings: Any,
    ) -> None:
        if app is not None and hub is None:
            raise TypeError("pass the hub your app embeds: TestHub(app, hub=hub)")
        if hub is not None and settings:
            raise TypeError("settings apply only to the hub TestHub makes; set them on your hub")
        if hub is None:
            options = {"store": "memory", "shutdown_grace": 1.0, **settings}
            hub = Hub(backend=options.pop("backend", "memory"), **options)
        self.hub: Hub = hub
        self.app: ASGIApp = app if app is not None else hub.asgi_app()
        self.prefix = prefix.rstrip("/")
        self.start_timeout = start_timeout
        self.port = 0
        self.url = ""
        self.hub_url = ""
        self.start_id = ""
        self._server: _Server | None = None
        self._streams: list[Stream] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> TestHub:
        """Start the server and wait until it accepts requests (the hub is running)."""
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # port 0: a free port, with no race to take it
        self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.hub_url = self.url + self.prefix
        server = _Server(self.app, self.hub, sock)
        self._server = server
        try:
            server.start(self.start_timeout)
        except BaseException:
            self._server = None
            with contextlib.suppress(Exception):  # the start-up error is the one to show
                server.stop(5)
            sock.close()
            raise
        self.start_id = self.run(self.hub.backend.latest_id())
        return self

    def close(self) -> None:
        """Close the streams opened here, stop the server and the hub.

        Raises:
            RuntimeError: the server or the hub failed while it ran (the cause attached).
            TimeoutError: the server did not stop in time.
        """
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        server, self._server = self._server, None
        if server is not None:
            try:
                server.stop(self.hub.settings.shutdown_grace + 10)
            finally:
                server.sock.close()

    def __enter__(self) -> TestHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> TestHub:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    # -- running code on the hub's loop -----------------------------------------------------

    def _future(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        server = self._server
        if server is None or server.loop is None:
            coro.close()
            raise RuntimeError("the test hub is not running: use `with TestHub(...)`")
        return asyncio.run_coroutine_threadsafe(coro, server.loop)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return self._future(coro).result(timeout)

    def run(self, coro: Awaitable[T], *, timeout: float = 10.0) -> T:
        """Run a coroutine of the hub on the server's loop and return its result.

        ``live.run(hub.tasks.create(total=3))``, ``live.run(hub.tasks.complete(task_id))``.
        """
        return self._call(_awaited(coro), timeout)

    async def arun(self, coro: Awaitable[T]) -> T:
        """The async twin of :meth:`run`: ``await live.arun(hub.tasks.create(...))``."""
        return await asyncio.wrap_future(self._future(_awaited(coro)))

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        data: JSON = None,
        *,
        type: str = "message",
        priority: Priority = "normal",
        users: Iterable[str] | None = None,
    ) -> str:
        """Publish through the hub (as app code would); returns the event's id."""
        return self.run(self.hub.publish(topic, data, type=type, priority=priority, users=users))

    async def apublish(
        self,
        topic: str,
        data: JSON = None,
        *,
        type: str = "message",
        priority: Priority = "normal",
        users: Iterable[str] | None = None,
    ) -> str:
        """The async twin of :meth:`publish`."""
        return await self.arun(
            self.hub.publish(topic, data, type=type, priority=priority, users=users)
        )

    def mark(self) -> str:
        """The hub's newest event id now: ``collect(..., since=live.mark())`` gets only what
        is published after this call."""
        return self.run(self.hub.backend.latest_id())

    def statistics(self) -> HubStatistics:
        """The hub's counters (connections, delivered, dropped, slow disconnects...)."""
        return self._call(_statistics(self.hub))

    # -- clients -------------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` for the server (``base_url`` = :attr:`url`); close it."""
        return httpx.Client(base_url=self.url, **{"timeout": 10.0, **kwargs})

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` for the server (``base_url`` = :attr:`url`)."""
        return httpx.AsyncClient(base_url=self.url, **{"timeout": 10.0, **kwargs})

    def publisher(self, *, token: str | None = None) -> Publisher:
        """A sync :class:`~tidings.client.Publisher` to this hub, as a worker would use."""
        return Publisher(self.hub_url, token=token)

    def async_publisher(self, *, token: str | None = None) -> AsyncPublisher:
        """An :class:`~tidings.client.AsyncPublisher` to this hub."""
        return AsyncPublisher(self.hub_url, token=token)

    # -- streams ---------------------------------------------------------------------------------

    def _since(self, since: Since) -> str | None:
        return self.start_id if isinstance(since, _FromStart) else since

    def stream(
        self,
        topics: str | Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        since: Since = None,
        token: str | None = None,
        receive_buffer: int | None = None,
        timeout: float = 5.0,
    ) -> Stream:
        """Open a stream; it returns once the hub has registered it.

        Args:
            topics: a topic or pattern, or several (``GET /events``).
            task_id: instead of topics, a task's stream (``GET /tasks/{id}/stream``).
            since: a ``Last-Event-ID`` to resume after; :data:`FROM_START` for everything
                the hub holds; ``None`` (default) for live events only (and, for a task,
                its current state first).
            token: a bearer token, when the hub checks them.
            receive_buffer: the socket's receive buffer in bytes; small and unread, it
                makes a slow client.
            timeout: seconds to wait for the hub to answer.

        Raises:
            NotAuthorized, InvalidTopic, TaskNotFound, LimitExceeded...: the hub refused
                the stream (the same errors as the Python client).
            StreamEnded: a task stream answered ``204`` (``since`` was its last event).
        """
        path, names = _target(topics, task_id)
        stream = Stream(
            self,
            path,
            topics=names,
            last_event_id=self._since(since),
            token=token,
            receive_buffer=receive_buffer,
            timeout=timeout,
        )
        self.track(stream)
        return stream

    def open_connections(self) -> list[Connection]:
        """The hub's open streams, now (read on the hub's loop)."""
        return self._call(_connections(self.hub))

    def track(self, stream: Stream) -> None:
        """Close ``stream`` when the test hub closes."""
        self._streams.append(stream)

    async def astream(
        self,
        topics: str | Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        since: Since = None,
        token: str | None = None,
        receive_buffer: int | None = None,
        timeout: float = 5.0,
    ) -> AsyncStream:
        """The async twin of :meth:`stream`: ``async with await live.astream("t") as s``."""
        stream = await asyncio.to_thread(
            lambda: self.stream(
                topics,
                task_id=task_id,
                since=since,
                token=token,
                receive_buffer=receive_buffer,
                timeout=timeout,
            )
        )
        return AsyncStream(stream)

    def collect(
        self,
        topics: str | Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        n: int | None = None,
        until: str | Iterable[str] | None = None,
        since: Since = FROM_START,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> list[ServerSentEvent]:
        """The events of topics or of a task, read over a real stream, parsed.

        By default it reads from the hub's history (``since=FROM_START``): publish first,
        collect after, no race. It stops after ``n`` events, after the first event whose
        type is in ``until`` (included), or when the server ends the stream (a task stream
        ends after the task's last event), whichever comes first.

        Args:
            topics: a topic or pattern, or several.
            task_id: instead of topics, a task: its events from its creation (by default),
                until it ends.
            n: how many events to collect.
            until: an event type (or several) to collect up to.
            since: where to start: :data:`FROM_START`, an event id (``live.mark()``), or
                ``None`` for live events only.
            token: a bearer token.
            timeout: seconds for the whole collection.

        Raises:
            TimeoutError: the events did not all arrive in time (the message lists what
                did).
            StreamEnded: the server ended the stream before ``n`` or ``until``.
            ValueError: neither ``n`` nor ``until`` for topics (a topic stream never ends).
        """
        if task_id is None and n is None and until is None:
            raise ValueError("a topic stream never ends: pass n=... or until=...")
        deadline = time.monotonic() + timeout
        with self.stream(topics, task_id=task_id, since=since, token=token, timeout=timeout) as s:
            left = max(0.001, deadline - time.monotonic())
            if until is not None:
                types = (until,) if isinstance(until, str) else tuple(until)
                events = s._collect(n=n, until=frozenset(types), timeout=left)
            elif n is not None:
                events = s.take(n, timeout=left)
            else:
                events = s.rest(timeout=left)
        self._streams.remove(s)
        return events

    async def acollect(
        self,
        topics: str | Sequence[str] | None = None,
        *,
        task_id: str | None = None,
        n: int | None = None,
        until: str | Iterable[str] | None = None,
        since: Since = FROM_START,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> list[ServerSentEvent]:
        """The async twin of :meth:`collect`."""
        return await asyncio.to_thread(
            lambda: self.collect(
                topics,
                task_id=task_id,
                n=n,
                until=until,
                since=since,
                token=token,
                timeout=timeout,
            )
        )

    def wait_streams(
        self,
        count: int,
        *,
        topic: str | None = None,
        task_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Wait until ``count`` streams are open (on ``topic``, a subscribed pattern, or on
        task ``task_id``): for code under test that opens its own streams.

        Raises:
            TimeoutError: fewer were open after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout

        def open_now() -> int:
            stats = self.statistics()
            if task_id is not None:
                return stats.by_task.get(task_id, 0)
            if topic is not None:
                return stats.by_topic.get(topic, 0)
            return stats.connections

        while (seen := open_now()) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{seen} of {count} streams open after {timeout:g}s")
            time.sleep(0.005)  # polling the hub's count of open streams

    async def await_streams(
        self,
        count: int,
        *,
        topic: str | None = None,
        task_id: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        """The async twin of :meth:`wait_streams`."""
        await asyncio.to_thread(
            lambda: self.wait_streams(count, topic=topic, task_id=task_id, timeout=timeout)
        )


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _target(topics: str | Sequence[str] | None, task_id: str | None) -> tuple[str, tuple[str, ...]]:
    if task_id is not None:
        if topics is not None:
            raise ValueError("pass topics or task_id, not both")
        return f"/tasks/{quote(task_id, safe='')}/stream", ()
    if topics is None:
        raise ValueError("pass topics or task_id")
    return "/events", (topics,) if isinstance(topics, str) else tuple(topics)
