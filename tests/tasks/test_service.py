"""``hub.tasks``: lifecycle, events, task streams, ownership and clean-up, in process.

Streams are read through the connection's own consumer API (``next_chunk``), the bytes the
web layer would send; HTTP behaviour is in ``tests/web/test_tasks_http.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.config import load_settings
from tidings.engine import Connection
from tidings.errors import (
    EventTooLarge,
    InvalidEvent,
    InvalidTopic,
    ShuttingDown,
    TaskExists,
    TaskFinished,
    TaskNotFound,
)
from tidings.events import EventId
from tidings.hub import Hub
from tidings.tasks.service import open_store
from tidings.wire import EventParser, ServerSentEvent

ALICE = Principal(user="alice")
BOB = Principal(user="bob")


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory" if request.param == "memory" else f"sqlite:///{tmp_path / 'tasks.db'}"


@pytest.fixture
async def hub(store_url: str) -> AsyncIterator[Hub]:
    hub = Hub(store=store_url)
    await hub.start()
    yield hub
    await hub.aclose()


class Reader:
    """Reads a connection's frames as a client would, with timeouts (never sleeps)."""

    def __init__(self, hub: Hub, conn: Connection) -> None:
        self.hub = hub
        self.conn = conn
        self.parser = EventParser()
        self.pending: list[ServerSentEvent] = []
        self.ended = False

    async def _more(self, timeout: float) -> bool:
        chunk = await asyncio.wait_for(self.conn.next_chunk(), timeout)
        if chunk is None:
            self.ended = True
            self.hub.close_stream(self.conn)
            return False
        self.pending.extend(self.parser.feed(chunk))
        return True

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        while not self.pending:
            if not await self._more(timeout):
                raise AssertionError("the stream ended")
        return self.pending.pop(0)

    async def take(self, count: int) -> list[ServerSentEvent]:
        return [await self.next() for _ in range(count)]

    async def until_end(self, timeout: float = 5.0) -> list[ServerSentEvent]:
        while not self.ended:
            await self._more(timeout)
        events, self.pending = self.pending, []
        return events

    def close(self) -> None:
        self.hub.close_stream(self.conn)


async def task_stream(hub: Hub, task_id: str, **options: Any) -> Reader:
    options.setdefault("principal", ANONYMOUS)
    conn = await hub.tasks.open_stream(task_id, **options)
    assert conn is not None
    return Reader(hub, conn)


async def subscribe(hub: Hub, pattern: str) -> Reader:
    conn = await hub.open_stream([pattern], principal=ANONYMOUS)
    return Reader(hub, conn)


def data(event: ServerSentEvent) -> dict[str, Any]:
    value = orjson.loads(event.data)
    assert isinstance(value, dict)
    return value


async def history(hub: Hub, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the task still in the backend's history, in id order."""
    epoch = EventId.parse(await hub.backend.latest_id())
    assert epoch is not None
    replay = await hub.backend.replay([f"tasks/{task_id}"], f"{epoch.epoch}-0")
    assert replay.gap is None
    return [(e.type, orjson.loads(e.payload)) for e in replay.events]


# -- lifecycle and events --------------------------------------------------------------------


async def test_every_change_publishes_one_event_with_the_next_sequence(hub: Hub) -> None:
    tasks = hub.tasks
    task = await tasks.create(owner="alice", total=4, title="Convert")
    await tasks.progress(task.task_id, current=1, message="1 of 4")
    await tasks.file(task.task_id, "a.png", status="completed")
    final = await tasks.complete(task.task_id, result={"converted": 4})
    events = await history(hub, task.task_id)
    assert [kind for kind, _ in events] == [
        "task_progress",
        "task_progress",
        "file_update",
        "task_completed",
    ]
    assert [payload["sequence"] for _, payload in events] == [1, 2, 3, 4]
    assert events[0][1]["status"] == "pending"
    assert events[1][1]["status"] == "running"
    assert events[1][1]["progress"] == 25.0
    assert events[3][1]["result"] == {"converted": 4}
    assert final.sequence == 4
    assert (await tasks.get(task.task_id)).last_event_id == final.last_event_id


async def test_create_with_a_taken_id_raises_task_exists(hub: Hub) -> None:
    await hub.tasks.create(task_id="job-1")
    with pytest.raises(TaskExists):
        await hub.tasks.create(task_id="job-1")


async def test_invalid_progress_changes_nothing_and_publishes_nothing(hub: Hub) -> None:
    task = await hub.tasks.create(total=10)
    published = hub.statistics().published
    with pytest.raises(InvalidEvent):
        await hub.tasks.progress(task.task_id, current=11)
    with pytest.raises(InvalidEvent):
        await hub.tasks.progress(task.task_id, progress=101)
    with pytest.raises(InvalidEvent):
        await hub.tasks.file(task.task_id, "f", status="done")
    assert await hub.tasks.get(task.task_id) == task
    assert hub.statistics().published == published


async def test_a_result_too_large_is_refused_and_the_task_stays_open(hub: Hub) -> None:
    task = await hub.tasks.create()
    with pytest.raises(EventTooLarge):
        await hub.tasks.complete(task.task_id, result="x" * 70_000)
    assert (await hub.tasks.get(task.task_id)).status == "pending"
    await hub.tasks.complete(task.task_id, result="small")


async def test_updates_after_a_terminal_state_raise_task_finished(hub: Hub) -> None:
    task = await hub.tasks.create()
    await hub.tasks.cancel(task.task_id, reason="user asked")
    with pytest.raises(TaskFinished):
        await hub.tasks.progress(task.task_id, progress=5)
    with pytest.raises(TaskFinished):
        await hub.tasks.complete(task.task_id)
    assert [kind for kind, _ in await history(hub, task.task_id)][-1] == "task_cancelled"


async def test_racing_terminal_requests_publish_exactly_one_terminal_event(hub: Hub) -> None:
    task = await hub.tasks.create()
    outcomes = await asyncio.gather(
        hub.tasks.complete(task.task_id),
        hub.tasks.fail(task.task_id, error="x"),
        hub.tasks.cancel(task.task_id),
        return_exceptions=True,
    )
    assert sum(isinstance(o, TaskFinished) for o in outcomes) == 2
    events = await history(hub, task.task_id)
    assert len(events) == 2  # creation + one terminal event
    assert events[1][1]["sequence"] == 2


async def test_concurrent_progress_reaches_the_backend_in_sequence_order(hub: Hub) -> None:
    task = await hub.tasks.create(total=100)
    await asyncio.gather(*(hub.tasks.progress(task.task_id, current=i) for i in range(30)))
    sequences = [payload["sequence"] for _, payload in await history(hub, task.task_id)]
    assert sequences == list(range(1, 32))


async def test_a_cancelled_caller_does_not_leave_a_change_without_its_event(hub: Hub) -> None:
    """A committed change is always published, even if the caller is cancelled meanwhile."""
    task = await hub.tasks.create()
    watcher = await subscribe(hub, f"tasks/{task.task_id}")
    async with hub.tasks._locks.hold(task.task_id):  # hold the task so the change waits
        caller = asyncio.create_task(hub.tasks.complete(task.task_id))
        await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert (await watcher.next()).event == "task_completed"
    assert (await hub.tasks.get(task.task_id)).status == "completed"
    watcher.close()


# -- task streams ---------------------------------------------------------------------------


async def test_a_stream_opened_mid_task_starts_at_the_current_percent(hub: Hub) -> None:
    task = await hub.tasks.create(total=10)
    now = await hub.tasks.progress(task.task_id, current=4, message="4 of 10")
    stream = await task_stream(hub, task.task_id)
    first = await stream.next()
    assert first.event == "task_progress"
    assert first.id == now.last_event_id
    assert data(first) | {"rate": None, "eta": None} == {
        "task_id": task.task_id,
        "status": "running",
        "progress": 40.0,
        "current": 4,
        "total": 10,
        "total_files": 10,
        "message": "4 of 10",
        "rate": None,
        "eta": None,
        "sequence": now.sequence,
    }
    await hub.tasks.progress(task.task_id, current=5)
    live = await stream.next()
    assert data(live)["sequence"] == now.sequence + 1
    assert data(live)["progress"] == 50.0
    stream.close()


async def test_a_late_joiner_gets_each_file_after_the_progress(hub: Hub) -> None:
    task = await hub.tasks.create()
    await hub.tasks.file(task.task_id, "a", status="completed", filename="a.png")
    now = await hub.tasks.file(task.task_id, "b", status="processing", progress=30)
    stream = await task_stream(hub, task.task_id)
    events = await stream.take(3)
    assert [e.event for e in events] == ["task_progress", "file_update", "file_update"]
    assert [(data(e)["file_id"], data(e)["progress"]) for e in events[1:]] == [
        ("a", 100.0),
        ("b", 30.0),
    ]
    assert {e.id for e in events} == {now.last_event_id}
    stream.close()


async def test_the_terminal_event_ends_the_stream(hub: Hub) -> None:
    task = await hub.tasks.create(total=2)
    stream = await task_stream(hub, task.task_id)
    await stream.next()
    await hub.tasks.progress(task.task_id, current=1)
    await hub.tasks.complete(task.task_id, result=[1, 2])
    events = await stream.until_end()
    assert [e.event for e in events] == ["task_progress", "task_completed"]
    assert data(events[-1])["result"] == [1, 2]
    assert hub.statistics().connections == 0


async def test_a_finished_task_streams_its_terminal_event_and_ends(hub: Hub) -> None:
    task = await hub.tasks.create()
    done = await hub.tasks.fail(task.task_id, error="boom", details={"line": 3})
    stream = await task_stream(hub, task.task_id)
    events = await stream.until_end()
    assert [(e.event, e.id) for e in events] == [("task_failed", done.last_event_id)]
    assert data(events[0]) == {
        "task_id": task.task_id,
        "error": "boom",
        "details": {"line": 3},
        "sequence": done.sequence,
    }


async def test_reconnecting_with_the_terminal_event_id_gets_nothing(hub: Hub) -> None:
    task = await hub.tasks.create()
    done = await hub.tasks.complete(task.task_id)
    assert done.last_event_id is not None
    conn = await hub.tasks.open_stream(
        task.task_id, principal=ANONYMOUS, last_event_id=done.last_event_id
    )
    assert conn is None  # the web layer answers 204
    assert hub.statistics().connections == 0


async def test_a_reconnect_replays_the_missed_events_exactly_once(hub: Hub) -> None:
    task = await hub.tasks.create(total=10)
    seen = await hub.tasks.progress(task.task_id, current=1)
    await hub.tasks.progress(task.task_id, current=2)
    await hub.tasks.file(task.task_id, "f", status="processing")
    stream = await task_stream(hub, task.task_id, last_event_id=seen.last_event_id)
    replayed = await stream.take(2)
    await hub.tasks.progress(task.task_id, current=3)
    await hub.tasks.complete(task.task_id)
    events = replayed + await stream.until_end()
    assert [(e.event, data(e)["sequence"]) for e in events] == [
        ("task_progress", 3),
        ("file_update", 4),
        ("task_progress", 5),
        ("task_completed", 6),
    ]
    assert len({e.id for e in events}) == len(events)


async def test_a_reconnect_never_gets_events_up_to_its_id_late(hub: Hub) -> None:
    """After a Redis outage a node's log reader lags: events it delivers late that the
    client had before it reconnected are not sent again."""
    task = await hub.tasks.create(total=10)
    await hub.tasks.progress(task.task_id, current=1)
    seen = await hub.tasks.progress(task.task_id, current=2)
    assert seen.last_event_id is not None
    epoch = EventId.parse(seen.last_event_id).epoch  # type: ignore[union-attr]
    old = await hub.backend.replay([f"tasks/{task.task_id}"], f"{epoch}-0")
    stream = await task_stream(hub, task.task_id, last_event_id=seen.last_event_id)
    for event in old.events:  # the lagging reader, catching up
        hub.engine.dispatcher.dispatch(event)
    done = await hub.tasks.complete(task.task_id)
    events = await stream.until_end()
    assert [(e.event, e.id) for e in events] == [("task_completed", done.last_event_id)]


async def test_a_reconnect_past_the_history_window_gets_the_state(store_url: str) -> None:
    hub = Hub(store=store_url, history_size=2)
    await hub.start()
    try:
        task = await hub.tasks.create(total=10)
        seen = await hub.tasks.progress(task.task_id, current=1)
        await hub.tasks.file(task.task_id, "f", status="completed")
        await hub.tasks.progress(task.task_id, current=2)
        now = await hub.tasks.progress(task.task_id, current=3)
        stream = await task_stream(hub, task.task_id, last_event_id=seen.last_event_id)
        events = await stream.take(2)
        assert [e.event for e in events] == ["task_progress", "file_update"]
        assert data(events[0])["progress"] == 30.0
        assert {e.id for e in events} == {now.last_event_id}
        stream.close()
    finally:
        await hub.aclose()


async def test_a_reconnect_with_an_unknown_id_gets_the_state(hub: Hub) -> None:
    task = await hub.tasks.create(total=10)
    await hub.tasks.progress(task.task_id, current=6)
    stream = await task_stream(hub, task.task_id, last_event_id="not-an-id")
    assert data(await stream.next())["progress"] == 60.0
    stream.close()


async def test_an_overlong_last_event_id_is_refused(hub: Hub) -> None:
    task = await hub.tasks.create()
    with pytest.raises(InvalidTopic):
        await hub.tasks.open_stream(task.task_id, principal=ANONYMOUS, last_event_id="x" * 300)


async def test_queued_progress_is_conflated_but_file_updates_are_kept(hub: Hub) -> None:
    task = await hub.tasks.create(total=100)
    stream = await task_stream(hub, task.task_id)
    conflated = hub.statistics().conflated
    # The client reads nothing while these are published: its queue fills up.
    for i in range(1, 11):
        await hub.tasks.progress(task.task_id, current=i)
        if i % 5 == 0:
            await hub.tasks.file(task.task_id, f"f{i}", status="completed")
    await hub.tasks.progress(task.task_id, current=11)
    events = await stream.take(3)
    # Each newer task_progress replaced the queued one and took its place at the end.
    assert [(e.event, data(e)["sequence"]) for e in events] == [
        ("file_update", 7),
        ("file_update", 13),
        ("task_progress", 14),
    ]
    assert data(events[-1])["current"] == 11
    assert hub.statistics().conflated > conflated
    stream.close()


# -- ownership ----------------------------------------------------------------------------------


async def test_only_the_owner_an_admin_or_a_task_publisher_see_a_task(hub: Hub) -> None:
    task = await hub.tasks.create(owner="alice")
    worker = Principal(user="worker", publish=(f"tasks/{task.task_id}",))
    for allowed in (ALICE, Principal(user="root", admin=True), worker, ANONYMOUS):
        assert (await hub.tasks.get(task.task_id, principal=allowed)).owner == "alice"
    with pytest.raises(TaskNotFound) as info:
        await hub.tasks.get(task.task_id, principal=BOB)
    assert info.value.status == 404
    with pytest.raises(TaskNotFound):
        await hub.tasks.progress(task.task_id, progress=1, principal=BOB)
    with pytest.raises(TaskNotFound):
        await hub.tasks.complete(task.task_id, principal=BOB)
    with pytest.raises(TaskNotFound):
        await hub.tasks.open_stream(task.task_id, principal=BOB)
    await hub.tasks.progress(task.task_id, progress=1, principal=worker)
    stream = await task_stream(hub, task.task_id, principal=ALICE)
    assert (await stream.next()).event == "task_progress"
    stream.close()


async def test_a_watcher_token_may_read_and_stream_but_not_change(hub: Hub) -> None:
    task = await hub.tasks.create(owner="alice")
    watcher = Principal(user="tv", subscribe=(f"tasks/{task.task_id}",))
    assert (await hub.tasks.get(task.task_id, principal=watcher)).task_id == task.task_id
    stream = await task_stream(hub, task.task_id, principal=watcher)
    assert (await stream.next()).event == "task_progress"
    stream.close()
    with pytest.raises(TaskNotFound):
        await hub.tasks.progress(task.task_id, progress=1, principal=watcher)
    with pytest.raises(TaskNotFound):
        await hub.tasks.delete(task.task_id, principal=watcher)
    assert (await hub.tasks.get(task.task_id)).sequence == 1


async def test_list_shows_a_user_their_own_tasks_newest_first(hub: Hub) -> None:
    first = await hub.tasks.create(owner="alice")
    await hub.tasks.create(owner="bob")
    third = await hub.tasks.create(owner="alice")
    await hub.tasks.complete(first.task_id)
    mine = await hub.tasks.list(principal=ALICE)
    assert [t.task_id for t in mine] == [third.task_id, first.task_id]
    done = await hub.tasks.list(principal=ALICE, status="completed")
    assert [t.task_id for t in done] == [first.task_id]
    assert len(await hub.tasks.list(principal=Principal(user="root", admin=True))) == 3
    assert len(await hub.tasks.list()) == 3
    assert await hub.tasks.list(principal=Principal(publish=("**",))) == []


@pytest.mark.parametrize(("status", "limit"), [("bogus", 10), (None, 0), (None, 1001)])
async def test_a_bad_list_filter_is_refused(hub: Hub, status: str | None, limit: int) -> None:
    with pytest.raises(InvalidEvent):
        await hub.tasks.list(status=status, limit=limit)


async def test_an_impossible_task_id_is_not_found(hub: Hub) -> None:
    with pytest.raises(TaskNotFound):
        await hub.tasks.get("a/b")
    with pytest.raises(TaskNotFound):
        await hub.tasks.open_stream("has space", principal=ANONYMOUS)


# -- clean-up --------------------------------------------------------------------------------


async def test_purge_removes_expired_tasks_and_ends_their_streams(store_url: str) -> None:
    hub = Hub(store=store_url, task_retention=60)
    await hub.start()
    try:
        done = await hub.tasks.create()
        await hub.tasks.complete(done.task_id)
        stale = await hub.tasks.create()
        await hub.tasks.progress(stale.task_id, progress=10)
        watcher = await task_stream(hub, stale.task_id)
        dashboard = await subscribe(hub, "tasks/**")
        assert (await watcher.next()).event == "task_progress"
        assert await hub.tasks.purge_expired(now=time.time() + 30) == 0
        assert await hub.tasks.purge_expired(now=time.time() + 61) == 2
        for task_id in (done.task_id, stale.task_id):
            with pytest.raises(TaskNotFound):
                await hub.tasks.get(task_id)
        ended = await watcher.until_end()
        assert [e.event for e in ended] == ["task_deleted"]
        assert data(ended[0]) == {
            "task_id": stale.task_id,
            "reason": "expired",
            "sequence": 3,
        }
        deleted = {data(e)["task_id"] for e in await dashboard.take(2)}
        assert deleted == {done.task_id, stale.task_id}
        dashboard.close()
        assert await hub.tasks.count_active() == 0
    finally:
        await hub.aclose()


async def test_delete_ends_open_streams_with_task_deleted(hub: Hub) -> None:
    task = await hub.tasks.create()
    stream = await task_stream(hub, task.task_id)
    await stream.next()
    await hub.tasks.delete(task.task_id)
    assert [(e.event, data(e)["reason"]) for e in await stream.until_end()] == [
        ("task_deleted", "deleted")
    ]


async def test_count_active(hub: Hub) -> None:
    first = await hub.tasks.create()
    await hub.tasks.create()
    assert await hub.tasks.count_active() == 2
    await hub.tasks.cancel(first.task_id)
    assert await hub.tasks.count_active() == 1


# -- store choice and restarts ---------------------------------------------------------------


async def test_the_service_refuses_work_before_start() -> None:
    hub = Hub(store="memory")
    assert await hub.tasks.count_active() == 0
    with pytest.raises(ShuttingDown):
        await hub.tasks.create()


def test_open_store_follows_the_store_setting(tmp_path: Path) -> None:
    assert type(open_store(load_settings(store="memory"))).__name__ == "MemoryTaskStore"
    sqlite = open_store(load_settings(store=f"sqlite:///{tmp_path}/x.db"))
    assert type(sqlite).__name__ == "SQLiteTaskStore"


async def test_tasks_survive_a_restart_and_streams_continue(tmp_path: Path) -> None:
    """After a restart the memory backend's ids start over; a snapshot must not carry the old
    history's id as its de-duplication mark, or live events would be dropped."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    first = Hub(store=url)
    await first.start()
    task = await first.tasks.create(owner="alice", total=10)
    for i in range(1, 8):
        saved = await first.tasks.progress(task.task_id, current=i)
    await first.aclose()

    second = Hub(store=url)
    await second.start()
    try:
        assert await second.tasks.get(task.task_id) == saved
        stream = await task_stream(second, task.task_id, last_event_id=saved.last_event_id)
        snapshot = await stream.next()
        assert data(snapshot)["progress"] == 70.0
        await second.tasks.progress(task.task_id, current=8)
        live = await stream.next()
        assert data(live)["current"] == 8
        assert data(live)["sequence"] == saved.sequence + 1
        stream.close()
    finally:
        await second.aclose()


async def test_a_progress_report_writes_the_store_once(tmp_path: Path) -> None:
    """The id of a report's event goes into the store with the task's next change; the
    service's answers and streams carry it at once, and a terminal event's id is written
    at once."""
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    hub = Hub(store=url)
    await hub.start()
    reader = open_store(load_settings(store=url))  # what another process sees in the file
    await reader.start()
    try:
        task = await hub.tasks.create(owner="alice", total=3)
        first = await hub.tasks.progress(task.task_id, current=1)
        second = await hub.tasks.progress(task.task_id, current=2)
        assert first.last_event_id != second.last_event_id
        assert (await hub.tasks.get(task.task_id)).last_event_id == second.last_event_id
        assert [t.last_event_id for t in await hub.tasks.list()] == [second.last_event_id]
        stored = await reader.get(task.task_id)
        assert stored.sequence == second.sequence
        assert stored.last_event_id == first.last_event_id
        stream = await task_stream(hub, task.task_id)
        assert (await stream.next()).id == second.last_event_id
        stream.close()
        done = await hub.tasks.complete(task.task_id)
        assert (await reader.get(task.task_id)).last_event_id == done.last_event_id
    finally:
        await reader.aclose()
        await hub.aclose()
