"""The server API (SPEC §3): admins end streams and list the topics in use, on every node.

Thin handlers over ``hub.disconnect`` and ``hub.topics``; admins only when auth is on
(401 without credentials, 403 for others), as ``/stats``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tidings.errors import InvalidEvent, InvalidTopic
from tidings.web.context import HubContext
from tidings.web.endpoints import read_json_object, require_admin
from tidings.web.errors import validation_message
from tidings.web.topic_endpoints import int_query, json_response

__all__ = [
    "DisconnectRequest",
    "DisconnectResponse",
    "TopicsResponse",
    "disconnect",
    "topics",
]


class DisconnectRequest(BaseModel):
    """Body of ``POST /admin/disconnect``: a user, a topic (or pattern), or both."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user: str | None = Field(None, min_length=1, description="End this user's streams.")
    topic: str | None = Field(
        None, description="End the streams subscribed within this topic or pattern."
    )
    reason: str | None = Field(
        None, max_length=1024, description="Sent to each stream in its `disconnect` event."
    )


class DisconnectResponse(BaseModel):
    """Body of a ``200`` answer to ``POST /admin/disconnect``."""

    disconnected: int = Field(description="Streams ended, on every node that answered.")


class TopicSubscribers(BaseModel):
    topic: str
    subscribers: int


class TopicsResponse(BaseModel):
    """Body of ``GET /admin/topics``."""

    topics: list[TopicSubscribers]
    next_cursor: str | None


async def disconnect(hub: HubContext, request: Request) -> Response:
    """``POST /admin/disconnect``: end matching streams on every node."""
    await require_admin(hub, request)
    raw = await read_json_object(request, hub.settings.max_body_bytes)
    try:
        body = DisconnectRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent(validation_message(exc), code="invalid_request") from None
    try:
        ended = await hub.engine.disconnect(user=body.user, topic=body.topic, reason=body.reason)
    except InvalidTopic as exc:
        # In a body, as for a publish: an invalid field (422).
        raise InvalidEvent(f"topic: {exc.message}", code="invalid_topic") from None
    return json_response({"disconnected": ended})


async def topics(hub: HubContext, request: Request) -> Response:
    """``GET /admin/topics``: the topics with subscribers on every node, with their counts."""
    await require_admin(hub, request)
    params = request.query_params
    page = await hub.engine.topics(
        limit=int_query(params, "limit", 100), cursor=params.get("cursor")
    )
    return json_response(
        {
            "topics": [
                {"topic": item.topic, "subscribers": item.subscribers} for item in page.topics
            ],
            "next_cursor": page.next_cursor,
        }
    )
