"""Tasks in Redis across real nodes, and workers that publish straight into Redis (issue 5,
items 3 and 4; SPEC §3 "Tasks", §6).

Every test runs real ``tidings serve`` processes on the tests' own redis-server. Order "on
the wire" is read where every node takes it from: the task topic's history in Redis (the
same atomic step appends to the hub log that nodes deliver from).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio

from tests.conftest import (
    RedisServer,
    ServerFactory,
    ServerProcess,
    SSEReader,
    TcpProxy,
    open_sse,
    until,
)
from tests.web._security import SECRET, bearer, token
from tidings.client import AsyncPublisher, Publisher
from tidings.client.redis import AsyncRedisTransport, RedisTransport
from tidings.config import load_settings
from tidings.errors import (
    BackendUnavailable,
    EventTooLarge,
    InvalidEvent,
    NotAuthorized,
    TaskExists,
    TaskFinished,
    TaskNotFound,
)
from tidings.hub import Hub
from tidings.tasks import maintenance
from tidings.tasks.redis import RedisTaskStore
from tidings.tasks.service import open_store
from tidings.wire import ServerSentEvent

StartNodes = Callable[..., Awaitable[list[ServerProcess]]]


@pytest.fixture
def start_nodes(server_factory: ServerFactory, redis_url: str) -> StartNodes:
    """``await start_nodes(n, *flags)``: ``n`` nodes on the tests' Redis, tasks in Redis,
    started side by side."""

    async def start(count: int, *flags: str) -> list[ServerProcess]:
        args = ("--backend", redis_url, "--store", "redis", "--keepalive", "1", *flags)
        return list(await asyncio.gather(*(server_factory.start(*args) for _ in range(count))))

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client for absolute URLs (each node has its own)."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def data(event: ServerSentEvent) -> dict[str, Any]:
    value = orjson.loads(event.data)
    assert isinstance(value, dict)
    return value


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


async def history(client: redis.asyncio.Redis, task_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The task topic's events in Redis, in id order: ``(type, data)``."""
    entries: Any = await client.xrange(f"tidings:t:tasks/{task_id}")
    return [(orjson.loads(fields[b"m"])[0], orjson.loads(fields[b"p"])) for _, fields in entries]


def comparable(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Events without what differs between two runs (ids, clocks)."""
    varying = {"task_id", "rate", "eta", "processing_time"}
    return [(kind, {k: v for k, v in d.items() if k not in varying}) for kind, d in events]


# -- atomic transitions across nodes -------------------------------------------------------------


async def test_racing_terminal_requests_on_two_nodes_have_one_winner(
    start_nodes: StartNodes, http: httpx.AsyncClient, raw_redis: redis.asyncio.Redis
) -> None:
    a, b = await start_nodes(2)
    for _ in range(8):
        task = await ok(await http.post(f"{a.url}/tasks", json={}), 201)
        task_id = task["task_id"]
        async with open_sse(http, f"{b.url}/tasks/{task_id}/stream") as stream:
            assert data(await stream.next())["sequence"] == 1
            done, failed = await asyncio.gather(
                http.post(f"{a.url}/tasks/{task_id}/complete", json={"result": 1}),
                http.post(f"{b.url}/tasks/{task_id}/fail", json={"error": "x"}),
            )
            assert sorted([done.status_code, failed.status_code]) == [200, 409]
            loser = failed if done.status_code == 200 else done
            assert loser.json()["error"]["code"] == "task_finished"
            events = await stream.until_end()
        assert len(events) == 1
        assert events[0].event in ("task_completed", "task_failed")
        assert data(events[0])["sequence"] == 2  # the loser used no sequence
        assert (await ok(await http.get(f"{a.url}/tasks/{task_id}")))["sequence"] == 2
        assert [kind for kind, _ in await history(raw_redis, task_id)] == [
            "task_progress",
            events[0].event,
        ]


async def test_concurrent_updates_on_two_nodes_reach_the_wire_in_sequence_order(
    start_nodes: StartNodes, http: httpx.AsyncClient, raw_redis: redis.asyncio.Redis
) -> None:
    """Both nodes change one task at once: every change succeeds with its own sequence, and
    the events reach Redis (so every stream) with the sequence rising by exactly one."""
    a, b = await start_nodes(2)
    task = await ok(await http.post(f"{a.url}/tasks", json={"total": 100}), 201)
    task_id = task["task_id"]
    async with open_sse(http, f"{b.url}/tasks/{task_id}/stream") as stream:
        assert data(await stream.next())["sequence"] == 1
        # file_update is never conflated, so the stream must show every one of them.
        files = await asyncio.gather(
            *(
                http.put(
                    f"{(a, b)[i % 2].url}/tasks/{task_id}/files/f{i}",
                    json={"status": "completed"},
                )
                for i in range(30)
            )
        )
        file_sequences = [(await ok(r))["sequence"] for r in files]
        assert sorted(file_sequences) == list(range(2, 32))
        streamed = await stream.take(30)
        assert [data(e)["sequence"] for e in streamed] == list(range(2, 32))
        assert [e.event for e in streamed] == ["file_update"] * 30
        ids = [int(e.id.rpartition("-")[2]) for e in streamed]
        assert ids == sorted(ids)

        progress = await asyncio.gather(
            *(
                http.post(f"{(a, b)[i % 2].url}/tasks/{task_id}/progress", json={"current": i})
                for i in range(1, 31)
            )
        )
        assert sorted([(await ok(r))["sequence"] for r in progress]) == list(range(32, 62))
        await ok(await http.post(f"{a.url}/tasks/{task_id}/complete"))
        rest = await stream.until_end()
    # Progress may be conflated on a stream (newest wins), never reordered.
    sequences = [data(e)["sequence"] for e in rest]
    assert sequences == sorted(set(sequences))
    assert rest[-1].event == "task_completed"
    assert data(rest[-1])["sequence"] == 62
    on_the_wire = [d["sequence"] for _, d in await history(raw_redis, task_id)]
    assert on_the_wire == list(range(1, 63))


async def test_a_task_created_on_one_node_streams_from_another(
    server_factory: ServerFactory, redis_url: str, http: httpx.AsyncClient
) -> None:
    """Node B uses ``--store auto``: with a Redis backend that is the Redis store."""
    a, b = await asyncio.gather(
        server_factory.start("--backend", redis_url, "--store", "redis"),
        server_factory.start("--backend", redis_url, "--store", "auto"),
    )
    task = await ok(await http.post(f"{a.url}/tasks", json={"total": 4, "title": "T"}), 201)
    task_id = task["task_id"]
    assert (await ok(await http.get(f"{b.url}/tasks/{task_id}")))["title"] == "T"
    listed = await ok(await http.get(f"{b.url}/tasks"))
    assert [t["task_id"] for t in listed["tasks"]] == [task_id]
    await ok(await http.post(f"{a.url}/tasks/{task_id}/progress", json={"current": 1}))
    async with open_sse(http, f"{b.url}/tasks/{task_id}/stream") as stream:
        first = await stream.next()
        assert (first.event, data(first)["progress"], data(first)["sequence"]) == (
            "task_progress",
            25.0,
            2,
        )
        await ok(await http.post(f"{a.url}/tasks/{task_id}/progress", json={"current": 2}))
        live = await stream.next()
        assert (data(live)["progress"], data(live)["sequence"]) == (50.0, 3)
        await ok(await http.post(f"{a.url}/tasks/{task_id}/complete", json={"result": "ok"}))
        end = await stream.until_end()
    assert [(e.event, data(e)["result"]) for e in end] == [("task_completed", "ok")]
    # The terminal event's id is the task's latest on every node: a reconnect gets 204.
    response = await http.get(
        f"{a.url}/tasks/{task_id}/stream", headers={"Last-Event-ID": end[0].id}
    )
    assert response.status_code == 204
    stats = await ok(await http.get(f"{b.url}/stats"))
    assert stats["tasks"]["active"] == 0
    # Node A wrote four task events (created, two progress, completed) through the store's
    # script: /stats counts them as published there.
    assert (await ok(await http.get(f"{a.url}/stats")))["events"]["published"] == 4


async def test_expired_tasks_are_purged_once_across_nodes(
    start_nodes: StartNodes, http: httpx.AsyncClient, raw_redis: redis.asyncio.Redis
) -> None:
    """Both nodes run the purge loop; each expired task is deleted, and announced, once."""
    a, b = await start_nodes(2, "--task-retention", "1")
    finished = await ok(await http.post(f"{a.url}/tasks", json={}), 201)
    await ok(await http.post(f"{a.url}/tasks/{finished['task_id']}/complete"))
    abandoned = await ok(await http.post(f"{b.url}/tasks", json={}), 201)
    abandoned_id = abandoned["task_id"]
    async with open_sse(http, f"{a.url}/tasks/{abandoned_id}/stream") as stream:
        assert (await stream.next()).event == "task_progress"
        end = await stream.until_end(timeout=20)
    assert [(e.event, data(e)["reason"]) for e in end] == [("task_deleted", "expired")]
    for task_id in (finished["task_id"], abandoned_id):
        for node in (a, b):
            response = await http.get(f"{node.url}/tasks/{task_id}")
            assert response.status_code == 404
        kinds = [kind for kind, _ in await history(raw_redis, task_id)]
        assert kinds.count("task_deleted") == 1
    assert await raw_redis.keys("tidings:task:*") == []


def test_the_store_setting_picks_redis_with_a_redis_backend(redis_url: str) -> None:
    assert isinstance(open_store(load_settings(backend=redis_url)), RedisTaskStore)
    assert isinstance(open_store(load_settings(backend=redis_url, store="redis")), RedisTaskStore)
    assert Hub(backend=redis_url).settings.store == "redis"
    assert Hub().settings.store == "sqlite:///./tidings.db"


# -- workers straight into Redis -------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from tidings.client import Publisher

    url, task_id = sys.argv[1], sys.argv[2]
    files = [f"img-{i}.png" for i in range(5)]
    with Publisher(url) as pub:
        with pub.track(task_id, total=len(files), min_interval=0) as t:
            for name in t.iter(files):
                t.file(name, status="completed")
            t.result = {"converted": len(files)}
    """
)


async def test_a_worker_process_reports_through_redis_to_a_browser_on_a_node(
    start_nodes: StartNodes, http: httpx.AsyncClient, redis_url: str
) -> None:
    """A sync worker (no web server, no HTTP) drives a task with ``track()``; a browser
    streaming it from a node sees every step, to ``task_completed``."""
    (node,) = await start_nodes(1)
    task = await ok(await http.post(f"{node.url}/tasks", json={"title": "Convert"}), 201)
    task_id = task["task_id"]
    async with open_sse(http, f"{node.url}/tasks/{task_id}/stream") as stream:
        assert data(await stream.next())["status"] == "pending"
        worker = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", WORKER, redis_url, task_id],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert worker.returncode == 0, worker.stderr
        events = await stream.until_end()
    assert events[-1].event == "task_completed"
    assert data(events[-1])["result"] == {"converted": 5}
    sequences = [data(e)["sequence"] for e in events]
    assert sequences == sorted(set(sequences))
    assert sequences[-1] == (await ok(await http.get(f"{node.url}/tasks/{task_id}")))["sequence"]
    files = [data(e)["file_id"] for e in events if e.event == "file_update"]
    assert files == [f"img-{i}.png" for i in range(5)]
    final = await ok(await http.get(f"{node.url}/tasks/{task_id}"))
    assert (final["status"], final["progress"], final["current"]) == ("completed", 100.0, 5)


async def test_a_sync_publisher_on_redis_creates_tasks_and_publishes_events(
    start_nodes: StartNodes, http: httpx.AsyncClient, redis_url: str
) -> None:
    (node,) = await start_nodes(1)
    with Publisher(redis_url) as pub:
        assert isinstance(pub.transport, RedisTransport)
        async with open_sse(
            http, f"{node.url}/events", params=httpx.QueryParams({"topic": "jobs"})
        ) as events:
            first = await asyncio.to_thread(
                pub.publish, "jobs", {"n": 1}, type="job", idempotency_key="k1"
            )
            again = await asyncio.to_thread(
                pub.publish, "jobs", {"n": 1}, type="job", idempotency_key="k1"
            )
            assert again == first
            second = await asyncio.to_thread(pub.publish, "jobs", {"n": 2}, priority="high")
            received = await events.take(2)
        assert [(e.id, e.event, orjson.loads(e.data)) for e in received] == [
            (first, "job", {"n": 1}),
            (second, "message", {"n": 2}),
        ]
        with pytest.raises(NotAuthorized) as refused:
            pub.publish("tasks/forged", {"x": 1})
        assert refused.value.code == "reserved_topic"

        task = await asyncio.to_thread(pub.create_task, title="W", total=2)
        seen = await ok(await http.get(f"{node.url}/tasks/{task.task_id}"))
        assert (seen["title"], seen["owner"], seen["sequence"]) == ("W", None, 1)
        await asyncio.to_thread(pub.cancel, task.task_id, reason="stop")
        with pytest.raises(TaskFinished):
            pub.progress(task.task_id, current=1)
        assert pub.get_task(task.task_id).status == "cancelled"


async def test_a_worker_and_a_node_produce_the_same_events(
    start_nodes: StartNodes,
    http: httpx.AsyncClient,
    raw_redis: redis.asyncio.Redis,
    redis_url: str,
) -> None:
    """The same calls made over HTTP and straight into Redis publish identical events."""
    (node,) = await start_nodes(1)
    via_http, via_redis = Publisher(node.url), Publisher(redis_url)

    def steps(pub: Publisher) -> str:
        """A worker's calls; the task id."""
        with pub:
            task_id = pub.create_task(total=4, title="same", metadata={"job_id": "j"}).task_id
            pub.progress(task_id, current=1, message="one")
            pub.file(task_id, "a/b.png", status="processing", progress=10)
            pub.progress(task_id, progress=60)
            pub.file(task_id, "a/b.png", status="completed")
            assert pub.complete(task_id, result={"ok": True}).sequence == 6
            return task_id

    runs: list[list[tuple[str, dict[str, Any]]]] = []
    for pub in (via_http, via_redis):
        task_id = await asyncio.to_thread(steps, pub)
        runs.append(await history(raw_redis, task_id))
        answer = await ok(await http.get(f"{node.url}/tasks/{task_id}"))
        assert (answer["sequence"], answer["status"]) == (6, "completed")
    assert comparable(runs[0]) == comparable(runs[1])
    assert [kind for kind, _ in runs[1]] == [
        "task_progress",
        "task_progress",
        "file_update",
        "task_progress",
        "file_update",
        "task_completed",
    ]


async def test_an_async_publisher_on_redis_drives_a_task_and_races_a_node(
    start_nodes: StartNodes, http: httpx.AsyncClient, redis_url: str
) -> None:
    a, b = await start_nodes(2)
    async with AsyncPublisher(redis_url) as pub:
        assert isinstance(pub.transport, AsyncRedisTransport)
        task = await pub.create_task(total=3, title="async")
        async with open_sse(http, f"{b.url}/tasks/{task.task_id}/stream") as stream:
            assert data(await stream.next())["sequence"] == 1
            async with pub.track(task.task_id, min_interval=0) as t:
                async for _ in t.iter(range(3)):
                    pass
                t.result = "done"
            events = await stream.until_end()
        assert events[-1].event == "task_completed"
        assert data(events[-1])["result"] == "done"
        sequences = [data(e)["sequence"] for e in events]
        assert sequences == sorted(set(sequences))

        # A worker racing a node on one task is as atomic as two nodes racing.
        for _ in range(5):
            racing = await pub.create_task()
            outcomes = await asyncio.gather(
                pub.complete(racing.task_id, result=1),
                http.post(f"{a.url}/tasks/{racing.task_id}/fail", json={"error": "x"}),
                return_exceptions=True,
            )
            worker_won = not isinstance(outcomes[0], BaseException)
            node = outcomes[1]
            assert isinstance(node, httpx.Response)
            assert node.status_code == (409 if worker_won else 200)
            if not worker_won:
                assert isinstance(outcomes[0], TaskFinished)
            final = await pub.get_task(racing.task_id)
            assert final.sequence == 2


async def test_a_redis_publisher_refuses_what_a_hub_refuses(redis_url: str) -> None:
    """Invalid changes raise the HTTP API's errors and change nothing; no hub is needed to
    write (nodes deliver from history when they run)."""
    async with AsyncPublisher(redis_url) as pub:
        task = await pub.create_task(task_id="job-1", total=3)
        with pytest.raises(TaskExists):
            await pub.create_task(task_id="job-1")
        with pytest.raises(InvalidEvent):
            await pub.progress(task.task_id, current=4)
        with pytest.raises(InvalidEvent):
            await pub.file(task.task_id, "f", status="lost")
        with pytest.raises(EventTooLarge):
            await pub.complete(task.task_id, result="x" * 70_000)
        with pytest.raises(TaskNotFound):
            await pub.progress("no-such-task", current=1)
        assert await pub.get_task(task.task_id) == task


def test_redis_errors_reach_a_worker_as_backend_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    with Publisher(url) as pub:
        with pytest.raises(BackendUnavailable) as info:
            pub.publish("t", 1)
        assert info.value.__cause__ is not None
        with pytest.raises(BackendUnavailable):
            pub.create_task()

    async def from_async() -> None:
        async with AsyncPublisher(url) as pub:
            await pub.progress("t", current=1)

    with pytest.raises(BackendUnavailable):
        asyncio.run(from_async())


# -- Redis outages (SPEC §3: streams stay open, new ones are accepted) ---------------------------

MakeProxy = Callable[[int], Awaitable[TcpProxy]]


@pytest.fixture
async def cut_node(
    server_factory: ServerFactory,
    redis_url: str,
    redis_server: RedisServer,
    tcp_proxy: MakeProxy,
) -> tuple[ServerProcess, TcpProxy]:
    """A node (tasks in Redis, auth on) that reaches Redis through a proxy the test cuts.

    Redis itself stays up, with its data, as for a node whose network fails; workers write
    into it meanwhile. The node starts in a thread: the proxy runs on this event loop.
    """
    proxy = await tcp_proxy(redis_server.port)
    node = await asyncio.to_thread(
        server_factory,
        *("--backend", proxy.url("redis", "/0"), "--store", "redis", "--keepalive", "1"),
        *("--jwt-secret", SECRET, "--task-retention", "10"),
    )
    return node, proxy


async def held(stream: SSEReader) -> None:
    """Read the held stream until a keep-alive: it is open, and has sent no event."""

    async def ping() -> None:
        while "ping" not in stream.comments:
            stream.pending.extend(stream.parser.feed(await anext(stream._chunks)))

    assert stream.response.status_code == 200
    await asyncio.wait_for(ping(), 10)
    assert stream.pending == []
    assert "tidings" in stream.comments  # the opening comment came first


async def wait_log(node: ServerProcess, text: str) -> None:
    """Wait until the node has logged ``text``."""

    async def logged() -> bool:
        return text in node.log()

    await until(logged, 20, f"the node to log {text!r}")


async def test_a_task_stream_opened_while_redis_is_unreachable_starts_when_it_is_back(
    cut_node: tuple[ServerProcess, TcpProxy], http: httpx.AsyncClient, redis_url: str
) -> None:
    """Audit item 1: the stream was a 503 (which ends a browser's EventSource for good).
    Now it is accepted and held (keep-alives only); once the store answers it starts with
    the task's state as of then, then goes live, and ends with the task."""
    node, proxy = cut_node
    alice = bearer(token("alice"))
    task = await ok(await http.post(f"{node.url}/tasks", json={"total": 4}, headers=alice), 201)
    task_id = task["task_id"]
    await proxy.cut()
    async with open_sse(http, f"{node.url}/tasks/{task_id}/stream", headers=alice) as stream:
        await held(stream)
        async with AsyncPublisher(redis_url) as worker:  # Redis is up for everyone else
            await worker.progress(task_id, current=2)
        await proxy.restore()
        first = await stream.next(timeout=20)
        assert (first.event, data(first)["sequence"], data(first)["progress"]) == (
            "task_progress",
            2,
            50.0,
        )
        done = await http.post(f"{node.url}/tasks/{task_id}/complete", headers=alice)
        assert (await ok(done))["sequence"] == 3
        end = await stream.until_end(timeout=20)
    assert [(e.event, data(e)["sequence"]) for e in end] == [("task_completed", 3)]


async def test_a_task_stream_resumed_while_redis_is_unreachable_replays_when_it_is_back(
    cut_node: tuple[ServerProcess, TcpProxy], http: httpx.AsyncClient, redis_url: str
) -> None:
    """A reconnect with Last-Event-ID during the outage gets, once the store answers, the
    events it missed (some published meanwhile by a worker), each exactly once, then live
    events; and a reconnect after the end with the terminal event's id still gets 204."""
    node, proxy = cut_node
    alice = bearer(token("alice"))
    created = await http.post(f"{node.url}/tasks", json={"total": 4}, headers=alice)
    task_id = (await ok(created, 201))["task_id"]
    url = f"{node.url}/tasks/{task_id}/stream"
    async with open_sse(http, url, headers=alice) as stream:
        seen = await stream.next()
    await proxy.cut()
    async with AsyncPublisher(redis_url) as worker:
        await worker.progress(task_id, current=1)
        await worker.file(task_id, "a.png", status="completed")
        async with open_sse(http, url, headers={**alice, "Last-Event-ID": seen.id}) as stream:
            await held(stream)
            await proxy.restore()
            missed = await stream.take(2, timeout=20)
            await worker.complete(task_id, result="ok")
            end = await stream.until_end(timeout=20)
    assert [(e.event, data(e)["sequence"]) for e in missed] == [
        ("task_progress", 2),
        ("file_update", 3),
    ]
    assert [(e.event, data(e)["sequence"]) for e in end] == [("task_completed", 4)]
    ids = [int(e.id.rpartition("-")[2]) for e in [seen, *missed, *end]]
    assert ids == sorted(set(ids))

    await proxy.cut()
    async with open_sse(http, url, headers={**alice, "Last-Event-ID": end[0].id}) as stream:
        await held(stream)
        await proxy.restore()
        assert await stream.until_end(timeout=20) == []  # nothing more to send
    again = await http.get(url, headers={**alice, "Last-Event-ID": end[0].id})
    assert again.status_code == 204


async def test_a_held_task_stream_of_a_task_the_caller_may_not_see_ends_without_a_word(
    cut_node: tuple[ServerProcess, TcpProxy], http: httpx.AsyncClient
) -> None:
    """Whether the task exists, and whose it is, is known once the store answers: a stream
    for an unknown task or someone else's ends then, having sent nothing about the task, and
    the reconnect gets the usual 404. What needs no store is still answered at once."""
    node, proxy = cut_node
    alice, bob = bearer(token("alice")), bearer(token("bob"))
    task = await ok(await http.post(f"{node.url}/tasks", json={}, headers=alice), 201)
    await ok(await http.post(f"{node.url}/tasks/{task['task_id']}/progress", headers=alice))
    await proxy.cut()
    unauthenticated = await http.get(f"{node.url}/tasks/{task['task_id']}/stream")
    assert unauthenticated.status_code == 401
    for path in (f"/tasks/{task['task_id']}/stream", "/tasks/no-such-task/stream"):
        async with open_sse(http, node.url + path, headers=bob) as stream:
            await held(stream)
            await proxy.restore()
            assert await stream.until_end(timeout=20) == []
        refused = await http.get(node.url + path, headers=bob)
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "task_not_found"
        await proxy.cut()


async def test_a_held_subscription_to_an_own_task_topic_is_checked_when_the_store_is_back(
    cut_node: tuple[ServerProcess, TcpProxy], http: httpx.AsyncClient
) -> None:
    """Audit item 7 during an outage: whether ``tasks/<id>`` is the caller's own task is
    known once the store answers. Until then the stream is held and sends no event; then
    the owner's goes live, and anyone else's ends having sent nothing (reconnect: 403)."""
    node, proxy = cut_node
    alice, bob = bearer(token("alice")), bearer(token("bob"))
    task_id = (await ok(await http.post(f"{node.url}/tasks", json={}, headers=alice), 201))[
        "task_id"
    ]
    query = httpx.QueryParams({"topic": f"tasks/{task_id}"})
    await proxy.cut()
    async with (
        open_sse(http, f"{node.url}/events", params=query, headers=alice) as owner,
        open_sse(http, f"{node.url}/events", params=query, headers=bob) as other,
    ):
        await held(owner)
        await held(other)
        await proxy.restore()
        assert await other.until_end(timeout=20) == []

        # A change goes through once the node's link is back.
        async def progressed() -> bool:
            progress = f"{node.url}/tasks/{task_id}/progress"
            return (await http.post(progress, headers=alice)).status_code == 200

        await until(progressed, 20, "a change to go through")
        event = await owner.next(timeout=20)
    assert (event.event, data(event)["sequence"]) == ("task_progress", 2)
    refused = await http.get(f"{node.url}/events", params=query, headers=bob)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


async def test_stats_and_metrics_answer_during_an_outage_with_active_tasks_unknown(
    cut_node: tuple[ServerProcess, TcpProxy], http: httpx.AsyncClient
) -> None:
    """Audit item 8: /stats was a 503 while the task store was down, so the counters
    vanished exactly when operators need them."""
    node, proxy = cut_node
    admin = bearer(token("ops", admin=True))
    await ok(await http.post(f"{node.url}/tasks", json={}, headers=admin), 201)
    before = await ok(await http.get(f"{node.url}/stats", headers=admin))
    assert before["tasks"] == {"active": 1}
    await proxy.cut()
    stats = await ok(await http.get(f"{node.url}/stats", headers=admin))
    assert stats["tasks"] == {"active": None}
    assert stats["events"]["published"] == 1
    assert set(stats["connections"]) == {"total", "by_topic", "by_task", "by_user"}
    metrics = await http.get(f"{node.url}/metrics", headers=admin)
    assert metrics.status_code == 200
    assert "tidings_events_published_total 1.0" in metrics.text
    assert "tidings_tasks_active" not in metrics.text


async def test_an_unreachable_task_store_is_one_log_line_not_a_traceback(
    cut_node: tuple[ServerProcess, TcpProxy], http: httpx.AsyncClient
) -> None:
    """Audit item 2: the maintenance loop logged a 50-line traceback at start and every
    minute while Redis was unreachable. An outage is one warning, and one line when over."""
    node, proxy = cut_node
    await proxy.cut()
    await wait_log(node, "task store is unreachable")
    # More maintenance steps while it stays down: the outage is a time window here.
    await asyncio.sleep(2.5 * maintenance.INTERVAL)
    await proxy.restore()
    await wait_log(node, "task store is reachable again")
    log = node.log()
    assert log.count("task store is unreachable") == 1
    assert "task maintenance failed" not in log
    assert "Traceback" not in log
