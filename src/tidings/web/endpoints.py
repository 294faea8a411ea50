"""The hub's own endpoints (SPEC §3): thin handlers over the calls the Python API offers.

Each handler takes the hub (a :class:`~tidings.web.context.HubContext`) and the request,
and returns a response or raises; :mod:`tidings.web.routes` renders what they raise in the
SPEC's error shape, and lists every endpoint once.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from tidings.auth.jwks import JWKSVerifier
from tidings.errors import (
    BackendUnavailable,
    BadRequest,
    InvalidEvent,
    InvalidTopic,
    NotAuthorized,
    RequestTooLarge,
)
from tidings.events import too_deep
from tidings.topics import check_patterns, check_publishable
from tidings.web.context import HubContext
from tidings.web.errors import error_response, validation_message
from tidings.web.metrics import render_metrics
from tidings.web.security import client_ip, principal_key, resolve_principal
from tidings.web.streaming import EventStreamResponse

__all__ = [
    "ERRORS",
    "PublishRequest",
    "PublishResponse",
    "events",
    "header",
    "healthz",
    "metrics",
    "publish",
    "read_json_object",
    "readyz",
    "require_admin",
    "stats",
    "timed_option",
]


class PublishRequest(BaseModel):
    """Body of ``POST /publish``.

    Strict, as the task bodies are: a field of the wrong JSON type is a 422, never coerced
    (``"retry": "5"``, ``true`` or ``5.0`` is not a number of milliseconds).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    topic: str = Field(description="Topic to publish on, e.g. 'chat/general'.")
    type: str = Field("message", min_length=1, max_length=256, description="SSE event type.")
    data: Any = Field(None, description="Any JSON value; sent as compact JSON.")
    priority: Literal["low", "normal", "high"] = "normal"
    users: list[str] | None = Field(
        None, description="Deliver only to connections of these user ids."
    )
    retry: int | None = Field(None, ge=0, description="Reconnect delay to send, in ms.")
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Safe retries: repeated keys within "
        "5 minutes publish nothing and return the first id.",
    )


class PublishResponse(BaseModel):
    """Body of a ``202`` answer to ``POST /publish``."""

    id: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Malformed request"),
        (401, "Missing or invalid credentials"),
        (403, "Not allowed"),
        (404, "Not found"),
        (409, "Conflict"),
        (413, "Too large"),
        (415, "Not sent as application/json (a write the auth proxy authenticates)"),
        (422, "Invalid fields"),
        (429, "Too many requests"),
        (502, "The auth proxy's answer is not the documented one"),
        (503, "Shutting down, backend or auth proxy unavailable"),
    )
}


async def read_json_object(
    request: Request, limit: int, *, nested: str = "the body"
) -> dict[str, Any]:
    """The request body as a JSON object, read with a size limit.

    An object too deep for the parser (over 1024 levels) is answered as a value nested
    deeper than :data:`~tidings.events.MAX_JSON_DEPTH` is wherever it is checked: a 422
    naming ``nested``, the body's free-form field (``data``, ``metadata``, ...), where the
    depth can only be.

    Raises:
        RequestTooLarge: (413) the body is over ``limit``.
        BadRequest: (400) the body is not JSON, or not an object.
        InvalidEvent: (422) the body is an object nested too deep to parse.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is over {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestTooLarge(f"request body is over {limit} bytes")
    except ClientDisconnect:
        # The client left, or the server cut a body that stopped arriving: nobody reads
        # this answer, and it is no server error.
        raise BadRequest("the client disconnected", code="client_disconnected") from None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        reason = str(exc).lower()
        if ("depth" in reason or "recursion" in reason) and body.lstrip()[:1] == b"{":
            raise too_deep(nested) from None
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


async def events(hub: HubContext, request: Request) -> Response:
    """``GET /events``: authorize, register and answer a stream."""
    engine = hub.engine
    if engine.shutting_down:
        return error_response(503, "shutting_down", "the hub is shutting down")
    # Attempts are counted before any other work, so a flood is cut cheaply (SPEC §5).
    ip = client_ip(request)
    engine.limits.check_connect(ip)
    patterns, resume, timed = _stream_query(request.scope["query_string"])
    sent = header(request.scope, b"last-event-id")
    if sent is not None:
        resume = sent.decode("latin-1")
    principal = await resolve_principal(hub, request)
    conn = await engine.open_stream(
        patterns, principal=principal, last_event_id=resume or None, ip=ip, timed=timed
    )
    return EventStreamResponse(conn)


#: Query strings longer than this are parsed every time instead of being remembered.
_CACHED_QUERY_BYTES = 512


def _stream_query(query: bytes) -> tuple[tuple[str, ...], str | None, bool]:
    """The checked topics, the ``last_event_id`` and the ``time`` option of a stream's
    query string.

    Raises:
        InvalidTopic: no topic, more than 32, or a bad one.
        BadRequest: ``time`` is not ``1``/``true`` or ``0``/``false``.
    """
    if len(query) <= _CACHED_QUERY_BYTES:
        return _remembered_stream_query(query)
    return _parse_stream_query(query)


def _parse_stream_query(query: bytes) -> tuple[tuple[str, ...], str | None, bool]:
    params = QueryParams(query)
    return (
        check_patterns(params.getlist("topic")),
        params.get("last_event_id"),
        timed_option(params.get("time")),
    )


def timed_option(value: str | None) -> bool:
    """A stream's ``time`` option: ``1``/``true`` asks for each event's publish time in a
    ``time:`` field (a tidings extension of SPEC §1; EventSource ignores the field).

    Raises:
        BadRequest: any other value but ``0``/``false``.
    """
    if value is None or value in ("0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequest("time: expected 1, true, 0 or false", code="invalid_time")


#: Streams are opened by fleets of clients with the same few query strings: parsing and
#: checking them is a fifth of opening a stream (docs/performance.md). Errors are not
#: remembered (``lru_cache`` keeps returns only).
_remembered_stream_query = functools.lru_cache(maxsize=1024)(_parse_stream_query)


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), without building a headers map."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def publish(hub: HubContext, request: Request) -> Response:
    """``POST /publish``: ``202`` with the event's id."""
    engine = hub.engine
    principal = await resolve_principal(hub, request)
    engine.limits.check_publish(principal_key(principal, request))
    raw = await read_json_object(request, hub.settings.max_body_bytes, nested="data")
    try:
        body = PublishRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent(validation_message(exc), code="invalid_request") from None
    check_publishable(body.topic)
    if not principal.may_publish(body.topic):
        raise NotAuthorized(f"not allowed to publish on {body.topic!r}")
    try:
        event_id = await engine.publish(
            body.topic,
            body.data,
            type=body.type,
            priority=body.priority,
            users=body.users,
            retry=body.retry,
            idempotency_key=body.idempotency_key,
        )
    except InvalidTopic as exc:
        raise InvalidEvent(exc.message, code="invalid_topic") from None
    return Response(orjson.dumps({"id": event_id}), status_code=202, media_type="application/json")


async def stats(hub: HubContext, request: Request) -> Response:
    """``GET /stats``: connection and event counters (admins only when auth is on)."""
    await require_admin(hub, request)
    s = hub.engine.statistics()
    tasks_active = await _active_tasks(hub)
    body = {
        "connections": {
            "total": s.connections,
            "by_topic": s.by_topic,
            "by_task": s.by_task,
            "by_user": s.by_user,
        },
        "events": {
            "published": s.published,
            "delivered": s.delivered,
            "conflated": s.conflated,
            "dropped": s.dropped,
            "slow_disconnects": s.slow_disconnects,
        },
        "tasks": {"active": tasks_active},
        "uptime_seconds": round(s.uptime_seconds, 3),
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def metrics(hub: HubContext, request: Request) -> Response:
    """``GET /metrics``: the same counters in Prometheus text format."""
    await require_admin(hub, request)
    proxy, verifier = hub.auth_proxy, hub.jwt_verifier
    body, content_type = render_metrics(
        hub.engine.statistics(),
        await _active_tasks(hub),
        auth_proxy=None if proxy is None else proxy.statistics(),
        jwks=verifier.statistics() if isinstance(verifier, JWKSVerifier) else None,
    )
    return Response(body, media_type=content_type)


async def healthz(hub: HubContext, request: Request) -> Response:
    """``GET /healthz``: the process is up."""
    return JSONResponse({"status": "ok"})


async def readyz(hub: HubContext, request: Request) -> Response:
    """``GET /readyz``: the backend is reachable (503 while not, or while shutting down)."""
    engine = hub.engine
    if engine.shutting_down:
        return error_response(503, "shutting_down", "the hub is shutting down")
    if not await engine.backend.ping():
        return error_response(503, "backend_unavailable", "the backend is unreachable")
    return JSONResponse({"status": "ready"})


async def _active_tasks(hub: HubContext) -> int | None:
    """Tasks pending or running; ``None`` while the store cannot be read (Redis down): the
    counters are most needed in an outage, so ``/stats`` and ``/metrics`` still answer."""
    try:
        return await hub.tasks.count_active()
    except BackendUnavailable:
        return None


async def require_admin(hub: HubContext, request: Request) -> None:
    """Let admins through (everyone when auth is off).

    Raises:
        NotAuthorized: 401 without credentials, 403 for a caller who is not an admin.
    """
    if hub.authenticate is None and not hub.settings.auth_enabled:
        return
    principal = await resolve_principal(hub, request)
    if not principal.admin and not principal.unrestricted:
        raise NotAuthorized("admin only")
