"""The seeds' applications rebuilt on tidings (``examples/*/``), run as their users run them.

Each test starts an example with its README's one command (``python -m examples.<name>``)
on free ports, as a real process, and talks to it over real sockets: HTTP clients for the
JSON and the streams, the system's Chromium for the pages of seeds 000, 002 and 004.
Every wait is on a condition (an event, a page variable, a counter), with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from tests.conftest import free_port, until, wait_for
from tidings.wire import EventParser, ServerSentEvent

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, FilePayload, Page

ROOT = Path(__file__).resolve().parent.parent


# -- processes --------------------------------------------------------------------------------


class Example:
    """``python -m <module> ...`` from the repository root, in a session of its own (so
    whatever it starts is stopped with it)."""

    def __init__(self, module: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.module = module
        self.log_path = log
        base = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=ROOT,
                env={**base, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_up(self, url: str, timeout: float = 30.0) -> None:
        """Until ``url`` answers 200 (fails at once if the process exits)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.module} exited early:\n{self.log()}")
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, f"{self.module} to answer {url}")

    async def await_up(self, url: str, timeout: float = 30.0) -> None:
        """:meth:`wait_up` for async tests: the wait does not block the event loop."""
        async with httpx.AsyncClient(timeout=1) as client:

            async def up() -> bool:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.module} exited early:\n{self.log()}")
                try:
                    return (await client.get(url)).status_code == 200
                except httpx.HTTPError:
                    return False

            await until(up, timeout, f"{self.module} to answer {url}")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Whatever is left of the session (the example and its children) is killed."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def group_gone(self) -> bool:
        """Whether no process of the example's session is left."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        return False


StartExample = Callable[..., Example]


@pytest.fixture
def start_example(tmp_path: Path) -> Iterator[StartExample]:
    """``start_example(module, *args, env=...)``: a running example, killed afterwards."""
    started: list[Example] = []

    def start(module: str, *args: str, env: dict[str, str] | None = None) -> Example:
        example = Example(module, list(args), env or {}, tmp_path / f"{module}-{len(started)}.log")
        started.append(example)
        return example

    yield start
    for example in started:
        example.close()


# -- streams ----------------------------------------------------------------------------------


class Reader:
    """A live event stream read over a real socket, with its comments (``: ping``)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.parser = EventParser(on_comment=self.comments.append)
        self.pending: deque[ServerSentEvent] = deque()
        self.chunks = response.aiter_raw()

    async def _read(self) -> None:
        self.pending.extend(self.parser.feed(await anext(self.chunks)))

    async def next(self, timeout: float = 10.0) -> ServerSentEvent:
        async def read() -> ServerSentEvent:
            while not self.pending:
                await self._read()
            return self.pending.popleft()

        return await asyncio.wait_for(read(), timeout)

    async def wait_comment(self, text: str, timeout: float = 10.0) -> None:
        async def read() -> None:
            while text not in self.comments:
                await self._read()

        await asyncio.wait_for(read(), timeout)

    async def rest(self, timeout: float = 10.0) -> list[ServerSentEvent]:
        """Every event until the server ends the response (cleanly: a broken chunked body
        raises)."""

        async def read() -> list[ServerSentEvent]:
            events = list(self.pending)
            self.pending.clear()
            async for chunk in self.chunks:
                events.extend(self.parser.feed(chunk))
            return events

        return await asyncio.wait_for(read(), timeout)


@contextlib.asynccontextmanager
async def stream(
    http: httpx.AsyncClient,
    url: str,
    *,
    topics: list[str] | None = None,
    token: str | None = None,
    bearer: str | None = None,
    status: int = 200,
) -> AsyncIterator[Reader]:
    """Open a stream; check its status (and, for 200, that it is an event stream)."""
    params = httpx.QueryParams({"topic": topics or []})
    if token is not None:
        params = params.add("token", token)
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with http.stream("GET", url, params=params, headers=headers) as response:
        if response.status_code != status:
            await response.aread()
            raise AssertionError(f"{url}: {response.status_code} {response.text}, not {status}")
        if status == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
        else:
            await response.aread()
        yield Reader(response)


def data(event: ServerSentEvent) -> dict[str, Any]:
    value = orjson.loads(event.data)
    assert isinstance(value, dict)
    return value


# -- seed 000: a Flask app with database-backed tasks -----------------------------------------


@pytest.fixture
def flask_tasks(start_example: StartExample, tmp_path: Path) -> str:
    """The Flask example with its hub (at most 2 streams per user); the app's URL."""
    port, hub_port = free_port(), free_port()
    example = start_example(
        "examples.flask_tasks",
        "--port",
        str(port),
        "--hub-port",
        str(hub_port),
        "--db",
        str(tmp_path / "tasks.db"),
        "--max-connections-per-user",
        "2",
        "--step-delay",
        "0.02",
    )
    url = f"http://127.0.0.1:{port}"
    example.wait_up(url + "/")  # the app starts once its hub answers
    return url


async def login(http: httpx.AsyncClient, user: str) -> str:
    """Log ``user`` in (the session cookie stays in ``http``); the browser token."""
    assert (await http.post("/login", json={"user": user})).status_code == 200
    token: str = (await http.get("/api/token")).json()["token"]
    return token


async def test_flask_job_streams_to_its_owner_only_and_ends_with_the_job(flask_tasks: str) -> None:
    async with (
        httpx.AsyncClient(base_url=flask_tasks, timeout=10) as alice,
        httpx.AsyncClient(base_url=flask_tasks, timeout=10) as bob,
        httpx.AsyncClient(timeout=10) as hub,
    ):
        alice_token = await login(alice, "alice")
        bob_token = await login(bob, "bob")
        started = await alice.post("/api/tasks", json={"steps": 10, "delay": 0.05})
        assert started.status_code == 202
        task_id, url = started.json()["task_id"], started.json()["stream"]

        # Only the owner: another user's token gets 404 (ids don't leak), none gets 401.
        async with stream(hub, url, token=bob_token, status=404):
            pass
        async with stream(hub, url, status=401):
            pass
        assert (await bob.get(f"/api/tasks/{task_id}")).status_code == 404

        async with stream(hub, url, token=alice_token) as watch:
            events = await watch.rest(timeout=30)  # ends by itself with the job
        assert events[-1].event == "task_completed"
        assert data(events[-1])["result"] == {"steps": 10}
        assert {e.event for e in events[:-1]} <= {"task_progress"}
        sequences = [data(e)["sequence"] for e in events]
        assert sequences == sorted(set(sequences))

        async def recorded() -> bool:
            tasks = (await alice.get("/api/tasks")).json()["tasks"]
            return [(t["id"], t["status"]) for t in tasks] == [(task_id, "completed")]

        await until(recorded, what="the app's record to say completed")


async def test_flask_streams_are_capped_per_user_and_end_when_the_job_is_cancelled(
    flask_tasks: str,
) -> None:
    async with (
        httpx.AsyncClient(base_url=flask_tasks, timeout=10) as alice,
        httpx.AsyncClient(base_url=flask_tasks, timeout=10) as bob,
        httpx.AsyncClient(timeout=10) as hub,
    ):
        alice_token = await login(alice, "alice")
        bob_token = await login(bob, "bob")
        # A long job: it runs until it is cancelled.
        started = (await alice.post("/api/tasks", json={"steps": 5000, "delay": 0.05})).json()
        task_id, url = started["task_id"], started["stream"]
        bobs = (await bob.post("/api/tasks", json={"steps": 5000, "delay": 0.05})).json()

        async with (
            stream(hub, url, token=alice_token) as first,
            stream(hub, url, token=alice_token) as second,
        ):
            # --max-connections-per-user 2: a third stream of alice's is refused...
            async with hub.stream("GET", url, params={"token": alice_token}) as refused:
                assert refused.status_code == 429
                assert int(refused.headers["retry-after"]) >= 1
                assert orjson.loads(await refused.aread())["error"]["code"] == "too_many_streams"
            # ...but the cap is per user: bob watches his own job.
            async with stream(hub, bobs["stream"], token=bob_token) as bobs_watch:
                assert data(await bobs_watch.next())["task_id"] == bobs["task_id"]
            record = (await alice.get(f"/api/tasks/{task_id}")).json()
            assert record["watchers"] == 2  # the seed's get_connection_count(task_id)
            assert record["status"] in ("pending", "running")  # the app's own record

            # Cancelling the job in the app ends every stream of it: no polling of
            # "is the task still active?".
            assert (await alice.post(f"/api/tasks/{task_id}/cancel")).status_code == 200
            for watch in (first, second):
                events = await watch.rest(timeout=15)
                assert events[-1].event == "task_cancelled"
                assert data(events[-1])["reason"] == "cancelled by alice"
        assert (await alice.post(f"/api/tasks/{task_id}/cancel")).status_code == 409

        # The ended streams freed their slots: alice may watch again (the task is over,
        # so the stream is its last event alone).
        async with stream(hub, url, token=alice_token) as again:
            assert [e.event for e in await again.rest()] == ["task_cancelled"]
        record = (await alice.get(f"/api/tasks/{task_id}")).json()
        assert record["status"] == "cancelled"
        assert (await bob.post(f"/api/tasks/{bobs['task_id']}/cancel")).status_code == 200


async def test_flask_job_that_raises_fails_its_stream_with_the_message(flask_tasks: str) -> None:
    async with (
        httpx.AsyncClient(base_url=flask_tasks, timeout=10) as alice,
        httpx.AsyncClient(timeout=10) as hub,
    ):
        token = await login(alice, "alice")
        started = (await alice.post("/api/tasks", json={"steps": 50, "fail_at": 3})).json()
        async with stream(hub, started["stream"], token=token) as watch:
            events = await watch.rest(timeout=30)
        assert events[-1].event == "task_failed"
        assert data(events[-1])["error"] == "step 3 failed"
        assert data(events[-1])["details"] == {"type": "RuntimeError"}


@pytest.mark.asyncio(loop_scope="session")  # the browser's loop
async def test_flask_page_watches_its_jobs_on_the_hub_across_origins_in_chromium(
    flask_tasks: str, browser_context: BrowserContext
) -> None:
    page = await browser_context.new_page()
    await page.goto(flask_tasks + "/")
    await page.click("#login button")  # as alice
    await page.wait_for_selector("#app:not([hidden])")
    await page.fill("input[name=steps]", "20")
    await page.click("#start button")
    # tidings.js from the hub's origin, its stream authorized by ?token= and CORS.
    await page.wait_for_selector(".task .status.completed", timeout=20_000)
    done = page.locator(".task", has=page.locator(".status.completed"))
    assert await done.locator("progress").evaluate("bar => bar.value") == 100
    assert await done.locator(".message").text_content() == "20 / 20"
    await page.fill("input[name=steps]", "40")
    await page.fill("input[name=fail_at]", "5")
    await page.click("#start button")
    await page.wait_for_selector(".task .status.failed", timeout=20_000)
    failed = page.locator(".task", has=page.locator(".status.failed"))
    assert await failed.locator(".message").text_content() == "step 5 failed"


# -- seed 001: notifications in a FastAPI app with an embedded hub ----------------------------


async def test_notifications_reach_users_subscriptions_and_filters(
    start_example: StartExample,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    example = start_example(
        "examples.notifications", env={"PORT": str(port), "TIDINGS_KEEPALIVE": "1"}
    )
    await example.await_up(url + "/sse/healthz")
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        tokens = {
            user: (await http.post("/login", json={"user_id": user})).json()["token"]
            for user in ("123", "456", "1")
        }
        operator = {"Authorization": f"Bearer {tokens['1']}"}

        async def send(path: str, body: dict[str, Any], token: str = tokens["1"]) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            response = await http.post(path, json=body, headers=headers)
            assert response.status_code == 200, response.text

        # The custom authenticate handler: no session is 401; bob may not read alice's.
        async with stream(http, "/sse/events", topics=["broadcast"], status=401):
            pass
        async with stream(
            http, "/sse/events", topics=["users/123/**"], token=tokens["456"], status=403
        ):
            pass

        async with (
            # alice: everything of hers (users/123/**), as a browser would (?token=)
            stream(
                http, "/sse/events", topics=["users/123/**", "broadcast"], token=tokens["123"]
            ) as alice,
            # bob: only his messages (users/456/messages), with a bearer header
            stream(
                http,
                "/sse/events",
                topics=["users/456/messages", "broadcast"],
                bearer=tokens["456"],
            ) as bob,
        ):
            # To everyone.
            await send("/api/broadcast", {"resource": "status", "data": {"up": True}})
            for reader in (alice, bob):
                event = await reader.next()
                assert (event.event, data(event)) == (
                    "data",
                    {"resource": "status", "data": {"up": True}},
                )

            # To user ids: bob only. alice's next event is the broadcast after it.
            await send("/api/broadcast", {"resource": "plan", "data": 1, "user_ids": ["456"]})
            # To a subscription: users/123/messages reaches alice's users/123/**.
            await send(
                "/api/broadcast",
                {"resource": "inbox", "data": 2, "subscriptions": ["users/123/messages"]},
            )
            # A notification with a level and a priority, to everyone.
            await send(
                "/api/notifications",
                {
                    "title": "Maintenance",
                    "message": "in 5 minutes",
                    "level": "warning",
                    "priority": "high",
                },
            )
            # The filter function: connected users on the pro plan (alice).
            await send("/api/notifications/pro", {"title": "Pro", "message": "new feature"})
            # A private message from bob to alice, and from alice to bob.
            await send("/api/messages/123", {"text": "hi alice"}, token=tokens["456"])
            await send("/api/messages/456", {"text": "hi bob"}, token=tokens["123"])

            seen_by_alice = [(e.event, data(e)) for e in [await alice.next() for _ in range(4)]]
            assert seen_by_alice == [
                ("data", {"resource": "inbox", "data": 2}),
                (
                    "notification",
                    {"title": "Maintenance", "message": "in 5 minutes", "level": "warning"},
                ),
                ("notification", {"title": "Pro", "message": "new feature", "level": "info"}),
                ("message", {"from": "456", "text": "hi alice"}),
            ]
            seen_by_bob = [(e.event, data(e)) for e in [await bob.next() for _ in range(3)]]
            assert seen_by_bob == [
                ("data", {"resource": "plan", "data": 1}),
                (
                    "notification",
                    {"title": "Maintenance", "message": "in 5 minutes", "level": "warning"},
                ),
                ("message", {"from": "123", "text": "hi bob"}),
            ]
            # Only operators broadcast (the app's rule, in its own route).
            forbidden = await http.post(
                "/api/notifications",
                json={"title": "x", "message": "y"},
                headers={"Authorization": f"Bearer {tokens['456']}"},
            )
            assert forbidden.status_code == 403
            # Keep-alive: a quiet stream gets a comment every TIDINGS_KEEPALIVE seconds.
            await bob.wait_comment("ping", timeout=10)
            stats = (await http.get("/sse/stats", headers=operator)).json()
            assert stats["connections"]["by_user"] == {"123": 1, "456": 1}


@pytest.mark.asyncio(loop_scope="session")  # the browser's loop
async def test_notifications_page_shows_each_user_what_is_meant_for_them_in_chromium(
    start_example: StartExample, browser_context: BrowserContext
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    example = start_example("examples.notifications", env={"PORT": str(port)})
    await example.await_up(url + "/sse/healthz")
    pages = {}
    for user in ("123", "456", "1"):  # alice (pro plan), bob, the operator
        page = await browser_context.new_page()
        await page.goto(url + "/")
        await page.select_option("#login select", user)
        await page.click("#login button")
        await page.wait_for_function("document.querySelector('#state').textContent === 'open'")
        pages[user] = page
    alice, bob, operator = pages["123"], pages["456"], pages["1"]

    async def feed(page: Page) -> list[str]:
        return await page.locator("#feed > div").all_text_contents()

    # To everyone, from the operator's page.
    await operator.fill("#notify input[name=title]", "Maintenance")
    await operator.fill("#notify input[name=message]", "at noon")
    await operator.select_option("#notify select[name=level]", "warning")
    await operator.click("#notify button")
    for page in (alice, bob, operator):
        await page.wait_for_selector("#feed > div.warning")
        assert await feed(page) == ["Maintenance: at noon"]
    # A filter: connected users on the pro plan (alice) only.
    await operator.fill("#notify input[name=title]", "Pro")
    await operator.fill("#notify input[name=message]", "new feature")
    await operator.select_option("#notify select[name=level]", "success")
    await operator.select_option("#notify select[name=target]", "pro")
    await operator.click("#notify button")
    await alice.wait_for_selector("#feed > div.success")
    # A private message from bob to alice, and the last word: bob's own broadcast marker.
    await bob.fill("#send input[name=recipient]", "123")
    await bob.fill("#send input[name=text]", "lunch?")
    await bob.click("#send button")
    await alice.wait_for_function("document.querySelectorAll('#feed > div').length === 3")
    assert (await feed(alice))[0] == "message from 456: lunch?"
    await operator.fill("#notify input[name=title]", "End")
    await operator.fill("#notify input[name=message]", "of test")
    await operator.select_option("#notify select[name=level]", "info")
    await operator.select_option("#notify select[name=target]", "all")
    await operator.click("#notify button")
    for page in (alice, bob, operator):
        await page.wait_for_function(
            "document.querySelector('#feed > div').textContent === 'End: of test'"
        )
    # Bob and the operator never saw alice's filtered notice or her private message.
    assert await feed(bob) == ["End: of test", "Maintenance: at noon"]
    assert await feed(operator) == ["End: of test", "Maintenance: at noon"]
    assert len(await feed(alice)) == 4
    for page in pages.values():
        await page.close()


# -- seed 002: FastAPI + Celery, in Chromium --------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")  # the browser's loop
async def test_celery_tasks_stream_to_a_browser_that_closes_on_success_and_on_failure(
    start_example: StartExample, redis_url: str, browser_context: BrowserContext
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    example = start_example(
        "examples.celery_app.run",
        "--port",
        str(port),
        env={"CELERY_BROKER_URL": redis_url, "CONVERT_DELAY": "0.02"},
    )
    await asyncio.to_thread(example.wait_up, url + "/healthz")
    page = await browser_context.new_page()
    await page.goto(url + "/")

    await page.click("#convert")
    # The first task waits for the worker to start: a generous bound.
    await page.wait_for_function("window.streamClosed === true", timeout=60_000)
    assert await page.text_content("#status") == "completed"
    assert await page.evaluate("window.eventSource.readyState") == 2  # closed by the page
    assert await page.evaluate("document.querySelector('#bar').value") == 100
    seen: list[list[Any]] = await page.evaluate("window.seen")
    assert seen[-1][0] == "task_completed"
    assert seen[-1][1]["converted"] == 8
    completed = {
        entry[1] for entry in seen if entry[0] == "file_update" and entry[2] == "completed"
    }
    assert completed == {f"image-{i:03d}.png" for i in range(1, 9)}
    first_id = await page.text_content("#task")

    await page.click("#corrupt")
    await page.wait_for_function(
        "id => window.streamClosed === true && document.querySelector('#task').textContent !== id",
        arg=first_id,
        timeout=30_000,
    )
    assert await page.text_content("#status") == "failed"
    assert await page.text_content("#message") == "corrupt image: broken.png"
    assert await page.evaluate("window.seen.at(-1)") == ["task_failed", "corrupt image: broken.png"]

    # Closed on the page, gone on the hub.
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:

        async def gone() -> bool:
            stats = (await http.get("/stats")).json()
            return not stats["connections"]["by_task"]

        await until(gone, what="the closed streams to leave the hub")
    await page.close()
    # One command started it all; SIGTERM stops it all (web app, then worker).
    assert await asyncio.to_thread(example.terminate, 30) == 0
    await asyncio.to_thread(wait_for, example.group_gone, 10, "the worker to exit")


# -- seed 003: an observability dashboard -----------------------------------------------------


def slow_subscriber(port: int, path: str) -> socket.socket:
    """A stream that is never read, with a small receive buffer: a slow dashboard."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b": tidings" not in head:  # the opening comment: registered on the hub
        chunk = sock.recv(4096)
        assert chunk, "the stream was refused"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200")
    return sock


async def test_observability_reports_every_request_bounds_slow_dashboards_and_shuts_down_cleanly(
    start_example: StartExample,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    example = start_example(
        "examples.observability", env={"PORT": str(port), "TIDINGS_QUEUE_SIZE": "600"}
    )
    await example.await_up(url + "/sse/healthz")
    topic = ["dashboard/requests"]
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        stream(http, "/sse/events", topics=topic) as dashboard,
    ):
        assert (await http.get("/api/items")).status_code == 200
        start, end = await dashboard.next(), await dashboard.next()
        assert (start.event, end.event) == ("request_start", "request_complete")
        assert data(start)["request_id"] == data(end)["request_id"]
        assert (data(end)["method"], data(end)["path"], data(end)["status"]) == (
            "GET",
            "/api/items",
            200,
        )

        # The app's own events through the global emit() helper, between start and end.
        assert (await http.post("/api/items", json={"name": "lamp"})).status_code == 201
        kinds = [(e.event, data(e)) for e in [await dashboard.next() for _ in range(3)]]
        assert [k for k, _ in kinds] == ["request_start", "item_created", "request_complete"]
        assert kinds[1][1] == {"id": 1, "name": "lamp"}
        assert kinds[2][1]["status"] == 201

        # An exception: request_error (its type, not its message), and the app's 500.
        # (The server closes that connection after the 500: a client of its own.)
        async with httpx.AsyncClient(base_url=url, timeout=10) as once:
            assert (await once.get("/api/boom")).status_code == 500
        start, error = await dashboard.next(), await dashboard.next()
        assert error.event == "request_error"
        assert (data(error)["error"], data(error)["path"]) == ("RuntimeError", "/api/boom")
        # The dashboard's own traffic is excluded: the next event is the next API call.
        assert (await http.get("/dashboard/connections")).status_code == 200
        assert (await http.get("/api/items/1")).status_code == 200
        assert data(await dashboard.next())["path"] == "/api/items/1"
        await dashboard.next()

        # A burst with a slow dashboard open: bulk imports, an event per item. The slow
        # dashboard's bounded queue overflows and the hub cuts it (after the kernel's
        # socket buffers, a few MiB on loopback, are full), while the dashboard that
        # reads gets every event, in order.
        async def read_until(last: str) -> list[ServerSentEvent]:
            events: list[ServerSentEvent] = []
            while not events or (events[-1].event, data(events[-1]).get("request_id")) != (
                "request_complete",
                last,
            ):
                events.append(await dashboard.next(timeout=60))
            return events

        reader = asyncio.create_task(read_until("burst-end"))
        slow = slow_subscriber(port, "/sse/events?topic=dashboard/requests")
        imports = 0
        try:
            while imports < 200:
                names = [f"item {imports}-{i} " + "x" * 80 for i in range(500)]
                response = await http.post("/api/items/bulk", json={"names": names})
                assert response.status_code == 201
                imports += 1
                info = (await http.get("/dashboard/connections")).json()
                if info["slow_disconnects"]:
                    break
            assert info["slow_disconnects"] == 1, "the slow dashboard was never cut"
            await http.get("/api/items", headers={"X-Request-ID": "burst-end"})
            received = await asyncio.wait_for(reader, 60)
        finally:
            reader.cancel()
            slow.close()
        created = [data(e)["id"] for e in received if e.event == "item_created"]
        assert created == list(range(2, 2 + 500 * imports))
        assert [e.event for e in received if e.event != "item_created"] == [
            "request_start",
            "request_complete",
        ] * (imports + 1)
        info = (await http.get("/dashboard/connections")).json()
        assert info["dashboard"] == 1
        stats = (await http.get("/sse/stats")).json()
        assert stats["events"]["dropped"] > 0  # counted, never silent

        # Shutdown: the open stream is ended cleanly (a proper end of the chunked body).
        example.proc.send_signal(signal.SIGTERM)
        assert await dashboard.rest(timeout=20) == []
    assert await asyncio.to_thread(example.proc.wait, 20) in (0, -signal.SIGTERM)


@pytest.mark.asyncio(loop_scope="session")  # the browser's loop
async def test_observability_page_shows_requests_as_they_happen_in_chromium(
    start_example: StartExample, browser_context: BrowserContext
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    example = start_example("examples.observability", env={"PORT": str(port)})
    await example.await_up(url + "/sse/healthz")
    page = await browser_context.new_page()
    await page.goto(url + "/dashboard")
    await page.wait_for_function("document.querySelector('#state').textContent === 'open'")
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/api/items")).status_code == 200
        # The first request shown, and over: the page counts a request when it starts.
        await page.wait_for_function(
            "document.querySelector('#total').textContent === '1'"
            " && document.querySelector('#inflight').textContent === '0'"
        )
        slow = asyncio.create_task(http.get("/api/slow", params={"ms": 1500}))
        # A request still running shows as running, and counts in flight.
        await page.wait_for_function("document.querySelector('#inflight').textContent === '1'")
        running = page.locator("#rows tr.running")
        assert await running.locator("td").nth(2).text_content() == "/api/slow"
        assert (await slow).status_code == 200
        await page.wait_for_function("document.querySelector('#inflight').textContent === '0'")
        assert (await http.get("/api/boom")).status_code == 500
        await page.wait_for_function("document.querySelector('#errors').textContent === '1'")
        created = await http.post("/api/items", json={"name": "lamp"})
        assert created.status_code == 201
        await page.wait_for_function(
            "document.querySelector('#app-event').textContent.startsWith('item_created')"
        )
    rows = await page.locator("#rows tr td:nth-child(3)").all_text_contents()
    assert rows == ["/api/items", "/api/boom", "/api/slow", "/api/items"]
    assert await page.locator("#rows tr.error td:nth-child(3)").all_text_contents() == ["/api/boom"]
    await page.close()


# -- seed 004: batch image processing, in Chromium --------------------------------------------


def png(width: int, height: int) -> bytes:
    """A valid one-colour PNG."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def jpeg_header(width: int, height: int) -> bytes:
    """The start of a baseline JPEG: SOI, an APP0 segment, then the frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0


def upload(name: str, mime: str, body: bytes) -> FilePayload:
    return {"name": name, "mimeType": mime, "buffer": body}


@pytest.mark.asyncio(loop_scope="session")  # the browser's loop
async def test_batch_images_page_follows_each_file_under_the_status_root_in_chromium(
    start_example: StartExample, browser_context: BrowserContext
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    example = start_example(
        "examples.batch_images", env={"PORT": str(port), "PROCESS_DELAY": "0.04"}
    )
    await asyncio.to_thread(example.wait_up, url + "/api/v1/status/healthz")
    page = await browser_context.new_page()
    streams: list[str] = []
    page.on(
        "request", lambda request: streams.append(request.url) if "/stream" in request.url else None
    )
    await page.goto(url + "/")
    await page.wait_for_function("window.done === false")  # the module (and tidings.js) loaded
    await page.set_input_files(
        "#files",
        [
            upload("chair.png", "image/png", png(3, 2)),
            upload("table.png", "image/png", png(640, 480)),
            upload("lamp.gif", "image/gif", b"GIF89a\x10\x00\x20\x00" + b"\x00" * 16),
            upload("sofa.jpg", "image/jpeg", jpeg_header(1024, 768)),
            upload("notes.txt", "text/plain", b"not an image"),
        ],
    )
    await page.click("#upload")
    await page.wait_for_function("window.done === true", timeout=30_000)

    log: list[list[Any]] = await page.evaluate("window.log")
    task_id = await page.evaluate("window.taskId")
    assert [entry for entry in log if entry[0] == "error"] == []
    assert log[-1][0] == "completed"
    assert log[-1][2].startswith("job-")
    # onProgress: the overall bar only goes forward, to 100, counting files.
    progress = [entry for entry in log if entry[0] == "progress"]
    assert [p[2] for p in progress] == sorted(p[2] for p in progress)
    assert progress[-1][2:] == [100, 5, 5]
    # Sequence numbers never go backwards (tidings.js drops stale events).
    sequences = [entry[1] for entry in log]
    assert sequences == sorted(sequences)
    # onFileUpdate: the grid shows each file's outcome.
    grid = await page.eval_on_selector_all(
        "#grid tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
    )
    assert [row[:2] for row in grid] == [
        ["chair.png", "completed"],
        ["table.png", "completed"],
        ["lamp.gif", "completed"],
        ["sofa.jpg", "completed"],
        ["notes.txt", "failed"],
    ]
    assert [row[3] for row in grid] == [
        "PNG 3x2",
        "PNG 640x480",
        "GIF 16x32",
        "JPEG 1024x768",
        "not a PNG, GIF or JPEG image",
    ]
    assert "4 model(s)" in (await page.text_content("#result") or "")
    assert await page.evaluate("window.stream.readyState()") == 2
    # The stream came from the configurable root, where the seed's front end looks.
    assert streams
    assert all(s.startswith(f"{url}/api/v1/status/tasks/{task_id}/stream") for s in streams)

    # A batch with nothing usable fails: onError gets the task's error.
    failing = await browser_context.new_page()
    await failing.goto(url + "/")
    await failing.wait_for_function("window.done === false")
    await failing.set_input_files("#files", [upload("a.txt", "text/plain", b"x")])
    await failing.click("#upload")
    await failing.wait_for_function("window.done === true", timeout=30_000)
    assert await failing.evaluate("window.log.at(-1)") == [
        "error",
        "task_failed",
        "no file could be processed",
    ]
    assert await failing.text_content("#error") == "Processing error: no file could be processed"
