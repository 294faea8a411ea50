"""The SSE response: one writer per stream, one send per wake-up.

Decisions worth knowing before changing this file:

- Under uvicorn (``tidings serve``, and embedded apps run by uvicorn) the stream writes
  *directly* to the server's transport: the response start goes through ASGI ``send``,
  then the hub's per-tick flush writes each connection's queued frames as one HTTP chunk
  (``<size>\r\n<frames>\r\n``) straight to the transport, and the final empty chunk goes
  through ``send`` again, so uvicorn's framing state stays right. The request task only
  waits for the disconnect. One task per stream, no per-event wake-up, one ``write`` per
  tick. The transport is found once, from the request task (``run_asgi``'s owner); it is
  also what lets a slow client be cut *now* (``transport.abort()``): ASGI has no abort, and
  closing a transport waits for the unread bytes forever.
- Under any other server the request task is the writer and sends each chunk through ASGI
  ``send``; a second task waits for the disconnect. A slow client is cut by cancelling
  the request task, and the server closes the connection.
- On a clean end (shutdown, maximum age, token expiry, a task's terminal event) the writer
  flushes the queue and sends the final empty chunk, so clients see a proper end of the
  chunked body and reconnect; they never see a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.connection import Connection

if TYPE_CHECKING:
    from tidings.hub import Hub

__all__ = ["SSE_HEADERS", "EventStreamResponse"]

SSE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


class EventStreamResponse(Response):
    """Streams a :class:`~tidings.connection.Connection` until it ends."""

    media_type = "text/event-stream"
    charset = "utf-8"
    #: The raw headers of a stream with no headers of its own, built once.
    _plain_headers: tuple[tuple[bytes, bytes], ...] | None = None

    def __init__(
        self,
        hub: Hub,
        conn: Connection,
        headers: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        self.hub = hub
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
        task = asyncio.current_task()
        transport = _server_transport(task)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if transport is not None:
                conn.aborter = transport.abort
                await self._run_direct(conn, transport, receive)
            else:
                conn.aborter = _canceller(task)
                await self._run_asgi(conn, receive, send)
            if conn.close_reason not in ("slow", "client"):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif conn.close_reason == "slow" and transport is not None:
                # The transport was aborted: the server learns it on its next loop turn.
                # Returning before that would be, to it, an application that left its
                # response unfinished (uvicorn logs it as an error).
                await _disconnected(receive)
        except asyncio.CancelledError:
            # Our own cut of a slow client under a server we cannot abort (see the module
            # docstring); anything else propagates as usual.
            if conn.close_reason != "slow" or task is None or task.uncancel() > 0:
                raise
        except OSError:
            conn.close("client")
        finally:
            conn.aborter = None
            conn.detach()
            self.hub.close_stream(conn)

    async def _run_direct(self, conn: Connection, transport: Any, receive: Receive) -> None:
        """The hub writes to the transport; this task only waits for the end.

        It waits in ``receive()`` for the client's disconnect; when the hub ends the stream
        (everything written), it wakes this task by cancelling it, so a stream costs one
        task and no wake-up per event.
        """
        task = asyncio.current_task()
        assert task is not None
        ended = False

        def wake() -> None:
            nonlocal ended
            ended = True
            task.cancel()

        try:
            conn.attach(transport, wake)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    conn.close("client")
                    return
        except asyncio.CancelledError:
            if not ended or task.uncancel() > 0:
                raise

    async def _run_asgi(self, conn: Connection, receive: Receive, send: Send) -> None:
        """This task writes each chunk through ASGI ``send``; another waits for the end."""
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


async def _disconnected(receive: Receive) -> None:
    """Wait for the server's ``http.disconnect`` (at most a second: it is on its way)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while (await receive())["type"] != "http.disconnect":
                pass


def _canceller(task: asyncio.Task[Any] | None) -> Callable[[], None]:
    """A function that ends this request at once by cancelling its task."""

    def cancel() -> None:
        if task is not None and not task.done():
            task.cancel()

    return cancel


def _server_transport(task: asyncio.Task[Any] | None) -> Any:
    """uvicorn's transport for the request run by ``task``, or ``None`` elsewhere."""
    if task is None:
        return None
    frame = getattr(task.get_coro(), "cr_frame", None)
    owner = frame.f_locals.get("self") if frame is not None else None
    transport = getattr(owner, "transport", None)
    if transport is not None and callable(getattr(transport, "abort", None)):
        return transport
    return None
