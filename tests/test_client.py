"""The async Python client: reconnects by itself and resumes without loss."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory
from tidings.client.subscriber import subscribe
from tidings.errors import TidingsError
from tidings.wire import ServerSentEvent


async def test_client_resumes_across_server_ended_streams(server_factory: ServerFactory) -> None:
    # Streams end after about a second; the client must come back with its last id.
    server = server_factory("--max-connection-age", "1", "--retry", "50")
    received: list[ServerSentEvent] = []
    ids: list[str] = []

    async def consume() -> None:
        async for event in subscribe(server.url, ["feed"]):
            received.append(event)
            if len(received) == 30:
                return

    consumer = asyncio.create_task(consume())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        while (await http.get("/stats")).json()["connections"]["total"] == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for i in range(30):
            response = await http.post("/publish", json={"topic": "feed", "data": i})
            ids.append(response.json()["id"])
            await asyncio.sleep(0.1)  # spread publishes over several stream lifetimes
        await asyncio.wait_for(consumer, 30)
        stats = (await http.get("/stats")).json()
    assert [e.id for e in received] == ids
    assert [orjson.loads(e.data) for e in received] == list(range(30))
    assert stats["events"]["published"] == 30


async def test_client_stops_on_a_client_error(server_factory: ServerFactory) -> None:
    server = server_factory()
    with pytest.raises(TidingsError) as info:
        async for _ in subscribe(server.url, ["bad topic"]):
            pass
    assert info.value.code == "invalid_topic"
