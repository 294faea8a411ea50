"""The task endpoints (SPEC §3 "Tasks") against a real server process over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from tests.conftest import ServerFactory, ServerProcess, open_sse
from tidings.wire import ServerSentEvent

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "tidings": claims}, SECRET, algorithm="HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


def data(event: ServerSentEvent) -> dict[str, Any]:
    value = orjson.loads(event.data)
    assert isinstance(value, dict)
    return value


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


async def create(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    return await ok(await http.post("/tasks", json=fields), 201)


# -- lifecycle --------------------------------------------------------------------------------


async def test_full_lifecycle_over_http(http: httpx.AsyncClient) -> None:
    task = await create(http, title="Convert images", total=2, metadata={"job_id": "j-1"})
    task_id = task["task_id"]
    assert (task["status"], task["sequence"], task["owner"]) == ("pending", 1, None)
    async with open_sse(http, f"/tasks/{task_id}/stream") as stream:
        first = await stream.next()
        assert (first.event, data(first)["status"]) == ("task_progress", "pending")
        await ok(await http.put(f"/tasks/{task_id}/files/a", json={"status": "processing"}))
        assert data(await stream.next())["status"] == "processing"
        body = {"current": 1, "message": "1 of 2"}
        progressed = await ok(await http.post(f"/tasks/{task_id}/progress", json=body))
        assert (progressed["status"], progressed["progress"]) == ("running", 50.0)
        assert data(await stream.next())["progress"] == 50.0
        file_body = {"status": "completed", "filename": "a.png"}
        await ok(await http.put(f"/tasks/{task_id}/files/a", json=file_body))
        await ok(await http.post(f"/tasks/{task_id}/progress", json={"current": 2}))
        done = await ok(
            await http.post(f"/tasks/{task_id}/complete", json={"result": {"files": 2}})
        )
        rest = await stream.until_end()
    assert [e.event for e in rest] == ["file_update", "task_progress", "task_completed"]
    completed = data(rest[-1])
    assert completed == {
        "task_id": task_id,
        "job_id": "j-1",
        "result": {"files": 2},
        "processing_time": round(done["finished_at"] - done["started_at"], 3),
        "sequence": 6,
    }
    assert [data(e)["sequence"] for e in rest] == [4, 5, 6]
    assert done["sequence"] == 6
    got = await ok(await http.get(f"/tasks/{task_id}"))
    assert got["status"] == "completed"
    assert got["progress"] == 100.0
    assert got["files"]["a"] == {
        "file_id": "a",
        "filename": "a.png",
        "status": "completed",
        "progress": 100.0,
        "message": None,
    }


async def test_bodies_are_optional_where_every_field_is(http: httpx.AsyncClient) -> None:
    created = await ok(await http.post("/tasks"), 201)
    assert created["status"] == "pending"
    cancelled = await ok(await http.post(f"/tasks/{created['task_id']}/cancel"))
    assert cancelled["status"] == "cancelled"


async def test_list_is_newest_first_with_a_status_filter(own_http: httpx.AsyncClient) -> None:
    http = own_http  # the list holds every task of the hub
    first = await create(http)
    second = await create(http)
    await ok(await http.post(f"/tasks/{first['task_id']}/fail", json={"error": "boom"}))
    listed = await ok(await http.get("/tasks"))
    assert [t["task_id"] for t in listed["tasks"]] == [second["task_id"], first["task_id"]]
    failed = await ok(await http.get("/tasks", params={"status": "failed", "limit": 5}))
    assert [t["task_id"] for t in failed["tasks"]] == [first["task_id"]]
    assert failed["tasks"][0]["error"] == "boom"


# -- validation and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/progress", {"current": 11}, 422, "invalid_request"),
        ("POST", "/progress", {"progress": 150}, 422, "invalid_request"),
        ("POST", "/progress", {"progress": -1}, 422, "invalid_request"),
        ("POST", "/progress", {"current": "3"}, 422, "invalid_request"),
        ("POST", "/progress", {"percent": 3}, 422, "invalid_request"),
        ("PUT", "/files/f1", {"status": "done"}, 422, "invalid_request"),
        ("PUT", "/files/f1", {}, 422, "invalid_request"),
        ("POST", "/fail", {}, 422, "invalid_request"),
        ("POST", "/complete", [1, 2], 400, None),
    ],
)
async def test_invalid_requests_change_nothing(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: object,
    status: int,
    code: str | None,
) -> None:
    task = await create(http, total=10)
    url = f"/tasks/{task['task_id']}{path}"
    response = await http.request(method, url, json=body)
    assert response.status_code == status, response.text
    if code is not None:
        assert error_code(response) == code
    assert await ok(await http.get(f"/tasks/{task['task_id']}")) == task


async def test_huge_counts_never_make_progress_null(http: httpx.AsyncClient) -> None:
    """Audit item 4: ``{"current": 1e308, "total": 1e308}`` gave ``"progress": null`` in the
    answer and the event (``100 * 1e308`` overflowed), and 0.0 in a later snapshot."""
    task_id = (await create(http))["task_id"]
    async with open_sse(http, f"/tasks/{task_id}/stream") as stream:
        await stream.next()
        for current, total in ((0, 1e308), (1e308, 1e308)):  # the jump's rate overflows too
            body = {"current": current, "total": total}
            answer = await ok(await http.post(f"/tasks/{task_id}/progress", json=body))
            event = data(await stream.next())
        assert (answer["progress"], answer["rate"], answer["eta"]) == (100.0, None, None)
        assert (event["progress"], event["rate"], event["eta"]) == (100.0, None, None)
    async with open_sse(http, f"/tasks/{task_id}/stream") as later:
        assert data(await later.next())["progress"] == 100.0
    assert (await ok(await http.get(f"/tasks/{task_id}")))["progress"] == 100.0


async def test_task_values_nested_too_deep_get_the_same_422_at_every_depth(
    own_http: httpx.AsyncClient,
) -> None:
    """Audit item 6, for task values: one answer past the limit, naming the field."""
    http = own_http  # the list holds every task of the hub
    task_id = (await create(http))["task_id"]
    for depth in (129, 255, 1000, 1100, 5000):
        deep = b"[" * depth + b"]" * depth
        requests = {
            "metadata": ("/tasks", b'{"metadata": {"a": ' + deep[1:-1] + b"}}"),
            "result": (f"/tasks/{task_id}/complete", b'{"result": ' + deep + b"}"),
            "details": (f"/tasks/{task_id}/fail", b'{"error": "x", "details": ' + deep + b"}"),
        }
        for field, (path, body) in requests.items():
            response = await http.post(path, content=body)
            assert response.status_code == 422, (field, depth, response.text)
            assert response.json()["error"] == {
                "code": "invalid_request",
                "message": f"{field} nests deeper than 128 levels",
            }
    at_limit = orjson.loads(b"[" * 128 + b"]" * 128)
    created = await create(http, metadata={"a": at_limit[0]})
    assert created["metadata"] == {"a": at_limit[0]}
    done = await ok(await http.post(f"/tasks/{task_id}/complete", json={"result": at_limit}))
    assert done["result"] == at_limit
    listed = await ok(await http.get("/tasks"))
    assert {t["task_id"] for t in listed["tasks"]} == {task_id, created["task_id"]}


async def test_malformed_json_is_a_400(http: httpx.AsyncClient) -> None:
    task = await create(http)
    response = await http.post(
        f"/tasks/{task['task_id']}/progress",
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error_code(response)


async def test_unknown_tasks_are_404(http: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/tasks/nope"),
        ("POST", "/tasks/nope/progress"),
        ("PUT", "/tasks/nope/files/f"),
        ("POST", "/tasks/nope/complete"),
        ("GET", "/tasks/nope/stream"),
    ]:
        body = {"status": "pending"} if method == "PUT" else {}
        response = await http.request(method, path, json=body if method != "GET" else None)
        assert response.status_code == 404, (method, path)
        assert error_code(response) == "task_not_found"


async def test_a_taken_task_id_is_a_409(http: httpx.AsyncClient, uid: str) -> None:
    await create(http, task_id=f"job-{uid}")
    response = await http.post("/tasks", json={"task_id": f"job-{uid}"})
    assert response.status_code == 409
    assert error_code(response) == "task_exists"


async def test_updates_after_a_terminal_state_are_409(http: httpx.AsyncClient) -> None:
    task = await create(http)
    base = f"/tasks/{task['task_id']}"
    await ok(await http.post(f"{base}/complete", json={}))
    for method, path, body in [
        ("POST", "/progress", {"progress": 5}),
        ("PUT", "/files/f", {"status": "completed"}),
        ("POST", "/complete", {}),
        ("POST", "/fail", {"error": "late"}),
        ("POST", "/cancel", {}),
    ]:
        response = await http.request(method, base + path, json=body)
        assert response.status_code == 409, path
        assert error_code(response) == "task_finished"


@pytest.mark.parametrize("query", [{"status": "bogus"}, {"limit": "0"}, {"limit": "many"}])
async def test_a_bad_list_filter_is_a_422(http: httpx.AsyncClient, query: dict[str, str]) -> None:
    response = await http.get("/tasks", params=query)
    assert response.status_code == 422
    assert error_code(response) == "invalid_request"


# -- streams ---------------------------------------------------------------------------------


async def test_a_stream_opened_mid_task_starts_at_the_current_percent(
    http: httpx.AsyncClient,
) -> None:
    task = await create(http, total=8)
    base = f"/tasks/{task['task_id']}"
    for i in range(1, 4):
        now = await ok(await http.post(f"{base}/progress", json={"current": i}))
    async with open_sse(http, f"{base}/stream") as stream:
        first = await stream.next()
        assert first.event == "task_progress"
        assert data(first)["progress"] == 37.5
        assert data(first)["sequence"] == now["sequence"]
        await ok(await http.post(f"{base}/progress", json={"current": 4}))
        live = await stream.next()
        assert data(live)["sequence"] == now["sequence"] + 1
        assert live.id != first.id


async def test_the_terminal_event_ends_the_stream_and_a_reconnect_gets_204(
    http: httpx.AsyncClient,
) -> None:
    task = await create(http)
    base = f"/tasks/{task['task_id']}"
    async with open_sse(http, f"{base}/stream") as stream:
        await stream.next()
        await ok(await http.post(f"{base}/fail", json={"error": "boom", "details": [1]}))
        events = await stream.until_end()
    assert [e.event for e in events] == ["task_failed"]
    terminal_id = events[0].id
    assert data(events[0]) == {
        "task_id": task["task_id"],
        "error": "boom",
        "details": [1],
        "sequence": 2,
    }
    response = await http.get(f"{base}/stream", headers={"Last-Event-ID": terminal_id})
    assert response.status_code == 204
    assert response.content == b""
    by_query = await http.get(f"{base}/stream", params={"last_event_id": terminal_id})
    assert by_query.status_code == 204
    # A late joiner without an id gets the terminal event, then the end.
    async with open_sse(http, f"{base}/stream") as stream:
        late = await stream.until_end()
    assert [(e.event, e.id) for e in late] == [("task_failed", terminal_id)]


async def test_a_reconnect_replays_the_missed_events_exactly_once(
    http: httpx.AsyncClient,
) -> None:
    task = await create(http, total=10)
    base = f"/tasks/{task['task_id']}"
    async with open_sse(http, f"{base}/stream") as stream:
        last = await stream.next()
    await ok(await http.put(f"{base}/files/f", json={"status": "processing"}))
    await ok(await http.post(f"{base}/progress", json={"current": 5}))
    headers = {"Last-Event-ID": last.id}
    async with open_sse(http, f"{base}/stream", headers=headers) as stream:
        replayed = await stream.take(2)
        await ok(await http.post(f"{base}/cancel", json={"reason": "enough"}))
        rest = await stream.until_end()
    events = replayed + rest
    assert [(e.event, data(e)["sequence"]) for e in events] == [
        ("file_update", 2),
        ("task_progress", 3),
        ("task_cancelled", 4),
    ]
    assert data(events[-1])["reason"] == "enough"


async def test_many_watchers_all_see_the_end(http: httpx.AsyncClient) -> None:
    task = await create(http)
    base = f"/tasks/{task['task_id']}"

    async def watch() -> list[str]:
        async with open_sse(http, f"{base}/stream") as stream:
            await stream.next()
            ready.release()
            return [e.event for e in await stream.until_end()]

    ready = asyncio.Semaphore(0)
    watchers = [asyncio.create_task(watch()) for _ in range(5)]
    for _ in watchers:
        await asyncio.wait_for(ready.acquire(), 10)
    await ok(await http.post(f"{base}/complete"))
    results = await asyncio.wait_for(asyncio.gather(*watchers), 10)
    assert results == [["task_completed"]] * 5


# -- races -------------------------------------------------------------------------------------


async def test_racing_completions_have_one_winner_and_one_409(http: httpx.AsyncClient) -> None:
    for _ in range(10):
        task = await create(http)
        base = f"/tasks/{task['task_id']}"
        first, second = await asyncio.gather(
            http.post(f"{base}/complete", json={"result": 1}),
            http.post(f"{base}/fail", json={"error": "x"}),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 409]
        final = await ok(await http.get(base))
        assert final["sequence"] == 2  # the loser used no sequence
        async with open_sse(http, f"{base}/stream") as stream:
            events = await stream.until_end()
        assert len(events) == 1
        assert data(events[0])["sequence"] == 2


async def test_concurrent_progress_updates_all_succeed(http: httpx.AsyncClient) -> None:
    task = await create(http, total=100)
    base = f"/tasks/{task['task_id']}"
    responses = await asyncio.gather(
        *(http.post(f"{base}/progress", json={"current": i}) for i in range(1, 21))
    )
    bodies = [await ok(r) for r in responses]
    assert sorted(b["sequence"] for b in bodies) == list(range(2, 22))


# -- ownership (auth on) ---------------------------------------------------------------------


@pytest.fixture
async def auth_server(server_factory: ServerFactory) -> ServerProcess:
    return await server_factory.start("--jwt-secret", SECRET)


@pytest.fixture
async def anon(auth_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        yield client


async def test_another_principals_task_is_404(anon: httpx.AsyncClient) -> None:
    alice, bob = bearer("alice"), bearer("bob")
    created = await anon.post("/tasks", json={"title": "mine"}, headers=alice)
    task = await ok(created, 201)
    assert task["owner"] == "alice"
    base = f"/tasks/{task['task_id']}"
    for method, path, body in [
        ("GET", "", None),
        ("GET", "/stream", None),
        ("POST", "/progress", {"progress": 5}),
        ("POST", "/complete", {}),
    ]:
        response = await anon.request(method, base + path, json=body, headers=bob)
        assert response.status_code == 404, path
        assert error_code(response) == "task_not_found"
    assert (await ok(await anon.get("/tasks", headers=bob)))["tasks"] == []
    assert len((await ok(await anon.get("/tasks", headers=alice)))["tasks"]) == 1
    admin = bearer("root", admin=True)
    assert (await ok(await anon.get(base, headers=admin)))["owner"] == "alice"
    worker = bearer("worker", publish=[f"tasks/{task['task_id']}"])
    await ok(await anon.post(f"{base}/progress", json={"progress": 5}, headers=worker))
    async with open_sse(anon, f"{base}/stream", headers=alice) as stream:
        assert data(await stream.next())["progress"] == 5.0
    assert (await anon.get(base)).status_code == 401


async def test_publish_refuses_forged_task_events(anon: httpx.AsyncClient) -> None:
    body = {"topic": "tasks/x", "type": "task_completed", "data": {}}
    response = await anon.post("/publish", json=body, headers=bearer("eve", publish=["**"]))
    assert response.status_code == 403
    assert error_code(response) == "reserved_topic"


# -- durability ----------------------------------------------------------------------------------


async def test_a_server_restart_keeps_tasks_and_streams_resume(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = await server_factory.start("--store", f"sqlite:///{tmp_path / 'tasks.db'}")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        task = await create(http, total=4, title="survivor")
        base = f"/tasks/{task['task_id']}"
        before = await ok(await http.post(f"{base}/progress", json={"current": 3}))
        done = await create(http)
        await ok(await http.post(f"/tasks/{done['task_id']}/complete", json={"result": "r"}))
        async with open_sse(http, f"/tasks/{done['task_id']}/stream") as stream:
            terminal = (await stream.until_end())[0]
    await server.arestart()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert await ok(await http.get(base)) == before
        headers = {"Last-Event-ID": "an-id-from-before-1"}
        async with open_sse(http, f"{base}/stream", headers=headers) as stream:
            snapshot = await stream.next()
            assert data(snapshot)["progress"] == 75.0
            await ok(await http.post(f"{base}/progress", json={"current": 4}))
            live = await stream.next()
            assert data(live)["sequence"] == before["sequence"] + 1
        # The finished task's terminal event id still ends a reconnect with 204.
        response = await http.get(
            f"/tasks/{done['task_id']}/stream", headers={"Last-Event-ID": terminal.id}
        )
        assert response.status_code == 204
