"""Presence, history reads and disconnects in process: the engine's side of issue 20.

The hub runs on the memory backend; a few tests give it a backend that fails or forgets on
demand (the memory backend with one method changed: the ``Backend`` seam, nothing patched).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from tests.conftest import until
from tidings.auth.principal import Principal
from tidings.backends.base import Disconnect, PresenceEntry, PresenceUpdate
from tidings.backends.memory import MemoryBackend
from tidings.engine import Connection, Dispatcher
from tidings.engine.control import DEFAULT_REASON, end_streams, matches
from tidings.engine.presence import FINAL_SECONDS, JOIN, LEAVE
from tidings.errors import BackendUnavailable, InvalidEvent, InvalidTopic, NotAuthorized
from tidings.hub import Hub
from tidings.wire import EventParser, ServerSentEvent


class ScriptedBackend(MemoryBackend):
    """The memory backend, whose presence updates can fail, be recorded, or report a loss."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.fail = False
        self.hang = False
        self.lose = False
        self.expire: list[PresenceEntry] = []
        self.calls: list[tuple[list[PresenceEntry], list[PresenceEntry]]] = []

    async def update_presence(
        self,
        node: str,
        joins: Sequence[PresenceEntry],
        leaves: Sequence[PresenceEntry],
        *,
        final: bool = False,
    ) -> PresenceUpdate:
        self.calls.append((list(joins), list(leaves)))
        if self.hang:
            await asyncio.Event().wait()  # a Redis that never answers
        if self.fail:
            raise BackendUnavailable("the backend is unavailable (update presence)")
        if self.lose:
            self.lose = False
            await super().update_presence(node, [], [], final=True)  # forgets the node
            return PresenceUpdate(lost=True)
        update = await super().update_presence(node, joins, leaves, final=final)
        expired, self.expire = self.expire, []
        return PresenceUpdate(lost=update.lost, expired=expired)


@pytest.fixture
async def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def hub(backend: ScriptedBackend) -> AsyncIterator[Hub]:
    hub = Hub(
        backend=backend,
        store="memory",
        keepalive=60,
        shutdown_grace=0,
        presence_events=["room/*", "**"],
    )
    await hub.start()
    yield hub
    await hub.aclose()


async def drain(conn: Connection) -> list[ServerSentEvent]:
    chunk = await conn.next_chunk()
    assert chunk is not None
    return EventParser().feed(chunk)


async def wait_count(hub: Hub, topic: str, count: int) -> None:
    async def reached() -> bool:
        return (await hub.presence(topic)).count == count

    await until(reached, what=f"{count} streams on {topic}")


def end(conn: Connection) -> None:
    """The stream's client goes away, as its server reports it."""
    conn.close("client")
    conn.finish()


# -- presence --------------------------------------------------------------------------------


async def test_a_stream_is_present_on_each_topic_it_names_exactly(hub: Hub) -> None:
    alice = Principal(user="alice", subscribe=("room/**",))
    conn = await hub.open_stream(["room/1", "room/*", "room/2"], principal=alice)
    await wait_count(hub, "room/1", 1)
    page = await hub.presence("room/2")
    [found] = page.connections
    assert (found.connection_id, found.user, found.node) == (
        conn.connection_id,
        "alice",
        hub.engine.node,
    )
    topics = await hub.topics()
    assert [(t.topic, t.subscribers) for t in topics.topics] == [("room/1", 1), ("room/2", 1)]
    with pytest.raises(InvalidTopic):
        await hub.presence("room/*")  # a pattern has no presence
    end(conn)
    await wait_count(hub, "room/1", 0)
    assert (await hub.topics()).topics == []


async def test_connection_ids_are_unique_and_sort_in_opening_order(hub: Hub) -> None:
    conns = [await hub.open_stream(["t"]) for _ in range(12)]
    ids = [conn.connection_id for conn in conns]
    assert ids == sorted(ids)
    assert len(set(ids)) == 12
    await wait_count(hub, "t", 12)
    first = await hub.presence("t", limit=5)
    rest = await hub.presence("t", limit=100, cursor=first.next_cursor)
    assert [e.connection_id for e in [*first.connections, *rest.connections]] == ids


async def test_a_stream_that_comes_and_goes_within_a_tick_is_never_sent(
    hub: Hub, backend: ScriptedBackend
) -> None:
    tracker = hub.engine.presence_tracker
    await tracker.flush()
    backend.calls.clear()
    listener = await hub.open_stream(["**"])
    await drain(listener)
    end(await hub.open_stream(["brief"]))
    await tracker.flush()
    assert backend.calls == [([], [])]  # a heartbeat, nothing else
    assert (await hub.presence("brief")).count == 0
    published = await hub.publish("after", 1)
    assert [e.id for e in await drain(listener)] == [published]  # no join, no leave


async def test_changes_the_backend_refused_are_sent_again_and_a_removal_is_never_dropped(
    hub: Hub, backend: ScriptedBackend
) -> None:
    tracker = hub.engine.presence_tracker
    await tracker.flush()
    backend.fail = True
    kept = await hub.open_stream(["kept"])
    gone = await hub.open_stream(["gone"])
    with pytest.raises(BackendUnavailable):
        await tracker.flush()
    # The failed call may have reached the backend: the stream that ended meanwhile is
    # removed, not forgotten.
    end(gone)
    backend.fail = False
    backend.calls.clear()
    await tracker.flush()
    [(joins, leaves)] = backend.calls
    assert [(e.topic, e.connection_id) for e in joins] == [("kept", kept.connection_id)]
    assert [(e.topic, e.connection_id) for e in leaves] == [("gone", gone.connection_id)]
    assert (await hub.presence("kept")).count == 1


async def test_a_node_the_backend_lost_sends_its_entries_again(
    hub: Hub, backend: ScriptedBackend
) -> None:
    conns = [await hub.open_stream([f"t/{i}", "shared"]) for i in range(3)]
    await wait_count(hub, "shared", 3)
    backend.lose = True
    await hub.engine.presence_tracker.flush()
    assert (await hub.presence("shared")).count == 0
    await wait_count(hub, "shared", 3)
    assert (await hub.presence("t/2")).connections[0].connection_id == conns[2].connection_id


async def test_a_stopping_hub_does_not_wait_long_for_a_backend_that_does_not_answer(
    backend: ScriptedBackend,
) -> None:
    hub = Hub(backend=backend, store="memory", keepalive=60, shutdown_grace=0)
    await hub.start()
    await hub.open_stream(["t"])
    await hub.engine.presence_tracker.flush()
    backend.hang = True
    async with asyncio.timeout(FINAL_SECONDS + 5):
        await hub.aclose()  # its entries are left to expire
    assert backend.calls[-1][1] != []  # it tried to remove them


async def test_joins_and_leaves_are_announced_on_topics_that_ask_for_it(hub: Hub) -> None:
    listener = await hub.open_stream(["room/*", "lobby/**", "tasks/**"])
    await drain(listener)
    bob = Principal(user="bob", unrestricted=True)
    joiner = await hub.open_stream(["room/7", "lobby/x", "tasks/abc"], principal=bob)
    joined: list[ServerSentEvent] = []
    while len(joined) < 2:
        joined += await drain(listener)
    # presence_events is ["room/*", "**"]: both topics, never tasks/... (task events only).
    assert [(e.event, orjson.loads(e.data)) for e in joined] == [
        (JOIN, {"topic": topic, "user": "bob", "connection_id": joiner.connection_id})
        for topic in ("room/7", "lobby/x")
    ]
    assert all(e.id for e in joined)  # ordinary events: ids, history
    end(joiner)
    left: list[ServerSentEvent] = []
    while len(left) < 2:
        left += await drain(listener)
    assert [(e.event, orjson.loads(e.data)["topic"]) for e in left] == [
        (LEAVE, "room/7"),
        (LEAVE, "lobby/x"),
    ]
    history = await hub.history("room/7")
    assert [e.type for e in history.events] == [JOIN, LEAVE]


async def test_entries_of_a_dead_node_are_announced_as_gone(
    hub: Hub, backend: ScriptedBackend
) -> None:
    listener = await hub.open_stream(["room/9"])
    await drain(listener)
    backend.expire = [PresenceEntry("room/9", "dead-01", "carol", "elsewhere", 1.0)]
    await hub.engine.presence_tracker.flush()
    events: list[ServerSentEvent] = []
    while not any(e.event == LEAVE for e in events):
        events += await drain(listener)
    leave = next(e for e in events if e.event == LEAVE)
    assert orjson.loads(leave.data) == {
        "topic": "room/9",
        "user": "carol",
        "connection_id": "dead-01",
    }


# -- who may read ------------------------------------------------------------------------------


async def test_only_a_caller_that_may_subscribe_reads_presence_and_history(hub: Hub) -> None:
    await hub.publish("chat/a", 1)
    reader = Principal(user="r", subscribe=("chat/*",))
    assert (await hub.presence("chat/a", principal=reader)).count == 0
    assert len((await hub.history("chat/a", principal=reader)).events) == 1
    stranger = Principal(user="s", subscribe=("other/**",))
    for call in (
        hub.presence("chat/a", principal=stranger),
        hub.history("chat/a", principal=stranger),
    ):
        with pytest.raises(NotAuthorized) as refused:
            await call
        assert refused.value.status == 403
    # A user's own topics, and its own task, without a grant (SPEC §5).
    await hub.presence("users/s/inbox", principal=stranger)
    task = await hub.tasks.create(owner="s")
    await hub.history(f"tasks/{task.task_id}", principal=stranger)
    with pytest.raises(NotAuthorized):
        await hub.history(f"tasks/{task.task_id}", principal=reader)


async def test_history_leaves_out_events_for_other_users_and_pages(hub: Hub) -> None:
    ids = [await hub.publish("inbox", i) for i in range(3)]
    secret = await hub.publish("inbox", "for bob", users=["bob"])
    ids.append(await hub.publish("inbox", 3))
    alice = Principal(user="alice", unrestricted=True)
    bob = Principal(user="bob", unrestricted=True)
    page = await hub.history("inbox", limit=2, principal=alice)
    assert ([e.id for e in page.events], page.next_since, page.complete) == (ids[:2], ids[1], True)
    page = await hub.history("inbox", since=page.next_since, limit=2, principal=alice)
    # The page ends where the backend's did: the event for bob is left out, not replaced.
    assert ([e.id for e in page.events], page.next_since) == ([ids[2]], secret)
    page = await hub.history("inbox", since=page.next_since, limit=2, principal=alice)
    assert ([e.id for e in page.events], page.next_since) == ([ids[3]], None)
    assert secret in [e.id for e in (await hub.history("inbox", principal=bob)).events]
    assert secret in [e.id for e in (await hub.history("inbox")).events]  # application code


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({"limit": 0}, InvalidEvent),
        ({"limit": 101}, InvalidEvent),
        ({"limit": True}, InvalidEvent),
        ({"since": "x" * 257}, InvalidEvent),
        ({"since": ""}, InvalidEvent),
        ({"topic": "a//b"}, InvalidTopic),
        ({"topic": "a/**"}, InvalidTopic),
    ],
)
async def test_bad_history_arguments_are_refused(
    hub: Hub, call: dict[str, Any], error: type[Exception]
) -> None:
    topic = call.pop("topic", "t")
    with pytest.raises(error):
        await hub.history(topic, **call)


@pytest.mark.parametrize(
    "call",
    [{"limit": 0}, {"limit": 1001}, {"cursor": ""}, {"cursor": "a b"}, {"cursor": "é"}],
)
async def test_bad_presence_and_topics_arguments_are_refused(
    hub: Hub, call: dict[str, Any]
) -> None:
    with pytest.raises(InvalidEvent):
        await hub.presence("t", **call)
    with pytest.raises(InvalidEvent):
        await hub.topics(**call)


# -- disconnect ------------------------------------------------------------------------------


async def test_disconnect_ends_matching_streams_with_a_disconnect_event(hub: Hub) -> None:
    alice = Principal(user="alice", unrestricted=True)
    bob = Principal(user="bob", unrestricted=True)
    targets = [
        await hub.open_stream(["rooms/a"], principal=alice),
        await hub.open_stream(["rooms/*", "x"], principal=bob),
    ]
    spared = [
        await hub.open_stream(["rooms/**"], principal=alice),  # wider than the command
        await hub.open_stream(["other"], principal=alice),
    ]
    for conn in [*targets, *spared]:
        await drain(conn)
    assert await hub.disconnect(topic="rooms/*", reason="maintenance") == 2
    for conn in targets:
        events = await drain(conn)
        assert [(e.event, e.data, e.id) for e in events] == [
            ("disconnect", '{"reason":"maintenance"}', "")
        ]
        assert await conn.next_chunk() is None  # then a clean end
        assert conn.close_reason == "disconnect"
    assert all(conn.close_reason is None for conn in spared)
    assert await hub.disconnect(user="alice") == 2
    assert orjson.loads((await drain(spared[0]))[0].data) == {"reason": DEFAULT_REASON}
    assert await hub.disconnect(user="nobody") == 0


def test_a_command_matches_by_user_and_by_subscriptions_within_its_topic() -> None:
    def ends(
        user: str | None, patterns: tuple[str, ...], by: str | None, topic: str | None
    ) -> bool:
        stream = Connection(
            Dispatcher(), patterns, Principal(user=user), max_events=10, max_bytes=10_000
        )
        return matches(stream, Disconnect(by, topic, "r"))

    assert ends("a", ("x",), "a", None)
    assert not ends("b", ("x",), "a", None)
    assert not ends(None, ("x",), "a", None)
    assert ends(None, ("chat/general",), None, "chat/*")
    assert ends(None, ("chat/*",), None, "chat/**")
    assert not ends(None, ("chat/**",), None, "chat/*")
    assert not ends(None, ("chat/**",), None, "chat/general")
    assert ends("a", ("chat/x", "other"), "a", "chat/x")
    assert not ends("b", ("chat/x",), "a", "chat/x")
    assert end_streams([], Disconnect("a", None, "r")) == 0


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({}, InvalidEvent),
        ({"user": ""}, InvalidEvent),
        ({"user": "u", "reason": "x" * 1025}, InvalidEvent),
        ({"topic": "a//b"}, InvalidTopic),
    ],
)
async def test_bad_disconnects_are_refused(
    hub: Hub, call: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await hub.disconnect(**call)
