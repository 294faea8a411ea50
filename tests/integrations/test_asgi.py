"""``tidings.integrations.asgi.RequestEvents``: every request of an app as events.

Most tests drive a small Starlette app in process (JSON answers, no streams) through a
recording publisher, the middleware's designed seam; the last one reads the events back
over a real stream from an embedded hub.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidings import Hub
from tidings.errors import BackendUnavailable, InvalidTopic
from tidings.integrations.asgi import REQUEST_TYPES, RequestEvents
from tidings.testing import TestHub
from tidings.types import JSON


class Recorder:
    """A publisher that records what it is given (or fails, while ``down``)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any], str]] = []
        self.down = False

    async def publish(
        self, topic: str, data: JSON = None, *, type: str = "message", priority: str = "normal"
    ) -> str:
        if self.down:
            raise BackendUnavailable("the backend is down")
        self.events.append((topic, type, data, priority))
        return str(len(self.events))

    def types(self) -> list[str]:
        return [event[1] for event in self.events]

    def data(self) -> list[dict[str, Any]]:
        return [event[2] for event in self.events]


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True}, status_code=201)


async def boom(request: Request) -> Response:
    raise ValueError("secret detail")


def make_app(recorder: Recorder, **options: Any) -> Starlette:
    app = Starlette(
        routes=[Route("/items", ok, methods=["POST"]), Route("/boom", boom), Route("/sse", ok)]
    )
    app.add_middleware(RequestEvents, hub=recorder, **options)
    return app


def client(app: Starlette, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://app")


async def test_each_request_publishes_its_start_then_its_completion_with_status() -> None:
    recorder = Recorder()
    async with client(make_app(recorder, topic="dashboard/requests")) as http:
        response = await http.post("/items?token=s3cret", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 201
    assert recorder.types() == ["request_start", "request_complete"]
    assert {event[0] for event in recorder.events} == {"dashboard/requests"}
    start, end = recorder.data()
    assert start["request_id"] == end["request_id"] == "req-42"
    assert (start["method"], start["path"]) == ("POST", "/items")
    assert start["client"] == "127.0.0.1"
    assert isinstance(start["at"], float)
    assert end["status"] == 201
    assert end["duration_ms"] >= 0
    # The query string may hold a token: it is never published.
    assert "s3cret" not in repr(recorder.events)


async def test_an_exception_publishes_request_error_with_its_type_only_and_is_reraised() -> None:
    recorder = Recorder()
    async with client(make_app(recorder)) as http:
        with pytest.raises(ValueError, match="secret detail"):
            await http.get("/boom")
    assert recorder.types() == ["request_start", "request_error"]
    error = recorder.data()[1]
    assert error["error"] == "ValueError"
    assert error["path"] == "/boom"
    assert error["status"] == 500  # nothing was sent: the server answers 500
    assert "secret detail" not in repr(recorder.events)


async def test_excluded_prefixes_are_not_reported_but_lookalike_paths_are() -> None:
    recorder = Recorder()
    app = Starlette(routes=[Route("/sse/events", ok), Route("/sse", ok), Route("/ssex", ok)])
    app.add_middleware(RequestEvents, hub=recorder, exclude=["/sse/"])
    async with client(app) as http:
        await http.get("/sse/events")
        await http.get("/sse")
        assert recorder.events == []
        await http.get("/ssex")
    assert [data["path"] for data in recorder.data()] == ["/ssex", "/ssex"]


async def test_a_hub_that_cannot_publish_never_breaks_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    recorder.down = True
    app = make_app(recorder)
    with caplog.at_level(logging.DEBUG, logger="tidings.integrations.asgi"):
        async with client(app) as http:
            assert (await http.post("/items")).status_code == 201
            assert (await http.post("/items")).status_code == 201
            recorder.down = False
            assert (await http.post("/items")).status_code == 201
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # One warning for the run of failures, one when it publishes again: not one per event.
    assert len(warnings) == 2
    assert "could not publish request_start" in warnings[0]
    assert "again" in warnings[1]
    assert recorder.types() == ["request_start", "request_complete"]


async def test_an_implausible_request_id_is_replaced_by_a_random_one() -> None:
    recorder = Recorder()
    async with client(make_app(recorder)) as http:
        await http.post("/items", headers={"X-Request-ID": "<script>alert(1)</script>"})
        await http.post("/items")
    ids = [data["request_id"] for data in recorder.data()]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert all(len(i) == 16 and i.isalnum() for i in ids)


def test_a_reserved_or_malformed_topic_is_refused_when_the_app_is_built() -> None:
    recorder = Recorder()
    with pytest.raises(InvalidTopic):
        RequestEvents(make_app(recorder), hub=recorder, topic="tasks/requests")
    with pytest.raises(InvalidTopic):
        RequestEvents(make_app(recorder), hub=recorder, topic="bad topic")


def test_request_events_reach_a_dashboard_stream_of_the_embedded_hub() -> None:
    hub = Hub(store="memory")
    app = FastAPI(lifespan=hub.lifespan)
    app.include_router(hub.router, prefix="/sse")

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(RequestEvents, hub=hub, topic="dashboard/requests", exclude=["/sse"])
    with TestHub(app, hub=hub, prefix="/sse") as live, live.client() as http:
        assert http.get("/hello").status_code == 200
        events = live.collect("dashboard/requests", n=2)
    assert [event.event for event in events] == list(REQUEST_TYPES[:2])
    assert events[1].json()["status"] == 200
    assert events[1].json()["path"] == "/hello"
