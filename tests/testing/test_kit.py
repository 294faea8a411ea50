"""``tidings.testing``: what users test their own apps and publishers with.

Each test is written as a user of tidings would write it: an application with an embedded
hub, a worker with a ``Publisher``, clients that read slowly or drop, with no sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from tidings import Hub
from tidings.client import subscribe, watch_task_sync
from tidings.errors import InvalidTopic, TaskNotFound
from tidings.testing import FROM_START, StreamEnded, TestHub


def make_app() -> tuple[FastAPI, Hub]:
    """An application of a tidings user: its own endpoints publish into an embedded hub."""
    hub = Hub(store="memory", shutdown_grace=1)
    app = FastAPI(lifespan=hub.lifespan)
    app.include_router(hub.router, prefix="/sse")

    @app.post("/chat")
    async def chat(text: str) -> dict[str, str]:
        return {"id": await hub.publish("chat/general", {"text": text}, type="chat_message")}

    @app.post("/convert")
    async def convert(files: list[str]) -> dict[str, str]:
        task = await hub.tasks.create(total=len(files), title="Convert images")
        for done, name in enumerate(files, start=1):
            await hub.tasks.file(task.task_id, name, status="completed")
            await hub.tasks.progress(task.task_id, current=done, message=f"{done} converted")
        await hub.tasks.complete(task.task_id, result={"converted": len(files)})
        return {"task_id": task.task_id}

    return app, hub


@pytest.fixture
def live(tidings_hub_factory: Callable[..., TestHub]) -> TestHub:
    app, hub = make_app()
    return tidings_hub_factory(app, hub=hub, prefix="/sse")


def test_collect_reads_what_the_apps_own_endpoint_published(live: TestHub) -> None:
    with live.client() as http:
        first = http.post("/chat", params={"text": "hi"}).json()["id"]
        second = http.post("/chat", params={"text": "there"}).json()["id"]
    # Published before anyone listened: collect reads them from the hub's history.
    events = live.collect("chat/general", n=2)
    assert [e.id for e in events] == [first, second]
    assert [e.event for e in events] == ["chat_message", "chat_message"]
    assert [e.json() for e in events] == [{"text": "hi"}, {"text": "there"}]


def test_collect_a_task_reads_it_until_it_ends(live: TestHub) -> None:
    with live.client() as http:
        task_id = http.post("/convert", json=["a.png", "b.png"]).json()["task_id"]
    events = live.collect(task_id=task_id)
    assert events[-1].event == "task_completed"
    assert events[-1].json()["result"] == {"converted": 2}
    files = [e.json()["filename"] for e in events if e.event == "file_update"]
    assert files == ["a.png", "b.png"]
    # Progress is state: queued task_progress events may be conflated (SPEC §4), so
    # assert on the newest one rather than on how many arrived.
    progress = [e.json() for e in events if e.event == "task_progress"]
    assert progress[-1]["current"] == 2
    # The same task through the Python client, at the prefix the app mounts the hub on.
    updates = list(watch_task_sync(live.hub_url, task_id))
    assert updates[-1].task.status == "completed"
    assert updates[-1].task.title == "Convert images"


def test_a_publisher_is_tested_against_the_hub(tidings_hub: TestHub) -> None:
    def worker(url: str, items: list[str]) -> str:
        """Code under test: a script that reports its progress to a hub."""
        from tidings.client import Publisher

        with Publisher(url) as pub, pub.track(total=len(items), title="Import") as t:
            for item in t.iter(items):
                t.file(item, status="completed")
            t.result = {"imported": len(items)}
        assert t.task_id is not None
        return t.task_id

    task_id = worker(tidings_hub.hub_url, ["x.csv", "y.csv", "z.csv"])
    events = tidings_hub.collect(task_id=task_id)
    assert [e.json()["file_id"] for e in events if e.event == "file_update"] == [
        "x.csv",
        "y.csv",
        "z.csv",
    ]
    assert events[-1].event == "task_completed"
    assert events[-1].json()["result"] == {"imported": 3}
    sequences = [e.json()["sequence"] for e in events]
    assert sequences == sorted(sequences)
    # The kit's own publisher reaches the same hub.
    with tidings_hub.publisher() as pub:
        event_id = pub.publish("audit", {"task": task_id})
    assert tidings_hub.collect("audit", n=1)[0].id == event_id


def test_a_stream_gets_what_is_published_once_it_is_open(tidings_hub: TestHub) -> None:
    tidings_hub.publish("news", "before")
    with tidings_hub.stream("news") as stream:  # live only: since=None
        published = tidings_hub.publish("news", {"n": 1}, type="headline")
        event = stream.next()
    assert (event.id, event.event, event.json()) == (published, "headline", {"n": 1})
    assert stream.comments[0] == "tidings"  # the opening comment came first


def test_a_slow_client_is_cut_and_loses_nothing_on_resume(
    tidings_hub_factory: Callable[..., TestHub],
) -> None:
    # A short queue, so the cut comes soon; a long history, so the resume can fill any hole.
    live = tidings_hub_factory(queue_size=10, history_size=100_000)
    published: list[str] = []
    # A client that reads nothing, with a small receive buffer: a phone on a bad network.
    slow = live.stream("feed", receive_buffer=4096, since=live.mark())
    while not slow.cut:
        assert len(published) < 100_000, "the hub never cut the slow client"
        published.append(live.publish("feed", "x" * 1000))
    stats = live.statistics()
    assert stats.slow_disconnects == 1
    assert stats.dropped > 0
    # What reached the socket before the cut, then the rest from history, exactly once.
    received = slow.drain()
    resumed = slow.resume()
    received += resumed.take(len(published) - len(received))
    assert [e.id for e in received] == published


def test_a_disconnected_client_resumes_exactly_once(tidings_hub: TestHub) -> None:
    stream = tidings_hub.stream("chat/**", since=FROM_START)
    before = [tidings_hub.publish(f"chat/{room}", room) for room in ("a", "b", "c")]
    assert [e.id for e in stream.take(2)] == before[:2]
    stream.close()  # the browser tab sleeps
    after = [tidings_hub.publish("chat/a", n) for n in range(3)]
    resumed = stream.resume()
    assert resumed.last_event_id == before[1]
    assert [e.id for e in resumed.take(4)] == [before[2], *after]


async def test_async_tests_use_the_a_twins() -> None:
    async with TestHub() as live:
        task = await live.arun(live.hub.tasks.create(total=2))
        async with await live.astream(task_id=task.task_id) as stream:
            first = await stream.next()  # the task's state, first
            assert first.event == "task_progress"
            assert first.json()["status"] == "pending"
            await live.arun(live.hub.tasks.progress(task.task_id, current=1))
            await live.arun(live.hub.tasks.complete(task.task_id))
            rest = await stream.rest()
        assert [e.event for e in rest] == ["task_progress", "task_completed"]
        event_id = await live.apublish("news", 1)
        assert [e.id for e in await live.acollect("news", n=1)] == [event_id]


async def test_wait_for_streams_that_code_under_test_opens(tidings_hub: TestHub) -> None:
    got: list[str] = []

    async def consumer() -> None:
        """Code under test: a service that follows a topic with the Python client."""
        async for event in subscribe(tidings_hub.hub_url, ["news"]):
            got.append(event.json())
            return

    task = asyncio.create_task(consumer())
    await tidings_hub.await_streams(1, topic="news")
    await tidings_hub.apublish("news", "breaking")
    await asyncio.wait_for(task, 10)
    assert got == ["breaking"]


def test_waits_fail_clearly(tidings_hub: TestHub) -> None:
    tidings_hub.publish("t", 1)
    with pytest.raises(TimeoutError, match=r"for 2 event\(s\); got 1 event\(s\): \['message'\]"):
        tidings_hub.collect("t", n=2, timeout=0.3)
    with pytest.raises(ValueError, match="never ends"):
        tidings_hub.collect("t")
    with pytest.raises(InvalidTopic):
        tidings_hub.stream("bad topic")
    with pytest.raises(TaskNotFound):
        tidings_hub.collect(task_id="nope")
    task = tidings_hub.run(tidings_hub.hub.tasks.create())
    tidings_hub.run(tidings_hub.hub.tasks.cancel(task.task_id, reason="test"))
    with pytest.raises(StreamEnded, match="before an event of type task_completed"):
        tidings_hub.collect(task_id=task.task_id, until="task_completed")
