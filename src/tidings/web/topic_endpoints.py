"""A topic's presence and history (SPEC §3): thin handlers over ``hub.presence`` and
``hub.history``.

The topic is a path segment, URL-encoded (``/topics/chat%2Fgeneral/presence``); the route
also takes it with its slashes as they are (``/topics/chat/general/presence``). A caller
sees a topic's presence and history only if it may subscribe to it (else 403), which
the engine checks, as for a stream.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from tidings.errors import InvalidEvent
from tidings.web.context import HubContext
from tidings.web.security import resolve_principal

__all__ = [
    "HistoryResponse",
    "PresenceResponse",
    "history",
    "int_query",
    "iso_time",
    "json_response",
    "presence",
]


class PresenceConnection(BaseModel):
    connection_id: str
    user: str | None = Field(description="The stream's user id; null when anonymous.")
    node: str = Field(description="The hub process that serves the stream.")
    since: str = Field(description="When the stream opened, ISO 8601 UTC.")


class PresenceResponse(BaseModel):
    """Body of ``GET /topics/{topic}/presence``."""

    topic: str
    count: int = Field(description="Open streams on the topic exactly, on every node.")
    connections: list[PresenceConnection]
    next_cursor: str | None = Field(description="The cursor of the next page; null on the last.")


class HistoryEvent(BaseModel):
    id: str
    type: str
    topic: str
    data: Any = Field(None, description="The published data, as a stream delivers it.")
    published_at: str = Field(description="ISO 8601 UTC.")


class HistoryResponse(BaseModel):
    """Body of ``GET /topics/{topic}/history``."""

    topic: str
    events: list[HistoryEvent]
    complete: bool = Field(
        description="False when the history no longer holds every event after `since`."
    )
    next_since: str | None = Field(description="The id to ask from next; null when no more.")


def int_query(params: QueryParams, name: str, default: int) -> int:
    """The integer query parameter ``name`` (``default`` when absent).

    Raises:
        InvalidEvent: (422) it is not an integer.
    """
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidEvent(
            f"{name}: expected an integer (got {raw[:40]!r})", code="invalid_request"
        ) from None


def iso_time(seconds: float) -> str:
    """A Unix time as ISO 8601 UTC, to the millisecond: ``2025-01-31T12:00:00.250Z``."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_response(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


async def presence(hub: HubContext, request: Request) -> Response:
    """``GET /topics/{topic}/presence``: who is subscribed to the topic, on every node."""
    principal = await resolve_principal(hub, request)
    params = request.query_params
    page = await hub.engine.presence(
        request.path_params["topic"],
        limit=int_query(params, "limit", 100),
        cursor=params.get("cursor"),
        principal=principal,
    )
    return json_response(
        {
            "topic": page.topic,
            "count": page.count,
            "connections": [
                {
                    "connection_id": entry.connection_id,
                    "user": entry.user,
                    "node": entry.node,
                    "since": iso_time(entry.since),
                }
                for entry in page.connections
            ],
            "next_cursor": page.next_cursor,
        }
    )


async def history(hub: HubContext, request: Request) -> Response:
    """``GET /topics/{topic}/history``: the topic's events after ``since``, oldest first."""
    principal = await resolve_principal(hub, request)
    params = request.query_params
    page = await hub.engine.history(
        request.path_params["topic"],
        since=params.get("since"),
        limit=int_query(params, "limit", 100),
        principal=principal,
    )
    return json_response(
        {
            "topic": page.topic,
            "events": [
                {
                    "id": event.id,
                    "type": event.type,
                    "topic": event.topic,
                    # The payload as published, not parsed and written again.
                    "data": orjson.Fragment(event.payload),
                    "published_at": iso_time(event.time),
                }
                for event in page.events
            ],
            "complete": page.complete,
            "next_since": page.next_since,
        }
    )
