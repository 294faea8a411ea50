"""The SSE response: a stream served through ASGI, or handed to the server's own socket.

Decisions worth knowing before changing this file:

- **Plain ASGI everywhere but ``tidings serve``.** Under any ASGI server (uvicorn,
  hypercorn, granian, daphne) the response's task is the writer: it waits for the
  connection's next chunk (everything queued since the last one, joined) and sends it
  through ASGI ``send``: one ``send`` per tick, whatever the number of events. A second
  task waits for the client's disconnect. The application's middleware sees every byte.
- **Handed off under ``tidings serve``.** The standalone server advertises the ASGI
  extension :data:`ATTACH` in the request's scope. Then the response sends its start as
  usual (middleware still adds headers), sends one ``{"type": ATTACH, "connection":
  conn}`` message, and returns: the server writes the stream to its socket from the
  dispatcher's flush, with no task per stream (docs/architecture.md).
- **A slow client is cut by ending its response.** Over its bound the connection's queue
  is discarded (counted) and the writer ends the response as soon as its current ``send``
  returns (the server's flow control holds it while the client does not read). A client
  that reads nothing at all keeps that ``send`` waiting: the engine then cancels the task
  (:data:`CUT_AFTER`), and the server closes the connection. The client resumes from its
  last id and history fills the hole.
- On a clean end (shutdown, maximum age, token expiry, a task's terminal event) the writer
  flushes the queue and ends the body, so clients see a proper end of the chunked body
  and reconnect; they never see a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.engine import Connection

__all__ = ["ATTACH", "CUT_AFTER", "SSE_HEADERS", "EventStreamResponse"]

#: The ASGI extension (and message type) of a server that writes streams itself.
ATTACH = "tidings.stream.attach"

#: Seconds a cut slow client's writer may stay blocked in ``send`` (what the server's
#: buffers hold still draining to the client) before it is cancelled.
CUT_AFTER = 30.0

SSE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


class EventStreamResponse(Response):
    """Streams a :class:`~tidings.engine.Connection` until it ends."""

    media_type = "text/event-stream"
    charset = "utf-8"
    #: The raw headers of a stream with no headers of its own, built once.
    _plain_headers: tuple[tuple[bytes, bytes], ...] | None = None

    def __init__(
        self,
        conn: Connection,
        headers: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        self.conn = conn
        self.status_code = status_code
        self.background = None
        self.body = b""
        if headers is None and EventStreamResponse._plain_headers is not None:
            # Every stream without headers of its own sends the same ones (its own list:
            # middlewares add to the headers they are sent).
            self.raw_headers = list(EventStreamResponse._plain_headers)
            return
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        # Content-Length must not be sent for a stream.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        if headers is None:
            EventStreamResponse._plain_headers = tuple(self.raw_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = self.conn
        start = {"type": "http.response.start", "status": self.status_code}
        if ATTACH in (scope.get("extensions") or {}):
            try:
                await send({**start, "headers": self.raw_headers})
                await send({"type": ATTACH, "connection": conn})
            except BaseException:
                conn.close("client")
                conn.finish()
                raise
            return
        task = asyncio.current_task()
        try:
            await send({**start, "headers": self.raw_headers})
            conn.aborter = _canceller(task)
            await self._write(conn, receive, send)
            if conn.close_reason != "client":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # The engine's cut of a client that reads nothing (or of one still stuck when
            # the shutdown grace ran out): the server closes the connection. Anything else
            # propagates as usual.
            if conn.close_reason != "slow" or task is None or task.uncancel() > 0:
                raise
        except OSError:
            conn.close("client")
        finally:
            conn.aborter = None
            conn.finish()

    async def _write(self, conn: Connection, receive: Receive, send: Send) -> None:
        """Send each chunk through ASGI ``send`` until the stream is over."""
        watcher = asyncio.create_task(_watch_disconnect(receive, conn))
        try:
            while True:
                chunk = await conn.next_chunk()
                if chunk is None:
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _watch_disconnect(receive: Receive, conn: Connection) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.close("client")
            return


def _canceller(task: asyncio.Task[Any] | None) -> Callable[[], None]:
    """The stream's aborter: cancel this request's task if it is still running
    :data:`CUT_AFTER` seconds later (its writer blocked in ``send``, see the module)."""

    def cancel() -> None:
        if task is not None and not task.done():
            task.cancel()

    def later() -> None:
        if task is not None and not task.done():
            task.get_loop().call_later(CUT_AFTER, cancel)

    return later
