"""The ``TaskStore`` contract, written once and run against every store (memory, SQLite,
Redis)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tidings.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidEvent,
    TaskExists,
    TaskFinished,
    TaskNotFound,
)
from tidings.tasks.memory import MemoryTaskStore
from tidings.tasks.model import (
    Task,
    apply_complete,
    apply_fail,
    apply_file,
    apply_progress,
    new_task,
    record_event_id,
)
from tidings.tasks.redis import RedisTaskStore
from tidings.tasks.sqlite import SQLiteTaskStore
from tidings.tasks.store import TaskStore

T0 = 1_700_000_000.0

StoreFactory = Callable[[], TaskStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes stores of one kind; SQLite stores made by one factory share one file, Redis
    stores one (flushed) Redis."""
    if request.param == "memory":
        return MemoryTaskStore
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return lambda: RedisTaskStore(url)
    path = tmp_path / "tasks" / "tidings.db"
    return lambda: SQLiteTaskStore(path)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[TaskStore]:
    store = make_store()
    await store.start()
    yield store
    await store.aclose()


async def add(store: TaskStore, task_id: str, **fields: object) -> Task:
    task = new_task(task_id, now=T0, **fields)  # type: ignore[arg-type]  # test shorthand
    return await store.insert(task)


# -- basic operations -------------------------------------------------------------------------


async def test_insert_then_get_returns_an_equal_record(store: TaskStore) -> None:
    task = await add(store, "a", owner="alice", title="T", total=3, metadata={"k": 1})
    assert await store.get("a") == task


async def test_insert_with_a_taken_id_raises_task_exists(store: TaskStore) -> None:
    await add(store, "a")
    with pytest.raises(TaskExists):
        await add(store, "a")


async def test_unknown_tasks_raise_task_not_found(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound):
        await store.get("nope")
    with pytest.raises(TaskNotFound):
        await store.update("nope", lambda t: t)
    with pytest.raises(TaskNotFound):
        await store.delete("nope")


async def test_update_stores_what_mutate_returns(store: TaskStore) -> None:
    await add(store, "a", total=10)
    new = await store.update("a", lambda t: apply_progress(t, current=4, now=T0 + 1))
    assert new.progress == 40.0
    assert await store.get("a") == new


async def test_a_raising_mutate_writes_nothing_and_its_error_escapes(store: TaskStore) -> None:
    await add(store, "a", total=10)
    before = await store.get("a")
    with pytest.raises(InvalidEvent):
        await store.update("a", lambda t: apply_progress(t, current=11, now=T0 + 1))
    assert await store.get("a") == before


async def test_delete_returns_the_last_record(store: TaskStore) -> None:
    task = await add(store, "a")
    assert await store.delete("a") == task
    with pytest.raises(TaskNotFound):
        await store.get("a")


async def test_records_keep_files_rate_state_and_event_id(store: TaskStore) -> None:
    await add(store, "a", total=10)
    await store.update("a", lambda t: apply_progress(t, current=1, now=T0 + 1))
    await store.update("a", lambda t: apply_progress(t, current=3, now=T0 + 2))
    await store.update("a", lambda t: apply_file(t, "f", status="processing", now=T0 + 3))
    task = await store.update("a", lambda t: record_event_id(t, "ep-5"))
    assert task.rate is not None
    assert task.files
    assert task.last_event_id == "ep-5"
    assert await store.get("a") == task


# -- atomicity and sequence ---------------------------------------------------------------------


async def test_racing_terminal_transitions_have_exactly_one_winner(store: TaskStore) -> None:
    for round_ in range(20):
        task_id = f"race-{round_}"
        await add(store, task_id)
        outcomes = await asyncio.gather(
            store.update(task_id, lambda t: apply_complete(t, now=T0 + 1)),
            store.update(task_id, lambda t: apply_fail(t, error="x", now=T0 + 1)),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, Task)]
        losers = [o for o in outcomes if isinstance(o, TaskFinished)]
        assert len(winners) == 1
        assert len(losers) == 1
        final = await store.get(task_id)
        assert final == winners[0]
        assert final.sequence == 2  # the loser used no sequence


async def test_concurrent_progress_updates_all_succeed_with_their_own_sequence(
    store: TaskStore,
) -> None:
    await add(store, "a", total=100)

    def report(i: int) -> Callable[[Task], Task]:
        return lambda t: apply_progress(t, current=i, now=T0 + i)

    results = await asyncio.gather(*(store.update("a", report(i)) for i in range(40)))
    assert sorted(r.sequence for r in results) == list(range(2, 42))
    assert (await store.get("a")).sequence == 41


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_two_store_instances_race_atomically(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two processes' read-modify-write on one store are serialized (SQLite: ``BEGIN
    IMMEDIATE`` on one file; Redis: a version compare-and-set; two connections here): one
    terminal transition wins, the other sees it."""
    first: TaskStore
    second: TaskStore
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        first, second = RedisTaskStore(url), RedisTaskStore(url)
    else:
        path = tmp_path / "shared.db"
        first, second = SQLiteTaskStore(path), SQLiteTaskStore(path)
    await first.start()
    await second.start()
    try:
        for round_ in range(30):
            task_id = f"race-{round_}"
            await add(first, task_id)
            outcomes = await asyncio.gather(
                first.update(task_id, lambda t: apply_complete(t, now=T0 + 1)),
                second.update(task_id, lambda t: apply_fail(t, error="x", now=T0 + 1)),
                return_exceptions=True,
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["Task", "TaskFinished"]
            assert (await second.get(task_id)).sequence == 2
    finally:
        await first.aclose()
        await second.aclose()


# -- queries -----------------------------------------------------------------------------------


async def test_list_is_newest_first_with_owner_status_and_limit(store: TaskStore) -> None:
    for i in range(5):
        await add(store, f"t{i}", owner="alice" if i % 2 == 0 else "bob")
    await store.update("t2", lambda t: apply_complete(t, now=T0 + 1))
    assert [t.task_id for t in await store.list()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [t.task_id for t in await store.list(owner="alice")] == ["t4", "t2", "t0"]
    assert [t.task_id for t in await store.list(status="completed")] == ["t2"]
    assert [t.task_id for t in await store.list(owner="bob", status="pending")] == ["t3", "t1"]
    assert [t.task_id for t in await store.list(limit=2)] == ["t4", "t3"]


async def test_count_active_counts_pending_and_running(store: TaskStore) -> None:
    for name in ("a", "b", "c"):
        await add(store, name)
    await store.update("b", lambda t: apply_progress(t, progress=5, now=T0 + 1))
    await store.update("c", lambda t: apply_complete(t, now=T0 + 1))
    assert await store.count_active() == 2


async def test_purge_removes_old_finished_and_abandoned_tasks(store: TaskStore) -> None:
    await add(store, "old-done")
    await store.update("old-done", lambda t: apply_complete(t, now=T0 + 10))
    await add(store, "new-done")
    await store.update("new-done", lambda t: apply_complete(t, now=T0 + 100))
    await add(store, "abandoned")
    await store.update("abandoned", lambda t: apply_progress(t, progress=5, now=T0 + 20))
    await add(store, "busy")
    await store.update("busy", lambda t: apply_progress(t, progress=5, now=T0 + 90))
    gone = await store.purge(T0 + 50)
    assert sorted(t.task_id for t in gone) == ["abandoned", "old-done"]
    assert sorted(t.task_id for t in await store.list()) == ["busy", "new-done"]
    assert await store.purge(T0 + 50) == []


# -- SQLite specifics -------------------------------------------------------------------------


async def test_sqlite_tasks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    store = SQLiteTaskStore(path)
    await store.start()
    await add(store, "a", owner="alice", total=10)
    await store.update("a", lambda t: apply_progress(t, current=7, message="m", now=T0 + 1))
    saved = await store.update("a", lambda t: record_event_id(t, "ep-3"))
    await store.aclose()

    reopened = SQLiteTaskStore(path)
    await reopened.start()
    try:
        assert await reopened.get("a") == saved
        after = await reopened.update("a", lambda t: apply_progress(t, current=8, now=T0 + 2))
        assert after.sequence == saved.sequence + 1
    finally:
        await reopened.aclose()


def test_sqlite_store_urls() -> None:
    assert SQLiteTaskStore.from_url("sqlite:///./tidings.db").path == "./tidings.db"
    assert SQLiteTaskStore.from_url("sqlite:////var/lib/t.db").path == "/var/lib/t.db"
    with pytest.raises(ConfigError, match="--store"):
        SQLiteTaskStore.from_url("sqlite:///")


async def test_a_closed_sqlite_store_raises_backend_unavailable(tmp_path: Path) -> None:
    store = SQLiteTaskStore(tmp_path / "x.db")
    with pytest.raises(BackendUnavailable):
        await store.get("a")


async def test_sqlite_driver_errors_become_backend_unavailable(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    store = SQLiteTaskStore(directory)  # a directory is not a database file
    with pytest.raises(BackendUnavailable) as info:
        await store.start()
    assert info.value.__cause__ is not None


# -- Redis specifics --------------------------------------------------------------------------


async def test_redis_tasks_are_shared_by_every_store_on_one_redis(redis_url: str) -> None:
    """What one node stores, another reads, lists, counts and purges (SPEC §6)."""
    first, second = RedisTaskStore(redis_url), RedisTaskStore(redis_url)
    await first.start()
    await second.start()
    try:
        await add(first, "a", owner="alice", total=4)
        await second.update("a", lambda t: apply_progress(t, current=2, now=T0 + 1))
        assert (await first.get("a")).progress == 50.0
        assert [t.task_id for t in await second.list(owner="alice")] == ["a"]
        assert await second.count_active() == 1
        await first.update("a", lambda t: apply_complete(t, now=T0 + 2))
        assert await second.count_active() == 0
        assert [t.task_id for t in await second.list(status="completed")] == ["a"]
        assert [t.task_id for t in await second.purge(T0 + 3)] == ["a"]
        assert await first.purge(T0 + 3) == []
        assert await first.list() == []
    finally:
        await first.aclose()
        await second.aclose()


async def test_racing_purges_delete_each_task_once(redis_url: str) -> None:
    """Every node runs the purge loop; each expired task is returned to exactly one (so one
    ``task_deleted`` event is published for it)."""
    stores = [RedisTaskStore(redis_url) for _ in range(3)]
    for store in stores:
        await store.start()
    try:
        for i in range(450):
            await add(stores[0], f"t{i}")
        purged = await asyncio.gather(*(store.purge(T0 + 1) for store in stores))
        ids = [task.task_id for gone in purged for task in gone]
        assert sorted(ids) == sorted(f"t{i}" for i in range(450))
    finally:
        for store in stores:
            await store.aclose()


async def test_redis_list_pages_through_filtered_owners(redis_url: str) -> None:
    store = RedisTaskStore(redis_url)
    await store.start()
    try:
        for i in range(250):
            await add(store, f"t{i:03}", owner="alice")
            if i % 50 == 0:
                await store.update(f"t{i:03}", lambda t: apply_complete(t, now=T0 + 1))
        done = await store.list(owner="alice", status="completed", limit=10)
        assert [t.task_id for t in done] == ["t200", "t150", "t100", "t050", "t000"]
        newest = await store.list(owner="alice", status="pending", limit=3)
        assert [t.task_id for t in newest] == ["t249", "t248", "t247"]
        assert len(await store.list(limit=1000)) == 250
    finally:
        await store.aclose()


async def test_redis_errors_become_backend_unavailable() -> None:
    """Nothing listens on the port: every call raises ``BackendUnavailable`` with the
    redis-py error as its cause; ``start`` does not connect, so a hub starts anyway."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = RedisTaskStore(f"redis://127.0.0.1:{port}/0")
    await store.start()
    try:
        calls = [
            store.get("a"),
            store.insert(new_task("a", now=T0)),
            store.update("a", lambda t: t),
            store.delete("a"),
            store.list(),
            store.count_active(),
            store.purge(T0),
        ]
        for call in calls:
            with pytest.raises(BackendUnavailable) as info:
                await call
            assert info.value.__cause__ is not None
    finally:
        await store.aclose()


async def test_a_closed_redis_store_raises_backend_unavailable(redis_url: str) -> None:
    store = RedisTaskStore(redis_url)
    with pytest.raises(BackendUnavailable):
        await store.get("a")
