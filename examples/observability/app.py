"""An observability dashboard: every request of an app, live (see README.md).

- :class:`~tidings.integrations.asgi.RequestEvents` publishes each request's
  ``request_start`` and ``request_complete`` (or ``request_error``) on ``TOPIC``;
- :func:`emit` is the app's global helper for events of its own (``item_created``);
- ``/dashboard`` is the live page, ``/dashboard/connections`` the connection counts;
- the hub's bounded queues (``TIDINGS_QUEUE_SIZE``, default 1000 events per stream) keep
  a slow dashboard from growing the server's memory under a burst (``/api/items/bulk``
  emits an event per item): it is cut, counted, and resumes from history; on shutdown
  every stream is ended cleanly.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from tidings import Hub
from tidings.integrations.asgi import RequestEvents
from tidings.types import JSON

PAGE = Path(__file__).with_name("page.html")

#: Where request events go; the dashboard subscribes to it.
TOPIC = "dashboard/requests"

#: The hub of this process: the seed's "global manager". Its lifespan is the app's, so it
#: starts with the app and, on shutdown, ends every open stream cleanly (the seed's
#: ``disconnect_all`` / ``cleanup_sse_manager``).
#: Every setting comes from the environment too (``TIDINGS_QUEUE_SIZE``...).
hub = Hub(store="memory")


async def emit(event_type: str, data: JSON) -> str:
    """Publish an event of the app's own on the dashboard topic (the seed's
    ``emit_sse_event``); returns its id."""
    return await hub.publish(TOPIC, data, type=event_type)


app = FastAPI(lifespan=hub.lifespan, title="observed app")
app.include_router(hub.router, prefix="/sse")
# The dashboard's own traffic (its page, its stream) is not reported.
app.add_middleware(RequestEvents, hub=hub, topic=TOPIC, exclude=["/sse", "/dashboard"])

ITEMS: list[dict[str, Any]] = []


class NewItem(BaseModel):
    name: str = Field(min_length=1, max_length=100)


@app.get("/api/items")
async def list_items() -> dict[str, list[dict[str, Any]]]:
    return {"items": ITEMS[-100:]}


@app.post("/api/items", status_code=201)
async def add_item(item: NewItem) -> dict[str, Any]:
    record = {"id": len(ITEMS) + 1, "name": item.name}
    ITEMS.append(record)
    await emit("item_created", record)
    return record


class NewItems(BaseModel):
    names: list[str] = Field(min_length=1, max_length=1000)


@app.post("/api/items/bulk", status_code=201)
async def add_items(items: NewItems) -> dict[str, int]:
    """A bulk import: one request, one event per item (a burst for the dashboard)."""
    for name in items.names:
        record = {"id": len(ITEMS) + 1, "name": name[:100]}
        ITEMS.append(record)
        await emit("item_created", record)
    return {"created": len(items.names)}


@app.get("/api/items/{item_id}")
async def get_item(item_id: int) -> dict[str, Any]:
    if not 1 <= item_id <= len(ITEMS):
        raise HTTPException(404, "no such item")
    return ITEMS[item_id - 1]


@app.get("/api/slow")
async def slow(ms: int = 200) -> dict[str, int]:
    await asyncio.sleep(min(ms, 5000) / 1000)  # a slow dependency
    return {"slept_ms": ms}


@app.get("/api/boom")
async def boom() -> None:
    raise RuntimeError("the database is on fire")


@app.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> str:
    return PAGE.read_text()


@app.get("/dashboard/connections")
async def connections() -> dict[str, Any]:
    """How many streams are open, and how many watch the dashboard (the seed's
    ``get_connection_count`` / ``get_connection_info``)."""
    stats = hub.statistics()
    return {
        "total": stats.connections,
        "dashboard": stats.by_topic.get(TOPIC, 0),
        "slow_disconnects": stats.slow_disconnects,
        "queue_size": hub.settings.queue_size,
    }
