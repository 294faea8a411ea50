"""The SSE response: one writer per stream, one send per wake-up.

Decisions worth knowing before changing this file:

- The writer runs in the request's own task and a second task waits for the client's
  disconnect: two tasks per stream, and none per event.
- Each wake-up sends everything queued as one ASGI body message (one ``write``): events
  published in the same loop tick reach a connection in one syscall.
- A slow client whose queue overflows must be cut *now*, while the writer may be blocked in
  ``send`` waiting for the socket to drain. ASGI gives no way to abort a connection, and
  closing the transport would wait for the unread bytes forever, so under uvicorn the
  writer finds the server's transport once, at the start of the stream, from the request
  task (``run_asgi``'s owner) and aborts it. Under other servers, the request task is
  cancelled instead and the server closes the connection.
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
        self.init_headers({**SSE_HEADERS, **(headers or {})})
        # Content-Length must not be sent for a stream.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = self.conn
        hub = self.hub
        cut = _aborter()
        conn.aborter = cut
        watcher = asyncio.create_task(_watch_disconnect(receive, conn))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            while True:
                chunk = await conn.next_chunk()
                if chunk is None:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if conn.close_reason not in ("slow", "client"):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Our own cut of a slow client (see the module docstring); anything else
            # propagates as usual.
            task = asyncio.current_task()
            if conn.close_reason != "slow" or task is None or task.uncancel() > 0:
                raise
        except OSError:
            conn.close("client")
        finally:
            conn.aborter = None
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            hub.close_stream(conn)


async def _watch_disconnect(receive: Receive, conn: Connection) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            conn.close("client")
            return


def _aborter() -> Callable[[], None]:
    """A function that cuts this request's connection at once (see the module docstring)."""
    task = asyncio.current_task()
    transport = _server_transport(task)
    if transport is not None:
        return transport.abort  # type: ignore[no-any-return]

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
