"""A FastAPI app whose own session cookie authenticates its tidings streams.

The app already knows who is logged in (here: a signed ``session`` cookie set by
``/login``), so it hands tidings an ``authenticate(request)`` callable instead of issuing
JWTs. tidings calls it for every stream and publish; it returns a ``Principal`` (who the
caller is and which topics they may use) or ``None`` for "not logged in" (401).

Run it:

    python examples/02_custom_auth.py

then, in another terminal:

    curl -c jar -X POST 'http://127.0.0.1:8000/login?user=alice'
    curl -b jar -N 'http://127.0.0.1:8000/events?topic=users/alice/**'
    curl -b jar -X POST http://127.0.0.1:8000/notes -H 'content-type: application/json' \\
        -d '{"text": "remember the milk"}'

A real app would use its framework's session (Starlette's ``SessionMiddleware``, Django's
session via a shared store, ...); the shape of ``authenticate`` stays the same.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from tidings.auth.principal import Principal
from tidings.hub import Hub

# The app's own signing key (a real app loads it from its configuration).
SESSION_KEY = os.environ.get("SESSION_KEY", secrets.token_hex(32)).encode()


def sign(user: str) -> str:
    """``user.<hmac>``: a session value the client cannot forge."""
    mac = hmac.new(SESSION_KEY, user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{mac}"


def session_user(request: Request) -> str | None:
    """The logged-in user of ``request``, or ``None``."""
    value = request.cookies.get("session", "")
    user = value.rpartition(".")[0]
    if not user or not hmac.compare_digest(sign(user), value):
        return None
    return user


def authenticate(request: Request) -> Principal | None:
    """tidings' hook: who is calling, and what they may subscribe to and publish on.

    Every user may read the ``lobby`` topic; ``users/<user>/**`` (their private topics)
    is always allowed by tidings itself. Publishing is left to the app's own routes.
    """
    user = session_user(request)
    if user is None:
        return None
    return Principal(user=user, subscribe=("lobby",))


hub = Hub(authenticate=authenticate, store=os.environ.get("TIDINGS_STORE", "memory"))
app = FastAPI(lifespan=hub.lifespan)
app.include_router(hub.router)


@app.post("/login")
async def login(user: str, response: Response) -> dict[str, str]:
    """A stand-in for the app's real login: sets the signed session cookie."""
    if not user.isalnum():
        raise HTTPException(status_code=400, detail="user names are letters and digits")
    response.set_cookie("session", sign(user), httponly=True, samesite="lax")
    return {"user": user}


class Note(BaseModel):
    text: str


@app.post("/notes")
async def add_note(note: Note, request: Request) -> dict[str, str]:
    """An app endpoint: save the note (not shown), then push it to the user's own streams."""
    user = session_user(request)
    if user is None:
        raise HTTPException(status_code=401, detail="log in first")
    event_id = await hub.publish(f"users/{user}/notes", {"text": note.text}, type="note")
    return {"id": event_id}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
