"""A deploy without a storm: a node drained behind nginx sends its clients over gradually.

Two ``tidings serve`` nodes on the tests' Redis, behind nginx with the documented settings;
a hundred Python clients (``tidings.client.subscribe``) subscribe through the proxy while
events are published. One node gets SIGTERM: its streams end in batches over its drain
window, and its clients come back, through the proxy, to the survivor. The survivor's rate
of new streams stays under the bound the window sets, and every client gets every event
once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

import httpx

from tests.backends.conftest import StartNodes
from tests.conftest import ServerProcess
from tidings.client import subscribe

CLIENTS = 100
WINDOW = 2.0


async def test_a_drained_node_hands_its_clients_over_gradually_and_loses_nothing(
    start_nodes: StartNodes,
    http: httpx.AsyncClient,
    nginx: Callable[[list[ServerProcess]], str],
) -> None:
    # A short retry, so the clients come back as soon as their stream ends: the spread
    # the survivor sees is the drain's.
    a, b = await start_nodes(
        2, "--drain-window", str(WINDOW), "--shutdown-grace", "6", "--retry", "100"
    )
    proxy = await asyncio.to_thread(nginx, [a, b])
    start = (await http.post(f"{proxy}/publish", json={"topic": "t", "data": -1})).json()["id"]
    received: list[list[str]] = [[] for _ in range(CLIENTS)]
    limits = httpx.Limits(max_connections=CLIENTS * 2)

    async def client(index: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None), limits=limits) as c:
            async for event in subscribe(proxy, ["t"], last_event_id=start, client=c):
                received[index].append(event.id or "")

    async def streams_on(node: ServerProcess) -> int:
        stats = (await http.get(f"{node.url}/stats")).json()
        return int(stats["connections"]["total"])

    clients = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    published: list[str] = []

    async def publish(n: int) -> None:
        body = {"topic": "t", "data": n, "idempotency_key": f"drain-{n}"}
        while True:  # through the proxy, retried (safely: the key) if a node goes away
            with contextlib.suppress(httpx.TransportError):
                response = await http.post(f"{proxy}/publish", json=body)
                if response.status_code == 202:
                    published.append(response.json()["id"])
                    return

    async def publish_nothing() -> None:
        """Wait a little for the clients, on a round trip to the survivor (no sleep)."""
        await http.get(f"{b.url}/healthz")

    try:
        async with asyncio.timeout(30):
            while await streams_on(a) + await streams_on(b) < CLIENTS:
                await publish(len(published))
        on_a = await streams_on(a)
        assert on_a > CLIENTS / 4  # nginx spread them
        before_b = await streams_on(b)
        a.signal(signal.SIGTERM)
        # Sample the survivor's streams while publishing goes on, until a's are all back.
        samples: list[tuple[float, int]] = []
        began = time.monotonic()
        async with asyncio.timeout(30):
            while (count := await streams_on(b)) < CLIENTS:
                samples.append((time.monotonic() - began, count))
                await publish(len(published))
        samples.append((time.monotonic() - began, CLIENTS))
        assert await a.await_exit() == 0
        for n in range(5):
            await publish(len(published) + n)
        async with asyncio.timeout(20):
            while min(len(ids) for ids in received) < len(published):
                await publish_nothing()
    finally:
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)

    # Gradually: within any 0.25 s, at most three times the share of a's streams the window
    # gives that long (all of them at once, without the drain).
    bound = 3 * on_a * 0.25 / WINDOW
    for t0, c0 in samples:
        later = [c for t, c in samples if t0 < t <= t0 + 0.25]
        if later:
            assert max(later) - c0 <= bound, (t0, c0, later)
    assert samples[-1][0] >= WINDOW / 2  # spread over the window, not a burst
    assert before_b + on_a == CLIENTS
    # Nothing lost, nothing twice, in order: every client has every event from the start.
    for ids in received:
        assert ids == published
