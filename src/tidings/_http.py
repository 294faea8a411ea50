"""uvicorn's httptools protocol with limits on the request head and a request deadline.

Why this exists: with httptools, uvicorn bounds neither the headers (a client may send
megabytes of them, or thousands, and httptools buffers them all) nor the time a client
takes to send its request, so a client that never finishes its request line holds a socket
forever (slowloris). uvicorn's ``timeout_keep_alive`` only runs *between* requests, and
``h11_max_incomplete_event_size`` only applies to the h11 protocol. This subclass adds:

- a head budget: the request line plus headers may take ``max_head_bytes``; a longer URL is
  answered ``414``, longer headers ``431`` (JSON error body, then the connection closes);
- JSON for a request the parser refuses (``400 bad_request``), where uvicorn answers in
  plain text (SPEC §3: every error is JSON);
- a request deadline: from the moment a connection opens (or a new request on a kept-alive
  connection begins) the client has ``request_timeout`` seconds to send the whole request,
  body included. A client still sending its head gets ``408``; one that sent nothing is
  closed quietly (as uvicorn closes idle keep-alive connections); one stuck in its body is
  cut (the application sees a disconnect). Once a request is complete no deadline applies,
  so an event stream may stay open for hours.

Everything is refused before the application runs, so none of it takes a stream slot, a
rate-limit token or a task. ``tidings serve`` passes this class to uvicorn through
``functools.partial`` (picklable, so ``--workers`` spawns keep it).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.logging import TRACE_LOG_LEVEL
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

__all__ = ["GuardedHttpToolsProtocol"]

logger = logging.getLogger("tidings.http")

#: Seconds a refused connection is kept to drain what the client is still sending.
LINGER = 2.0


_local = threading.local()
os.register_at_fork(after_in_child=lambda: _local.__dict__.clear())


def current_loop() -> asyncio.AbstractEventLoop:
    """The running loop, remembered per thread.

    A protocol is made for every connection, and ``asyncio.get_event_loop()`` (what uvicorn
    calls when it is given no loop) makes a ``getpid`` system call each time on Python 3.11.
    One thread runs one loop at a time, so the remembered loop is the current one while it
    runs; a forked child forgets it.
    """
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or not loop.is_running():
        loop = _local.loop = asyncio.get_running_loop()
    return loop


@dataclass(frozen=True, slots=True)
class _Shared:
    """What every connection of one server has in common, looked up once."""

    logger: logging.Logger
    access_logger: logging.Logger
    access_log: bool
    asgi_version: str
    #: The address every connection is made to, when the server listens on one address.
    #: Taken from the settings: the server must bind ``config.host:config.port`` itself,
    #: as ``tidings serve`` does (with or without ``--workers``), not be handed sockets.
    address: tuple[str, int] | None


@functools.lru_cache(maxsize=8)
def _shared(config: Config) -> _Shared:
    access_logger = logging.getLogger("uvicorn.access")
    address = None
    if config.uds is None and config.fd is None and config.port:
        try:
            ip = ipaddress.ip_address(config.host)
        except ValueError:  # a host name may stand for several addresses
            ip = None
        if ip is not None and not ip.is_unspecified:
            address = (str(ip), config.port)
    return _Shared(
        logger=logging.getLogger("uvicorn.error"),
        access_logger=access_logger,
        access_log=access_logger.hasHandlers(),
        asgi_version=config.asgi_version,
        address=address,
    )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; httptools wraps it."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a request-head size budget and a request deadline.

    Args:
        max_head_bytes: most bytes of request line plus headers.
        request_timeout: seconds to send a whole request, from connect or its first byte.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        max_head_bytes: int = 32768,
        request_timeout: float = 10.0,
    ) -> None:
        # uvicorn's ``HttpToolsProtocol.__init__``, with what all the connections of a
        # server share looked up once per server (loggers, the loop): a protocol is made
        # for every connection. tests/test_http_guard.py checks that this sets every
        # attribute uvicorn's own sets, so an upgrade cannot leave one out.
        if not config.loaded:
            config.load()
        shared = _shared(config)
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or current_loop()
        self.logger = shared.logger
        self.access_logger = shared.access_logger
        self.access_log = shared.access_log
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.ws_protocol_class = config.ws_protocol_class
        self.root_path = config.root_path
        self.asgi_version = shared.asgi_version  # type: ignore[assignment]
        self.limit_concurrency = config.limit_concurrency
        self.app_state = app_state
        self.timeout_keep_alive_task = None
        self.timeout_keep_alive = config.timeout_keep_alive
        self.server_state = server_state
        self.connections = server_state.connections
        self.tasks = server_state.tasks
        self.transport = None  # type: ignore[assignment]
        self.flow = None  # type: ignore[assignment]
        self.server = None
        self.client = None
        self.scheme = None
        self.pipeline = deque()
        self.scope = None  # type: ignore[assignment]
        self.headers = None  # type: ignore[assignment]
        self.expect_100_continue = False
        self.cycle = None  # type: ignore[assignment]
        self._shared = shared
        self.max_head_bytes = max_head_bytes
        self.request_timeout = request_timeout
        #: Reading a request head (no request yet, or between requests).
        self._in_head = True
        #: Bytes received while reading the current head: an upper bound of its size.
        self._head_received = 0
        self._url_bytes = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        #: After a refusal: read and drop what the client still sends, then close.
        self._discarding = False

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvicorn's, without asking the kernel for the server's address when the server
        # listens on one address (one system call less per connection).
        self.connections.add(self)
        self.transport = transport
        self.flow = FlowControl(transport)
        self.server = self._shared.address or get_local_addr(transport)
        self.client = get_remote_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        if self.logger.level <= TRACE_LOG_LEVEL:
            prefix = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
            self.logger.log(TRACE_LOG_LEVEL, "%sHTTP connection made", prefix)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._in_head:
            self._head_received += len(data)
        super().data_received(data)
        # A head still incomplete after this chunk is all head, and httptools buffers a
        # header until it is complete, so the callbacks alone cannot bound it. (A long URL
        # was refused already: httptools hands it over piece by piece, in on_url.)
        if (
            self._in_head
            and self._head_received > self.max_head_bytes
            and not self._discarding
            and not self.transport.is_closing()
        ):
            self._refuse(431, "headers_too_large", "the request headers are too large")

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this when parsing fails: a request that is not HTTP (a garbage
        # line, ``Content-Length: abc``, a bad chunk size), or one our callbacks stopped on
        # purpose. Either way the answer has the SPEC's JSON error shape, not uvicorn's
        # plain text.
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            refusal = (400, "bad_request", "the request is not valid HTTP/1.1")
        self._refuse(*refusal)

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._url_bytes = 0
        self._header_bytes = 0
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_head_bytes:
            self._refusal = (414, "uri_too_long", "the request URL is too long")
            raise _Refused
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._url_bytes + self._header_bytes > self.max_head_bytes:
            self._refusal = (431, "headers_too_large", "the request headers are too large")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The request is all in: no deadline while the response runs (streams are long).
        self._disarm()
        self._in_head = True
        self._head_received = 0

    # -- deadline ------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        responding = self.cycle is not None and not self.cycle.response_complete
        if self._in_head and not responding and self._head_received == 0:
            # Nothing of a request arrived (an idle or preconnected socket): close quietly,
            # as for keep-alive. An unasked-for 408 could be read by a client as the answer
            # to the request it is about to send.
            self.transport.close()
        elif self._in_head and not responding:
            self._refuse(408, "request_timeout", "the request took too long to arrive")
        else:
            # A body that stopped arriving: the application is waiting for it and owns the
            # response, so cut the connection; the application sees a disconnect.
            logger.info("cut a client that stopped sending its request body")
            self.transport.close()

    # -- refusal -------------------------------------------------------------------------

    def _refusal_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers for a refusal besides the error body's (a subclass adds CORS)."""
        return []

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with the JSON error body and close, unless a response runs."""
        self._disarm()
        transport = self.transport
        if transport.is_closing() or self._discarding:
            return
        client = f"{self.client[0]}" if self.client else "unknown"
        logger.info("refused a request from %s: %s %s", client, status, code)
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.response_complete
            and (self._in_head or cycle.response_started)
        ):
            # Another request's response is on its way (pipelining), or this one's has
            # begun: no room for ours. (A request refused in its body, before its answer
            # began, gets ours; its application sees a disconnect once we close.)
            transport.close()
            return
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("ascii"))]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\n")
        for name, value in self._refusal_headers():
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        transport.write(b"".join(head) + body)
        # Lingering close (as nginx does): closing with unread request bytes in the socket
        # makes the kernel send a reset, which can destroy our answer before the client
        # reads it. So end our side, drop what still arrives, and close on the client's
        # EOF (uvicorn's eof_received) or after LINGER seconds at most.
        self._discarding = True
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self.loop.call_later(LINGER, transport.close)
