"""Test streams on plain sockets: read on demand, slow, dropped and resumed.

:class:`Stream` reads with a blocking socket and timeouts rather than an HTTP client,
because a test needs the socket itself: a small receive buffer and a reader that stops
make a slow client; closing it makes a disconnected one. :class:`AsyncStream` runs the
same waits in a worker thread, so an async test's loop stays free.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from typing import Final, Protocol, TypeAlias

import httpx

from tidings._rawhttp import ChunkedDecoder, parse_head, stream_request
from tidings.client.transport import error_from_response
from tidings.engine import Connection
from tidings.errors import StreamEnded
from tidings.wire import EventParser, ServerSentEvent

__all__ = ["FROM_START", "AsyncStream", "Since", "Stream"]


class _FromStart:
    def __repr__(self) -> str:
        return "FROM_START"


class StreamHost(Protocol):
    """Where a test stream connects: the server of a :class:`~tidings.testing.TestHub`."""

    @property
    def port(self) -> int: ...

    @property
    def prefix(self) -> str: ...

    def open_connections(self) -> list[Connection]:
        """The hub's open streams, now."""
        ...

    def track(self, stream: Stream) -> None:
        """Close ``stream`` with the host."""
        ...


#: ``since=FROM_START`` (the default of :meth:`TestHub.collect`): replay everything
#: published since the :class:`TestHub` started (that the hub's history still holds), then
#: go on live.
FROM_START: Final = _FromStart()

#: Where a stream starts: after an event id, :data:`FROM_START`, or ``None`` (live only).
Since: TypeAlias = str | _FromStart | None


class Stream:
    """A live event stream on a real socket, read only when the test asks.

    Made by :meth:`TestHub.stream`. Not reading it makes a slow client; :meth:`close`
    makes a disconnected one; :meth:`resume` reconnects with ``Last-Event-ID``.

    Attributes:
        received: every event read so far, in order.
        comments: the comment lines read so far (the opening comment, ``ping``...).
        last_event_id: the id a reconnect sends: the last ``id:`` read, or the id the
            stream was opened with.
    """

    __test__ = False

    def __init__(
        self,
        live: StreamHost,
        path: str,
        *,
        topics: tuple[str, ...] = (),
        last_event_id: str | None = None,
        token: str | None = None,
        receive_buffer: int | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._live = live
        self.path = path
        self.topics = topics
        self.token = token
        self.receive_buffer = receive_buffer
        self.received: list[ServerSentEvent] = []
        self.comments: list[str] = []
        self.last_event_id: str | None = last_event_id
        self._pending: deque[ServerSentEvent] = deque()
        self._parser = EventParser(on_comment=self.comments.append)
        self._chunks: ChunkedDecoder | None = ChunkedDecoder()
        self._ended = False
        self._connection: Connection | None = None
        self._sock = self._open(timeout)

    # -- opening -----------------------------------------------------------------------

    def _open(self, timeout: float) -> socket.socket:
        live = self._live
        before = set(live.open_connections())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.receive_buffer is not None:
                # Before connect, so the window the hub sees is small from the start.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", live.port))
            sock.sendall(
                stream_request(
                    live.prefix + self.path,
                    host=f"127.0.0.1:{live.port}",
                    topics=self.topics,
                    last_event_id=self.last_event_id,
                    token=self.token,
                )
            )
            head = bytearray()
            while (end := head.find(b"\r\n\r\n")) < 0:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection before answering")
                head += data
            status, headers = parse_head(bytes(head[:end]))
            rest = bytes(head[end + 4 :])
            if status != 200:
                self._refused(sock, status, headers, rest)
            if "chunked" not in headers.get("transfer-encoding", "").lower():
                self._chunks = None
            # The hub registers a stream before it writes a byte of it: once the opening
            # bytes are here, every later publish reaches this stream.
            while not rest:
                rest = sock.recv(65536)
                if not rest:
                    self._ended = True
                    break
            self._feed(rest)
        except BaseException:
            sock.close()
            raise
        new = [c for c in live.open_connections() if c not in before]
        self._connection = new[0] if len(new) == 1 else None
        return sock

    def _refused(
        self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes
    ) -> None:
        length = int(headers.get("content-length", "0") or 0)
        body = bytearray(rest)
        while len(body) < length and (data := sock.recv(65536)):
            body += data
        if status == 204:
            self._ended = True
            raise StreamEnded("the hub answered 204: nothing follows this Last-Event-ID", [])
        response = httpx.Response(status, headers=headers, content=bytes(body))
        raise error_from_response(response)

    # -- reading -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._chunks is not None:
            data = self._chunks.feed(data)
            if self._chunks.done:
                self._ended = True
        for event in self._parser.feed(data):
            self._pending.append(event)

    def _read(self, deadline: float) -> bool:
        """Read once from the socket; ``False`` when the stream is over."""
        if self._ended:
            return False
        self._sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return True
        except OSError:  # reset: the hub cut the stream
            data = b""
        if not data:
            self._ended = True
            return False
        self._feed(data)
        return True

    def _pop(self) -> ServerSentEvent:
        event = self._pending.popleft()
        self.received.append(event)
        if event.id:
            self.last_event_id = event.id
        return event

    def next(self, timeout: float = 5.0) -> ServerSentEvent:
        """The next event.

        Raises:
            TimeoutError: none arrived within ``timeout`` seconds.
            StreamEnded: the server ended the stream first.
        """
        deadline = time.monotonic() + timeout
        while not self._pending:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no event on {self._name()} within {timeout:g}s")
            if not self._read(deadline) and not self._pending:
                raise StreamEnded(f"the hub ended {self._name()}", [])
        return self._pop()

    def take(self, n: int, timeout: float = 5.0) -> list[ServerSentEvent]:
        """The next ``n`` events (``timeout`` is for all of them)."""
        return self._collect(n=n, until=None, timeout=timeout)

    def until(self, *types: str, timeout: float = 5.0) -> list[ServerSentEvent]:
        """The events up to and including the next one whose type is in ``types``."""
        return self._collect(n=None, until=frozenset(types), timeout=timeout)

    def rest(self, timeout: float = 5.0) -> list[ServerSentEvent]:
        """Every event until the server ends the stream (a task stream ends with its task)."""
        return self._collect(n=None, until=None, timeout=timeout)

    def _collect(
        self, *, n: int | None, until: frozenset[str] | None, timeout: float
    ) -> list[ServerSentEvent]:
        deadline = time.monotonic() + timeout
        events: list[ServerSentEvent] = []
        while n is None or len(events) < n:
            if self._pending:
                events.append(self._pop())
                if until is not None and events[-1].event in until:
                    return events
                continue
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"waited {timeout:g}s on {self._name()} for {_wanted(n, until)}; got "
                    f"{len(events)} event(s): {[e.event for e in events][:20]}"
                )
            if not self._read(deadline) and not self._pending:
                if n is None and until is None:
                    return events
                raise StreamEnded(
                    f"the hub ended {self._name()} before {_wanted(n, until)}; got "
                    f"{len(events)} event(s): {[e.event for e in events][:20]}",
                    events,
                )
        return events

    # -- ending ----------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """Whether the stream is over: ended by the server (as far as read) or closed."""
        return self._ended

    def close(self) -> None:
        """Disconnect now, as a client that goes away (the hub frees the stream)."""
        self._ended = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def resume(self, *, timeout: float = 5.0) -> Stream:
        """A new stream that reconnects from :attr:`last_event_id` (closing this one first).

        As a browser does after a drop: the hub replays what was missed, exactly once.
        """
        self.close()
        stream = Stream(
            self._live,
            self.path,
            topics=self.topics,
            last_event_id=self.last_event_id,
            token=self.token,
            receive_buffer=None,
            timeout=timeout,
        )
        self._live.track(stream)
        return stream

    @property
    def cut(self) -> bool:
        """Whether the hub has cut this stream for being slow (its queue overflowed).

        The stream is known to the hub as the one that appeared while it opened, so open
        it while no other stream is opening.

        Raises:
            RuntimeError: other streams opened at the same moment; it is ambiguous.
        """
        conn = self._connection
        if conn is None:
            raise RuntimeError(
                "cannot tell which of the hub's streams this is: another stream opened "
                "at the same moment"
            )
        return conn.close_reason == "slow"

    def wait_cut(self, timeout: float = 10.0) -> None:
        """Wait until the hub has cut this stream for being slow (SPEC §4: bounded queue).

        Raises:
            TimeoutError: it was not cut within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while not self.cut:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the hub did not cut {self._name()} within {timeout:g}s")
            time.sleep(0.005)  # polling the hub's record of this stream

    def drain(self, timeout: float = 5.0) -> list[ServerSentEvent]:
        """Read what is left in the socket after a cut, until the connection is gone."""
        deadline = time.monotonic() + timeout
        while self._read(deadline) and time.monotonic() < deadline:
            pass
        events = []
        while self._pending:
            events.append(self._pop())
        return events

    def _name(self) -> str:
        return f"{self.path}?" + "&".join(self.topics) if self.topics else self.path

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStream:
    """The async twin of :class:`Stream` (made by :meth:`TestHub.astream`).

    Each wait runs the sync stream's in a worker thread, so the test's event loop stays
    free meanwhile. Attributes are the sync stream's.
    """

    __test__ = False

    def __init__(self, stream: Stream) -> None:
        self.sync = stream

    @property
    def received(self) -> list[ServerSentEvent]:
        """Every event read so far."""
        return self.sync.received

    @property
    def last_event_id(self) -> str | None:
        """The id a reconnect sends."""
        return self.sync.last_event_id

    @property
    def ended(self) -> bool:
        """Whether the stream is over."""
        return self.sync.ended

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        """See :meth:`Stream.next`."""
        return await asyncio.to_thread(self.sync.next, timeout)

    async def take(self, n: int, timeout: float = 5.0) -> list[ServerSentEvent]:
        """See :meth:`Stream.take`."""
        return await asyncio.to_thread(self.sync.take, n, timeout)

    async def until(self, *types: str, timeout: float = 5.0) -> list[ServerSentEvent]:
        """See :meth:`Stream.until`."""
        return await asyncio.to_thread(lambda: self.sync.until(*types, timeout=timeout))

    async def rest(self, timeout: float = 5.0) -> list[ServerSentEvent]:
        """See :meth:`Stream.rest`."""
        return await asyncio.to_thread(self.sync.rest, timeout)

    async def wait_cut(self, timeout: float = 10.0) -> None:
        """See :meth:`Stream.wait_cut`."""
        await asyncio.to_thread(self.sync.wait_cut, timeout)

    async def resume(self, *, timeout: float = 5.0) -> AsyncStream:
        """See :meth:`Stream.resume`."""
        return AsyncStream(await asyncio.to_thread(lambda: self.sync.resume(timeout=timeout)))

    def close(self) -> None:
        """See :meth:`Stream.close`."""
        self.sync.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


def _wanted(n: int | None, until: frozenset[str] | None) -> str:
    if until is not None:
        return "an event of type " + " or ".join(sorted(until))
    return f"{n} event(s)" if n is not None else "the end"
