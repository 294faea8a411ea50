"""One request and its response, as the ASGI application sees them (``receive``/``send``).

The protocol (:mod:`tidings.server.protocol`) parses the request and feeds its body here;
the application reads it with ``receive`` and answers with ``send``. The response head is
written with the first body bytes (one ``write``), framed by ``content-length`` when the
length is known (given, or the whole body in one message) and chunked otherwise.

A stream of the hub is handed over instead (the :data:`~tidings.web.streaming.ATTACH`
message): the protocol writes its head and attaches the connection to the socket, and the
application's task ends; from then on no task serves the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from tidings.engine import Connection
from tidings.engine.frames import chunk
from tidings.server.heads import CHUNKED_END, response_head
from tidings.web.streaming import ATTACH

__all__ = ["RequestCycle"]

logger = logging.getLogger("tidings.server")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ERROR_500 = orjson.dumps({"error": {"code": "internal_error", "message": "internal server error"}})
_NO_BODY_STATUSES = frozenset({204, 304})


class Owner(Protocol):
    """What a cycle needs of the connection it runs on (the protocol)."""

    transport: asyncio.Transport

    @property
    def write_paused(self) -> bool: ...

    async def drain(self) -> None: ...

    def resume_reading(self) -> None: ...

    def response_started(self, cycle: RequestCycle, status: int) -> None: ...

    def response_complete(self, cycle: RequestCycle) -> None: ...

    def attach_stream(self, cycle: RequestCycle, conn: Connection, head: bytes) -> None: ...


class RequestCycle:
    """A request's ASGI ``receive`` and ``send``, and the state of its response."""

    __slots__ = (
        "_body_given",
        "_chunked",
        "_continue",
        "_event",
        "_head_only",
        "_headers",
        "_status",
        "body",
        "body_size",
        "disconnected",
        "handed_off",
        "keep_alive",
        "more_body",
        "owner",
        "response_complete",
        "response_started",
        "scope",
    )

    def __init__(
        self,
        owner: Owner,
        scope: dict[str, Any],
        *,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        self.owner = owner
        self.scope = scope
        self.keep_alive = keep_alive
        self._continue = expect_continue
        self._head_only = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.body_size = 0
        self.more_body = True
        #: The last part of the body was given to the application.
        self._body_given = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.handed_off = False
        self._event = asyncio.Event()
        self._status = 0
        #: The response's headers until its head is written, then ``None``.
        self._headers: list[tuple[bytes, bytes]] | None = []
        self._chunked = False

    # -- from the protocol -----------------------------------------------------------

    def feed(self, body: bytes) -> None:
        """More of the request body arrived."""
        self.body.append(body)
        self.body_size += len(body)
        self._event.set()

    def end_body(self) -> None:
        """The request is complete."""
        self.more_body = False
        self._event.set()

    def lost(self) -> None:
        """The client is gone."""
        self.disconnected = True
        self._event.set()

    async def run(self, app: Callable[..., Any]) -> None:
        """Run ``app`` on this request; answer 500 (or cut) if it fails or answers nothing."""
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self._fail()
            raise
        except Exception as exc:
            logger.error("the application failed on a request", exc_info=exc)
            self._fail()
        else:
            if self.handed_off or self.response_complete or self.disconnected:
                return
            if not self.response_started:
                logger.error("the application returned without answering a request")
            else:
                logger.error("the application returned before its response was complete")
            self._fail()

    def _fail(self) -> None:
        """Answer 500 if nothing was sent yet; otherwise end the connection."""
        if self.handed_off or self.response_complete or self.disconnected:
            return
        transport = self.owner.transport
        self.keep_alive = False
        if not self.response_started:
            self.response_started = True
            self.owner.response_started(self, 500)
            head = response_head(
                500,
                [(b"content-type", b"application/json")],
                content_length=len(_ERROR_500),
                close=True,
            )
            transport.write(head + _ERROR_500)
            self._headers = None  # the head is written
            self._complete()
        else:
            transport.close()

    # -- the application's side ------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """The next part of the request body, or ``http.disconnect`` once the client is
        gone or the response is complete."""
        if self._continue:
            self._continue = False
            if not self.owner.transport.is_closing():
                self.owner.transport.write(_CONTINUE)
        # Wait for body bytes, or (the whole body given already) for the end.
        while not (self.disconnected or self.response_complete):
            if self.body or (not self.more_body and not self._body_given):
                break
            if self.more_body:
                self.owner.resume_reading()
            self._event.clear()
            await self._event.wait()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.body_size = 0
        self._body_given = not self.more_body
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict[str, Any]) -> None:
        """Take a response message: its start, body parts, or a stream's hand-over."""
        kind = message["type"]
        owner = self.owner
        if owner.write_paused and not self.disconnected:
            await owner.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got {kind!r}")
            self.response_started = True
            self._status = message["status"]
            self._headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
            owner.response_started(self, self._status)
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected {kind!r} after the response was complete")
        if kind == ATTACH:
            self._attach(message["connection"])
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        data = self._frame(body, more) if self._headers is not None else self._body(body)
        if data:
            owner.transport.write(data)
        if not more:
            self._complete()

    def _frame(self, body: bytes, more: bool) -> bytes:
        """The head and the first body bytes (``self._headers`` is then spent)."""
        headers = self._headers or []
        self._headers = None
        status = self._status
        if self.more_body:
            # Answered before its request body was all in (a 413, say): the rest of the
            # body would be read as the next request. The connection ends with the answer.
            self.keep_alive = False
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"connection" and value.lower() == b"close":
                self.keep_alive = False
        no_body = status in _NO_BODY_STATUSES or status < 200
        if length is not None or no_body:
            head = response_head(status, headers, close=not self.keep_alive)
        elif not more:
            head = response_head(
                status, headers, content_length=len(body), close=not self.keep_alive
            )
        elif self.scope["http_version"] == "1.0":
            # No chunks in HTTP/1.0: the body ends when the connection does.
            self.keep_alive = False
            head = response_head(status, headers, close=True)
        else:
            self._chunked = True
            head = response_head(status, headers, chunked=True, close=not self.keep_alive)
        if self._head_only or no_body:
            return head
        if self._chunked:
            return head + chunk(body) if body else head
        return head + body

    def _body(self, body: bytes) -> bytes:
        if self._head_only or not body:
            return b""
        return chunk(body) if self._chunked else body

    def _complete(self) -> None:
        if self._headers is not None:  # the head was not written (no body message)
            self.owner.transport.write(self._frame(b"", False))
        elif self._chunked and not self._head_only:
            self.owner.transport.write(CHUNKED_END)
        self.response_complete = True
        self._event.set()
        self.owner.response_complete(self)

    def _attach(self, conn: Connection) -> None:
        if self._headers is None:
            raise RuntimeError("a stream is handed over before any body is sent")
        headers = self._headers
        self._headers = None
        head = response_head(self._status, headers, chunked=True, close=True)
        self.handed_off = True
        self.response_complete = True
        self.keep_alive = False
        self.owner.attach_stream(self, conn, head)
