"""Presence, history and the server API across ``tidings serve`` nodes on one Redis (issue 20).

Real server processes share the tests' redis-server: a stream on any node is in every
node's presence, a disconnect sent to one node ends streams on all of them, and a node
killed outright drops out of presence within 30 s (SPEC §3).
"""

from __future__ import annotations

import signal
from typing import Any

import httpx
import orjson
import redis.asyncio

from tests.backends.conftest import StartNodes
from tests.conftest import ServerProcess, until
from tests.web._security import open_stream, topics
from tidings import Hub
from tidings.backends.redis import RedisBackend


async def presence(http: httpx.AsyncClient, node: ServerProcess, topic: str) -> dict[str, Any]:
    response = await http.get(f"{node.url}/topics/{topic}/presence")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_count(
    http: httpx.AsyncClient, node: ServerProcess, topic: str, count: int, timeout: float = 10.0
) -> dict[str, Any]:
    page: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal page
        page = await presence(http, node, topic)
        return bool(page["count"] == count)

    await until(reached, timeout, f"{count} streams on {topic} as {node.url} sees it")
    return page


async def test_every_node_sees_the_streams_of_every_node(
    start_nodes: StartNodes, http: httpx.AsyncClient
) -> None:
    a, b = await start_nodes(2)
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
        open_stream(on_a, topics("room", "a-only")),
        open_stream(on_b, topics("room")),
        open_stream(on_b, topics("room", "b-only")),
    ):
        for node in (a, b):
            page = await wait_count(http, node, "room", 3)
            nodes = [entry["node"] for entry in page["connections"]]
            assert len(set(nodes)) == 2
            listed = (await http.get(f"{node.url}/admin/topics")).json()
            assert listed == {
                "topics": [
                    {"topic": "a-only", "subscribers": 1},
                    {"topic": "b-only", "subscribers": 1},
                    {"topic": "room", "subscribers": 3},
                ],
                "next_cursor": None,
            }
        # History reads the same on every node.
        published = await http.post(f"{a.url}/publish", json={"topic": "room", "data": 1})
        for node in (a, b):
            events = (await http.get(f"{node.url}/topics/room/history")).json()["events"]
            assert [e["id"] for e in events] == [published.json()["id"]]
    for node in (a, b):
        await wait_count(http, node, "room", 0)


async def test_a_disconnect_sent_to_one_node_ends_streams_on_every_node(
    start_nodes: StartNodes, http: httpx.AsyncClient
) -> None:
    a, b, c = await start_nodes(3)
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
        open_stream(on_a, topics("rooms/1")) as first,
        open_stream(on_b, topics("rooms/2")) as second,
        open_stream(on_b, topics("rooms/3", "lobby")) as third,
        open_stream(on_a, topics("lobby")) as spared,
    ):
        await wait_count(http, c, "lobby", 2)
        response = await http.post(
            f"{c.url}/admin/disconnect", json={"topic": "rooms/*", "reason": "moving"}
        )
        assert response.json() == {"disconnected": 3}
        for stream in (first, second, third):
            events = await stream.until_end()
            assert [(e.event, orjson.loads(e.data)) for e in events] == [
                ("disconnect", {"reason": "moving"})
            ]
        await wait_count(http, c, "lobby", 1)
        published = await http.post(f"{c.url}/publish", json={"topic": "lobby", "data": 1})
        assert (await spared.next()).id == published.json()["id"]


async def test_a_killed_node_drops_out_of_presence_within_30_seconds(
    start_nodes: StartNodes, http: httpx.AsyncClient
) -> None:
    survivor, doomed = await start_nodes(2, "--presence-events", "room")
    async with (
        httpx.AsyncClient(base_url=survivor.url, timeout=10) as on_survivor,
        httpx.AsyncClient(base_url=doomed.url, timeout=10) as on_doomed,
        open_stream(on_survivor, topics("room")) as watching,
    ):
        joined = [await watching.next()]  # its own join
        async with open_stream(on_doomed, topics("room")), open_stream(on_doomed, topics("room")):
            page = await wait_count(http, survivor, "room", 3)
            theirs = {e["connection_id"] for e in page["connections"]} - {
                orjson.loads(joined[0].data)["connection_id"]
            }
            joined += [await watching.next(), await watching.next()]
            assert [e.event for e in joined] == ["presence_join"] * 3
            doomed.signal(signal.SIGKILL)
            assert await doomed.await_exit() == -signal.SIGKILL
            # The killed node cleaned nothing up: the survivor finds it dead and removes
            # its entries, announcing each as gone, once; within the 30 s of SPEC §3.
            await wait_count(http, survivor, "room", 1, timeout=30)
            left = [await watching.next(timeout=10), await watching.next(timeout=10)]
    assert [e.event for e in left] == ["presence_leave"] * 2
    assert {orjson.loads(e.data)["connection_id"] for e in left} == theirs
    listed = (await http.get(f"{survivor.url}/admin/topics")).json()
    assert listed["topics"] == [{"topic": "room", "subscribers": 1}]


async def test_a_reconnect_storm_costs_one_presence_call_per_500_streams(
    redis_url: str,
) -> None:
    """Streams that open within one tick reach Redis together, in one pipeline of script
    calls of 500 changes each: not one round trip per stream."""
    hub = Hub(backend=RedisBackend(redis_url), store="memory", keepalive=60, shutdown_grace=0)
    await hub.start()
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        tracker = hub.engine.presence_tracker
        await tracker.flush()
        await client.config_resetstat()
        # No await yields between these opens (no resume, no task check): one tick.
        for i in range(1500):
            await hub.open_stream([f"storm/{i % 3}"])
        await tracker.flush()
        stats = await client.info("commandstats")
        calls = int(stats["cmdstat_evalsha"]["calls"])
        assert calls <= 4  # three calls of 500 changes, and perhaps a heartbeat
        assert (await hub.presence("storm/1")).count == 500
    finally:
        await client.aclose()
        await hub.aclose()
