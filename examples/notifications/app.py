"""Realtime notifications in a FastAPI app with an embedded hub (see README.md).

The app authenticates its users itself (``authenticate``: a session token from
``/login``), and :class:`Notifier` offers the broadcasts apps ask for — to everyone, to
some users, to subscriptions, to the users whose connections pass a filter, and
notifications with a level and a priority — as a few lines over ``hub.publish``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from tidings import Hub, Principal
from tidings.engine import Connection
from tidings.types import JSON, Priority

PAGE = Path(__file__).with_name("page.html")

#: The topic every user may read: broadcasts to all (or, with ``users=``, to some).
BROADCAST = "broadcast"

Level = Literal["info", "success", "warning", "error"]


@dataclass(frozen=True)
class User:
    """One of the app's users (a real app has a table)."""

    id: str
    name: str
    plan: str = "free"
    admin: bool = False


USERS = {
    user.id: user
    for user in (
        User("123", "Alice", plan="pro"),
        User("456", "Bob"),
        User("1", "Operator", admin=True),
    )
}

#: Session token -> user id. A real app keeps sessions in its database or cache.
SESSIONS: dict[str, str] = {}


def session_token(conn: HTTPConnection) -> str | None:
    """The caller's session token: ``Authorization: Bearer``, or ``?token=`` for
    EventSource (browsers cannot set headers on it)."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return conn.query_params.get("token")


async def authenticate(conn: HTTPConnection) -> Principal | None:
    """tidings' hook (the seed's ``auth_handler``): who is calling, and what they may read.

    Every user may read ``broadcast`` and ``chat/*``; ``users/<id>/**`` (their private
    topics) is always allowed by tidings itself. ``None`` answers 401.
    """
    user_id = SESSIONS.get(session_token(conn) or "")
    if user_id is None:
        return None
    return Principal(user=user_id, subscribe=(BROADCAST, "chat/*"), admin=USERS[user_id].admin)


class Notifier:
    """The broadcasts of a notification system, over :meth:`Hub.publish`.

    Event types: ``data`` (``{"resource", "data"}``), ``notification`` (``{"title",
    "message", "level"}``) and ``message`` (user-to-user, ``{"from", "text"}``).
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def broadcast_data(
        self,
        resource: str,
        data: JSON,
        *,
        user_ids: Iterable[str] | None = None,
        subscriptions: Iterable[str] | None = None,
        priority: Priority = "normal",
    ) -> list[str]:
        """Send ``data`` to everyone, to ``user_ids`` only, or on ``subscriptions``.

        ``subscriptions`` are topics: ``users/123/messages`` reaches the streams
        subscribed to it and those subscribed to ``users/123/**``. A stream subscribed
        to two of the topics gets the event once per topic. Returns the event ids.
        """
        payload = {"resource": resource, "data": data}
        users = list(user_ids) if user_ids is not None else None
        topics = list(subscriptions) if subscriptions is not None else [BROADCAST]
        return [
            await self.hub.publish(topic, payload, type="data", priority=priority, users=users)
            for topic in topics
        ]

    async def broadcast_notification(
        self,
        title: str,
        message: str,
        *,
        level: Level = "info",
        priority: Priority = "normal",
        user_ids: Iterable[str] | None = None,
    ) -> str:
        """A notification for everyone (or ``user_ids``). ``high`` priority events are
        never conflated or dropped while a client catches up."""
        return await self.hub.publish(
            BROADCAST,
            {"title": title, "message": message, "level": level},
            type="notification",
            priority=priority,
            users=list(user_ids) if user_ids is not None else None,
        )

    async def broadcast_where(
        self,
        predicate: Callable[[Connection], bool],
        title: str,
        message: str,
        *,
        level: Level = "info",
        priority: Priority = "normal",
    ) -> str | None:
        """A notification for the users with an open stream that ``predicate`` accepts.

        The filter runs once, now, over this process's streams (``hub.connections()``),
        and picks *users*: the event goes out with ``users=`` (so it reaches every
        stream of those users, and survives a reconnect). ``None`` when nobody matched.
        """
        users = {conn.user for conn in self.hub.connections() if conn.user and predicate(conn)}
        if not users:
            return None
        return await self.broadcast_notification(
            title, message, level=level, priority=priority, user_ids=sorted(users)
        )

    async def send_message(self, sender: str, recipient: str, text: str) -> str:
        """A private message: on ``users/<recipient>/messages``."""
        return await self.hub.publish(
            f"users/{recipient}/messages",
            {"from": sender, "text": text},
            type="message",
            priority="high",
        )


hub = Hub(authenticate=authenticate, store="memory")
notifier = Notifier(hub)
app = FastAPI(lifespan=hub.lifespan, title="notifications")
app.include_router(hub.router, prefix="/sse")  # GET /sse/events?topic=...


async def current_user(request: Request) -> User:
    user_id = SESSIONS.get(session_token(request) or "")
    if user_id is None:
        raise HTTPException(401, "log in first")
    return USERS[user_id]


async def operator(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.admin:
        raise HTTPException(403, "operators only")
    return user


class Login(BaseModel):
    user_id: str


class DataBroadcast(BaseModel):
    resource: str
    data: Any = None
    user_ids: list[str] | None = None
    subscriptions: list[str] | None = None


class Notification(BaseModel):
    title: str = Field(max_length=200)
    message: str = Field(max_length=2000)
    level: Level = "info"
    priority: Priority = "normal"
    user_ids: list[str] | None = None


class Message(BaseModel):
    text: str = Field(max_length=2000)


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.read_text()


@app.post("/login")
async def login(body: Login) -> dict[str, str]:
    """A stand-in for the app's real login: returns a session token."""
    if body.user_id not in USERS:
        raise HTTPException(404, "no such user")
    token = secrets.token_urlsafe(24)
    SESSIONS[token] = body.user_id
    return {"token": token, "user_id": body.user_id, "name": USERS[body.user_id].name}


@app.post("/api/broadcast")
async def broadcast(
    body: DataBroadcast, user: Annotated[User, Depends(operator)]
) -> dict[str, list[str]]:
    ids = await notifier.broadcast_data(
        body.resource, body.data, user_ids=body.user_ids, subscriptions=body.subscriptions
    )
    return {"ids": ids}


@app.post("/api/notifications")
async def notify(body: Notification, user: Annotated[User, Depends(operator)]) -> dict[str, str]:
    event_id = await notifier.broadcast_notification(
        body.title, body.message, level=body.level, priority=body.priority, user_ids=body.user_ids
    )
    return {"id": event_id}


@app.post("/api/notifications/pro")
async def notify_pro(
    body: Notification, user: Annotated[User, Depends(operator)]
) -> dict[str, str | None]:
    """The filter-function broadcast: to connected users on the pro plan."""

    def on_pro_plan(conn: Connection) -> bool:
        return conn.user is not None and USERS[conn.user].plan == "pro"

    event_id = await notifier.broadcast_where(
        on_pro_plan, body.title, body.message, level=body.level, priority=body.priority
    )
    return {"id": event_id}


@app.post("/api/messages/{recipient}")
async def message(
    recipient: str, body: Message, user: Annotated[User, Depends(current_user)]
) -> dict[str, str]:
    if recipient not in USERS:
        raise HTTPException(404, "no such user")
    return {"id": await notifier.send_message(user.id, recipient, body.text)}
