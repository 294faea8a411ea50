"""The hub's delivery rules, in process: encode once, conflation, bounds, de-duplication."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from tests.conftest import until
from tidings.auth.principal import Principal
from tidings.backends.base import Replay
from tidings.backends.memory import MemoryBackend
from tidings.engine import HIGH_WATER, Connection
from tidings.engine.dispatch import BACKLOG_RETRY, FLUSH_BATCH
from tidings.errors import BackendUnavailable, InvalidTopic, NotAuthorized, ShuttingDown
from tidings.events import Event, EventId, make_draft
from tidings.hub import Hub
from tidings.wire import EventParser, ServerSentEvent


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub(store="memory", queue_size=5, queue_bytes=4096, keepalive=60, shutdown_grace=0)
    await hub.start()
    yield hub
    await hub.aclose()


async def drain(conn: Connection) -> list[ServerSentEvent]:
    """Everything queued on ``conn`` right now, parsed."""
    chunk = await conn.next_chunk()
    assert chunk is not None
    return EventParser().feed(chunk)


async def test_each_event_is_encoded_once_for_all_subscribers(hub: Hub) -> None:
    a = await hub.open_stream(["room/1"])
    b = await hub.open_stream(["room/*"])
    c = await hub.open_stream(["**"])
    for conn in (a, b, c):
        await conn.next_chunk()  # the opening bytes
    await hub.publish("room/1", {"n": 1})
    chunks = [await conn.next_chunk() for conn in (a, b, c)]
    assert chunks[0] is chunks[1] is chunks[2]


async def test_events_of_one_tick_leave_in_one_chunk(hub: Hub) -> None:
    conn = await hub.open_stream(["t"])
    await conn.next_chunk()
    ids = [await hub.publish("t", i) for i in range(3)]
    events = await drain(conn)
    assert [e.id for e in events] == ids


async def test_queued_task_progress_is_conflated_in_arrival_order(hub: Hub) -> None:
    conn = await hub.open_stream(["tasks/**"])
    await conn.next_chunk()

    async def progress(task: str, pct: int) -> str:
        draft = make_draft(
            f"tasks/{task}", {"task_id": task, "progress": pct}, type="task_progress"
        )
        return (await hub.append(draft)).id

    await progress("a", 10)
    file_event = (await hub.append(make_draft("tasks/a", {"file": 1}, type="file_update"))).id
    await progress("b", 50)
    latest_a = await progress("a", 20)
    events = await drain(conn)
    # a@10 was replaced by a@20, which takes its place after everything queued before it.
    assert [orjson.loads(e.data) for e in events] == [
        {"file": 1},
        {"task_id": "b", "progress": 50},
        {"task_id": "a", "progress": 20},
    ]
    assert events[0].id == file_event
    assert events[-1].id == latest_a
    assert hub.statistics().conflated == 1


async def test_high_priority_progress_is_never_conflated(hub: Hub) -> None:
    conn = await hub.open_stream(["tasks/x"])
    await conn.next_chunk()
    for pct in (1, 2):
        await hub.append(make_draft("tasks/x", {"p": pct}, type="task_progress", priority="high"))
    assert [orjson.loads(e.data) for e in await drain(conn)] == [{"p": 1}, {"p": 2}]


async def test_connection_over_its_bound_is_cut_and_counted(hub: Hub) -> None:
    slow = await hub.open_stream(["t"])
    fast = await hub.open_stream(["t"])
    cut: list[bool] = []
    slow.aborter = lambda: cut.append(True)
    await slow.next_chunk()
    for i in range(6):
        await hub.publish("t", i)
        assert len(await drain(fast)) == 1
    assert cut == [True]
    assert slow.close_reason == "slow"
    assert await slow.next_chunk() is None
    stats = hub.statistics()
    assert stats.slow_disconnects == 1
    assert stats.dropped == 6
    assert fast.close_reason is None


async def test_replay_and_live_events_are_not_duplicated(hub: Hub) -> None:
    first = await hub.publish("t", 0)
    later = [await hub.publish("t", i) for i in range(1, 3)]
    conn = await hub.open_stream(["t"], last_event_id=first)
    # An event published after registration is both in history and in the live queue.
    live = await hub.publish("t", 3)
    events = await drain(conn)
    assert [e.id for e in events] == [*later, live]


async def test_a_resumed_stream_never_gets_events_up_to_its_id_late(hub: Hub) -> None:
    """A node's log reader lags after a Redis outage: it may deliver, live, events that a
    stream resumed past already. The client has them; they are not sent again."""
    old = [await hub.publish("t", i) for i in range(3)]
    replay = await hub.backend.replay(["t"], f"{EventId.parse(old[0]).epoch}-0")  # type: ignore[union-attr]
    conn = await hub.open_stream(["t"], last_event_id=old[-1])  # nothing to replay
    await conn.next_chunk()  # the opening bytes
    for event in replay.events:  # the lagging reader, catching up
        hub.engine.dispatcher.dispatch(event)
    live = await hub.publish("t", 3)
    assert [e.id for e in await drain(conn)] == [live]


async def test_users_targeting_reaches_only_those_users(hub: Hub) -> None:
    alice = await hub.open_stream(["news"], principal=Principal(user="alice", subscribe=("news",)))
    bob = await hub.open_stream(["news"], principal=Principal(user="bob", subscribe=("news",)))
    for conn in (alice, bob):
        await conn.next_chunk()
    only_alice = await hub.publish("news", "psst", users=["alice"])
    everyone = await hub.publish("news", "hello")
    assert [e.id for e in await drain(alice)] == [only_alice, everyone]
    assert [e.id for e in await drain(bob)] == [everyone]


async def test_subscription_checks(hub: Hub) -> None:
    with pytest.raises(InvalidTopic):
        await hub.open_stream([])
    with pytest.raises(InvalidTopic):
        await hub.open_stream([f"t/{i}" for i in range(33)])
    with pytest.raises(NotAuthorized):
        await hub.open_stream(["secret"], principal=Principal(user="u", subscribe=("public/**",)))
    allowed = await hub.open_stream(
        ["users/u/inbox", "public/x"], principal=Principal(user="u", subscribe=("public/**",))
    )
    assert allowed.patterns == ("users/u/inbox", "public/x")


async def test_closed_stream_leaves_the_index(hub: Hub) -> None:
    conn = await hub.open_stream(["t", "u/**"])
    hub.close_stream(conn)
    assert hub.statistics().connections == 0
    assert len(hub.engine.dispatcher.index) == 0


async def test_shutdown_flushes_then_ends_streams(hub: Hub) -> None:
    conn = await hub.open_stream(["t"])
    await conn.next_chunk()
    event_id = await hub.publish("t", "last words")
    hub.begin_shutdown()
    assert [e.id for e in await drain(conn)] == [event_id]
    assert await conn.next_chunk() is None
    with pytest.raises(ShuttingDown):
        await hub.open_stream(["t"])


async def test_publish_on_reserved_topic_is_refused(hub: Hub) -> None:
    with pytest.raises(NotAuthorized) as info:
        await hub.publish("tasks/abc", 1)
    assert info.value.code == "reserved_topic"


class RecordingTransport:
    """A server transport in direct mode, as far as the hub uses one: keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.buffered = 0

    def write(self, data: bytes) -> None:
        assert not self.closing, "write to a closing transport"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.closing = True


def chunk_events(data: bytes) -> list[ServerSentEvent]:
    """The SSE events in one or more HTTP/1.1 chunks written by a direct-mode stream."""
    parser = EventParser()
    events: list[ServerSentEvent] = []
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        events += parser.feed(rest[:size])
        data = rest[size + 2 :]
    return events


async def open_direct(hub: Hub, topics: list[str]) -> tuple[Connection, RecordingTransport]:
    conn = await hub.open_stream(topics)
    transport = RecordingTransport()
    conn.attach(transport, lambda: None)
    return conn, transport


async def settle(hub: Hub) -> None:
    """Let the hub's write-through and flush passes run to the end."""
    for _ in range(100):
        await asyncio.sleep(0)
        if not hub.engine.dispatcher.busy:
            return
    raise AssertionError("the flush never finished")


async def test_an_idle_hub_writes_an_event_through_and_queues_the_rest_of_the_tick(
    hub: Hub,
) -> None:
    conn, transport = await open_direct(hub, ["t"])
    await settle(hub)
    transport.writes.clear()
    ids = [await hub.publish("t", i) for i in range(3)]
    # The first event left at once, with no flush pass; the others wait for the flush.
    assert len(transport.writes) == 1
    assert [e.id for e in chunk_events(transport.writes[0])] == ids[:1]
    assert conn.last_id == ids[-1]
    await settle(hub)
    # The events that arrived together leave together: one write.
    assert len(transport.writes) == 2
    assert [e.id for e in chunk_events(transport.writes[1])] == ids[1:]
    assert hub.statistics().delivered == 3
    # Idle again: the next event is written through.
    later = await hub.publish("t", 3)
    assert [e.id for e in chunk_events(transport.writes[-1])] == [later]
    assert conn.queued == 0


async def test_a_batch_from_the_backend_leaves_in_one_write(hub: Hub) -> None:
    # A backend that delivers several events at once (a batch read from Redis) says so;
    # the hub queues them together instead of writing the first one through.
    _, transport = await open_direct(hub, ["t"])
    await settle(hub)
    transport.writes.clear()
    events = [Event.from_draft(make_draft("t", i), EventId("e", 100 + i)) for i in range(3)]
    for i, event in enumerate(events):
        hub.engine.dispatcher.dispatch(event, i < len(events) - 1)
    assert transport.writes == []
    await settle(hub)
    assert len(transport.writes) == 1
    assert [e.id for e in chunk_events(transport.writes[0])] == [e.id for e in events]


async def test_a_write_through_pass_yields_between_batches_and_keeps_order() -> None:
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0, max_connections_per_ip=0)
    await hub.start()
    try:
        streams = [await open_direct(hub, ["t"]) for _ in range(2 * FLUSH_BATCH + 10)]
        await settle(hub)
        for _, transport in streams:
            transport.writes.clear()
        first = await hub.publish("t", 1)
        # One batch at once, the next one per loop iteration.
        assert sum(len(t.writes) for _, t in streams) == FLUSH_BATCH
        await asyncio.sleep(0)
        assert sum(len(t.writes) for _, t in streams) == 2 * FLUSH_BATCH
        # A stream opened meanwhile is not in the pass: it subscribed after the event.
        late, late_transport = await open_direct(hub, ["t"])
        second = await hub.publish("t", 2)
        await settle(hub)
        for _, transport in streams:
            assert [e.id for e in chunk_events(b"".join(transport.writes))] == [first, second]
        # The connections the pass had not reached got both events in one write.
        writes = Counter(len(transport.writes) for _, transport in streams)
        assert writes == {2: 2 * FLUSH_BATCH, 1: 10}
        assert [e.id for e in chunk_events(b"".join(late_transport.writes))] == [second]
        assert late.last_id == second
        assert hub.statistics().delivered == 2 * len(streams) + 1
    finally:
        await hub.aclose()


async def test_a_stream_ended_during_a_write_through_pass_gets_its_event_first() -> None:
    hub = Hub(
        store="memory", keepalive=60, shutdown_grace=5, drain_window=0, max_connections_per_ip=0
    )
    await hub.start()
    try:
        ended: list[Connection] = []

        def end(conn: Connection) -> None:
            # As the server does: the stream's end closes the socket, and once it is gone
            # the connection is finished (so the hub's close does not wait out its grace).
            ended.append(conn)
            asyncio.get_running_loop().call_soon(conn.finish)

        streams = []
        for _ in range(FLUSH_BATCH + 5):
            conn, transport = await open_direct(hub, ["t"])
            conn.attach(transport, functools.partial(end, conn))
            streams.append((conn, transport))
        await settle(hub)
        for _, transport in streams:
            transport.writes.clear()
        event_id = await hub.publish("t", "last words")
        hub.begin_shutdown()  # before the pass reached the last five connections
        await settle(hub)
        for conn, transport in streams:
            assert [e.id for e in chunk_events(b"".join(transport.writes))] == [event_id]
            assert conn.close_reason == "shutdown"
        assert len(ended) == len(streams)
    finally:
        await hub.aclose()


async def test_a_full_transport_gets_no_write_through(hub: Hub) -> None:
    slow, slow_transport = await open_direct(hub, ["t"])
    fast, fast_transport = await open_direct(hub, ["t"])
    await settle(hub)
    slow_transport.buffered = HIGH_WATER + 1
    event_id = await hub.publish("t", 1)
    assert [e.id for e in chunk_events(fast_transport.writes[-1])] == [event_id]
    assert slow.queued == 1
    await settle(hub)
    assert slow.queued == 1  # kept in the queue (conflated, bounded) until it drains
    slow_transport.buffered = 0

    async def retried() -> bool:  # the backlog is retried every BACKLOG_RETRY seconds
        return slow.queued == 0

    await until(retried, BACKLOG_RETRY * 100, "the backlog to be written")
    assert [e.id for e in chunk_events(slow_transport.writes[-1])] == [event_id]
    assert fast.queued == slow.queued == 0


async def test_a_long_flush_pass_takes_later_events_along() -> None:
    # A pass over more connections than one batch yields to the loop between batches; an
    # event published meanwhile leaves with the first one on connections not written yet.
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0, max_connections_per_ip=0)
    await hub.start()
    try:
        streams = [await open_direct(hub, ["t"]) for _ in range(FLUSH_BATCH + 100)]
        await settle(hub)
        for _, transport in streams:
            transport.writes.clear()
        # Two events in one tick: the first is written through to one batch, then the
        # second arrives and both are queued on the 100 the pass had not reached; the
        # second is queued on the 500 others. The hub is busy: the flush writes 500.
        zero = await hub.publish("t", 0)
        first = await hub.publish("t", 1)
        await asyncio.sleep(0)  # one flush batch: the 100, then 400 of the others
        second = await hub.publish("t", 2)
        await settle(hub)
        writes = Counter(len(transport.writes) for _, transport in streams)
        # The last 100 of the flush list had not been written when the third event came:
        # it left with the second in one write.
        assert writes == {2: 200, 3: FLUSH_BATCH - 100}
        for _, transport in streams:
            events = chunk_events(b"".join(transport.writes))
            assert [e.id for e in events] == [zero, first, second]
        assert hub.statistics().delivered == 3 * len(streams)
    finally:
        await hub.aclose()


async def test_direct_stream_of_a_gone_client_ends_without_writing(hub: Hub) -> None:
    conn, transport = await open_direct(hub, ["t"])
    ended: list[bool] = []
    conn.attach(transport, lambda: ended.append(True))
    await settle(hub)
    transport.closing = True
    await hub.publish("t", 1)
    await settle(hub)
    assert ended == [True]
    assert conn.close_reason == "client"
    # Later events are not queued on it any more.
    queued = conn.queued
    await hub.publish("t", 2)
    assert conn.queued == queued
    assert transport.writes[1:] == []


async def test_direct_stream_over_its_bound_is_cut(hub: Hub) -> None:
    # A client whose transport holds too much keeps its events queued; past the bound
    # (queue_size=5) the stream is cut and counted, the others are untouched.
    slow, slow_transport = await open_direct(hub, ["t"])
    fast, fast_transport = await open_direct(hub, ["t"])
    slow.aborter = slow_transport.abort
    await settle(hub)
    slow_transport.buffered = 10**6
    for i in range(6):
        await hub.publish("t", i)
        await settle(hub)
    assert slow.close_reason == "slow"
    assert slow_transport.closing
    assert fast.close_reason is None
    assert len(chunk_events(b"".join(fast_transport.writes[1:]))) == 6
    assert hub.statistics().slow_disconnects == 1


async def test_a_response_head_leaves_with_the_opening_bytes(hub: Hub) -> None:
    conn = await hub.open_stream(["t"])
    transport = RecordingTransport()
    conn.attach(transport, lambda: None, b"HTTP/1.1 200 OK\r\n\r\n")
    await settle(hub)
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head == b"HTTP/1.1 200 OK"
    assert chunk_events(body) == []  # the opening is a retry field and a comment
    assert body.endswith(b"\n\n\r\n")


async def test_a_held_stream_sends_its_head_at_once() -> None:
    # While the backend is down a resume waits, holding the stream; the client must still
    # see its response start.
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0)
    await hub.start()
    try:
        conn = await hub.open_stream(["t"])
        conn.holding = True
        transport = RecordingTransport()
        conn.attach(transport, lambda: None, b"HTTP/1.1 200 OK\r\n\r\n")
        await settle(hub)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
        conn.release()
        await settle(hub)
        assert len(transport.writes) == 2
    finally:
        await hub.aclose()


async def test_a_hub_that_stays_behind_keeps_each_connection_once_in_its_flush_list() -> None:
    # Events keep arriving before a pass ends: written connections are appended again,
    # but the list never holds more than the connections, and nothing is lost.
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0, max_connections_per_ip=0)
    await hub.start()
    try:
        streams = [await open_direct(hub, ["t"]) for _ in range(FLUSH_BATCH + 100)]
        await settle(hub)
        ids = []
        for i in range(10):
            ids.append(await hub.publish("t", i))
            await asyncio.sleep(0)  # one batch per publish: the hub never catches up here
            assert len(hub.engine.dispatcher._dirty) <= len(streams)
        await settle(hub)
        for _, transport in streams:
            events = chunk_events(b"".join(transport.writes[1:]))
            assert [e.id for e in events] == ids
    finally:
        await hub.aclose()


class FlakyBackend(MemoryBackend):
    """The memory backend with an outage switch: while ``down``, history cannot be read
    (what a Redis outage does to a resume)."""

    down = False

    async def replay(self, patterns: Sequence[str], after: str) -> Replay:
        if self.down:
            raise BackendUnavailable("the backend is unavailable (test)")
        return await super().replay(patterns, after)


async def test_a_held_stream_stays_alive_and_sends_nothing_it_holds_until_its_start() -> None:
    """SPEC §3: a stream opened while the backend is down is accepted and held. Its client
    sees the opening bytes and keep-alives at once (no event: those wait for the replay);
    one that ends before the backend returns sends none of the events it held (it would
    skip its replay); one that lives on gets the replay, then the live events, once."""
    backend = FlakyBackend(history_size=100, history_ttl=3600)
    hub = Hub(store="memory", backend=backend, keepalive=60, shutdown_grace=0)
    await hub.start()
    try:
        first = await hub.publish("t", 0)
        missed = await hub.publish("t", 1)
        backend.down = True
        streams = []
        for _ in range(2):
            conn = await hub.open_stream(["t"], last_event_id=first)
            transport = RecordingTransport()
            conn.attach(transport, lambda: None, b"HEAD\r\n\r\n")
            streams.append((conn, transport))
        live = await hub.publish("t", 2)  # queued on both, held
        for conn, transport in streams:
            assert transport.writes[0].startswith(b"HEAD\r\n\r\n")
            conn.last_write -= 120  # silent for longer than the keep-alive
        await hub.engine.tick()
        for _, transport in streams:
            sent = b"".join(transport.writes).removeprefix(b"HEAD\r\n\r\n")
            assert b": tidings" in sent
            assert sent.endswith(b": ping\n\n\r\n")
            assert chunk_events(sent) == []

        retired, retired_transport = streams[0]
        retired.retire_at = 0.0  # past its maximum age while held
        await hub.engine.tick()
        await settle(hub)
        assert retired.close_reason == "max_age"
        assert chunk_events(b"".join(retired_transport.writes[1:])) == []

        backend.down = False
        await hub.engine.tick()  # the ticker retries the resume
        await settle(hub)
        conn, transport = streams[1]
        sent = b"".join(transport.writes).removeprefix(b"HEAD\r\n\r\n")
        assert [e.id for e in chunk_events(sent)] == [missed, live]
        assert not conn.holding
    finally:
        await hub.aclose()
