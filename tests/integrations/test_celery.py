"""The Celery integration, with a real worker process (issue 3, item 7).

Each test enqueues with ``enqueue()`` *before* starting a worker, opens the task's stream,
checks that it shows ``pending`` (no 404 race), then starts a real
``celery -A examples.celery_app.tasks worker`` (broker: the tests' own redis-server; hub: a
real ``tidings serve``) and reads the stream to its end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from celery import Celery
from examples.celery_app import tasks

from tests.conftest import ServerProcess, SSEReader, free_port, open_sse
from tidings.client import Publisher
from tidings.integrations.celery import CELERY_STATES, TidingsTask, enqueue, tidings_status
from tidings.wire import ServerSentEvent

ROOT = Path(__file__).resolve().parents[2]

#: Bound on a whole run: worker start-up plus the task.
RUN_TIMEOUT = 60.0

StartWorker = Callable[[str], subprocess.Popen[bytes]]


@pytest.fixture
def celery_app(redis_url: str) -> Iterator[Celery]:
    """The example's Celery app, sending to the tests' redis-server."""
    app = tasks.app
    app.conf.update(broker_url=redis_url)
    yield app
    app.close()  # drop pooled broker connections: the next test may see a restarted Redis


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(hub_url)``: a real Celery worker; stopped (warm shutdown) afterwards."""
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(hub_url: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CELERY_BROKER_URL": redis_url,
            "TIDINGS_URL": hub_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        env.pop("TIDINGS_TOKEN", None)
        log = tmp_path / f"worker-{len(workers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "examples.celery_app.tasks",
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    "-l",
                    "warning",
                    "-n",
                    f"tidings-test-{os.getpid()}-{len(workers)}@%h",
                    # Nothing to synchronize with: start consuming at once.
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        workers.append((proc, log))
        return proc

    yield start
    for proc, log in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: finish the task, then exit
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                pytest.fail(f"the worker ignored SIGTERM:\n{log.read_text(errors='replace')}")


def _data(event: ServerSentEvent) -> dict[str, Any]:
    data = orjson.loads(event.data)
    assert isinstance(data, dict)
    return data


async def _until_end(stream: SSEReader, worker: subprocess.Popen[bytes]) -> list[ServerSentEvent]:
    try:
        return await stream.until_end(timeout=RUN_TIMEOUT)
    except TimeoutError:
        raise AssertionError(
            f"the task stream did not end (worker exit code: {worker.poll()})"
        ) from None


async def _expect_pending(stream: SSEReader, task_id: str) -> ServerSentEvent:
    first = await stream.next()
    assert first.event == "task_progress"
    assert _data(first)["task_id"] == task_id
    assert _data(first)["status"] == "pending"
    return first


def _sequences(events: list[ServerSentEvent]) -> list[int]:
    return [int(_data(event)["sequence"]) for event in events]


async def test_converting_task_streams_file_updates_then_completes_with_its_result(
    server: ServerProcess, celery_app: Celery, start_worker: StartWorker
) -> None:
    hub = server  # the shared hub: each test enqueues its own task
    with Publisher(hub.url) as pub:
        result = await asyncio.to_thread(
            enqueue, tasks.convert_images, (4, 0.01), publisher=pub, total=4
        )
    task_id = str(result.id)
    names = [f"image-{i:03d}.png" for i in range(1, 5)]
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=10) as http,
        open_sse(http, f"/tasks/{task_id}/stream") as stream,
    ):
        assert stream.response.status_code == 200
        first = await _expect_pending(stream, task_id)
        worker = start_worker(hub.url)
        events = await _until_end(stream, worker)

    assert events, "the stream ended without events"
    last = events[-1]
    assert last.event == "task_completed"
    assert _data(last)["result"] == {
        "converted": 4,
        "files": [name.replace(".png", ".webp") for name in names],
    }
    file_updates = [_data(event) for event in events if event.event == "file_update"]
    assert {update["file_id"] for update in file_updates} == set(names)
    assert {u["file_id"] for u in file_updates if u["status"] == "completed"} == set(names)
    running = [_data(e) for e in events if e.event == "task_progress"]
    assert running
    assert running[-1]["status"] == "running"
    assert running[-1]["current"] == 4
    sequences = _sequences([first, *events])
    assert sequences == sorted(set(sequences)), "sequence must rise with every event"
    assert {event.event for event in events} <= {"task_progress", "file_update", "task_completed"}


async def test_failing_task_stream_ends_with_task_failed_and_the_exception_message(
    server: ServerProcess, celery_app: Celery, start_worker: StartWorker
) -> None:
    hub = server  # the shared hub: each test enqueues its own task
    with Publisher(hub.url) as pub:
        result = await asyncio.to_thread(enqueue, tasks.convert_corrupt, (3,), publisher=pub)
        task_id = str(result.id)
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=10) as http,
        open_sse(http, f"/tasks/{task_id}/stream") as stream,
    ):
        first = await _expect_pending(stream, task_id)
        worker = start_worker(hub.url)
        events = await _until_end(stream, worker)

    last = events[-1]
    assert last.event == "task_failed"
    assert _data(last)["error"] == "corrupt image: broken.png"
    assert _data(last)["details"] == {"type": "ValueError"}
    broken = [
        _data(e) for e in events if e.event == "file_update" and _data(e)["file_id"] == "broken.png"
    ]
    assert broken[-1]["status"] == "failed"
    sequences = _sequences([first, *events])
    assert sequences == sorted(set(sequences))
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        task = (await http.get(f"/tasks/{task_id}")).json()
    assert task["status"] == "failed"
    assert task["title"] == "Convert images (one is corrupt)"
    assert task["metadata"] == {"celery_task": "examples.celery_app.tasks.convert_corrupt"}


async def test_plain_task_is_reported_by_the_signal_handlers(
    server: ServerProcess, celery_app: Celery, start_worker: StartWorker
) -> None:
    hub = server  # the shared hub: each test enqueues its own task
    with Publisher(hub.url) as pub:
        task_id = str(
            (await asyncio.to_thread(enqueue, tasks.build_report, (7,), publisher=pub)).id
        )
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=10) as http,
        open_sse(http, f"/tasks/{task_id}/stream") as stream,
    ):
        await _expect_pending(stream, task_id)
        worker = start_worker(hub.url)
        events = await _until_end(stream, worker)

    assert [event.event for event in events] == ["task_progress", "task_completed"]
    assert _data(events[0])["status"] == "running"
    assert _data(events[1])["result"] == {"rows": 7}


async def test_task_that_expires_in_the_queue_is_cancelled(
    server: ServerProcess, celery_app: Celery, start_worker: StartWorker
) -> None:
    hub = server  # the shared hub: each test enqueues its own task
    expired = datetime.now(UTC) - timedelta(minutes=1)
    with Publisher(hub.url) as pub:
        result = await asyncio.to_thread(
            enqueue, tasks.convert_images, (2,), publisher=pub, expires=expired
        )
        task_id = str(result.id)
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=10) as http,
        open_sse(http, f"/tasks/{task_id}/stream") as stream,
    ):
        await _expect_pending(stream, task_id)
        worker = start_worker(hub.url)
        events = await _until_end(stream, worker)

    assert [event.event for event in events] == ["task_cancelled"]
    assert _data(events[0])["reason"] == "expired"


async def test_retried_task_stays_running_then_completes_on_its_next_attempt(
    server: ServerProcess, celery_app: Celery, start_worker: StartWorker
) -> None:
    hub = server  # the shared hub: each test enqueues its own task
    with Publisher(hub.url) as pub:
        task_id = str((await asyncio.to_thread(enqueue, tasks.fetch_thumbnails, publisher=pub)).id)
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=10) as http,
        open_sse(http, f"/tasks/{task_id}/stream") as stream,
    ):
        await _expect_pending(stream, task_id)
        worker = start_worker(hub.url)
        events = await _until_end(stream, worker)

    progress = [_data(e) for e in events if e.event == "task_progress"]
    assert {p["status"] for p in progress} == {"running"}
    assert "retrying: mirror timed out" in [p["message"] for p in progress]
    assert events[-1].event == "task_completed"
    assert _data(events[-1])["result"] == {"attempts": 2}


# -- in process: the base class's decisions, with Celery's eager mode and a real hub ------


@pytest.fixture
def eager_app() -> Iterator[Celery]:
    """A Celery app of the test's own; its tasks run in the test with ``apply()``."""
    app = Celery("eager", set_as_current=False)
    yield app
    app.close()


def _reporting_to(publisher: Publisher) -> type[TidingsTask]:
    """A TidingsTask base class that reports through ``publisher`` (the documented
    override of ``TidingsTask.publisher``)."""

    class ReportingTask(TidingsTask):
        @property
        def publisher(self) -> Publisher:
            return publisher

    return ReportingTask


def test_task_cancelled_on_the_hub_before_it_starts_is_skipped(
    server: ServerProcess, eager_app: Celery
) -> None:
    hub = server
    ran: list[str] = []
    with Publisher(hub.url) as pub:

        @eager_app.task(base=_reporting_to(pub), bind=True)
        def work(self: TidingsTask) -> None:
            ran.append(str(self.request.id))

        pub.create_task(task_id="cancelled-early")
        pub.cancel("cancelled-early", reason="user clicked cancel")
        result = work.apply(task_id="cancelled-early")
        assert str(result.state) == "IGNORED"
        assert ran == []
        task = pub.get_task("cancelled-early")
    assert task.status == "cancelled"
    assert task.error == "user clicked cancel"


def test_update_state_progress_is_reported_to_the_hub(
    server: ServerProcess, eager_app: Celery
) -> None:
    hub = server
    with Publisher(hub.url) as pub:

        @eager_app.task(base=_reporting_to(pub), bind=True)
        def legacy(self: TidingsTask) -> str:
            # Celery's own progress convention, unchanged.
            self.update_state(state="PROGRESS", meta={"current": 2, "total": 4, "status": "half"})
            return "done"

        result = legacy.apply(task_id="legacy-1")
        assert result.get() == "done"
        task = pub.get_task("legacy-1")
    assert task.status == "completed"
    assert (task.current, task.total, task.message) == (2, 4, "half")
    assert task.result == "done"
    assert task.title == legacy.name


def test_a_hub_that_cannot_be_reached_does_not_fail_the_task(
    eager_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    with Publisher(f"http://127.0.0.1:{free_port()}") as nowhere:

        @eager_app.task(base=_reporting_to(nowhere), bind=True)
        def work(self: TidingsTask, items: list[int]) -> int:
            total = 0
            for item in self.track(items):
                self.file(str(item), status="completed")
                total += item
            return total

        with caplog.at_level(logging.DEBUG, logger="tidings.integrations.celery"):
            result = work.apply(([1, 2, 3],))
    assert str(result.state) == "SUCCESS"
    assert result.get() == 6
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "a hub that is down is reported once per task, not per update"
    assert "could not report" in warnings[0].getMessage()


def test_celery_states_map_to_tidings_statuses() -> None:
    assert dict(CELERY_STATES) == {
        "PENDING": "pending",
        "RECEIVED": "pending",
        "STARTED": "running",
        "PROGRESS": "running",
        "RETRY": "running",
        "SUCCESS": "completed",
        "FAILURE": "failed",
        "REJECTED": "failed",
        "REVOKED": "cancelled",
    }
    assert tidings_status("DOWNLOADING") == "running"  # custom states are in progress
    assert tidings_status("IGNORED") is None
