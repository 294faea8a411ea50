"""``tidings demo``: simulated work that makes the dashboard move within seconds.

Everything goes through the publisher workers use (:class:`~tidings.client.AsyncPublisher`
and its ``track()``), so the demo is also a worked example of the worker API:

- **a batch of images**: a task with one ``file_update`` per file as each is pending,
  processing, then completed (one fails, and the batch still completes);
- **a job that fails halfway**: the exception leaves ``track()``, which fails the task
  with its message;
- **a job that is cancelled**: cancelled from outside (as a user's button would), so the
  worker's next report raises ``TaskFinished`` and the loop stops;
- **chat**: ``chat_message`` events on ``chat/general``;
- **an API's requests** (an observability dashboard's feed): ``request_start``, then
  ``request_complete`` or ``request_error``, on ``dashboard:requests``.

Without ``--url`` the demo starts its own hub (``tidings serve`` on 127.0.0.1, memory
store) as a child process in its own session, so Ctrl-C reaches the demo alone: it cancels
the running tasks (the dashboard shows them cancelled), then stops the hub. ``tidings
demo`` treats SIGTERM as Ctrl-C, so a demo stopped by a supervisor stops its hub too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO

import httpx

from tidings.client.publisher import AsyncPublisher
from tidings.errors import ConfigError, TaskFinished, TidingsError

__all__ = ["DEMO_TOPICS", "OwnHub", "Pace", "run_demo", "start_hub"]

#: The topics the demo publishes on (besides its tasks).
DEMO_TOPICS = ("chat/general", "dashboard:requests")

Say = Callable[[str], None]

_PEOPLE = ("ada", "grace", "linus", "margaret", "ken")
_LINES = (
    "build 42 is out",
    "who broke the staging deploy?",
    "the image batch is at half way",
    "lunch in ten?",
    "re-running the reindex after the shard fix",
    "dashboard looks good on my phone",
    "anyone seen the cancelled export?",
    "merged, thanks!",
)
_ENDPOINTS = (
    ("GET", "/api/orders"),
    ("POST", "/api/orders"),
    ("GET", "/api/users/42"),
    ("POST", "/api/images"),
    ("GET", "/api/search"),
)


@dataclass(frozen=True, slots=True)
class Pace:
    """The demo's clock: every pause is divided by ``speed``."""

    speed: float = 1.0
    rng: random.Random = field(default_factory=random.Random)

    async def pause(self, low: float, high: float | None = None) -> None:
        """Sleep between ``low`` and ``high`` seconds (``low`` exactly without ``high``)."""
        seconds = low if high is None else self.rng.uniform(low, high)
        await asyncio.sleep(seconds / self.speed)


# -- workloads ------------------------------------------------------------------------------


async def image_batch(pub: AsyncPublisher, pace: Pace, say: Say) -> None:
    """A batch of images: every file pending, then processing and done; one fails."""
    files = [f"IMG_{n:04d}.jpg" for n in sorted(pace.rng.sample(range(1000, 9999), 12))]
    unlucky = pace.rng.choice(files[3:])
    title = f"Convert {len(files)} images"
    async with pub.track(
        total=len(files), title=title, metadata={"kind": "images"}, min_interval=0.2
    ) as task:
        say(f"task {task.task_id}: {title}")
        for name in files:
            await task.file(name, status="pending", filename=name)
        failed = 0
        for name in files:
            await task.file(name, status="processing", filename=name, progress=0)
            await pace.pause(0.4, 0.6)
            await task.file(name, status="processing", progress=50, message="meshing")
            await pace.pause(0.4, 0.6)
            if name == unlucky:
                failed += 1
                await task.file(name, status="failed", message="corrupt JPEG header")
            else:
                await task.file(name, status="completed", progress=100, message="model ready")
            await task.update(1, message=f"{name} done")
        task.result = {"converted": len(files) - failed, "failed": failed}
    say(f"task {task.task_id}: completed")


async def failing_job(pub: AsyncPublisher, pace: Pace, say: Say) -> None:
    """A job that fails halfway: the exception fails the task through ``track()``."""
    title = "Re-index search"
    with contextlib.suppress(RuntimeError):
        async with pub.track(total=200, title=title, min_interval=0.2) as task:
            say(f"task {task.task_id}: {title}")
            for done in range(0, 200, 10):
                if done == 100:
                    await task.flush()  # the bar stops where the work did
                    raise RuntimeError("shard 3 is unreachable")
                await pace.pause(0.3, 0.5)
                await task.update(10, message=f"indexed {done + 10} of 200 documents")
    say(f"task {task.task_id}: failed halfway (as planned)")


async def cancelled_job(pub: AsyncPublisher, pace: Pace, say: Say) -> None:
    """A job cancelled from outside: the worker's next report raises ``TaskFinished``."""
    title = "Export monthly report"
    with contextlib.suppress(TaskFinished):
        async with pub.track(total=100, title=title, min_interval=0.2) as task:
            say(f"task {task.task_id}: {title}")
            for step in range(100):
                if step == 40 and task.task_id is not None:
                    # What a user's "Cancel" button does, from another process.
                    await pub.cancel(task.task_id, reason="cancelled by a user")
                await pace.pause(0.08, 0.12)
                await task.update(1, message=f"page {step + 1} of 100")
    say(f"task {task.task_id}: cancelled (as planned)")


async def chat(pub: AsyncPublisher, pace: Pace, stop: asyncio.Event) -> None:
    """``chat_message`` events on ``chat/general`` every second or two."""
    while not stop.is_set():
        text = pace.rng.choice(_LINES)
        user = pace.rng.choice(_PEOPLE)
        await pub.publish("chat/general", {"user": user, "text": text}, type="chat_message")
        await pace.pause(1.0, 2.5)


async def requests(pub: AsyncPublisher, pace: Pace, stop: asyncio.Event) -> None:
    """An API's requests: ``request_start``, then ``request_complete`` or ``request_error``."""
    topic = "dashboard:requests"
    number = 0

    async def one(request_id: str, method: str, path: str) -> None:
        started = time.monotonic()
        await pace.pause(0.05, 1.5)
        elapsed = round((time.monotonic() - started) * 1000 * pace.speed, 1)
        if pace.rng.random() < 0.08:
            error = {"request_id": request_id, "status": 502, "error": "upstream timed out"}
            await pub.publish(topic, {**error, "duration_ms": elapsed}, type="request_error")
        else:
            done = {"request_id": request_id, "status": 200 if method == "GET" else 201}
            await pub.publish(topic, {**done, "duration_ms": elapsed}, type="request_complete")

    async with asyncio.TaskGroup() as group:
        while not stop.is_set():
            number += 1
            request_id = f"req-{number:05d}"
            method, path = pace.rng.choice(_ENDPOINTS)
            start = {"request_id": request_id, "method": method, "path": path}
            await pub.publish(topic, start, type="request_start")
            group.create_task(one(request_id, method, path))
            await pace.pause(0.2, 0.7)


_JOBS: tuple[tuple[float, Callable[[AsyncPublisher, Pace, Say], Awaitable[None]]], ...] = (
    (0.0, image_batch),
    (1.0, failing_job),
    (2.0, cancelled_job),
)


async def _repeat(
    job: Callable[[AsyncPublisher, Pace, Say], Awaitable[None]],
    first: float,
    pub: AsyncPublisher,
    pace: Pace,
    say: Say,
    *,
    once: bool,
) -> None:
    await pace.pause(first)
    while True:
        await job(pub, pace, say)
        if once:
            return
        await pace.pause(4.0, 8.0)


async def run_demo(
    url: str,
    *,
    token: str | None = None,
    speed: float = 1.0,
    once: bool = False,
    say: Say = print,
) -> None:
    """Publish the demo's workloads to the hub at ``url`` until cancelled.

    Args:
        url: the hub (``http://127.0.0.1:8000``).
        token: a token allowed to publish on the demo's topics and create tasks.
        speed: every pause is divided by it (``4`` runs four times as fast).
        once: run each task once, then return (chat and requests stop with them).
        say: where progress lines go.

    Raises:
        TidingsError: the hub refused a publish, or could not be reached.
    """
    pace = Pace(speed)
    stop = asyncio.Event()
    async with AsyncPublisher(url, token=token) as pub:
        try:
            async with asyncio.TaskGroup() as group:
                jobs = [
                    group.create_task(_repeat(job, first, pub, pace, say, once=once))
                    for first, job in _JOBS
                ]
                group.create_task(chat(pub, pace, stop))
                group.create_task(requests(pub, pace, stop))
                await asyncio.gather(*jobs)
                stop.set()
        except* TidingsError as group_error:
            # One line for the user, not a group of tracebacks: the first failure says why
            # (a job's own task group may have wrapped it in a group of its own).
            raise first_failure(group_error) from None


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of ``group`` that is not itself a group (task groups nest)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


# -- the demo's own hub ------------------------------------------------------------------------


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True, slots=True)
class OwnHub:
    """A ``tidings serve`` process the demo started, and where its output goes."""

    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    url: str

    def last_line(self) -> str:
        """The last line the hub printed (why it stopped, when it did)."""
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self, *, grace: float = 15.0) -> None:
        """SIGTERM the hub (it drains its streams); SIGKILL it after ``grace`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_hub(port: int, *, timeout: float = 20.0) -> OwnHub:
    """Start ``tidings serve`` on ``127.0.0.1:port`` with a memory store.

    The child runs in its own session: a Ctrl-C in the terminal reaches the demo only,
    which stops the hub after cancelling its tasks.

    Raises:
        ConfigError: the port is taken, or the hub did not start (its last line says why).
    """
    host = "127.0.0.1"
    url = f"http://{host}:{port}"
    if _port_in_use(host, port):
        raise ConfigError(
            f"port {port} is in use: pass --port for another one, or --url {url} to publish "
            "to the hub already running there"
        )
    argv = [sys.executable, "-m", "tidings", "serve", "--host", host, "--port", str(port)]
    argv += ["--store", "memory"]
    # The hub's settings are the demo's own: a TIDINGS_JWT_SECRET meant for another hub
    # would lock the demo out of it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by OwnHub.stop
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    hub = OwnHub(proc, log, url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"the hub did not start: {hub.last_line()}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    return hub
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ConfigError(f"the hub did not answer on {url} within {timeout:.0f} s")
    except BaseException:  # a failed start, Ctrl-C or SIGTERM while waiting: no hub left
        hub.stop()
        raise


def main(
    *,
    url: str | None,
    token: str | None,
    port: int,
    speed: float,
    once: bool,
) -> int:
    """``tidings demo``: run the workloads against ``url``, or against a hub of its own."""
    if not 0 < speed < float("inf"):
        raise ConfigError(f"invalid --speed: {speed} (must be a positive number)")
    if not 1 <= port <= 65535:
        raise ConfigError(f"invalid --port: {port} (expected a port from 1 to 65535)")
    hub = None
    if url is None:
        hub = start_hub(port)
        url = hub.url
    url = url.rstrip("/")
    try:
        print(f"tidings demo: publishing to {url}; the dashboard is at {url}/", flush=True)
        if not once:
            print("Press Ctrl-C to stop.", flush=True)
        asyncio.run(run_demo(url, token=token, speed=speed, once=once, say=_say))
    finally:
        if hub is not None:
            hub.stop()
    return 0


def _say(line: str) -> None:
    print(f"  {line}", flush=True)
