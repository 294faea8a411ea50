"""``tidings serve --auth-proxy``: the hub asks the application who a caller is (issue 20, 4).

Real parts only: ``tidings serve`` processes, and the application's auth endpoint as a real
HTTP server in a thread of this process (:class:`~tests._local_http.LocalApp`), whose
answers each test picks through the caller's ``session`` cookie:

    session=user:alice       200 claims: chat/** to subscribe and publish
    session=admin:ops        200 claims of an admin
    session=visitor:         200 with "sub": null: news/** only
    session=expiring:alice   200 claims with an "exp" two seconds ahead
    session=deny:x           401        session=forbid:x      403
    session=<garbage kind>   a 200 that is not the documented JSON, a redirect, a 404, ...
    session=error:x          500

Every test uses cookie values of its own (``uid``), so the hub's cache of one test never
answers another's.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from http.cookies import SimpleCookie

import httpx
import orjson
import pytest

from tests._local_http import LocalApp, Reply, Seen
from tests.conftest import ServerFactory, ServerProcess, open_sse, until
from tests.web._security import (
    SECRET,
    bearer,
    expect_error,
    open_stream,
    running_server,
    stream_status,
    token,
    topics,
)

QUIET = ("--connect-rate-limit", "0", "--keepalive", "1")

GARBAGE = {
    "html": (Reply(200, body=b"<html>Sign in</html>"), "is not JSON"),
    "list": (Reply(200, json=["alice"]), "expected a JSON object"),
    "nosub": (Reply(200, json={"tidings": {"subscribe": ["**"]}}), "'sub' is missing"),
    "grants": (
        Reply(200, json={"sub": "a", "tidings": {"subscribe": "chat/**"}}),
        "'tidings.subscribe' must be a list",
    ),
    "pattern": (
        Reply(200, json={"sub": "a", "tidings": {"subscribe": ["a//b"]}}),
        "not a valid topic pattern",
    ),
    "adminflag": (Reply(200, json={"sub": "a", "tidings": {"admin": "yes"}}), "'tidings.admin'"),
    "redirect": (Reply(302, body=b"", headers={"Location": "/login"}), "a redirect"),
    "notfound": (Reply(404, body=b"not found"), "HTTP 404"),
    "gzip": (
        Reply(200, body=b"not gzip", headers={"Content-Encoding": "gzip"}),
        "cannot be decoded",
    ),
    "huge": (Reply(200, body=b'{"sub": "a", "x": "' + b"x" * 70_000 + b'"}'), "over 65536"),
}


def claims(
    sub: str | None, subscribe: list[str], publish: tuple[str, ...] = (), **extra: object
) -> Reply:
    grants = {"subscribe": subscribe, "publish": list(publish)}
    return Reply(200, json={"sub": sub, "tidings": grants, **extra})


def answer(seen: Seen) -> Reply:
    """The application's endpoint: who the ``session`` cookie (or ``Authorization: Session
    <value>``) says the caller is."""
    cookie = SimpleCookie(seen.headers.get("cookie", "")).get("session")
    header = seen.headers.get("authorization", "")
    value = cookie.value if cookie is not None else header.removeprefix("Session ")
    if not value:
        return Reply(401, json={"error": "not signed in"})
    kind, _, user = value.partition(":")
    user = user.partition("-")[0]  # session=user:alice-<uid>: user alice
    if kind == "user":
        reply = claims(user, ["chat/**"], ("chat/**",))
        reply.headers["Set-Cookie"] = f"session={value}; Path=/; HttpOnly"
        return reply
    if kind == "admin":
        return Reply(200, json={"sub": user, "tidings": {"admin": True}})
    if kind == "visitor":
        return claims(None, ["news/**"])
    if kind == "expiring":
        return claims(user, ["chat/**"], exp=int(time.time()) + 2)
    if kind == "expired":
        return claims(user, ["chat/**"], exp=int(time.time()) - 60)
    if kind == "deny":
        return Reply(401, json={"error": "not signed in"})
    if kind == "forbid":
        return Reply(403, json={"error": "banned"})
    if kind == "error":
        return Reply(500, body=b"Internal Server Error")
    if kind in GARBAGE:
        return GARBAGE[kind][0]
    raise AssertionError(f"unexpected session {value!r}")


def session(kind: str, user: str = "", uid: str = "") -> dict[str, str]:
    """The ``Cookie`` header of a session the endpoint answers as ``kind``."""
    return {"Cookie": f"session={kind}:{user}-{uid}" if uid else f"session={kind}:{user}"}


@pytest.fixture(scope="module")
def app() -> Iterator[LocalApp]:
    with LocalApp(answer) as app:
        yield app


@pytest.fixture(scope="module")
def hub(app: LocalApp) -> Iterator[ServerProcess]:
    """A hub whose streams, reads and writes the endpoint authenticates."""
    with running_server(
        "--auth-proxy", f"{app.url}/auth?app=tidings", "--auth-proxy-publish", *QUIET
    ) as server:
        yield server


@pytest.fixture
async def http(hub: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as client:
        yield client


# -- who is calling ----------------------------------------------------------------------


async def test_a_session_cookie_opens_a_stream_with_the_grants_the_app_answers(
    http: httpx.AsyncClient, uid: str
) -> None:
    alice = session("user", "alice", uid)
    async with open_stream(http, topics(f"chat/{uid}"), alice) as stream:
        sent = await http.post("/publish", json={"topic": f"chat/{uid}", "data": 1}, headers=alice)
        assert sent.status_code == 202, sent.text
        event = await stream.next()
    assert event.id == sent.json()["id"]
    # users/<sub>/** comes with the user id, as for a JWT; other topics are not granted.
    assert (await stream_status(http, topics("users/alice/x"), alice)).status_code == 200
    expect_error(await stream_status(http, topics("news/a"), alice), 403, "forbidden")
    expect_error(await stream_status(http, topics("users/bob/x"), alice), 403, "forbidden")


async def test_the_app_gets_the_cookies_and_authorization_and_nothing_else(
    http: httpx.AsyncClient, app: LocalApp, uid: str
) -> None:
    cookie = f"session=user:alice-{uid}; theme=dark; name=caf\xe9"  # any byte goes through
    headers = {
        "Cookie": cookie,
        "Authorization": f"Session user:alice-{uid}",
        "X-Secret": "not-for-the-app",
        "Last-Event-ID": "0-1",
        "User-Agent": "the-browser",
    }
    params = topics(f"chat/{uid}", token="query-token-not-for-the-app")
    raw = {name.encode(): value.encode("latin-1") for name, value in headers.items()}
    async with http.stream("GET", "/events", params=params, headers=raw) as response:
        assert response.status_code == 200
    [seen] = [r for r in app.requests if r.headers.get("cookie") == cookie]
    assert seen.method == "GET"
    assert seen.path == "/auth?app=tidings"  # the configured URL, not the client's query
    assert seen.headers["authorization"] == f"Session user:alice-{uid}"
    assert seen.headers["user-agent"].startswith("tidings/")
    assert seen.headers["accept"] == "application/json"
    passed = set(seen.headers) - {"host", "accept-encoding", "connection"}
    assert passed == {"cookie", "authorization", "user-agent", "accept"}
    assert "not-for-the-app" not in repr(seen)


async def test_the_authorization_header_alone_is_passed_on_too(
    http: httpx.AsyncClient, app: LocalApp, uid: str
) -> None:
    header = {"Authorization": f"Session user:alice-{uid}"}
    assert (await stream_status(http, topics(f"chat/{uid}"), header)).status_code == 200
    [seen] = [r for r in app.requests if r.headers.get("authorization") == header["Authorization"]]
    assert "cookie" not in seen.headers


async def test_refusals_of_the_app_are_401_and_403(http: httpx.AsyncClient, uid: str) -> None:
    expect_error(await stream_status(http, topics("chat/a")), 401, "unauthenticated")
    deny = session("deny", "x", uid)
    expect_error(await stream_status(http, topics("chat/a"), deny), 401, "unauthenticated")
    forbid = session("forbid", "x", uid)
    expect_error(await stream_status(http, topics("chat/a"), forbid), 403, "forbidden")
    expired = session("expired", "alice", uid)
    expect_error(await stream_status(http, topics("chat/a"), expired), 401, "token_expired")


async def test_a_visitor_with_a_null_sub_gets_the_grants_but_no_user(
    http: httpx.AsyncClient, uid: str
) -> None:
    visitor = session("visitor", "", uid)
    assert (await stream_status(http, topics(f"news/{uid}"), visitor)).status_code == 200
    expect_error(await stream_status(http, topics("chat/a"), visitor), 403, "forbidden")
    # No user id, so no private topics, not even one named like the cookie.
    expect_error(await stream_status(http, topics("users/-/x"), visitor), 403, "forbidden")


async def test_a_stream_ends_with_auth_expired_at_the_answers_exp(
    http: httpx.AsyncClient, uid: str
) -> None:
    async with open_stream(http, topics(f"chat/{uid}"), session("expiring", "a", uid)) as stream:
        event = await stream.next(timeout=15)
    assert event.event == "auth_expired"


# -- the cache ---------------------------------------------------------------------------


async def test_one_round_trip_per_credentials_per_ttl(
    http: httpx.AsyncClient, app: LocalApp, uid: str
) -> None:
    alice = session("user", "alice", uid)
    for _ in range(3):
        assert (await stream_status(http, topics(f"chat/{uid}"), alice)).status_code == 200
    assert (await stream_status(http, topics(f"chat/{uid}/other"), alice)).status_code == 200
    assert app.count(alice["Cookie"]) == 1
    # Other credentials are other answers: another user, or the same session with another
    # cookie beside it (the hub cannot know which cookie the endpoint reads).
    bob = session("user", "bob", uid)
    assert (await stream_status(http, topics(f"chat/{uid}"), bob)).status_code == 200
    more = {"Cookie": alice["Cookie"] + "; theme=dark"}
    assert (await stream_status(http, topics(f"chat/{uid}"), more)).status_code == 200
    assert (app.count(alice["Cookie"]), app.count(bob["Cookie"]), app.count(more["Cookie"])) == (
        1,
        1,
        1,
    )
    # Refusals are remembered as well.
    deny = session("deny", "x", uid)
    for _ in range(2):
        expect_error(await stream_status(http, topics("chat/a"), deny), 401, "unauthenticated")
    assert app.count(deny["Cookie"]) == 1


async def test_a_cookie_the_app_sets_never_goes_out_with_another_callers_request(
    http: httpx.AsyncClient, app: LocalApp, uid: str
) -> None:
    # The endpoint answers alice with Set-Cookie (a session refresh); the hub keeps none.
    alice = session("user", "alice", uid)
    assert (await stream_status(http, topics(f"chat/{uid}"), alice)).status_code == 200
    bob = {"Authorization": f"Session user:bob-{uid}"}
    assert (await stream_status(http, topics(f"chat/{uid}"), bob)).status_code == 200
    [seen] = [r for r in app.requests if r.headers.get("authorization") == bob["Authorization"]]
    assert "cookie" not in seen.headers


# -- failures never grant ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(GARBAGE))
async def test_an_answer_that_is_not_the_documented_json_is_502_and_logged(
    http: httpx.AsyncClient, hub: ServerProcess, app: LocalApp, uid: str, kind: str
) -> None:
    bad = session(kind, "alice", uid)
    for _ in range(2):  # never cached: the endpoint is asked again
        response = await stream_status(http, topics("chat/a"), bad)
        error = expect_error(response, 502, "auth_proxy_error")
        assert "log" in error["message"]
    assert app.count(bad["Cookie"]) == 2
    problem = GARBAGE[kind][1]

    async def logged() -> bool:
        return any(
            "auth proxy" in line and problem in line and "nothing was granted" in line
            for line in hub.log().splitlines()
        )

    await until(logged, 10, f"the log line saying {problem!r}")
    assert f"{kind}:alice-{uid}" not in hub.log()  # the credentials are never logged
    # Writes too.
    sent = await http.post("/publish", json={"topic": "chat/a", "data": 1}, headers=bad)
    expect_error(sent, 502, "auth_proxy_error")


async def test_a_server_error_of_the_app_is_503_and_not_cached(
    http: httpx.AsyncClient, app: LocalApp, uid: str
) -> None:
    broken = session("error", "x", uid)
    for _ in range(2):
        expect_error(await stream_status(http, topics("chat/a"), broken), 503, "auth_unavailable")
    assert app.count(broken["Cookie"]) == 2


async def test_an_app_that_is_down_gives_503_and_no_stream(server_factory: ServerFactory) -> None:
    app = LocalApp(answer)
    hub = await server_factory.start("--auth-proxy", f"{app.url}/auth", *QUIET)
    alice = session("user", "alice")
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        assert (await stream_status(http, topics("chat/a"), alice)).status_code == 200
        app.stop()
        # A cached answer still serves alice for its TTL; new credentials cannot be checked.
        bob = session("user", "bob")
        expect_error(await stream_status(http, topics("chat/a"), bob), 503, "auth_unavailable")
        sent = await http.post("/publish", json={"topic": "chat/a", "data": 1}, headers=bob)
        expect_error(sent, 401, "unauthenticated")  # writes need --auth-proxy-publish
    assert "cannot be reached" in hub.log()


async def test_a_slow_app_gives_503_after_the_timeout_and_no_answer_is_reused(
    server_factory: ServerFactory,
) -> None:
    with LocalApp(answer) as app:
        hub = await server_factory.start(
            "--auth-proxy",
            f"{app.url}/auth",
            "--auth-proxy-timeout",
            "0.5",
            "--auth-proxy-ttl",
            "0",
            *QUIET,
        )
        alice = session("user", "alice")
        async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
            app.hold.clear()
            response = await stream_status(http, topics("chat/a"), alice)
            expect_error(response, 503, "auth_unavailable")
            app.hold.set()
            # With --auth-proxy-ttl 0 every stream asks again.
            for _ in range(2):
                assert (await stream_status(http, topics("chat/a"), alice)).status_code == 200
            assert app.count(alice["Cookie"]) == 3
        assert "did not answer within 0.5 s" in hub.log()


# -- writes ------------------------------------------------------------------------------


async def test_a_write_the_app_authenticates_must_be_json(
    http: httpx.AsyncClient, app: LocalApp, uid: str
) -> None:
    alice = session("user", "alice", uid)
    body = orjson.dumps({"topic": f"chat/{uid}", "data": 1})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = dict(alice)
        if content_type is not None:
            headers["Content-Type"] = content_type
        sent = await http.post("/publish", content=body, headers=headers)
        expect_error(sent, 415, "unsupported_media_type")
    assert app.count(alice["Cookie"]) == 0  # refused before the endpoint is asked
    typed = {**alice, "Content-Type": "application/json; charset=utf-8"}
    assert (await http.post("/publish", content=body, headers=typed)).status_code == 202
    # Grants are checked as for a JWT.
    sent = await http.post("/publish", json={"topic": "news/a", "data": 1}, headers=alice)
    expect_error(sent, 403, "forbidden")


async def test_tasks_created_through_the_app_belong_to_its_user(
    http: httpx.AsyncClient, uid: str
) -> None:
    alice = session("user", "alice", uid)
    created = await http.post("/tasks", json={"task_id": f"t-{uid}", "total": 2}, headers=alice)
    assert created.status_code == 201, created.text
    assert created.json()["owner"] == "alice"
    async with open_sse(http, f"/tasks/t-{uid}/stream", headers=alice) as stream:
        assert stream.response.status_code == 200
        assert (await stream.next()).event == "task_progress"
    assert (await http.get(f"/tasks/t-{uid}", headers=alice)).status_code == 200
    bob = session("user", "bob", uid)
    expect_error(await http.get(f"/tasks/t-{uid}", headers=bob), 404, "task_not_found")


async def test_metrics_count_the_round_trips_and_answers_reused(
    http: httpx.AsyncClient, uid: str
) -> None:
    ops = session("admin", "ops", uid)
    first = await http.get("/metrics", headers=ops)
    assert first.status_code == 200, first.text
    alice = session("user", "alice", uid)
    for _ in range(2):
        assert (await stream_status(http, topics(f"chat/{uid}"), alice)).status_code == 200
    text = (await http.get("/metrics", headers=ops)).text
    assert 'tidings_auth_proxy_requests_total{outcome="granted"}' in text
    assert "tidings_auth_proxy_reused_total" in text
    assert "tidings_auth_proxy_cached" in text
    expect_error(await http.get("/metrics", headers=alice), 403, "forbidden")


# -- with JWTs ---------------------------------------------------------------------------


async def test_with_a_jwt_key_too_tokens_are_jwts_and_the_rest_asks_the_app(
    app: LocalApp, server_factory: ServerFactory, uid: str
) -> None:
    hub = await server_factory.start(
        "--auth-proxy", f"{app.url}/auth", "--jwt-secret", SECRET, *QUIET
    )
    publisher = bearer(token("worker", publish=["chat/**"]))
    alice = session("user", "alice", uid)
    before = len(app.requests)
    async with (
        httpx.AsyncClient(base_url=hub.url, timeout=10) as http,
        open_stream(http, topics(f"chat/{uid}"), alice) as stream,
    ):
        body = {"topic": f"chat/{uid}", "data": 2}
        sent = await http.post("/publish", json=body, headers=publisher)
        assert sent.status_code == 202
        assert (await stream.next()).id == sent.json()["id"]
        # Without --auth-proxy-publish, a write needs a JWT: the endpoint is not asked.
        refused = await http.post("/publish", json={"topic": f"chat/{uid}"}, headers=alice)
        expect_error(refused, 401, "unauthenticated")
        # A bad token is a 401, not a question to the endpoint.
        bad = {**alice, "Authorization": "Bearer not-a-jwt"}
        expect_error(await stream_status(http, topics(f"chat/{uid}"), bad), 401, "invalid_token")
    assert len(app.requests) - before == 1  # alice's stream only


# -- settings ----------------------------------------------------------------------------


def test_a_hub_with_an_auth_proxy_may_bind_beyond_loopback(app: LocalApp) -> None:
    with running_server("--host", "0.0.0.0", "--auth-proxy", f"{app.url}/auth") as server:
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
