"""The standalone server's lean streaming path: streams without an ASGI task.

Decisions worth knowing before changing this file:

- ``tidings serve`` runs uvicorn with this protocol. Every request but ``GET /events`` and
  ``GET /tasks/{id}/stream`` goes to the ASGI app exactly as uvicorn would send it. Those
  two are answered here, with the same functions the routes use
  (:func:`tidings.web.routes.events_response`,
  :func:`tidings.web.task_routes.task_stream_response`): the same checks, limits, errors
  and headers. A short-lived task opens the stream (auth and
  replay may await); from then on the stream costs no task at all. The hub writes its
  chunks straight to the transport, and the protocol's ``connection_lost`` tells the hub
  the client is gone. A stream then holds a protocol, a parser, a transport and a
  :class:`~tidings.connection.Connection`: a few KiB instead of a request task with its
  ASGI call stack (docs/performance.md).
- The stream's response says ``connection: close``: the connection ends with the stream,
  after the final empty chunk (a clean end of the chunked body).
- What ASGI middleware would add is added here: CORS headers for allowed origins, the
  client address from trusted proxies' forwarded headers, the access log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import urllib.parse
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tidings._http import GuardedHttpToolsProtocol
from tidings.web.routes import events_response, header
from tidings.web.streaming import EventStreamResponse
from tidings.web.task_routes import task_id_of, task_stream_response

if TYPE_CHECKING:
    from tidings.connection import Connection
    from tidings.hub import Hub

__all__ = ["StreamingProtocol", "cors_headers", "find_hub"]


#: Shared by every stream in place of its own (empty) pipelining deque.
_NO_PIPELINE: deque[Any] = deque(maxlen=0)


def find_hub(app: Any) -> Hub | None:
    """The hub served by ``app`` (set by :func:`tidings.web.app.create_app`), if any."""
    for _ in range(16):
        if app is None:
            return None
        state = getattr(app, "state", None)
        hub = getattr(state, "tidings_hub", None) if state is not None else None
        if hub is not None:
            return hub  # type: ignore[no-any-return]
        app = getattr(app, "app", None)
    return None


#: :func:`find_hub`, once per app: a protocol is made for every connection.
_hub_of = functools.lru_cache(maxsize=8)(find_hub)


def cors_headers(origins: list[str], origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """The CORS headers of a simple (non-preflight) response, as CORSMiddleware sends them."""
    if origin is None or not origins:
        return []
    if "*" in origins:
        return [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-expose-headers", b"Retry-After"),
        ]
    if origin.decode("latin-1") not in origins:
        return []
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"Retry-After"),
        (b"vary", b"Origin"),
    ]


class StreamingProtocol(GuardedHttpToolsProtocol):
    """uvicorn's httptools protocol that serves ``GET /events`` itself (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hub: Hub | None = _hub_of(self.app)
        self._streaming = False
        self._stream: Connection | None = None
        self._opening: asyncio.Task[None] | None = None

    # -- routing ---------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        stream = None
        if (
            self._hub is not None
            and self.parser.get_method() == b"GET"
            and not self.parser.should_upgrade()
        ):
            parsed = httptools.parse_url(self.url)
            stream = _stream_of(parsed.path)
        if stream is None:
            super().on_headers_complete()
            return
        self._in_head = False
        self._streaming = True
        path, task_id = stream
        scope = self.scope
        scope["method"] = "GET"
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + parsed.path
        scope["query_string"] = parsed.query or b""
        http_version = self.parser.get_http_version()
        if http_version != "1.1":
            scope["http_version"] = http_version
        self._opening = self.loop.create_task(self._open(dict(scope), task_id))
        # Nothing of the request is needed any more; free it for the stream's lifetime.
        self.scope = None  # type: ignore[assignment]
        self.headers = []
        self.url = b""

    def on_body(self, body: bytes) -> None:
        if not self._streaming:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._streaming:
            super().on_message_complete()
            return
        self._disarm()
        self._in_head = True
        self._head_received = 0

    def data_received(self, data: bytes) -> None:
        if self._streaming:
            return  # anything after a stream's request is ignored: the stream ends it
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self._stream
        if conn is not None:
            conn.close("client")
        super().connection_lost(exc)

    def shutdown(self) -> None:
        # The hub ends streams itself (flushed, then a clean end of the body).
        if not self._streaming:
            super().shutdown()

    # -- the stream ------------------------------------------------------------------

    async def _open(self, scope: dict[str, Any], task_id: str | None) -> None:
        hub = self._hub
        assert hub is not None
        try:
            if self.config.proxy_headers and _has_forwarded(scope["headers"]):
                scope = await _forwarded(scope, self.config.forwarded_allow_ips)
            request = Request(scope)
            response = await _stream_response(hub, request, task_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.logger.exception("failed to open a stream")
            self._write_response(Response(status_code=500), scope)
            return
        finally:
            self._opening = None
        if not isinstance(response, EventStreamResponse):
            self._write_response(response, scope)
            return
        conn = response.conn
        transport = self.transport
        if transport.is_closing():
            hub.close_stream(conn)
            return
        head = _stream_head(self.server_state.default_headers, response.raw_headers)
        cors = self._cors(scope)
        if cors:
            # After the other headers, before the blank line that ends the head.
            head = head[:-2] + b"".join(n + b": " + v + b"\r\n" for n, v in cors) + b"\r\n"
        self._log_access(scope, 200)
        self._stream = conn
        # The connection reads nothing more (the stream ends it): drop the parser and the
        # pipelining queue (only used when a response completes, which a stream's never
        # does here), which every idle stream would otherwise keep.
        self.parser = None  # type: ignore[assignment]
        self.pipeline = _NO_PIPELINE
        conn.aborter = transport.abort
        # The head leaves with the opening bytes (and any replay) in one write.
        conn.attach(transport, self._ended, head)

    def _ended(self) -> None:
        """The stream is over: end the body cleanly (unless cut) and close."""
        conn = self._stream
        if conn is None:
            return
        transport = self.transport
        if conn.close_reason not in ("slow", "client") and not transport.is_closing():
            transport.write(b"0\r\n\r\n")
            transport.close()
        conn.detach()
        hub = self._hub
        if hub is not None:
            # Not now: this may run inside the hub's dispatch, which iterates the index.
            self.loop.call_soon(hub.close_stream, conn)

    def _write_response(self, response: Response, scope: dict[str, Any]) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        status = response.status_code
        reason = HTTPStatus(status).phrase.encode("ascii")
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += [n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers]
        headers = [(n, v) for n, v in response.raw_headers if n != b"content-length"]
        head += [n + b": " + v + b"\r\n" for n, v in headers]
        head += [n + b": " + v + b"\r\n" for n, v in self._cors(scope)]
        body = response.body
        if status not in (204, 304):
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        transport.write(b"".join(head) + body)
        self._log_access(scope, status)
        transport.close()

    def _refusal_headers(self) -> list[tuple[bytes, bytes]]:
        # A refused request (408, 431, a JSON 400) answers an allowed origin too, so the
        # page can read why, if its Origin header arrived before the refusal (a 414 comes
        # while the URL is read, before any header).
        hub = self._hub
        if hub is None or not hub.settings.cors_origin:
            return []
        origin = next((v for n, v in self.headers or () if n == b"origin"), None)
        return cors_headers(hub.settings.cors_origin, origin)

    def _cors(self, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        hub = self._hub
        if hub is None or not hub.settings.cors_origin:
            return []
        return cors_headers(hub.settings.cors_origin, header(scope, b"origin"))

    def _log_access(self, scope: dict[str, Any], status: int) -> None:
        if not self.access_log or not self.access_logger.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        query = scope.get("query_string", b"")
        path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        self.access_logger.info(
            '%s - "%s %s HTTP/%s" %d', where, "GET", path, scope["http_version"], status
        )


async def _stream_response(hub: Hub, request: Request, task_id: str | None) -> Response:
    if task_id is None:
        return await events_response(hub, request)
    return await task_stream_response(hub, request, task_id)


def _stream_of(raw_path: bytes) -> tuple[str, str | None] | None:
    """``(path, task_id)`` when ``raw_path`` is a stream this protocol serves, else ``None``.

    ``/events`` gives ``("/events", None)``; ``/tasks/<id>/stream`` gives the task id.
    """
    if raw_path == b"/events":
        return "/events", None
    if not (raw_path.startswith(b"/tasks/") and raw_path.endswith(b"/stream")):
        return None
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "%" in path:
        path = urllib.parse.unquote(path)
    task_id = task_id_of(path, "stream")
    return None if task_id is None else (path, task_id)


_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto")
_proxy_middlewares: dict[str, ProxyHeadersMiddleware] = {}


async def _forwarded(scope: dict[str, Any], trusted: Any) -> dict[str, Any]:
    """``scope`` with the client address from trusted proxies' headers (as uvicorn does).

    A request without forwarded headers has nothing to take from them: most streams open
    without any, and skip the middleware (which parses the trusted list and the client's
    address).
    """
    if not _has_forwarded(scope["headers"]):
        return scope
    key = repr(trusted)
    middleware = _proxy_middlewares.get(key)
    if middleware is None:
        middleware = _proxy_middlewares[key] = ProxyHeadersMiddleware(_ignore, trusted)
    # It rewrites ``scope`` in place before calling the app.
    with contextlib.suppress(Exception):
        await middleware(scope, _never, _never)  # type: ignore[arg-type]
    return scope


def _has_forwarded(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name in _FORWARDED for name, _ in headers)


class _StreamHead:
    """A stream's response head, without CORS headers, built once per second.

    Streams share their headers (:class:`EventStreamResponse`), and the server's default
    headers change once a second (uvicorn replaces the list when ``date`` changes).
    """

    def __init__(self) -> None:
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head = b""

    def __call__(
        self, default_headers: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        if default_headers is self._defaults and headers == self._headers:
            return self._head
        head = [b"HTTP/1.1 200 OK\r\n"]
        head += [n + b": " + v + b"\r\n" for n, v in default_headers]
        head += [n + b": " + v + b"\r\n" for n, v in headers]
        head.append(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        self._defaults, self._headers, self._head = default_headers, list(headers), b"".join(head)
        return self._head


_stream_head = _StreamHead()


async def _ignore(*args: Any) -> None:
    """The middleware's app: the rewritten scope is all we want from it."""


async def _never(*args: Any) -> Any:  # pragma: no cover - the middleware never calls it
    raise RuntimeError("unused")
