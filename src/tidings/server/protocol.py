"""The standalone server's HTTP/1.1 connection: httptools parsing, limits, ASGI cycles, and
streams written straight to the socket.

Decisions worth knowing before changing this file:

- **Every request goes to the application.** The protocol parses, checks the request head,
  builds the ASGI scope and runs a :class:`~tidings.server.cycle.RequestCycle`; the app's
  routes decide everything about the answer (``GET /events`` is answered in one place).
  The scope advertises the :data:`~tidings.web.streaming.ATTACH` extension: a stream's
  response hands its connection over, and the protocol attaches it to the transport. From
  then on the stream costs no task: the dispatcher writes its chunks, ``connection_lost``
  tells the engine the client is gone, and the protocol ends the body cleanly when the
  engine says the stream is over (a stream's response says ``connection: close``).
- **Limits before the application.** The request line plus headers may take
  ``max_head_bytes`` (a longer URL is a 414, longer headers a 431); a request that is not
  HTTP is a JSON 400; and from the moment a connection opens (or a kept-alive one starts
  its next request) the client has ``request_timeout`` seconds to send the whole request,
  body included (slowloris). A client still sending its head gets a 408; one that sent
  nothing is closed quietly; one stuck in its body is cut. Refusals carry the SPEC's
  error shape and the CORS headers of an allowed origin, and end with a lingering close
  (the answer is not destroyed by a reset). Once a request is complete no deadline
  applies: a stream may stay open for hours.
- **Keep-alive and pipelining.** Requests on one connection are answered in order; a
  request that arrives while one is answered waits (reading pauses until its turn). An
  idle kept-alive connection is closed after ``keep_alive`` seconds.
- **Backpressure.** The transport's flow control holds the application's ``send`` while
  the client does not read; a request body the application has not read yet pauses
  reading past 64 KiB.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import deque
from typing import Any, cast

import httptools
import orjson

from tidings.engine import Connection
from tidings.server.cycle import RequestCycle
from tidings.server.heads import CHUNKED_END, response_head
from tidings.server.state import ServerState
from tidings.web.streaming import ATTACH

__all__ = ["HttpProtocol"]

logger = logging.getLogger("tidings.http")
access_logger = logging.getLogger("tidings.access")

#: Seconds a refused connection is kept to drain what the client is still sending.
LINGER = 2.0
#: Request body bytes buffered before reading pauses until the application reads them.
BODY_HIGH_WATER = 64 * 1024

_EXTENSIONS: dict[str, Any] = {ATTACH: {}}


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; httptools wraps it."""


class HttpProtocol(asyncio.Protocol):
    """One client connection of the standalone server (see the module)."""

    __slots__ = (
        "_body_paused",
        "_cycle",
        "_deadline",
        "_discarding",
        "_drain",
        "_head_received",
        "_header_bytes",
        "_headers",
        "_idle",
        "_in_head",
        "_pipeline",
        "_refusal",
        "_stream",
        "_url",
        "client",
        "parser",
        "scheme",
        "state",
        "transport",
    )

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        #: Reading a request head (no request yet, or between requests).
        self._in_head = True
        #: Bytes received while reading the current head: an upper bound of its size.
        self._head_received = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        #: After a refusal: read and drop what the client still sends, then close.
        self._discarding = False
        #: The cycle whose request is being read (the newest one).
        self._cycle: RequestCycle | None = None
        #: Cycles answered in order: the first is running, the others wait their turn.
        self._pipeline: deque[RequestCycle] = deque()
        self._drain: asyncio.Future[None] | None = None
        self._body_paused = False
        self._stream: Connection | None = None

    # -- connection --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but act as one.
        self.transport = cast(asyncio.Transport, transport)
        state = self.state
        state.opened(self)
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
        if self.transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._arm(state.request_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.closed(self)
        self._disarm()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        conn = self._stream
        if conn is not None:
            conn.close("client")
        for cycle in self._pipeline:
            cycle.lost()
        if self._cycle is not None:
            self._cycle.lost()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if self._discarding or parser is None:
            return  # a refused request's rest, or anything after a stream's request
        if self._in_head:
            self._head_received += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: the request is answered as a plain one, and the
            # connection ends with it.
            if self._cycle is not None:
                self._cycle.keep_alive = False
            self.parser = None
            return
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            self._refuse(*(refusal or (400, "bad_request", "the request is not valid HTTP/1.1")))
            return
        # A head still incomplete after this chunk is all head, and httptools buffers a
        # header until it is complete, so the callbacks alone cannot bound it. (A long URL
        # was refused already: httptools hands it over piece by piece, in on_url.)
        if self._in_head and self._head_received > self.state.max_head_bytes:
            self._refuse(431, "headers_too_large", "the request headers are too large")

    # -- flow control ------------------------------------------------------------------

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self.state.loop.create_future()

    def resume_writing(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    @property
    def write_paused(self) -> bool:
        """Whether the transport holds too much unsent data (the application waits)."""
        return self._drain is not None and not self._drain.done()

    async def drain(self) -> None:
        """Wait until the transport takes data again (or the client is gone)."""
        if self._drain is not None:
            await asyncio.shield(self._drain)

    def resume_reading(self) -> None:
        """The application reads the body: let more arrive."""
        if self._body_paused and not self._pipeline_waiting():
            self._body_paused = False
            self.transport.resume_reading()

    def _pipeline_waiting(self) -> bool:
        return len(self._pipeline) > 1

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._deadline is None:
            self._arm(self.state.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.state.max_head_bytes:
            self._refusal = (414, "uri_too_long", "the request URL is too long")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if len(self._url) + self._header_bytes > self.state.max_head_bytes:
            self._refusal = (431, "headers_too_large", "the request headers are too large")
            raise _Refused
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        assert parser is not None
        state = self.state
        headers = self._headers
        parsed = httptools.parse_url(self._url)
        raw_path = parsed.path
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = urllib.parse.unquote(path)
        client, scheme = self.client, self.scheme
        if state.proxies:
            client, forwarded = state.proxies.client(client, headers)
            scheme = forwarded or scheme
        http_version = parser.get_http_version()
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": http_version,
            "server": state.address,
            "client": client,
            "scheme": scheme,
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": headers,
            "state": state.app_state.copy(),
            "extensions": _EXTENSIONS,
        }
        expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)
        keep_alive = parser.should_keep_alive() and not state.shutting_down
        cycle = RequestCycle(self, scope, keep_alive=keep_alive, expect_continue=expect)
        self._cycle = cycle
        self._pipeline.append(cycle)
        if len(self._pipeline) == 1:
            state.run(cycle)
        else:
            # Its turn comes when the one before it is answered; read nothing more till then.
            self._pause_body()

    def on_body(self, body: bytes) -> None:
        cycle = self._cycle
        if cycle is None or cycle.response_complete:
            return
        cycle.feed(body)
        if cycle.body_size > BODY_HIGH_WATER:
            self._pause_body()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_received = 0
        # The request is all in: no deadline while the response runs (streams are long).
        self._disarm()
        cycle = self._cycle
        if cycle is not None:
            cycle.end_body()

    def _pause_body(self) -> None:
        if not self._body_paused:
            self._body_paused = True
            self.transport.pause_reading()

    # -- from the cycles ---------------------------------------------------------------

    def response_started(self, cycle: RequestCycle, status: int) -> None:
        """Log the request (the access log), once its status is known."""
        if access_logger.isEnabledFor(logging.INFO):
            scope = cycle.scope
            client = scope["client"]
            where = f"{client[0]}:{client[1]}" if client else "-"
            query = scope["query_string"]
            target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                where,
                scope["method"],
                target,
                scope["http_version"],
                status,
            )

    def response_complete(self, cycle: RequestCycle) -> None:
        """``cycle``'s response is written: answer the next request, or wait for one."""
        pipeline = self._pipeline
        if pipeline and pipeline[0] is cycle:
            pipeline.popleft()
        if self._cycle is cycle and not pipeline:
            self._cycle = None
        transport = self.transport
        if transport.is_closing() or cycle.handed_off:
            return
        if not cycle.keep_alive or self.state.shutting_down:
            if cycle.more_body:
                self._linger()  # the request's body is not all in: its rest is unread
            else:
                transport.close()
            return
        if pipeline:
            self.state.run(pipeline[0])
            if self._body_paused and len(pipeline) == 1:
                self._body_paused = False
                transport.resume_reading()
        elif self._deadline is None:
            self._idle = self.state.loop.call_later(self.state.keep_alive, self._idle_timeout)

    def attach_stream(self, cycle: RequestCycle, conn: Connection, head: bytes) -> None:
        """Write ``conn``'s stream to this socket from now on (see the module)."""
        transport = self.transport
        self._pipeline.clear()
        self._cycle = None
        if transport.is_closing():
            conn.close("client")
            conn.finish()
            return
        self._stream = conn
        # The connection reads nothing more (the stream ends it): drop the parser.
        self.parser = None
        self._disarm()
        conn.aborter = transport.abort
        # The head leaves with the opening bytes (and any replay) in one write.
        conn.attach(transport, self._stream_ended, head)
        if self.state.shutting_down:
            conn.close("shutdown")

    def _stream_ended(self) -> None:
        """The stream is over: end the body cleanly (unless cut) and close."""
        conn = self._stream
        if conn is None:
            return
        transport = self.transport
        if conn.close_reason not in ("slow", "client") and not transport.is_closing():
            transport.write(CHUNKED_END)
            transport.close()
        conn.detach()
        # Not now: this may run inside the dispatcher's pass, which iterates the index.
        self.state.loop.call_soon(conn.finish)

    # -- shutdown ----------------------------------------------------------------------

    def shutdown(self, *, streams: bool) -> None:
        """The server stops: close an idle connection, let a request being answered finish
        (its connection closes after it), and end a stream cleanly if ``streams`` (else its
        app ends it)."""
        conn = self._stream
        if conn is not None:
            if streams:
                conn.close("shutdown")
        elif not self._pipeline and not self.transport.is_closing():
            self.transport.close()

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.state.loop.call_later(seconds, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _idle_timeout(self) -> None:
        self._idle = None
        if not self._pipeline and self._head_received == 0 and not self.transport.is_closing():
            self.transport.close()

    def _on_deadline(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport.is_closing():
            return
        responding = bool(self._pipeline) and not self._in_head
        if self._in_head and not self._pipeline and self._head_received == 0:
            # Nothing of a request arrived (an idle or preconnected socket): close quietly.
            # An unasked-for 408 could be read by a client as the answer to the request it
            # is about to send.
            transport.close()
        elif self._in_head and not responding:
            self._refuse(408, "request_timeout", "the request took too long to arrive")
        else:
            # A body that stopped arriving: the application is waiting for it and owns the
            # response, so cut the connection; the application sees a disconnect.
            logger.info("cut a client that stopped sending its request body")
            transport.close()

    # -- refusal -----------------------------------------------------------------------

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with the JSON error body and close, unless a response runs."""
        self._disarm()
        transport = self.transport
        if transport.is_closing() or self._discarding:
            return
        client = self.client[0] if self.client else "unknown"
        logger.info("refused a request from %s: %s %s", client, status, code)
        running = self._pipeline[0] if self._pipeline else None
        if running is not None and not running.response_complete and running.response_started:
            # This request's (or an earlier one's) response has begun: no room for ours.
            transport.close()
            return
        for cycle in self._pipeline:
            cycle.lost()  # the application sees a disconnect once we close
        self._pipeline.clear()
        self._cycle = None
        body = orjson.dumps({"error": {"code": code, "message": message}})
        origin = next((v for n, v in self._headers if n == b"origin"), None)
        cors = self.state.cors.simple_headers(origin.decode("latin-1")) if origin else []
        headers = [(b"content-type", b"application/json"), *cors]
        head = response_head(status, headers, content_length=len(body), close=True)
        transport.write(head + body)
        self._linger()

    def _linger(self) -> None:
        """Close after an answer given while request bytes may still be unread.

        Lingering close (as nginx does): closing with unread request bytes in the socket
        makes the kernel send a reset, which can destroy our answer before the client
        reads it. So end our side, drop what still arrives, and close on the client's EOF
        or after LINGER seconds at most.
        """
        transport = self.transport
        self._disarm()
        self._discarding = True
        if self._body_paused:
            self._body_paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self.state.loop.call_later(LINGER, transport.close)
