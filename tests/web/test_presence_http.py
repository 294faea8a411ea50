"""Presence, history and the server API over HTTP (issue 20; SPEC §3), on real servers.

The shared hub (auth off) serves what needs no flags, with topics of each test's own; a
module hub with JWT auth and CORS serves the authorization tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from fastapi import FastAPI

from tests.conftest import ServerFactory, ServerProcess, until
from tests.web._security import (
    SECRET,
    bearer,
    expect_error,
    open_stream,
    running_server,
    token,
    topics,
)
from tidings import Hub

APP = "https://app.example"


def presence_path(topic: str) -> str:
    return f"/topics/{quote(topic, safe='')}/presence"


def history_path(topic: str) -> str:
    return f"/topics/{quote(topic, safe='')}/history"


async def wait_count(
    http: httpx.AsyncClient, topic: str, count: int, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Wait until ``topic``'s presence counts ``count``; its first page."""
    page: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal page
        response = await http.get(presence_path(topic), headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        return bool(page["count"] == count)

    await until(reached, what=f"{count} streams on {topic}")
    return page


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- presence ------------------------------------------------------------------------------


async def test_presence_counts_streams_on_the_topic_exactly_and_pages_them(
    http: httpx.AsyncClient, uid: str
) -> None:
    room = f"{uid}/room"
    async with (
        open_stream(http, topics(room)) as _a,
        open_stream(http, topics(room, f"{uid}/*")) as _b,
        open_stream(http, topics(room, "other")) as _c,
        open_stream(http, topics(f"{uid}/*")) as _pattern_only,
    ):
        page = await wait_count(http, room, 3)
        assert set(page) == {"topic", "count", "connections", "next_cursor"}
        assert (page["topic"], page["next_cursor"]) == (room, None)
        ids = [entry["connection_id"] for entry in page["connections"]]
        assert ids == sorted(ids)
        for entry in page["connections"]:
            assert set(entry) == {"connection_id", "user", "node", "since"}
            assert entry["user"] is None  # auth off: anonymous
            assert entry["node"]
            parse_time(entry["since"])
        first = (await http.get(presence_path(room), params={"limit": 2})).json()
        assert (first["count"], len(first["connections"])) == (3, 2)
        rest = (
            await http.get(presence_path(room), params={"limit": 2, "cursor": first["next_cursor"]})
        ).json()
        assert [e["connection_id"] for e in first["connections"] + rest["connections"]] == ids
        assert rest["next_cursor"] is None
        # The topic may come URL-encoded or with its slashes as they are.
        raw = (await http.get(f"/topics/{room}/presence")).json()
        assert raw["count"] == 3
    await wait_count(http, room, 0)


# -- history -------------------------------------------------------------------------------


async def test_history_gives_what_a_stream_delivers_page_by_page(
    http: httpx.AsyncClient, uid: str
) -> None:
    topic = f"{uid}/feed"
    data: list[Any] = [{"n": 1}, "two", [3], None, 5.5]
    async with open_stream(http, topics(topic)) as stream:
        for value in data:
            response = await http.post(
                "/publish", json={"topic": topic, "data": value, "type": "tick"}
            )
            assert response.status_code == 202
        delivered = await stream.take(len(data))
    response = await http.get(history_path(topic))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"topic", "events", "complete", "next_since"}
    assert (body["topic"], body["complete"], body["next_since"]) == (topic, True, None)
    assert [e["id"] for e in body["events"]] == [e.id for e in delivered]
    assert [e["data"] for e in body["events"]] == data
    assert [orjson.loads(e.data) for e in delivered] == data
    assert {(e["type"], e["topic"]) for e in body["events"]} == {("tick", topic)}
    for event in body["events"]:
        assert set(event) == {"id", "type", "topic", "data", "published_at"}
        parse_time(event["published_at"])
    # Paged: next_since is where to go on from.
    pages = []
    since = None
    while True:
        params = {"limit": 2} | ({"since": since} if since else {})
        page = (await http.get(history_path(topic), params=params)).json()
        pages.append([e["id"] for e in page["events"]])
        since = page["next_since"]
        if since is None:
            break
        assert since == page["events"][-1]["id"]
    assert pages == [[e.id for e in delivered[i : i + 2]] for i in (0, 2, 4)]


async def test_history_after_an_id_it_cannot_place_is_marked_incomplete(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start("--history-size", "3")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        ids = []
        for i in range(5):
            response = await http.post("/publish", json={"topic": "t", "data": i})
            ids.append(response.json()["id"])
        for since in (ids[0], "nonsense", ids[0].rpartition("-")[0] + "-999"):
            body = (await http.get(history_path("t"), params={"since": since})).json()
            # The first event is then the oldest kept.
            assert ([e["id"] for e in body["events"]], body["complete"]) == (ids[2:], False)
        body = (await http.get(history_path("t"), params={"since": ids[1]})).json()
        assert ([e["id"] for e in body["events"]], body["complete"]) == (ids[2:], True)


# -- the server API ---------------------------------------------------------------------------


async def test_disconnect_sends_the_reason_then_ends_the_streams_cleanly(
    http: httpx.AsyncClient, uid: str
) -> None:
    async with (
        open_stream(http, topics(f"{uid}/a")) as first,
        open_stream(http, topics(f"{uid}/b", "elsewhere")) as second,
        open_stream(http, topics(f"{uid}-spared")) as spared,
    ):
        await wait_count(http, f"{uid}/b", 1)
        response = await http.post(
            "/admin/disconnect", json={"topic": f"{uid}/*", "reason": "maintenance"}
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"disconnected": 2}
        for stream in (first, second):
            events = await stream.until_end()  # the response ends: a clean end of the body
            assert [(e.event, orjson.loads(e.data)) for e in events] == [
                ("disconnect", {"reason": "maintenance"})
            ]
        published = await http.post("/publish", json={"topic": f"{uid}-spared", "data": 1})
        assert (await spared.next()).id == published.json()["id"]


async def test_admin_topics_lists_the_topics_with_subscribers(
    own_http: httpx.AsyncClient,
) -> None:
    async with (
        open_stream(own_http, topics("b", "a")),
        open_stream(own_http, topics("b", "c/*")),
        open_stream(own_http, topics("d")),
    ):
        await wait_count(own_http, "d", 1)
        body = (await own_http.get("/admin/topics")).json()
        assert body == {
            "topics": [
                {"topic": "a", "subscribers": 1},
                {"topic": "b", "subscribers": 2},
                {"topic": "d", "subscribers": 1},
            ],
            "next_cursor": None,
        }
        first = (await own_http.get("/admin/topics", params={"limit": 2})).json()
        assert [t["topic"] for t in first["topics"]] == ["a", "b"]
        assert first["next_cursor"] == "b"
        rest = (await own_http.get("/admin/topics", params={"cursor": "b"})).json()
        assert rest == {"topics": [{"topic": "d", "subscribers": 1}], "next_cursor": None}


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/topics/a%2F%2Fb/presence", None, 400, "invalid_topic"),
        ("GET", "/topics/a%2F*/presence", None, 400, "invalid_topic"),
        ("GET", "/topics/a%20b/history", None, 400, "invalid_topic"),
        ("GET", "/topics//presence", None, 400, "invalid_topic"),
        ("GET", "/topics/t/presence?limit=abc", None, 422, "invalid_request"),
        ("GET", "/topics/t/presence?limit=0", None, 422, "invalid_request"),
        ("GET", "/topics/t/presence?limit=1001", None, 422, "invalid_request"),
        ("GET", "/topics/t/presence?cursor=a%20b", None, 422, "invalid_request"),
        ("GET", "/topics/t/history?limit=101", None, 422, "invalid_request"),
        ("GET", "/topics/t/history?limit=-1", None, 422, "invalid_request"),
        ("GET", "/topics/t/history?since=" + "x" * 300, None, 422, "invalid_request"),
        ("GET", "/admin/topics?limit=x", None, 422, "invalid_request"),
        ("GET", "/admin/topics?cursor=%00", None, 422, "invalid_request"),
        ("POST", "/admin/disconnect", b"{}", 422, "invalid_request"),
        ("POST", "/admin/disconnect", b'{"user": 5}', 422, "invalid_request"),
        ("POST", "/admin/disconnect", b'{"user": "u", "colour": 1}', 422, "invalid_request"),
        ("POST", "/admin/disconnect", b'{"topic": "a//b"}', 422, "invalid_topic"),
        ("POST", "/admin/disconnect", b'{"user": ""}', 422, "invalid_request"),
        ("POST", "/admin/disconnect", b"{", 400, "malformed_json"),
        ("POST", "/admin/disconnect", b"[]", 400, "malformed_json"),
        ("POST", "/topics/t/presence", b"", 405, "method_not_allowed"),
    ],
)
async def test_bad_input_gets_a_4xx_in_the_error_shape(
    http: httpx.AsyncClient, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    response = await http.request(method, path, content=body)
    expect_error(response, status, code)


# -- with authentication ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server() -> Iterator[ServerProcess]:
    """A hub with JWT auth, an allowed origin, and announcements on ``room/*``."""
    with running_server(
        "--jwt-secret",
        SECRET,
        "--cors-origin",
        APP,
        "--presence-events",
        "room/*",
        "--connect-rate-limit",
        "0",
        "--keepalive",
        "1",
    ) as proc:
        yield proc


@pytest.fixture
async def auth_http(auth_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        yield client


async def test_only_callers_that_may_subscribe_see_presence_and_history(
    auth_http: httpx.AsyncClient, uid: str
) -> None:
    reader = bearer(token("reader", subscribe=[f"{uid}/**"]))
    stranger = bearer(token("stranger", subscribe=["elsewhere/**"]))
    for path in (presence_path(f"{uid}/t"), history_path(f"{uid}/t")):
        expect_error(await auth_http.get(path), 401, "unauthenticated")
        expect_error(await auth_http.get(path, headers=stranger), 403, "forbidden")
        assert (await auth_http.get(path, headers=reader)).status_code == 200
    # A user's own private topics and its own tasks need no grant (SPEC §5).
    own = await auth_http.get(presence_path("users/stranger/inbox"), headers=stranger)
    assert own.status_code == 200
    worker = bearer(token("worker", publish=["tasks/**"]))
    created = await auth_http.post("/tasks", headers=bearer(token("stranger")), json={})
    task_topic = f"tasks/{created.json()['task_id']}"
    assert (await auth_http.get(history_path(task_topic), headers=stranger)).status_code == 200
    assert (await auth_http.get(history_path(task_topic), headers=worker)).status_code == 200
    expect_error(await auth_http.get(history_path(task_topic), headers=reader), 403, "forbidden")


async def test_presence_shows_users_and_history_hides_other_users_events(
    auth_http: httpx.AsyncClient, uid: str
) -> None:
    topic = f"{uid}/inbox"
    alice = bearer(token("alice", subscribe=[f"{uid}/**"]))
    bob = bearer(token("bob", subscribe=[f"{uid}/**"]))
    publisher = bearer(token("app", publish=["**"]))
    async with open_stream(auth_http, topics(topic), headers=alice):
        page = await wait_count(auth_http, topic, 1, headers=bob)
        assert [e["user"] for e in page["connections"]] == ["alice"]
    for data, users in (("all", None), ("bob only", ["bob"])):
        body = {"topic": topic, "data": data} | ({"users": users} if users else {})
        assert (await auth_http.post("/publish", json=body, headers=publisher)).status_code == 202
    seen = {
        name: [
            e["data"]
            for e in (await auth_http.get(history_path(topic), headers=h)).json()["events"]
        ]
        for name, h in (("alice", alice), ("bob", bob))
    }
    assert seen == {"alice": ["all"], "bob": ["all", "bob only"]}


async def test_the_server_api_is_for_admins_only(auth_http: httpx.AsyncClient, uid: str) -> None:
    user = bearer(token("alice", subscribe=["**"], publish=["**"]))
    admin = bearer(token("ops", admin=True))
    calls = [
        ("GET", "/admin/topics", None),
        ("POST", "/admin/disconnect", {"user": f"nobody-{uid}"}),
    ]
    for method, path, body in calls:
        expect_error(await auth_http.request(method, path, json=body), 401, "unauthenticated")
        expect_error(
            await auth_http.request(method, path, json=body, headers=user), 403, "forbidden"
        )
        assert (await auth_http.request(method, path, json=body, headers=admin)).status_code == 200


async def test_an_admin_disconnects_a_user_on_every_stream(
    auth_http: httpx.AsyncClient, uid: str
) -> None:
    name = f"user-{uid}"
    mine = bearer(token(name, subscribe=["**"]))
    other = bearer(token(f"other-{uid}", subscribe=["**"]))
    async with (
        open_stream(auth_http, topics(f"{uid}/a"), headers=mine) as first,
        open_stream(auth_http, topics(f"users/{name}/**"), headers=mine) as second,
        open_stream(auth_http, topics(f"{uid}/a"), headers=other),
    ):
        await wait_count(auth_http, f"{uid}/a", 2, headers=mine)
        response = await auth_http.post(
            "/admin/disconnect", json={"user": name}, headers=bearer(token("ops", admin=True))
        )
        assert response.json() == {"disconnected": 2}
        for stream in (first, second):
            events = await stream.until_end()
            assert [(e.event, orjson.loads(e.data)) for e in events] == [
                ("disconnect", {"reason": "disconnected by the server"})
            ]
        await wait_count(auth_http, f"{uid}/a", 1, headers=mine)


async def test_joins_and_leaves_are_announced_where_configured(
    auth_http: httpx.AsyncClient, uid: str
) -> None:
    watcher = bearer(token("watcher", subscribe=["room/**"]))
    joiner = bearer(token(f"joiner-{uid}", subscribe=["room/**"]))
    room = f"room/{uid}"
    async with open_stream(auth_http, topics(room), headers=watcher) as watching:
        joined = await watching.next()  # its own join comes first
        assert joined.event == "presence_join"
        async with open_stream(auth_http, topics(room), headers=joiner):
            event = await watching.next()
            page = (await auth_http.get(presence_path(room), headers=watcher)).json()
        assert event.event == "presence_join"
        theirs = orjson.loads(event.data)
        assert theirs["user"] == f"joiner-{uid}"
        assert theirs["topic"] == room
        assert theirs["connection_id"] in [e["connection_id"] for e in page["connections"]]
        left = await watching.next()
        assert (left.event, orjson.loads(left.data)) == ("presence_leave", theirs)


async def test_cors_answers_an_allowed_origin_on_the_new_endpoints(
    auth_http: httpx.AsyncClient,
) -> None:
    admin = bearer(token("ops", admin=True, subscribe=["**"]))
    origin = {"Origin": APP}
    for path in (presence_path("room/x"), history_path("room/x"), "/admin/topics"):
        response = await auth_http.get(path, headers=admin | origin)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == APP
    preflight = await auth_http.options(
        "/admin/disconnect",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == APP


# -- the same endpoints in an application's FastAPI app and in OpenAPI ------------------------


async def test_the_endpoints_answer_alike_through_hub_router() -> None:
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0)
    app = FastAPI()
    app.include_router(hub.router, prefix="/sse")
    await hub.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            published = await http.post("/sse/publish", json={"topic": "a/b", "data": 1})
            body = (await http.get("/sse" + history_path("a/b"))).json()
            assert [e["id"] for e in body["events"]] == [published.json()["id"]]
            conn = await hub.open_stream(["a/b"])
            await until(lambda: _count(hub, "a/b", 1), what="the stream in presence")
            body = (await http.get("/sse/topics/a/b/presence")).json()
            assert [e["connection_id"] for e in body["connections"]] == [conn.connection_id]
            topics_page = (await http.get("/sse/admin/topics")).json()
            assert topics_page["topics"] == [{"topic": "a/b", "subscribers": 1}]
            ended = await http.post("/sse/admin/disconnect", json={"topic": "a/**"})
            assert ended.json() == {"disconnected": 1}
            expect_error(await http.get("/sse/topics/a%2F*/presence"), 400, "invalid_topic")
    finally:
        await hub.aclose()


async def _count(hub: Hub, topic: str, count: int) -> bool:
    return (await hub.presence(topic)).count == count


async def test_openapi_documents_the_new_endpoints(http: httpx.AsyncClient) -> None:
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert set(paths["/topics/{topic}/presence"]) == {"get"}
    assert set(paths["/topics/{topic}/history"]) == {"get"}
    assert set(paths["/admin/disconnect"]) == {"post"}
    assert set(paths["/admin/topics"]) == {"get"}
    params = {p["name"] for p in paths["/topics/{topic}/history"]["get"]["parameters"]}
    assert params == {"topic", "since", "limit"}
