"""Draining a node: its streams end in batches over the window, each with a retry of its own."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest

from tidings.engine import Connection
from tidings.engine.drain import BATCH_SECONDS, drain
from tidings.errors import ShuttingDown
from tidings.hub import Hub


class Later:
    """A ``call_later`` that keeps what it was given, to run when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, fn: Callable[[], None]) -> None:
        self.calls.append((delay, fn))

    def run_until(self, at: float) -> None:
        for delay, fn in sorted(self.calls, key=lambda call: call[0]):
            if delay <= at:
                fn()


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub(store="memory", keepalive=60, max_connections_per_ip=0, retry=2000, drain_window=1)
    await hub.start()
    yield hub
    await hub.aclose()


async def open_streams(hub: Hub, count: int) -> list[Connection]:
    streams = [await hub.open_stream(["t"]) for _ in range(count)]
    for conn in streams:
        await conn.next_chunk()  # the opening bytes
    return streams


async def test_streams_end_in_batches_spread_over_the_window(hub: Hub) -> None:
    streams = await open_streams(hub, 100)
    later = Later()
    batches = drain(streams, window=2.0, retry_ms=2000, call_later=later)
    assert batches == 2.0 / BATCH_SECONDS
    ended_now = [conn for conn in streams if conn.close_reason == "shutdown"]
    assert len(ended_now) == 100 // batches  # the first batch: at once
    delays = sorted(delay for delay, _ in later.calls)
    assert len(delays) == batches - 1
    assert 0 < delays[0] <= BATCH_SECONDS
    assert delays[-1] <= 2.0
    # Every batch in its own slot of the window: none two at the same moment.
    slots = [int(delay / BATCH_SECONDS - 0.5) for delay in delays]
    assert slots == sorted(set(slots))
    later.run_until(1.0)
    half = sum(conn.close_reason == "shutdown" for conn in streams)
    assert 40 <= half <= 60
    later.run_until(2.0)
    assert all(conn.close_reason == "shutdown" for conn in streams)


async def test_each_ended_stream_gets_its_own_retry_then_a_clean_end(hub: Hub) -> None:
    streams = await open_streams(hub, 50)
    drain(streams, window=0, retry_ms=2000, call_later=Later())
    retries = []
    for conn in streams:
        chunk = await conn.next_chunk()
        assert chunk is not None
        match = re.fullmatch(rb"retry: (\d+)\n\n", chunk)
        assert match is not None, chunk
        retries.append(int(match[1]))
        assert await conn.next_chunk() is None  # then the end (flushed, not cut)
    assert all(1000 <= retry <= 3000 for retry in retries)
    assert len(set(retries)) > 10  # spread, not one value for all


async def test_a_stream_that_ended_meanwhile_is_left_alone(hub: Hub) -> None:
    streams = await open_streams(hub, 10)
    later = Later()
    drain(streams, window=1.0, retry_ms=2000, call_later=later)
    waiting = [conn for conn in streams if conn.close_reason is None]
    waiting[0].close("client")
    later.run_until(1.0)
    assert waiting[0].close_reason == "client"
    assert await waiting[0].next_chunk() is None


async def test_shutdown_refuses_new_streams_and_drains_the_open_ones(hub: Hub) -> None:
    streams = await open_streams(hub, 30)

    async def serve(conn: Connection) -> None:
        """What a stream's writer does: send until the end, then let go of it."""
        while await conn.next_chunk() is not None:
            pass
        conn.finish()

    writers = [asyncio.create_task(serve(conn)) for conn in streams]
    hub.begin_shutdown()  # over the 1 s drain window
    with pytest.raises(ShuttingDown):
        await hub.open_stream(["t"])
    ended = [conn for conn in streams if conn.close_reason == "shutdown"]
    assert 0 < len(ended) < len(streams)  # the first batch only, so far
    assert await hub.wait_streams_closed(10)
    await asyncio.gather(*writers)
    assert all(conn.close_reason == "shutdown" for conn in streams)
