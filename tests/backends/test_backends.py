"""The ``Backend`` contract, written once and run against every backend (memory and Redis).

Then what only the Redis backend promises: several nodes on one Redis act as one hub, and
it survives Redis going away (SPEC §6). Redis tests use the tests' own redis-server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest
import redis.asyncio
import redis.exceptions

from tests.conftest import RedisServer, TcpProxy
from tidings.backends.base import Appended, Backend
from tidings.backends.memory import MemoryBackend
from tidings.backends.redis import RedisBackend
from tidings.errors import BackendUnavailable
from tidings.events import Draft, Event, EventId, make_draft


class Node:
    """A started backend and what it delivered: one process of a hub, for the tests."""

    def __init__(self, backend: MemoryBackend | RedisBackend) -> None:
        self.backend = backend
        self.delivered: list[Event] = []
        self._changed = asyncio.Event()

    def deliver(self, event: Event, more: bool = False) -> None:
        self.delivered.append(event)
        self._changed.set()

    async def publish(
        self, topic: str, data: Any = None, *, key: str | None = None, **options: Any
    ) -> str:
        appended = await self.backend.append(
            make_draft(topic, data, **options), idempotency_key=key
        )
        return appended.id

    async def wait_delivered(self, count: int, timeout: float = 10.0) -> list[Event]:
        """Wait until at least ``count`` events were delivered; all of them."""
        async with asyncio.timeout(timeout):
            while len(self.delivered) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.delivered

    def ids(self) -> list[str]:
        return [event.id for event in self.delivered]


class OpenNode(Protocol):
    async def __call__(self, **options: Any) -> Node: ...


def _typecheck_backends(memory: MemoryBackend, redis_backend: RedisBackend) -> list[Backend]:
    """Both implementations satisfy the ``Backend`` protocol (checked by mypy)."""
    return [memory, redis_backend]


@pytest.fixture(params=["memory", "redis"])
async def open_node(request: pytest.FixtureRequest) -> AsyncIterator[OpenNode]:
    """Start backends of the parametrized kind (``history_size=``, ``history_ttl=`` ...)."""
    kind = request.param
    url: str = request.getfixturevalue("redis_url") if kind == "redis" else ""
    nodes: list[Node] = []

    async def open_(**options: Any) -> Node:
        backend = RedisBackend(url, **options) if kind == "redis" else MemoryBackend(**options)
        node = Node(backend)
        await backend.start(node.deliver)
        nodes.append(node)
        return node

    yield open_
    for node in nodes:
        await node.backend.aclose()


@pytest.fixture
async def node(open_node: OpenNode) -> Node:
    return await open_node()


async def sweep(node: Node) -> None:
    """Run the backend's periodic expiry now, instead of waiting for it."""
    backend = node.backend
    if isinstance(backend, MemoryBackend):
        backend._expire(time.time())
    else:
        await backend._sweep_once()


def aged(draft: Draft, seconds: float) -> Draft:
    """``draft`` as if it had been published ``seconds`` ago."""
    return dataclasses.replace(draft, time=time.time() - seconds)


def parse(ident: str) -> EventId:
    parsed = EventId.parse(ident)
    assert parsed is not None, ident
    return parsed


# -- the contract ------------------------------------------------------------------------


async def test_ids_rise_by_one_across_topics(node: Node) -> None:
    ids = [await node.publish(topic, i) for i, topic in enumerate(["a", "b/c", "a", "d", "b/c"])]
    parsed = [parse(i) for i in ids]
    assert len({p.epoch for p in parsed}) == 1
    seqs = [p.seq for p in parsed]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert await node.backend.latest_id() == ids[-1]


async def test_latest_id_before_the_first_event_has_seq_zero(node: Node) -> None:
    latest = parse(await node.backend.latest_id())
    assert latest.seq == 0
    first = parse(await node.publish("a"))
    assert (first.epoch, first.seq) == (latest.epoch, 1)


async def test_concurrent_appends_get_ids_in_call_order(node: Node) -> None:
    appended = await asyncio.gather(
        *(node.backend.append(make_draft(f"t/{i % 4}", i)) for i in range(300))
    )
    seqs = [parse(a.id).seq for a in appended]
    assert seqs == list(range(seqs[0], seqs[0] + 300))
    delivered = await node.wait_delivered(300)
    assert [e.data for e in delivered] == list(range(300))


async def test_deliver_is_called_once_per_append_in_id_order(node: Node) -> None:
    ids = [await node.publish(f"topic/{i % 3}", {"n": i}) for i in range(20)]
    delivered = await node.wait_delivered(20)
    assert [event.id for event in delivered] == ids
    assert [event.data for event in delivered] == [{"n": i} for i in range(20)]
    sentinel = await node.publish("sentinel")
    await node.wait_delivered(21)
    assert node.ids() == [*ids, sentinel]


async def test_replay_returns_each_later_event_of_an_exact_topic_in_order(node: Node) -> None:
    first = await node.publish("chat/a", 0)
    later = []
    for i in range(1, 6):
        later.append(await node.publish("chat/a", i))
        await node.publish("chat/b", i)
    replay = await node.backend.replay(["chat/a"], first)
    assert replay.gap is None
    assert [event.id for event in replay.events] == later
    assert [event.data for event in replay.events] == [1, 2, 3, 4, 5]


async def test_replay_matches_wildcard_patterns_across_topics(node: Node) -> None:
    start = await node.backend.latest_id()
    published = {
        topic: await node.publish(topic, topic)
        for topic in [
            "users/42",
            "users/42/notifications",
            "users/420/notifications",
            "chat/general",
            "chat/random",
            "chat/general/threads",
            "users/42/a/b",
            "other",
        ]
    }

    async def replayed(*patterns: str) -> list[str]:
        replay = await node.backend.replay(list(patterns), start)
        assert replay.gap is None
        ids = [event.id for event in replay.events]
        assert [parse(i).seq for i in ids] == sorted(parse(i).seq for i in ids)
        return [str(event.topic) for event in replay.events]

    assert await replayed("users/42/**") == ["users/42", "users/42/notifications", "users/42/a/b"]
    assert await replayed("chat/*") == ["chat/general", "chat/random"]
    assert await replayed("*/general/**", "other") == [
        "chat/general",
        "chat/general/threads",
        "other",
    ]
    assert await replayed("**") == list(published)
    assert await replayed("chat/general", "chat/*") == ["chat/general", "chat/random"]
    assert await replayed("nothing/*") == []


async def test_replay_after_the_latest_id_is_empty(node: Node) -> None:
    await node.publish("a")
    latest = await node.publish("a")
    replay = await node.backend.replay(["a", "**"], latest)
    assert (list(replay.events), replay.gap) == ([], None)
    epoch_zero = f"{parse(latest).epoch}-0"
    replay = await node.backend.replay(["a"], epoch_zero)
    assert len(replay.events) == 2


async def test_replayed_events_equal_delivered_ones(node: Node) -> None:
    start = await node.backend.latest_id()
    await node.publish("t", {"x": [1, "é", None]}, type="custom", priority="high", retry=1500)
    await node.publish("t", "text", users=["u2", "u1"], priority="low")
    await node.publish("t", None, type="task_progress")
    delivered = await node.wait_delivered(3)
    replay = await node.backend.replay(["t"], start)
    assert list(replay.events) == delivered
    assert replay.events[1].users == frozenset({"u1", "u2"})
    assert replay.events[0].frame.startswith(f"id: {replay.events[0].id}\nevent: custom\n".encode())


async def test_events_beyond_the_size_window_give_gap_expired(open_node: OpenNode) -> None:
    node = await open_node(history_size=3)
    other = await node.publish("other", "kept")
    ids = [await node.publish("t", i) for i in range(5)]
    latest = ids[-1]

    replay = await node.backend.replay(["t"], ids[0])
    assert replay.events == ()
    assert replay.gap is not None
    assert (replay.gap.last_event_id, replay.gap.reason, replay.gap.latest_id) == (
        ids[0],
        "expired",
        latest,
    )
    # The oldest event still held resumes exactly.
    replay = await node.backend.replay(["t"], ids[1])
    assert [event.id for event in replay.events] == ids[2:]
    # A topic that kept all its events is unaffected by another topic's trimming.
    replay = await node.backend.replay(["other"], other)
    assert (list(replay.events), replay.gap) == ([], None)
    gap = (await node.backend.replay(["**"], other)).gap
    assert gap is not None
    assert gap.reason == "expired"


async def test_history_size_zero_keeps_nothing(open_node: OpenNode) -> None:
    node = await open_node(history_size=0)
    start = await node.backend.latest_id()
    await node.publish("t")
    replay = await node.backend.replay(["t"], start)
    assert replay.gap is not None
    assert replay.gap.reason == "expired"
    assert await node.wait_delivered(1)


async def test_events_older_than_the_ttl_give_gap_expired(open_node: OpenNode) -> None:
    node = await open_node(history_ttl=60)
    start = await node.backend.latest_id()
    old = await node.backend.append(aged(make_draft("t", "old"), 120))
    fresh = await node.publish("t", "fresh")

    replay = await node.backend.replay(["t"], start)
    assert replay.gap is not None
    assert (replay.gap.reason, replay.gap.latest_id) == ("expired", fresh)
    replay = await node.backend.replay(["t"], old.id)
    assert [event.id for event in replay.events] == [fresh]


async def test_a_topic_whose_history_aged_out_still_gives_gap_expired(
    open_node: OpenNode,
) -> None:
    node = await open_node(history_ttl=60)
    start = await node.backend.latest_id()
    await node.backend.append(aged(make_draft("gone/a", 1), 120))
    await node.backend.append(aged(make_draft("gone/a", 2), 90))
    kept = await node.publish("kept", 3)
    for swept in (False, True):
        if swept:
            await sweep(node)  # the topic is forgotten; its watermark must remain
        for patterns in (["gone/a"], ["gone/*"], ["kept", "gone/**"]):
            replay = await node.backend.replay(patterns, start)
            assert replay.gap is not None, (swept, patterns)
            assert replay.gap.reason == "expired"
        if not swept:  # (once swept, the hub-wide watermark also covers other topics)
            replay = await node.backend.replay(["kept"], start)
            assert [event.id for event in replay.events] == [kept]
    # The topic starts afresh, and resumes after its new events work.
    again = await node.publish("gone/a", 4)
    later = await node.publish("gone/a", 5)
    assert [e.id for e in (await node.backend.replay(["gone/*"], again)).events] == [later]


@pytest.mark.parametrize(
    "shape",
    [
        "garbage",
        "",
        "-",
        "5",
        "-5",
        "abc-",
        "abc-x",
        "abc-1.5",
        "other-epoch-1",
        "future",
        "huge",
        "0x-1",
    ],
)
async def test_ids_it_cannot_place_give_gap_unknown(node: Node, shape: str) -> None:
    latest = await node.publish("t", 1)
    await node.publish("t", 2)
    latest = await node.backend.latest_id()
    epoch = parse(latest).epoch
    given = {
        "other-epoch-1": f"{'0' * 8 if epoch != '0' * 8 else '1' * 8}-1",
        "future": f"{epoch}-{parse(latest).seq + 1}",
        "huge": f"{epoch}-{'9' * 20}",
    }.get(shape, shape)
    for patterns in (["t"], ["**"]):
        replay = await node.backend.replay(patterns, given)
        assert replay.events == ()
        assert replay.gap is not None
        assert (replay.gap.last_event_id, replay.gap.reason, replay.gap.latest_id) == (
            given,
            "unknown",
            latest,
        )


async def test_a_repeated_idempotency_key_returns_the_first_id_and_publishes_nothing(
    node: Node,
) -> None:
    first = await node.backend.append(make_draft("t", 1), idempotency_key="k1")
    assert first == Appended(first.id, duplicate=False)
    again = await node.backend.append(make_draft("other", 2), idempotency_key="k1")
    assert again == Appended(first.id, duplicate=True)
    assert await node.backend.latest_id() == first.id
    different = await node.backend.append(make_draft("t", 3), idempotency_key="k2")
    assert not different.duplicate
    assert parse(different.id).seq == parse(first.id).seq + 1
    sentinel = await node.publish("t", 4)
    await node.wait_delivered(3)
    assert node.ids() == [first.id, different.id, sentinel]
    start = f"{parse(first.id).epoch}-0"
    assert [e.data for e in (await node.backend.replay(["**"], start)).events] == [1, 3, 4]


# -- Redis only: several nodes, one hub ----------------------------------------------------

OpenRedisNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def open_redis_node(redis_url: str) -> AsyncIterator[OpenRedisNode]:
    """Start Redis backend nodes (``url=`` to go through a proxy) on the tests' Redis."""
    nodes: list[Node] = []

    async def open_(url: str = redis_url, **options: Any) -> Node:
        node = Node(RedisBackend(url, **options))
        await node.backend.start(node.deliver)
        nodes.append(node)
        return node

    yield open_
    for node in nodes:
        await node.backend.aclose()


async def wait_until_published(node: Node, topic: str, data: Any, timeout: float = 20.0) -> str:
    """Publish once the backend takes publishes again (after an outage); the id."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await node.publish(topic, data)
            except BackendUnavailable:
                await asyncio.sleep(0.05)


async def test_an_append_on_one_node_is_delivered_on_every_node_in_one_order(
    open_redis_node: OpenRedisNode,
) -> None:
    a, b, c = [await open_redis_node() for _ in range(3)]

    async def publish_from(node: Node, name: str) -> list[str]:
        return [await node.publish(f"from/{name}", i) for i in range(30)]

    published = await asyncio.gather(publish_from(a, "a"), publish_from(b, "b"))
    expected = sorted((i for ids in published for i in ids), key=lambda i: parse(i).seq)
    for node in (a, b, c):
        await node.wait_delivered(60)
        assert node.ids() == expected
    assert [e.frame for e in a.delivered] == [e.frame for e in c.delivered]


async def test_a_resume_on_another_node_replays_exactly(open_redis_node: OpenRedisNode) -> None:
    a, b = await open_redis_node(), await open_redis_node()
    first = await a.publish("chat/x", 0)
    later = [await (a if i % 2 else b).publish("chat/x", i) for i in range(1, 8)]
    for resumer in (a, b):
        replay = await resumer.backend.replay(["chat/*"], first)
        assert [event.id for event in replay.events] == later


async def test_racing_idempotent_appends_from_two_nodes_publish_once(
    open_redis_node: OpenRedisNode,
) -> None:
    a, b = await open_redis_node(), await open_redis_node()
    for n in range(20):
        key = f"race-{n}"
        results = await asyncio.gather(
            a.backend.append(make_draft("t", n), idempotency_key=key),
            b.backend.append(make_draft("t", n), idempotency_key=key),
        )
        assert results[0].id == results[1].id
        assert sorted(r.duplicate for r in results) == [False, True]
    sentinel = await a.publish("t", "end")
    delivered = await b.wait_delivered(21)
    assert len(delivered) == 21
    assert delivered[-1].id == sentinel
    assert [e.data for e in delivered[:20]] == list(range(20))


async def test_redis_down_refuses_appends_and_ping_is_false(
    open_redis_node: OpenRedisNode, redis_server: RedisServer
) -> None:
    node = await open_redis_node()
    latest = await node.publish("t", 1)
    assert await node.backend.ping() is True
    await asyncio.to_thread(redis_server.stop)
    try:
        assert await node.backend.ping() is False
        with pytest.raises(BackendUnavailable) as caught:
            await node.backend.append(make_draft("t", 2), idempotency_key="k")
        assert isinstance(caught.value.__cause__, redis.exceptions.RedisError | OSError)
        assert caught.value.status == 503
        with pytest.raises(BackendUnavailable):
            await node.backend.replay(["t"], latest)
        with pytest.raises(BackendUnavailable):
            await node.backend.latest_id()
    finally:
        redis_server.start()
    # Publishes are taken again once Redis is back.
    assert parse(await wait_until_published(node, "t", 2)).seq > parse(latest).seq


async def test_a_node_cut_off_from_redis_delivers_what_others_published_meanwhile(
    open_redis_node: OpenRedisNode,
    redis_server: RedisServer,
    tcp_proxy: Callable[[int], Awaitable[TcpProxy]],
) -> None:
    proxy = await tcp_proxy(redis_server.port)
    cut_off = await open_redis_node(proxy.url("redis", "/0"))
    other = await open_redis_node()
    before = await other.publish("t", "before")
    await cut_off.wait_delivered(1)

    await proxy.cut()
    assert await cut_off.backend.ping() is False
    with pytest.raises(BackendUnavailable):
        await cut_off.publish("t", "refused")
    meanwhile = [await other.publish(f"t/{i % 2}", i) for i in range(10)]
    await proxy.restore()

    await cut_off.wait_delivered(11)
    assert cut_off.ids() == [before, *meanwhile]
    assert await cut_off.backend.ping() is True  # ready again: its reader follows the log
    after = await cut_off.publish("t", "after")
    await other.wait_delivered(12)
    await cut_off.wait_delivered(12)
    assert cut_off.ids() == other.ids() == [before, *meanwhile, after]


async def test_a_node_started_while_redis_is_unreachable_serves_once_it_is_back(
    open_redis_node: OpenRedisNode,
    redis_server: RedisServer,
    tcp_proxy: Callable[[int], Awaitable[TcpProxy]],
) -> None:
    proxy = await tcp_proxy(redis_server.port)
    await proxy.cut()
    late = await open_redis_node(proxy.url("redis", "/0"))  # starts anyway
    assert await late.backend.ping() is False
    other = await open_redis_node()
    published = [await other.publish("t", i) for i in range(3)]
    await proxy.restore()
    await late.wait_delivered(3)
    assert late.ids() == published
    mine = await wait_until_published(late, "t", 3)
    await other.wait_delivered(4)
    assert other.ids() == [*published, mine]


async def test_a_node_recovers_from_history_what_the_log_trimmed_while_it_was_away(
    open_redis_node: OpenRedisNode,
    redis_server: RedisServer,
    tcp_proxy: Callable[[int], Awaitable[TcpProxy]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await tcp_proxy(redis_server.port)
    cut_off = await open_redis_node(proxy.url("redis", "/0"))
    # This node's appends trim the log to about 10 entries (Redis trims whole nodes of 100).
    other = await open_redis_node(log_size=10)
    await proxy.cut()
    meanwhile = [await other.publish(f"t/{i % 7}", i) for i in range(450)]
    await proxy.restore()
    await cut_off.wait_delivered(450)
    assert cut_off.ids() == meanwhile
    assert "recovered" in caplog.text  # the log really had a hole


async def test_after_a_redis_restart_the_reader_delivers_the_new_history(
    open_redis_node: OpenRedisNode, redis_server: RedisServer
) -> None:
    a, b = await open_redis_node(), await open_redis_node()
    old = await a.publish("t", "old")
    await b.wait_delivered(1)

    await asyncio.to_thread(redis_server.stop)  # no persistence: everything in Redis is lost
    await asyncio.to_thread(redis_server.start)
    new = [await wait_until_published(b, "t", i) for i in range(3)]
    for node in (a, b):
        await node.wait_delivered(4)
        assert node.ids() == [old, *new]
    # A new epoch: old ids are unknown, and seqs kept rising (no id is reused).
    assert parse(new[0]).epoch != parse(old).epoch
    assert parse(new[0]).seq > parse(old).seq
    gap = (await a.backend.replay(["t"], old)).gap
    assert gap is not None
    assert (gap.reason, gap.latest_id) == ("unknown", new[-1])
    assert [e.id for e in (await a.backend.replay(["t"], new[0])).events] == new[1:]


async def test_no_redis_error_escapes_unmapped(
    open_redis_node: OpenRedisNode, redis_url: str
) -> None:
    node = await open_redis_node()
    latest = await node.publish("t", 1)
    # The log key holds a string: every write fails inside Redis (WRONGTYPE).
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set("tidings:log", "not a stream")
    finally:
        await client.aclose()
    with pytest.raises(BackendUnavailable) as caught:
        await node.publish("t", 2)
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)

    # And every method of a backend whose Redis is not there at all.
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dead = RedisBackend(f"redis://127.0.0.1:{closed_port}/0")
    await dead.start(lambda event, more=False: None)  # starts anyway; the reader keeps retrying
    try:
        assert await dead.ping() is False
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: dead.append(make_draft("t", 1)),
            lambda: dead.replay(["t"], latest),
            lambda: dead.replay(["t/**"], latest),
            lambda: dead.replay(["t"], "garbage"),
            dead.latest_id,
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable) as caught:
                await call()
            assert isinstance(caught.value.__cause__, redis.exceptions.RedisError | OSError)
    finally:
        await dead.aclose()
