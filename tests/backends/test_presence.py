"""Presence, history reads and control commands of the ``Backend`` contract (issue 20).

Written once and run against every backend (memory and Redis), then what only Redis
promises: several nodes on one Redis share one presence, a node that stops updating drops
out, and a command reaches every node. Redis tests use the tests' own redis-server.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest
import redis.asyncio
import redis.exceptions

from tests.backends.test_backends import Node, aged, parse
from tests.conftest import RedisServer, until
from tidings.backends.base import Disconnect, PresenceEntry
from tidings.backends.memory import MemoryBackend
from tidings.backends.redis import RedisBackend
from tidings.errors import BackendUnavailable
from tidings.events import make_draft


class ControlledNode(Node):
    """A node that also runs control commands: it records them and ends ``ends`` streams."""

    def __init__(self, backend: MemoryBackend | RedisBackend, ends: int = 0) -> None:
        super().__init__(backend)
        self.ends = ends
        self.commands: list[Disconnect] = []

    def control(self, command: Disconnect) -> int:
        self.commands.append(command)
        return self.ends


class OpenNode(Protocol):
    async def __call__(self, **options: Any) -> ControlledNode: ...


@pytest.fixture(params=["memory", "redis"])
async def open_node(request: pytest.FixtureRequest) -> AsyncIterator[OpenNode]:
    """Start backends of the parametrized kind, with a control handler each."""
    kind = request.param
    url: str = request.getfixturevalue("redis_url") if kind == "redis" else ""
    nodes: list[ControlledNode] = []

    async def open_(**options: Any) -> ControlledNode:
        ends = options.pop("ends", 0)
        backend = RedisBackend(url, **options) if kind == "redis" else MemoryBackend(**options)
        node = ControlledNode(backend, ends)
        await backend.start(node.deliver, node.control)
        nodes.append(node)
        return node

    yield open_
    for node in nodes:
        await node.backend.aclose()


@pytest.fixture
async def node(open_node: OpenNode) -> ControlledNode:
    return await open_node()


def entry(topic: str, ident: str, user: str | None = "u", node: str = "n1") -> PresenceEntry:
    return PresenceEntry(topic, ident, user, node, since=1_700_000_000.25)


# -- presence ------------------------------------------------------------------------------


async def test_presence_counts_and_lists_the_entries_of_a_topic(node: ControlledNode) -> None:
    backend = node.backend
    joins = [entry("room/a", f"c-{i:03d}", user=f"u{i % 3}") for i in range(5)]
    joins += [entry("room/b", "c-000"), joins[4]]  # twice is once
    update = await backend.update_presence("n1", joins, [])
    assert (update.lost, list(update.expired)) in ((False, []), (True, []))
    page = await backend.presence("room/a", limit=10, cursor=None)
    assert (page.topic, page.count, page.next_cursor) == ("room/a", 5, None)
    assert [e.connection_id for e in page.connections] == [f"c-{i:03d}" for i in range(5)]
    assert page.connections[1] == PresenceEntry("room/a", "c-001", "u1", "n1", 1_700_000_000.25)
    assert (await backend.presence("nobody/here", limit=10, cursor=None)).count == 0

    await backend.update_presence("n1", [], [joins[0], joins[3], entry("room/a", "c-zzz")])
    page = await backend.presence("room/a", limit=10, cursor=None)
    assert page.count == 3
    assert [e.connection_id for e in page.connections] == ["c-001", "c-002", "c-004"]


async def test_presence_pages_follow_connection_ids_from_the_cursor(node: ControlledNode) -> None:
    backend = node.backend
    # Ids where one is a prefix of another ("c-1" and "c-10") page in string order.
    idents = sorted(f"c-{i}" for i in range(1, 24))
    await backend.update_presence("n1", [entry("big", i, user=None) for i in idents], [])
    seen: list[str] = []
    removed = 0
    cursor = None
    while True:
        page = await backend.presence("big", limit=5, cursor=cursor)
        assert page.count == 23 - removed
        seen += [e.connection_id for e in page.connections]
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.connections[-1].connection_id
        cursor = page.next_cursor
        # An entry that goes between two pages does not shift the next page.
        await backend.update_presence("n1", [], [entry("big", seen[removed], user=None)])
        removed += 1
    assert seen == idents
    assert all(e.user is None for e in page.connections)


async def test_topics_lists_the_topics_with_entries_and_their_counts(node: ControlledNode) -> None:
    backend = node.backend
    await backend.update_presence(
        "n1", [entry(f"t/{i}", f"c-{j}") for i in range(7) for j in range(i + 1)], []
    )
    pages = []
    cursor = None
    while True:
        page = await backend.presence_topics(limit=3, cursor=cursor)
        pages.append([(t.topic, t.subscribers) for t in page.topics])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [item for p in pages for item in p] == [(f"t/{i}", i + 1) for i in range(7)]
    # A topic whose last entry goes is no longer listed.
    await backend.update_presence("n1", [], [entry("t/0", "c-0")])
    page = await backend.presence_topics(limit=100, cursor=None)
    assert [t.topic for t in page.topics] == [f"t/{i}" for i in range(1, 7)]


async def test_a_final_update_takes_the_node_out(node: ControlledNode) -> None:
    backend = node.backend
    await backend.update_presence("n1", [entry("t", "a"), entry("u", "a")], [])
    await backend.update_presence("n2", [entry("t", "b", node="n2")], [])
    await backend.update_presence("n1", [], [], final=True)
    page = await backend.presence("t", limit=10, cursor=None)
    assert [(e.connection_id, e.node) for e in page.connections] == [("b", "n2")]
    assert [t.topic for t in (await backend.presence_topics(limit=10, cursor=None)).topics] == ["t"]


async def test_one_update_takes_thousands_of_changes(node: ControlledNode) -> None:
    """A reconnect storm's worth of streams goes in one update (several script calls)."""
    joins = [entry(f"s/{i % 10}", f"c-{i:05d}") for i in range(5000)]
    await node.backend.update_presence("n1", joins, [])
    page = await node.backend.presence("s/3", limit=1, cursor=None)
    assert page.count == 500
    await node.backend.update_presence("n1", [], joins[:2500])
    assert (await node.backend.presence("s/3", limit=1, cursor=None)).count == 250


# -- history -------------------------------------------------------------------------------


async def test_history_reads_a_topic_oldest_first_page_by_page(node: ControlledNode) -> None:
    ids = []
    for i in range(7):
        ids.append(await node.publish("h/t", {"n": i}, type="tick"))
        await node.publish("h/other", i)
    window = await node.backend.history("h/t", after=None, limit=3)
    assert (window.complete, window.more) == (True, True)
    assert [e.id for e in window.events] == ids[:3]
    assert [e.data for e in window.events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert {e.type for e in window.events} == {"tick"}
    window = await node.backend.history("h/t", after=ids[2], limit=3)
    assert ([e.id for e in window.events], window.complete, window.more) == (ids[3:6], True, True)
    window = await node.backend.history("h/t", after=ids[5], limit=3)
    assert ([e.id for e in window.events], window.complete, window.more) == ([ids[6]], True, False)
    window = await node.backend.history("h/t", after=ids[6], limit=3)
    assert (list(window.events), window.complete, window.more) == ([], True, False)
    # The events a stream delivers: same ids, same frames.
    delivered = {e.id: e.frame for e in await node.wait_delivered(14)}
    window = await node.backend.history("h/t", after=None, limit=100)
    assert [delivered[e.id] for e in window.events] == [e.frame for e in window.events]
    assert (await node.backend.history("h/none", after=None, limit=5)).events == []


async def test_history_past_the_size_window_is_incomplete_from_the_oldest_kept(
    open_node: OpenNode,
) -> None:
    node = await open_node(history_size=3)
    ids = [await node.publish("t", i) for i in range(6)]
    window = await node.backend.history("t", after=ids[0], limit=2)
    assert ([e.id for e in window.events], window.complete, window.more) == (ids[3:5], False, True)
    window = await node.backend.history("t", after=ids[2], limit=5)
    assert ([e.id for e in window.events], window.complete) == (ids[3:], True)


async def test_history_leaves_out_events_older_than_the_ttl(open_node: OpenNode) -> None:
    node = await open_node(history_ttl=60)
    start = await node.backend.latest_id()
    old = (await node.backend.append(aged(make_draft("t", "old"), 120))).id
    fresh = [await node.publish("t", i) for i in range(3)]
    window = await node.backend.history("t", after=None, limit=10)
    assert ([e.id for e in window.events], window.complete) == (fresh, True)
    window = await node.backend.history("t", after=start, limit=2)
    assert ([e.id for e in window.events], window.complete, window.more) == (
        fresh[:2],
        False,
        True,
    )
    window = await node.backend.history("t", after=old, limit=10)
    assert ([e.id for e in window.events], window.complete) == (fresh, True)


@pytest.mark.parametrize("shape", ["garbage", "other-epoch", "future"])
async def test_history_after_an_id_it_cannot_place_is_incomplete(
    node: ControlledNode, shape: str
) -> None:
    ids = [await node.publish("t", i) for i in range(3)]
    epoch, seq = parse(ids[-1]).epoch, parse(ids[-1]).seq
    given = {
        "garbage": "garbage",
        "other-epoch": f"{'0' * 8 if epoch != '0' * 8 else '1' * 8}-1",
        "future": f"{epoch}-{seq + 5}",
    }[shape]
    window = await node.backend.history("t", after=given, limit=10)
    assert ([e.id for e in window.events], window.complete) == (ids, False)


# -- control ---------------------------------------------------------------------------------


async def test_disconnect_runs_the_command_on_the_node_and_counts(open_node: OpenNode) -> None:
    node = await open_node(ends=3)
    command = Disconnect(user="alice", topic="rooms/**", reason="maintenance")
    assert await node.backend.disconnect(command) == 3
    assert node.commands == [command]


# -- Redis only: several nodes ----------------------------------------------------------------

OpenRedisNode = Callable[..., Awaitable[ControlledNode]]


@pytest.fixture
async def open_redis_node(redis_url: str) -> AsyncIterator[OpenRedisNode]:
    nodes: list[ControlledNode] = []

    async def open_(ends: int = 0, **options: Any) -> ControlledNode:
        node = ControlledNode(RedisBackend(redis_url, **options), ends)
        await node.backend.start(node.deliver, node.control)
        nodes.append(node)
        return node

    yield open_
    for node in nodes:
        await node.backend.aclose()


async def test_nodes_on_one_redis_share_one_presence(open_redis_node: OpenRedisNode) -> None:
    a, b = await open_redis_node(), await open_redis_node()
    await a.backend.update_presence("na", [entry("t", "a-1", node="na")], [])
    await b.backend.update_presence("nb", [entry("t", "b-1", node="nb")], [])
    for reader in (a, b):
        page = await reader.backend.presence("t", limit=10, cursor=None)
        assert [(e.connection_id, e.node) for e in page.connections] == [
            ("a-1", "na"),
            ("b-1", "nb"),
        ]
        topics = await reader.backend.presence_topics(limit=10, cursor=None)
        assert [(t.topic, t.subscribers) for t in topics.topics] == [("t", 2)]


async def test_a_silent_node_is_removed_by_another_and_told_when_it_returns(
    open_redis_node: OpenRedisNode,
) -> None:
    a = await open_redis_node(node_timeout=0.3)
    b = await open_redis_node(node_timeout=0.3)
    mine = [entry(f"t/{i}", f"a-{i}", node="na") for i in range(3)]
    await a.backend.update_presence("na", mine, [])
    await b.backend.update_presence("nb", [entry("t/0", "b-0", node="nb")], [])
    # a stops updating: b's next update after the timeout removes a's entries, once.
    deadline = time.monotonic() + 10
    expired: list[PresenceEntry] = []
    while not expired and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        update = await b.backend.update_presence("nb", [], [])
        expired = list(update.expired)
    assert sorted(expired, key=lambda e: e.topic) == mine
    assert (await b.backend.update_presence("nb", [], [])).expired == []
    page = await b.backend.presence("t/0", limit=10, cursor=None)
    assert [e.connection_id for e in page.connections] == ["b-0"]
    topics = await b.backend.presence_topics(limit=10, cursor=None)
    assert [t.topic for t in topics.topics] == ["t/0"]
    # a comes back: it is told, and sends its entries again.
    update = await a.backend.update_presence("na", [], [])
    assert update.lost
    await a.backend.update_presence("na", mine, [])
    assert (await b.backend.presence("t/1", limit=10, cursor=None)).count == 1


async def test_a_node_whose_entries_redis_lost_is_told(
    open_redis_node: OpenRedisNode, redis_url: str
) -> None:
    a = await open_redis_node()
    # A node's first update finds it unknown (the engine expects that); later ones do not.
    assert (await a.backend.update_presence("na", [entry("t", "a-1")], [])).lost
    assert not (await a.backend.update_presence("na", [], [])).lost
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.flushall()
    finally:
        await client.aclose()
    assert (await a.backend.update_presence("na", [], [])).lost


async def test_a_disconnect_reaches_every_node_and_sums_their_counts(
    open_redis_node: OpenRedisNode,
) -> None:
    a, b, c = await open_redis_node(ends=2), await open_redis_node(ends=5), await open_redis_node()
    command = Disconnect(user=None, topic="chat/*", reason="bye")
    assert await b.backend.disconnect(command) == 7
    for node in (a, b, c):
        assert node.commands == [command]


async def test_a_node_takes_commands_again_after_a_redis_restart(
    open_redis_node: OpenRedisNode, redis_server: RedisServer
) -> None:
    a, b = await open_redis_node(ends=1), await open_redis_node(ends=2)
    command = Disconnect(user="u", topic=None, reason="r")
    assert await a.backend.disconnect(command) == 3
    await asyncio.to_thread(redis_server.stop)
    try:
        with pytest.raises(BackendUnavailable):
            await a.backend.disconnect(command)
    finally:
        redis_server.start()

    async def both_answer() -> bool:
        try:
            return await a.backend.disconnect(command) == 3
        except BackendUnavailable:
            return False  # the pool's connections notice the restart one by one

    await until(both_answer, what="both nodes to subscribe again")
    assert len(b.commands) >= 2


async def test_no_redis_error_escapes_presence_history_or_control(
    open_redis_node: OpenRedisNode,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dead = RedisBackend(f"redis://127.0.0.1:{closed_port}/0")
    await dead.start(lambda event, more=False: None, lambda command: 0)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: dead.history("t", after=None, limit=5),
            lambda: dead.history("t", after="abc-1", limit=5),
            lambda: dead.update_presence("n", [entry("t", "a")], []),
            lambda: dead.presence("t", limit=5, cursor=None),
            lambda: dead.presence_topics(limit=5, cursor=None),
            lambda: dead.disconnect(Disconnect(user="u", topic=None, reason="r")),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable) as caught:
                await call()
            assert isinstance(caught.value.__cause__, redis.exceptions.RedisError | OSError)
    finally:
        await dead.aclose()
