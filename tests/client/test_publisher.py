"""The sync and async publishers and ``track()``, against a real server process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess, free_port, open_sse
from tidings.client import (
    AsyncHTTPTransport,
    AsyncPublisher,
    AsyncTracker,
    Call,
    HTTPTransport,
    Publisher,
    Tracker,
)
from tidings.client.transport import error_from_response
from tidings.errors import (
    BackendUnavailable,
    ConfigError,
    EventTooLarge,
    InvalidEvent,
    InvalidTopic,
    LimitExceeded,
    NotAuthorized,
    ShuttingDown,
    TaskExists,
    TaskFinished,
    TaskNotFound,
    TidingsError,
)
from tidings.types import JSON


def tid(tracker: Tracker | AsyncTracker) -> str:
    """The tracked task's id (known once the block was entered)."""
    assert tracker.task_id is not None
    return tracker.task_id


class Counting:
    """A transport that records every call before passing it on (a designed seam)."""

    def __init__(self, inner: HTTPTransport) -> None:
        self.inner = inner
        self.calls: list[Call] = []

    def handle(self, call: Call) -> JSON:
        self.calls.append(call)
        return self.inner.handle(call)

    def close(self) -> None:
        self.inner.close()

    def count(self, op: str) -> int:
        return sum(1 for call in self.calls if call.op == op)


class AsyncCounting:
    """The async twin of :class:`Counting`."""

    def __init__(self, inner: AsyncHTTPTransport) -> None:
        self.inner = inner
        self.calls: list[Call] = []

    async def handle(self, call: Call) -> JSON:
        self.calls.append(call)
        return await self.inner.handle(call)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def counting(server: ServerProcess) -> Iterator[Counting]:
    transport = Counting(HTTPTransport(server.url))
    yield transport
    transport.close()


@pytest.fixture
def pub(server: ServerProcess, counting: Counting) -> Iterator[Publisher]:
    with Publisher(server.url, transport=counting) as publisher:
        yield publisher


@pytest.fixture
async def apub(server: ServerProcess) -> AsyncIterator[AsyncPublisher]:
    async with AsyncPublisher(server.url) as publisher:
        yield publisher


# -- plain calls -------------------------------------------------------------------------------


def test_publish_returns_the_event_id_and_a_retry_publishes_once(pub: Publisher) -> None:
    first = pub.publish("chat/general", {"text": "hi"}, type="chat", idempotency_key="k1")
    again = pub.publish("chat/general", {"text": "hi"}, type="chat", idempotency_key="k1")
    other = pub.publish("chat/general", {"text": "hi"}, type="chat")
    assert first == again != other


def test_task_calls_return_the_task(pub: Publisher) -> None:
    task = pub.create_task(title="Import", total=3, metadata={"job_id": "j"})
    assert (task.status, task.total, task.title, task.sequence) == ("pending", 3, "Import", 1)
    task = pub.progress(task.task_id, current=1, message="one")
    assert (task.status, task.progress, task.message) == ("running", 33.33, "one")
    task = pub.file(task.task_id, "f/1", status="processing", filename="a b.csv")
    assert task.files["f/1"].filename == "a b.csv"  # ids are escaped in the URL path
    task = pub.complete(task.task_id, result={"rows": 3})
    assert (task.status, task.result) == ("completed", {"rows": 3})
    assert pub.get_task(task.task_id) == task


def test_hub_errors_become_tidings_exceptions(pub: Publisher) -> None:
    with pytest.raises(TaskNotFound):
        pub.get_task("nope")
    task = pub.create_task(task_id="fixed", total=2)
    with pytest.raises(TaskExists):
        pub.create_task(task_id="fixed")
    with pytest.raises(InvalidEvent):
        pub.progress(task.task_id, current=3)
    with pytest.raises(InvalidEvent):
        pub.file(task.task_id, "f", status="exploded")
    pub.fail(task.task_id, error="boom", details={"at": 1})
    with pytest.raises(TaskFinished):
        pub.cancel(task.task_id)
    with pytest.raises(NotAuthorized) as info:
        pub.publish("tasks/fixed", {}, type="task_completed")
    assert info.value.code == "reserved_topic"


def test_an_unreachable_hub_is_backend_unavailable() -> None:
    with (
        Publisher(f"http://127.0.0.1:{free_port()}") as pub,
        pytest.raises(BackendUnavailable) as info,
    ):
        pub.create_task()
    assert isinstance(info.value.__cause__, httpx.TransportError)


@pytest.mark.parametrize("url", ["ftp://hub", "127.0.0.1:8000", ""])
def test_an_unknown_url_scheme_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        Publisher(url)


def _response(status: int, code: str = "x", **headers: str) -> httpx.Response:
    body = orjson.dumps({"error": {"code": code, "message": "m"}})
    return httpx.Response(status, content=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_topic", InvalidTopic),
        (400, "malformed_json", TidingsError),
        (401, "unauthenticated", NotAuthorized),
        (403, "forbidden", NotAuthorized),
        (404, "task_not_found", TaskNotFound),
        (409, "task_exists", TaskExists),
        (409, "task_finished", TaskFinished),
        (413, "payload_too_large", EventTooLarge),
        (422, "invalid_request", InvalidEvent),
        (429, "rate_limited", LimitExceeded),
        (503, "shutting_down", ShuttingDown),
        (503, "backend_unavailable", BackendUnavailable),
        (500, "internal_error", TidingsError),
    ],
)
def test_every_error_status_maps_to_a_tidings_exception(
    status: int, code: str, expected: type[TidingsError]
) -> None:
    error = error_from_response(_response(status, code, **{"Retry-After": "7"}))
    assert type(error) is expected
    assert error.status == status
    assert error.message == "m"
    if isinstance(error, LimitExceeded):
        assert error.retry_after == 7


def test_an_error_without_the_json_shape_still_maps() -> None:
    error = error_from_response(httpx.Response(502, content=b"<html>bad gateway</html>"))
    assert error.status == 502
    assert "502" in error.message


# -- track() -------------------------------------------------------------------------------------


def test_tracking_100000_iterations_sends_a_bounded_number_of_updates(
    pub: Publisher, counting: Counting
) -> None:
    with pub.track(total=100_000, title="big", min_interval=0) as t:
        for _ in t.iter(range(100_000)):
            pass
    assert counting.count("create_task") == 1
    assert counting.count("complete") == 1
    # One update per visible percent (plus the one on entry): never one per iteration.
    assert counting.count("progress") <= 102
    final = pub.get_task(tid(t))
    assert (final.status, final.progress, final.current) == ("completed", 100.0, 100_000)


def test_tracking_with_the_default_interval_is_bounded_too(
    pub: Publisher, counting: Counting
) -> None:
    with pub.track(total=100_000) as t:
        for _ in t.iter(range(100_000)):
            pass
    assert counting.count("progress") <= 102
    assert pub.get_task(tid(t)).current == 100_000


def test_updates_wait_for_the_interval_and_the_final_state_is_always_sent(
    pub: Publisher, counting: Counting
) -> None:
    clock = [0.0]
    tracker = Tracker(pub, total=10, min_interval=5, clock=lambda: clock[0])
    with tracker as t:
        t.update(3)
        t.update(3)
        assert counting.count("progress") == 1  # only the one on entry: too soon
        clock[0] = 6.0
        t.update(1)
        assert counting.count("progress") == 2
        t.update(3)  # 100%, but too soon: sent on exit
        assert counting.count("progress") == 2
    assert counting.count("progress") == 3
    sent = [c.body for c in counting.calls if c.op == "progress"]
    assert sent[-1]["current"] == 10
    assert pub.get_task(tid(t)).status == "completed"


def test_nothing_is_sent_without_a_visible_change(pub: Publisher, counting: Counting) -> None:
    with pub.track(total=1000, min_interval=0) as t:
        for _ in range(9):
            t.update(1)  # 0.9%: the integer percent is still 0
        assert counting.count("progress") == 1
        t.update(1)  # 1%
        t.update(0, message="halfway there")  # the message is visible
        assert counting.count("progress") == 3
    assert pub.get_task(tid(t)).message == "halfway there"


def test_an_exception_fails_the_task_and_is_reraised(pub: Publisher) -> None:
    tracker = pub.track(total=10)

    def work() -> None:
        with tracker as t:
            t.update(2)
            raise ValueError("bad row 7")

    with pytest.raises(ValueError, match="bad row 7"):
        work()
    task = pub.get_task(tid(tracker))
    assert (task.status, task.error, task.details) == (
        "failed",
        "bad row 7",
        {"type": "ValueError"},
    )
    assert task.current == 2  # the work done before the error, though throttled


def test_an_interrupt_cancels_the_task(pub: Publisher) -> None:
    with pytest.raises(KeyboardInterrupt), pub.track() as t:
        raise KeyboardInterrupt
    task = pub.get_task(tid(t))
    assert (task.status, task.error) == ("cancelled", "interrupted (KeyboardInterrupt)")


def test_a_task_cancelled_elsewhere_stops_the_loop(pub: Publisher) -> None:
    tracker = pub.track(total=10, min_interval=0)

    def work() -> None:
        with tracker as t:
            for i in t.iter(range(10)):
                if i == 3:
                    pub.cancel(tid(t), reason="user pressed stop")

    with pytest.raises(TaskFinished):
        work()
    task = pub.get_task(tid(tracker))
    assert (task.status, task.error) == ("cancelled", "user pressed stop")


def test_tracking_an_existing_task_adopts_its_total(pub: Publisher) -> None:
    created = pub.create_task(total=4, title="made by a web view")
    with pub.track(created.task_id) as t:
        assert t.total == 4
        assert pub.get_task(created.task_id).status == "running"
        for _ in t.iter(["a", "b", "c", "d"]):
            pass
        t.result = {"done": 4}
    task = pub.get_task(created.task_id)
    assert (task.status, task.current, task.result) == ("completed", 4, {"done": 4})


def test_iter_takes_the_total_from_len(pub: Publisher) -> None:
    with pub.track() as t:
        for _ in t.iter([1, 2, 3, 4, 5]):
            pass
    assert pub.get_task(tid(t)).total == 5


def test_file_updates_are_sent_at_once(pub: Publisher, counting: Counting) -> None:
    with pub.track(total=1) as t:
        t.file("f1", status="processing", filename="one.png")
        assert counting.count("file") == 1
        t.file("f1", status="completed")
        t.update(1)
    assert pub.get_task(tid(t)).files["f1"].progress == 100.0


def test_a_tracker_outside_its_block_says_how_to_use_it(pub: Publisher) -> None:
    with pytest.raises(RuntimeError, match="context manager"):
        pub.track().update(1)


async def test_a_watcher_sees_a_tracked_task_reach_100_and_complete(
    server: ServerProcess,
) -> None:
    with Publisher(server.url) as pub:
        task = await asyncio.to_thread(pub.create_task, total=50)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as http,
            open_sse(http, f"/tasks/{task.task_id}/stream") as stream,
        ):
            assert (await stream.next()).event == "task_progress"

            def work() -> None:
                with pub.track(task.task_id, min_interval=0) as t:
                    for _ in t.iter(range(50)):
                        pass

            await asyncio.to_thread(work)
            events = await stream.until_end()
    assert events[-1].event == "task_completed"
    progress = [orjson.loads(e.data) for e in events if e.event == "task_progress"]
    assert progress[-1]["progress"] == 100.0
    sequences = [orjson.loads(e.data)["sequence"] for e in events]
    assert sequences == sorted(sequences)


# -- AsyncPublisher --------------------------------------------------------------------------


async def test_async_publisher_calls(apub: AsyncPublisher) -> None:
    event_id = await apub.publish("chat/general", [1], idempotency_key="ak")
    assert event_id == await apub.publish("chat/general", [1], idempotency_key="ak")
    task = await apub.create_task(total=2)
    task = await apub.progress(task.task_id, current=1)
    task = await apub.file(task.task_id, "f", status="failed", message="corrupt")
    assert task.files["f"].message == "corrupt"
    task = await apub.cancel(task.task_id, reason="r")
    assert (await apub.get_task(task.task_id)).status == "cancelled"
    with pytest.raises(TaskFinished):
        await apub.complete(task.task_id)
    with pytest.raises(TaskNotFound):
        await apub.fail("nope", error="x")


async def test_async_tracking_of_an_async_iterable(server: ServerProcess) -> None:
    transport = AsyncCounting(AsyncHTTPTransport(server.url))
    async with AsyncPublisher(server.url, transport=transport) as apub:

        async def rows() -> AsyncIterator[int]:
            for i in range(10_000):
                yield i

        async with apub.track(total=10_000, min_interval=0) as t:
            async for _ in t.iter(rows()):
                pass
        assert sum(1 for c in transport.calls if c.op == "progress") <= 102
        task = await apub.get_task(tid(t))
        assert (task.status, task.current, task.progress) == ("completed", 10_000, 100.0)


async def test_async_tracking_fails_the_task_on_error(apub: AsyncPublisher) -> None:
    tracker = apub.track(title="t")

    async def work() -> None:
        async with tracker as t:
            async for _ in t.iter([1, 2, 3]):
                raise RuntimeError("gpu on fire")

    with pytest.raises(RuntimeError, match="gpu on fire"):
        await work()
    task = await apub.get_task(tid(tracker))
    assert (task.status, task.error) == ("failed", "gpu on fire")
