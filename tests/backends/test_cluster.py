"""Several ``tidings serve`` processes on one Redis act as one hub (SPEC §6, issue 5).

Every test runs real server processes against the tests' own redis-server. A client that
"switches node" goes through a TCP proxy the test controls: cutting the proxy breaks the
stream the way a load balancer failing over would, and the client resumes with its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson

from tests.backends.conftest import StartNodes
from tests.conftest import (
    RedisServer,
    ServerFactory,
    ServerProcess,
    SSEReader,
    TcpProxy,
    open_sse,
    until,
)

MakeProxy = Callable[[int], Awaitable[TcpProxy]]


async def publish(client: httpx.AsyncClient, node: ServerProcess | str, data: Any) -> str:
    """Publish ``data`` on topic ``t`` through ``node``; the event id (202 expected)."""
    base = node if isinstance(node, str) else node.url
    response = await client.post(f"{base}/publish", json={"topic": "t", "data": data})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def publish_when_ready(
    client: httpx.AsyncClient, node: ServerProcess, data: Any, timeout: float = 20.0
) -> str:
    """Publish once the node takes publishes again (it answers 503 while Redis is down)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.post(f"{node.url}/publish", json={"topic": "t", "data": data})
            if response.status_code == 202:
                return str(response.json()["id"])
            assert response.status_code == 503, response.text
            await asyncio.sleep(0.05)


async def wait_ready(client: httpx.AsyncClient, node: ServerProcess, status: int) -> None:
    """Wait until ``/readyz`` answers ``status``."""

    async def answers() -> bool:
        return (await client.get(f"{node.url}/readyz")).status_code == status

    await until(answers, 20, f"/readyz to answer {status}")


async def datas(reader: SSEReader, count: int) -> list[Any]:
    """The decoded data of the next ``count`` events."""
    return [orjson.loads(event.data) for event in await reader.take(count)]


@contextlib.asynccontextmanager
async def stream(
    client: httpx.AsyncClient, base: str, last_event_id: str | None = None
) -> AsyncIterator[SSEReader]:
    """A stream on topic ``t``, resuming after ``last_event_id`` if given."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else None
    async with open_sse(
        client, f"{base}/events", params=httpx.QueryParams({"topic": "t"}), headers=headers
    ) as r:
        assert r.response.status_code == 200
        yield r


async def test_a_publish_on_one_node_reaches_subscribers_on_every_node_once(
    start_nodes: StartNodes, http: httpx.AsyncClient
) -> None:
    a, b, c = await start_nodes(3)
    async with stream(http, a.url) as on_a, stream(http, c.url) as on_c:
        ids = [await publish(http, b, i) for i in range(5)]
        for reader in (on_a, on_c):
            events = await reader.take(5)
            assert [e.id for e in events] == ids
            assert [orjson.loads(e.data) for e in events] == list(range(5))
        end = await publish(http, a, "end")  # the next event is this one: no duplicate
        for reader in (on_a, on_c):
            assert (await reader.next()).id == end


async def test_a_client_switching_node_mid_stream_resumes_without_loss_or_duplicate(
    start_nodes: StartNodes,
    http: httpx.AsyncClient,
    tcp_proxy: MakeProxy,
) -> None:
    a, b = await start_nodes(2)
    balancer = await tcp_proxy(a.port)
    received: list[Any] = []
    last_id = ""
    async with stream(http, balancer.url()) as reader:
        for i in range(3):
            await publish(http, b, i)
        events = await reader.take(3)
        received += [orjson.loads(e.data) for e in events]
        last_id = events[-1].id
        await balancer.cut()  # node A "fails over": the stream breaks
    balancer.retarget(b.port)
    for i in range(3, 6):  # published while the client is away, on the node it left
        await publish(http, a, i)
    await balancer.restore()
    async with stream(http, balancer.url(), last_id) as reader:
        received += await datas(reader, 3)
        await publish(http, a, 6)
        received += await datas(reader, 1)
    assert received == list(range(7))


async def test_a_redis_restart_keeps_streams_open_and_refuses_publishes_until_it_is_back(
    start_nodes: StartNodes,
    http: httpx.AsyncClient,
    redis_server: RedisServer,
) -> None:
    a, b = await start_nodes(2)
    async with stream(http, a.url) as on_a:
        before = await publish(http, b, "before")
        assert (await on_a.next()).id == before

        await asyncio.to_thread(redis_server.stop)  # no persistence: Redis comes back empty
        try:
            for node in (a, b):
                await wait_ready(http, node, 503)
                response = await http.post(f"{node.url}/publish", json={"topic": "t", "data": 0})
                assert response.status_code == 503
                assert response.json()["error"]["code"] == "backend_unavailable"
            # A stream opened during the outage is accepted; its resume waits for Redis.
            async with stream(http, b.url, before) as on_b:
                redis_server.start()
                await wait_ready(http, a, 200)
                await wait_ready(http, b, 200)
                after = await publish_when_ready(http, b, "after")

                # The stream that stayed open receives new events (its node's reader may
                # still be in its reconnect backoff, up to 5 s).
                event = await on_a.next(timeout=20)
                assert (event.id, orjson.loads(event.data)) == (after, "after")
                # Redis lost its history: the resume from before is answered with a gap
                # (never silence), then live events.
                gap = await on_b.next(timeout=20)
                assert gap.event == "gap"
                assert orjson.loads(gap.data) == {"last_event_id": before, "reason": "unknown"}
                # Events up to the gap's id are covered by the state the client
                # refetches; only newer ones follow it.
                if gap.id != after:
                    assert (await on_b.next()).id == after
                later = await publish(http, b, "later")
                assert (await on_b.next()).id == later
        finally:
            if redis_server.proc is None or redis_server.proc.poll() is not None:
                redis_server.start()

    # After recovery a resume on another node loses nothing.
    missed = [await publish(http, a, i) for i in range(3)]
    async with stream(http, b.url, later) as resumed:
        assert [e.id for e in await resumed.take(3)] == missed
        live = await publish(http, a, "live")
        assert (await resumed.next()).id == live


async def test_clients_of_a_killed_node_resume_exactly_on_another(
    start_nodes: StartNodes,
    http: httpx.AsyncClient,
    tcp_proxy: MakeProxy,
) -> None:
    a, b = await start_nodes(2)
    balancer = await tcp_proxy(a.port)
    received: list[str] = []
    acknowledged: list[str] = []
    async with stream(http, balancer.url()) as reader:
        acknowledged.append(await publish(http, a, 0))
        received.append((await reader.next()).id)
        # Acknowledged by A, then A dies at once: whatever the client did not get yet
        # must come from history on the other node.
        acknowledged += [await publish(http, a, i) for i in range(1, 4)]
        a.signal(signal.SIGKILL)
        await a.await_exit()
        with contextlib.suppress(httpx.TransportError, TimeoutError, StopAsyncIteration):
            while len(received) < len(acknowledged):
                received.append((await reader.next(timeout=5)).id)
    balancer.retarget(b.port)
    acknowledged.append(await publish(http, b, 4))
    async with stream(http, balancer.url(), received[-1]) as reader:
        received += [e.id for e in await reader.take(len(acknowledged) - len(received))]
        acknowledged.append(await publish(http, b, 5))
        received.append((await reader.next()).id)
    assert received == acknowledged


async def test_serve_with_two_workers_shares_the_backend(
    server_factory: ServerFactory, redis_url: str, http: httpx.AsyncClient
) -> None:
    # Tasks in Redis too: a memory store would be one per worker (refused with --workers).
    server = await server_factory.start(
        "--workers", "2", "--backend", redis_url, "--store", "redis"
    )
    async with contextlib.AsyncExitStack() as stack:
        # Several streams: the kernel spreads them over both workers.
        readers = [await stack.enter_async_context(stream(http, server.url)) for _ in range(6)]
        ids = [await publish(http, server, i) for i in range(3)]
        for reader in readers:
            assert [e.id for e in await reader.take(3)] == ids
    assert (await http.get(f"{server.url}/readyz")).status_code == 200
    assert await asyncio.to_thread(server.stop) == 0


# -- the deployment recipe (docs/deployment.md) ----------------------------------------------


async def test_the_documented_nginx_recipe_streams_unbuffered_and_fails_over(
    start_nodes: StartNodes,
    http: httpx.AsyncClient,
    nginx: Callable[[list[ServerProcess]], str],
) -> None:
    nodes = await start_nodes(2)
    proxy = await asyncio.to_thread(nginx, nodes)
    received: list[str] = []
    async with stream(http, proxy) as reader:
        # Unbuffered: each event arrives on its own, before the next is published.
        for i in range(3):
            published = await publish(http, proxy, i)
            received.append((await reader.next()).id)
            assert received[-1] == published

        async def streams_on(node: ServerProcess) -> int:
            stats = (await http.get(f"{node.url}/stats")).json()
            return int(stats["connections"]["total"])

        serving = [node for node in nodes if await streams_on(node) == 1]
        assert len(serving) == 1
        serving[0].signal(signal.SIGTERM)  # a drain: the stream ends cleanly
        assert await reader.until_end() == []
    assert await serving[0].await_exit() == 0
    # The client comes back through the proxy, to the other node, and resumes exactly.
    missed = [await publish(http, proxy, i) for i in range(3, 5)]
    async with stream(http, proxy, received[-1]) as reader:
        assert [e.id for e in await reader.take(2)] == missed
        live = await publish(http, proxy, 5)
        assert (await reader.next()).id == live
