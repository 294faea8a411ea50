"""CORS against a real server process (issue #4, point 7; SPEC §5).

Browsers enforce CORS, so these tests play the browser's part: they send ``Origin`` (and
preflights) and check exactly the headers a browser decides on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess
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

APP = "https://app.example"
DEV = "http://localhost:5173"
EVIL = "https://evil.example"

#: Every kind of endpoint: streams, JSON, operations, tasks.
PATHS = [
    ("GET", "/events"),
    ("POST", "/publish"),
    ("GET", "/stats"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/tasks"),
    ("POST", "/tasks"),
    ("GET", "/tasks/t1/stream"),
    ("POST", "/tasks/t1/progress"),
    ("PUT", "/tasks/t1/files/f1"),
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """A hub with JWT auth and two allowed origins."""
    with running_server(
        "--jwt-secret",
        SECRET,
        "--cors-origin",
        APP,
        "--cors-origin",
        DEV,
        "--connect-rate-limit",
        "0",
    ) as proc:
        yield proc


def preflight(
    server: ServerProcess, method: str, path: str, origin: str, headers: str
) -> httpx.Response:
    return httpx.options(
        server.url + path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
        timeout=10,
    )


def header_set(response: httpx.Response, name: str) -> set[str]:
    return {
        part.strip().lower() for part in response.headers.get(name, "").split(",") if part.strip()
    }


@pytest.mark.parametrize(("method", "path"), PATHS)
@pytest.mark.parametrize("origin", [APP, DEV])
def test_preflight_allows_listed_origins_with_credentials_and_the_sse_headers(
    server: ServerProcess, method: str, path: str, origin: str
) -> None:
    response = preflight(server, method, path, origin, "authorization, content-type, last-event-id")
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert method.lower() in header_set(response, "access-control-allow-methods")
    assert {"authorization", "content-type", "last-event-id"} <= header_set(
        response, "access-control-allow-headers"
    )
    assert "origin" in header_set(response, "vary")
    assert int(response.headers["access-control-max-age"]) > 0


@pytest.mark.parametrize(("method", "path"), PATHS)
def test_preflight_from_an_unlisted_origin_is_not_allowed(
    server: ServerProcess, method: str, path: str
) -> None:
    response = preflight(server, method, path, EVIL, "authorization")
    # The SPEC's error shape, as for every other refusal.
    error = expect_error(response, 400, "cors_refused")
    assert "origin is not allowed" in error["message"]
    # Without Access-Control-Allow-Origin the browser grants nothing, whatever else is
    # there (Starlette adds its fixed Allow-Credentials/Expose-Headers to every answer).
    assert "access-control-allow-origin" not in response.headers


def test_preflight_for_a_header_not_on_the_list_is_refused(server: ServerProcess) -> None:
    response = preflight(server, "GET", "/events", APP, "last-event-id, x-forwarded-for")
    error = expect_error(response, 400, "cors_refused")
    assert "'x-forwarded-for' is not allowed" in error["message"]
    assert "origin" not in error["message"]


def test_preflight_for_a_method_not_on_the_list_is_refused(server: ServerProcess) -> None:
    response = preflight(server, "DELETE", "/tasks/t1", APP, "authorization")
    error = expect_error(response, 400, "cors_refused")
    assert "method 'DELETE' is not allowed" in error["message"]


def test_an_origin_given_with_its_default_port_matches_what_browsers_send() -> None:
    """Browsers never write :443 in ``Origin``: the listed origin is written as they do."""
    with running_server("--cors-origin", "https://App.Example:443") as proc:
        pre = preflight(proc, "GET", "/events", APP, "last-event-id")
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == APP


async def test_a_stream_answers_the_allowed_origin_with_credentials(
    server: ServerProcess,
) -> None:
    alice = token("alice", subscribe=["chat/**"], publish=["chat/**"])
    cookie = {"Cookie": f"tidings_token={alice}", "Origin": APP}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_stream(http, topics("chat/a"), cookie) as stream,
    ):
        headers = stream.response.headers
        assert headers["access-control-allow-origin"] == APP
        assert headers["access-control-allow-credentials"] == "true"
        assert "origin" in header_set(stream.response, "vary")
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        sent = await http.post(
            "/publish",
            json={"topic": "chat/a", "data": 1},
            headers={**bearer(alice), "Origin": APP},
        )
        assert sent.headers["access-control-allow-origin"] == APP
        assert (await stream.next()).id == sent.json()["id"]


async def test_errors_carry_cors_headers_so_the_page_can_read_them(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        unauthenticated = await stream_status(http, topics("chat/a"), {"Origin": APP})
        forbidden = await http.get("/stats", headers={**bearer(token("alice")), "Origin": DEV})
    expect_error(unauthenticated, 401, "unauthenticated")
    expect_error(forbidden, 403, "forbidden")
    assert unauthenticated.headers["access-control-allow-origin"] == APP
    assert forbidden.headers["access-control-allow-origin"] == DEV
    assert "retry-after" in header_set(unauthenticated, "access-control-expose-headers")


def test_requests_refused_before_the_app_answer_allowed_origins(server: ServerProcess) -> None:
    """Headers too large, or a request that is not HTTP: refused by the server protocol
    itself, in JSON and with the CORS headers, so the page can read why."""
    refused = {
        431: b"GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\nX-Big: %s\r\n\r\n"
        % (APP.encode(), b"a" * 40_000),
        400: b"POST /publish HTTP/1.1\r\nHost: x\r\nOrigin: %s\r\nContent-Length: abc\r\n\r\n"
        % APP.encode(),
    }
    for status, request in refused.items():
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert lines[0].startswith(f"HTTP/1.1 {status} ")
        assert headers["access-control-allow-origin"] == APP
        assert headers["content-type"] == "application/json"
        assert "code" in orjson.loads(body)["error"]


async def test_an_unlisted_origin_gets_no_cors_headers(server: ServerProcess) -> None:
    alice = token("alice", subscribe=["chat/**"])
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await stream_status(http, topics("chat/a"), {**bearer(alice), "Origin": EVIL})
        health = await http.get("/healthz", headers={"Origin": "null"})
    assert response.status_code == 200
    for answer in (response, health):
        assert "access-control-allow-origin" not in answer.headers


def test_wildcard_origin_is_never_combined_with_credentials() -> None:
    with running_server("--cors-origin", "*") as proc:
        simple = httpx.get(
            proc.url + "/healthz",
            headers={"Origin": EVIL, "Cookie": "tidings_token=x"},
            timeout=10,
        )
        pre = preflight(proc, "GET", "/events", EVIL, "last-event-id")
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in simple.headers
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] in ("*", EVIL)
    assert "access-control-allow-credentials" not in pre.headers
    assert "last-event-id" in header_set(pre, "access-control-allow-headers")


def test_without_an_allow_list_no_origin_is_allowed(shared_server: ServerProcess) -> None:
    proc = shared_server  # no allow list: the defaults
    simple = httpx.get(proc.url + "/healthz", headers={"Origin": APP}, timeout=10)
    pre = preflight(proc, "POST", "/publish", APP, "content-type")
    assert "access-control-allow-origin" not in simple.headers
    assert "access-control-allow-origin" not in pre.headers
