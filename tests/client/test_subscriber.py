"""The async Python client: reconnects by itself and resumes without loss."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory, ServerProcess, until
from tidings.client.subscriber import subscribe
from tidings.errors import TidingsError
from tidings.wire import ServerSentEvent


async def test_client_resumes_across_server_ended_streams(server_factory: ServerFactory) -> None:
    # Streams end after about a second; the client must come back with its last id.
    server = await server_factory.start("--max-connection-age", "1", "--retry", "50")
    received: list[ServerSentEvent] = []
    ids: list[str] = []

    async def consume() -> None:
        async for event in subscribe(server.url, ["feed"]):
            received.append(event)
            if len(received) == 30:
                return

    consumer = asyncio.create_task(consume())
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

        async def subscribed() -> bool:
            return bool((await http.get("/stats")).json()["connections"]["total"] == 1)

        await until(subscribed, what="the client to subscribe")
        for i in range(30):
            response = await http.post("/publish", json={"topic": "feed", "data": i})
            ids.append(response.json()["id"])
            await asyncio.sleep(0.1)  # spread publishes over several stream lifetimes
        await asyncio.wait_for(consumer, 30)
        stats = (await http.get("/stats")).json()
    assert [e.id for e in received] == ids
    assert [orjson.loads(e.data) for e in received] == list(range(30))
    assert stats["events"]["published"] == 30


async def test_client_stops_on_a_client_error(server: ServerProcess) -> None:
    with pytest.raises(TidingsError) as info:
        async for _ in subscribe(server.url, ["bad topic"]):
            pass
    assert info.value.code == "invalid_topic"


async def test_client_keeps_the_servers_retry_when_a_stream_breaks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream cut mid-body (a node killed) reconnects after the ``retry`` it received
    (0.5 to 1.5 times it: the client's jitter), not after the default's backoff; it
    resumes with its last id."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    seen_ids: list[str | None] = []

    async def node(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        last = next(
            (
                line.split(b":", 1)[1].strip().decode()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"last-event-id:")
            ),
            None,
        )
        seen_ids.append(last)
        if last is None:
            body = b"retry: 40\n\nid: 1\ndata: a\n\n"
            writer.write(head + b"%x\r\n%s\r\n" % (len(body), body))
            await writer.drain()
            writer.transport.abort()  # the body never ends: a broken stream
            return
        body = b"id: 2\ndata: b\n\n"
        writer.write(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(node, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    received: list[str] = []
    async with server:
        async for event in subscribe(f"http://127.0.0.1:{port}", ["t"]):
            received.append(event.data)
            if len(received) == 2:
                break
    assert received == ["a", "b"]
    assert seen_ids == [None, "1"]
    [delay] = delays
    assert 0.02 <= delay <= 0.06
