"""``hub.router`` mounted in an application's own FastAPI app (no fast paths there).

The standalone server answers ``POST /publish`` and ``POST /tasks/{id}/progress`` before
FastAPI's routing; embedded apps reach the same functions through the routes. These
tests keep the routes' answers, errors included, the same.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import wait_for
from tidings import Hub
from tidings.testing import TestHub
from tidings.web.streaming import EventStreamResponse


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0)
    app = FastAPI()
    app.include_router(hub.router, prefix="/sse")
    await hub.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        await hub.aclose()


async def test_publish_through_the_route(http: httpx.AsyncClient) -> None:
    response = await http.post("/sse/publish", json={"topic": "news", "data": {"n": 1}})
    assert response.status_code == 202
    assert response.json()["id"].endswith("-1")
    bad = await http.post("/sse/publish", content=b"{", headers={"content-type": "x"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "malformed_json"
    unknown = await http.post("/sse/publish", json={"topic": "news", "colour": 1})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "invalid_request"


async def test_progress_through_the_route(http: httpx.AsyncClient) -> None:
    created = await http.post("/sse/tasks", json={"total": 10})
    task_id = created.json()["task_id"]
    response = await http.post(f"/sse/tasks/{task_id}/progress", json={"current": 4})
    assert response.status_code == 200
    assert response.json()["progress"] == 40.0
    over = await http.post(f"/sse/tasks/{task_id}/progress", json={"current": 11})
    assert over.status_code == 422
    missing = await http.post("/sse/tasks/nope/progress", json={"current": 1})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "task_not_found"


async def test_streams_do_not_share_a_headers_list() -> None:
    # Middlewares (CORS) add to the headers a response sends: one stream's additions must
    # not show up on the next stream's response.
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0)
    await hub.start()
    try:
        EventStreamResponse(await hub.open_stream(["t"]))  # the headers are built once
        first = EventStreamResponse(await hub.open_stream(["t"]))
        first.headers["access-control-allow-origin"] = "https://app.example"
        second = EventStreamResponse(await hub.open_stream(["t"]))
        assert "access-control-allow-origin" not in second.headers
        assert second.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert "content-length" not in second.headers
    finally:
        await hub.aclose()


def test_a_cut_slow_client_leaves_no_error_in_the_servers_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The server cuts a slow client by aborting its transport; the stream's response was
    # handed over already, so nothing is reported as an application error.
    hub = Hub(store="memory", queue_size=10, shutdown_grace=1)
    app = FastAPI(lifespan=hub.lifespan)
    app.include_router(hub.router, prefix="/sse")
    with caplog.at_level(logging.INFO), TestHub(app, hub=hub, prefix="/sse") as live:
        slow = live.stream("feed", receive_buffer=4096)
        for _ in range(100_000):
            if slow.cut:
                break
            live.publish("feed", "x" * 1000)
        assert slow.cut
        wait_for(lambda: live.statistics().connections == 0, what="the cut stream to end")
        assert live.statistics().slow_disconnects == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
