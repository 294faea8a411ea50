"""Request events from any ASGI app, for live dashboards: :class:`RequestEvents`.

Wrap an app (FastAPI, Starlette, anything ASGI) and every HTTP request it serves is
published on a topic as ``request_start``, then ``request_complete`` (or
``request_error`` when the app raised)::

    hub = Hub()
    app = FastAPI(lifespan=hub.lifespan)
    app.include_router(hub.router, prefix="/sse")
    app.add_middleware(RequestEvents, hub=hub, topic="dashboard/requests", exclude=["/sse"])

A browser then watches ``/sse/events?topic=dashboard/requests``. ``hub`` may be an
embedded :class:`~tidings.hub.Hub` or an :class:`~tidings.client.AsyncPublisher` for a hub
elsewhere: anything with the same ``publish``.

Decisions worth knowing before changing this file:

- **Reporting never breaks the app.** A publish that fails (the hub is stopping, the
  backend is down, a rate limit) is logged, once per run of failures, and the request
  goes on as if nothing was watching. ``CancelledError`` is always re-raised.
- **Metadata only.** Events carry the method, the path, the status, the duration and the
  client address; never headers, bodies or the query string (which may hold a ``token``).
  ``request_error`` names the exception's type, not its message (messages can hold
  secrets), and the exception is re-raised unchanged, so the server answers as before.
- **Awaited in line.** Each event is published before the request goes on (start) or
  before the middleware returns (end), so a dashboard sees a request's start before its
  end. With the memory backend that costs microseconds; through Redis or HTTP, a round
  trip per event: exclude hot paths, or sample in your own middleware.
- **Excluding the dashboard itself.** A dashboard's own stream is a request too: list its
  path prefix in ``exclude`` (the hub's prefix, typically), or the feed reports its own
  readers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Iterable
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.errors import InvalidTopic, NotAuthorized, TidingsError
from tidings.topics import check_publishable, validate_topic
from tidings.types import JSON, Priority

__all__ = ["REQUEST_TYPES", "RequestEvents", "SupportsPublish"]

logger = logging.getLogger("tidings.integrations.asgi")

#: The event types :class:`RequestEvents` publishes.
REQUEST_TYPES = ("request_start", "request_complete", "request_error")

#: An incoming ``X-Request-ID`` is reused only when it looks like an id (no injection into
#: dashboards or logs through it).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class SupportsPublish(Protocol):
    """What :class:`RequestEvents` publishes through: a ``Hub`` or an ``AsyncPublisher``.

    ``publish`` returns the event id, and raises a :class:`~tidings.errors.TidingsError`
    when nothing was published.
    """

    def publish(
        self, topic: str, data: JSON = None, *, type: str = "message", priority: str = "normal"
    ) -> Awaitable[str]: ...


class RequestEvents:
    """ASGI middleware: publish every HTTP request's start and end on ``topic``.

    Events (all with ``request_id``, ``method`` and ``path``):

    - ``request_start``: ``client`` (the peer address, or ``null``), ``at`` (Unix time);
    - ``request_complete``: ``status``, ``duration_ms``;
    - ``request_error``: ``error`` (the exception's type name), ``status`` (what the client
      gets: the status sent before the failure, else 500, which the server answers for an
      unhandled error), ``duration_ms``; the exception is re-raised.

    ``request_id`` is the request's ``X-Request-ID`` when it has a plausible one, else a
    random id. WebSocket and lifespan traffic pass through untouched.

    Args:
        app: the ASGI app to wrap.
        hub: where to publish: a :class:`~tidings.hub.Hub`, an
            :class:`~tidings.client.AsyncPublisher`, or anything with their ``publish``.
        topic: the topic of the events (not under ``tasks/``, which is reserved).
        exclude: path prefixes not to report (``"/sse"`` covers ``/sse`` and ``/sse/...``).
        priority: the events' priority (``low``, ``normal``, ``high``).

    Raises:
        InvalidTopic: ``topic`` is not a valid topic, or is reserved.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hub: SupportsPublish,
        topic: str = "requests",
        exclude: Iterable[str] = (),
        priority: Priority = "normal",
    ) -> None:
        validate_topic(topic)
        try:
            check_publishable(topic)
        except NotAuthorized as exc:
            # A mistake in the application's code, found at start-up: a bad topic.
            raise InvalidTopic(exc.message) from None
        self.app = app
        self.hub = hub
        self.topic = topic
        self.priority = priority
        self.exclude = tuple(prefix.rstrip("/") for prefix in exclude)
        self._failing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded(scope["path"]):
            await self.app(scope, receive, send)
            return
        base: dict[str, JSON] = {
            "request_id": _request_id(scope),
            "method": scope["method"],
            "path": scope["path"],
        }
        client = scope.get("client")
        await self._emit(
            "request_start",
            {**base, "client": str(client[0]) if client else None, "at": round(time.time(), 6)},
        )
        status: int | None = None

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            await self._emit(
                "request_error",
                {
                    **base,
                    "error": type(exc).__qualname__,
                    "status": 500 if status is None else status,
                    "duration_ms": _ms_since(started),
                },
            )
            raise
        await self._emit(
            "request_complete", {**base, "status": status, "duration_ms": _ms_since(started)}
        )

    def _excluded(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.exclude)

    async def _emit(self, type: str, data: dict[str, JSON]) -> None:
        try:
            await self.hub.publish(self.topic, data, type=type, priority=self.priority)
        except asyncio.CancelledError:
            raise
        except TidingsError as exc:
            # Once per run of failures: an outage under traffic must not flood the log.
            level = logging.DEBUG if self._failing else logging.WARNING
            logger.log(level, "could not publish %s on %r: %s", type, self.topic, exc)
            self._failing = True
        else:
            if self._failing:
                logger.warning("publishing request events on %r again", self.topic)
            self._failing = False


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex[:16]


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
