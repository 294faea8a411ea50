"""Limits against real server processes (issue #4, points 6 and 9).

Two client IPs on one machine: Linux routes all of 127.0.0.0/8 to loopback, so a client
socket bound to 127.0.0.2 is another address to the server than one bound to 127.0.0.1.
Rates are set so low (one attempt per 100 s) that refills during a test cannot matter,
which keeps every assertion free of timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory, ServerProcess, until
from tests.web._security import (
    SECRET,
    admin_stats,
    bearer,
    client_at,
    expect_error,
    open_stream,
    raw_socket,
    read_all,
    running_server,
    stream_status,
    token,
    topics,
    wait_connections,
)

OTHER_IP = "127.0.0.2"


def retry_after(response: httpx.Response) -> int:
    value = int(response.headers["retry-after"])
    assert value >= 1
    return value


# -- streams per user and per IP ----------------------------------------------------------


async def test_streams_per_user_are_capped_and_a_closed_stream_frees_its_slot_at_once(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start("--jwt-secret", SECRET, "--max-connections-per-user", "2")
    alice = bearer(token("alice", subscribe=["chat/**"]))
    bob = bearer(token("bob", subscribe=["chat/**"]))
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_stream(http, topics("chat/a"), alice),
    ):
        async with open_stream(http, topics("chat/b"), alice):
            refused = await stream_status(http, topics("chat/c"), alice)
            error = expect_error(refused, 429, "too_many_streams")
            assert "2" in error["message"]
            retry_after(refused)
            # Another user is not affected.
            assert (await stream_status(http, topics("chat/c"), bob)).status_code == 200

        # One of alice's streams closed: as soon as the hub has seen it go, the slot
        # is free (no timeout, no sweep).
        async def one_left() -> bool:
            return bool((await admin_stats(server))["connections"]["by_user"].get("alice") == 1)

        await until(one_left, 10, "the hub to see the stream close")
        async with open_stream(http, topics("chat/d"), alice):
            third = await stream_status(http, topics("chat/e"), alice)
            expect_error(third, 429, "too_many_streams")


async def test_streams_per_ip_are_capped_and_other_addresses_are_served(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start("--max-connections-per-ip", "2")
    async with client_at(server, OTHER_IP) as crowded, client_at(server) as other:
        async with open_stream(crowded, topics("a")), open_stream(crowded, topics("b")):
            refused = await stream_status(crowded, topics("c"))
            expect_error(refused, 429, "too_many_streams")
            retry_after(refused)
            async with open_stream(other, topics("a")) as stream:
                published = await other.post("/publish", json={"topic": "a", "data": 1})
                assert (await stream.next()).id == published.json()["id"]
        await wait_connections(server, 0, auth=False)
        assert (await stream_status(crowded, topics("c"))).status_code == 200


async def test_streams_per_ip_count_the_address_a_trusted_proxy_forwards(
    server_factory: ServerFactory,
) -> None:
    # Loopback (127.0.0.1) is the trusted proxy by default: behind it, each forwarded
    # address has its own cap. An untrusted peer's X-Forwarded-For is ignored.
    server = await server_factory.start("--max-connections-per-ip", "1")
    alice = {"x-forwarded-for": "203.0.113.7"}
    bob = {"x-forwarded-for": "203.0.113.8"}
    async with (
        client_at(server) as proxy,
        client_at(server, OTHER_IP) as untrusted,
        open_stream(proxy, topics("a"), alice),
        open_stream(proxy, topics("a"), bob),
    ):
        refused = await stream_status(proxy, topics("b"), alice)
        expect_error(refused, 429, "too_many_streams")
        async with open_stream(untrusted, topics("a"), alice):
            refused = await stream_status(untrusted, topics("b"), bob)
            expect_error(refused, 429, "too_many_streams")


async def test_a_refused_subscription_takes_no_slot(server_factory: ServerFactory) -> None:
    server = await server_factory.start(
        "--jwt-secret", SECRET, "--max-connections-per-user", "1", "--max-connections-per-ip", "1"
    )
    alice = bearer(token("alice", subscribe=["chat/**"]))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for _ in range(3):
            expect_error(await stream_status(http, topics("news"), alice), 403, "forbidden")
            expect_error(
                await stream_status(http, topics("bad topic"), alice), 400, "invalid_topic"
            )
        assert (await stream_status(http, topics("chat/a"), alice)).status_code == 200


# -- rates -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def connect_limited() -> Iterator[ServerProcess]:
    """A hub that takes one stream attempt per address, then one per 100 s: each test
    comes from addresses of its own."""
    with running_server("--connect-rate-limit", "0.01") as server:
        yield server


async def test_connection_attempts_per_ip_are_rate_limited_with_retry_after(
    connect_limited: ServerProcess,
) -> None:
    server = connect_limited
    async with client_at(server, "127.0.1.1") as client, client_at(server, "127.0.1.2") as other:
        assert (await stream_status(client, topics("a"))).status_code == 200
        refused = await stream_status(client, topics("a"))
        expect_error(refused, 429, "rate_limited")
        assert 1 <= retry_after(refused) <= 100
        # Failed attempts count too: a flood of bad requests is cut the same way.
        expect_error(await stream_status(client, topics("bad topic")), 429, "rate_limited")
        assert (await stream_status(other, topics("a"))).status_code == 200
        # Other endpoints are not stream attempts.
        assert (await client.get("/healthz")).status_code == 200


async def test_a_flood_from_one_ip_is_cut_while_another_ip_is_served(
    connect_limited: ServerProcess,
) -> None:
    server = connect_limited
    async with client_at(server, "127.0.2.1") as flood, client_at(server, "127.0.2.2") as other:

        async def attempt() -> int:
            return (await stream_status(flood, topics("firehose"))).status_code

        attempts = [asyncio.ensure_future(attempt()) for _ in range(200)]
        # While the flood is on, the other address subscribes and receives an event.
        async with open_stream(other, topics("firehose")) as stream:
            published = await other.post("/publish", json={"topic": "firehose", "data": 1})
            assert (await stream.next()).id == published.json()["id"]
        statuses = await asyncio.gather(*attempts)
    assert statuses.count(200) == 1
    assert statuses.count(429) == 199


async def test_publishes_per_principal_are_rate_limited(server_factory: ServerFactory) -> None:
    server = await server_factory.start("--jwt-secret", SECRET, "--publish-rate-limit", "0.01")
    alice = bearer(token("alice", publish=["news"]))
    bob = bearer(token("bob", publish=["news"]))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        first = await http.post("/publish", json={"topic": "news", "data": 1}, headers=alice)
        assert first.status_code == 202
        refused = await http.post("/publish", json={"topic": "news", "data": 2}, headers=alice)
        expect_error(refused, 429, "rate_limited")
        assert 1 <= retry_after(refused) <= 100
        other = await http.post("/publish", json={"topic": "news", "data": 3}, headers=bob)
        assert other.status_code == 202
        # Nothing was published by the refused call.
        async with open_stream(
            http,
            topics("news"),
            {**bearer(token("reader", subscribe=["news"])), "Last-Event-ID": first.json()["id"]},
        ) as stream:
            assert (await stream.next()).id == other.json()["id"]


async def test_anonymous_publishes_are_limited_per_ip(server_factory: ServerFactory) -> None:
    server = await server_factory.start("--publish-rate-limit", "0.01")
    async with client_at(server, OTHER_IP) as client, client_at(server) as other:
        assert (await client.post("/publish", json={"topic": "t"})).status_code == 202
        expect_error(await client.post("/publish", json={"topic": "t"}), 429, "rate_limited")
        assert (await other.post("/publish", json={"topic": "t"})).status_code == 202


async def test_zero_means_no_limit(server_factory: ServerFactory) -> None:
    server = await server_factory.start(
        "--connect-rate-limit", "0", "--publish-rate-limit", "0", "--max-connections-per-ip", "0"
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for _ in range(60):
            assert (await http.post("/publish", json={"topic": "t"})).status_code == 202
        statuses = await asyncio.gather(*(stream_status(http, topics("t")) for _ in range(60)))
    assert {r.status_code for r in statuses} == {200}


# -- bodies, topics, heads ------------------------------------------------------------------


async def test_request_bodies_over_the_limit_get_413(server_factory: ServerFactory) -> None:
    server = await server_factory.start("--max-body-bytes", "2048")
    body = b'{"topic": "t", "data": "' + b"x" * 3000 + b'"}'

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        declared = await http.post("/publish", content=body)
        streamed = await http.post("/publish", content=chunked())  # no Content-Length
        lying = await http.post(
            "/publish", content=body, headers={"content-length": str(len(body))}
        )
        stats = (await http.get("/stats")).json()
    for response in (declared, streamed, lying):
        expect_error(response, 413, "body_too_large")
    assert stats["events"]["published"] == 0


async def test_at_most_32_topics_per_subscription(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        ok = await stream_status(http, topics(*(f"t/{i}" for i in range(32))))
        too_many = await stream_status(http, topics(*(f"t/{i}" for i in range(33))))
    assert ok.status_code == 200
    expect_error(too_many, 400, "too_many_topics")


def _status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("request_head", "status", "code"),
    [
        (
            b"GET /events?topic=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            b"uri_too_long",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n",
            431,
            b"headers_too_large",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
            + b"\r\n",
            431,
            b"headers_too_large",
        ),
        # Never finished, and bigger than the budget: refused before it is complete.
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 1_000_000,
            431,
            b"headers_too_large",
        ),
    ],
    ids=["long-url", "long-header", "many-headers", "endless-header"],
)
def test_oversized_request_heads_are_refused(
    server: ServerProcess, request_head: bytes, status: int, code: bytes
) -> None:
    with raw_socket(server) as sock:
        sock.sendall(request_head)
        raw = read_all(sock)
    assert _status_of(raw) == status
    assert code in raw
    assert raw.endswith(b"}")
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
    assert "Traceback" not in server.log()


def test_unparsable_requests_get_a_json_400(server: ServerProcess) -> None:
    """Audit item 5: requests the HTTP parser refuses got uvicorn's ``400 text/plain
    "Invalid HTTP request received."``; every error is JSON in the SPEC's shape."""
    published = httpx.get(server.url + "/stats", timeout=10).json()["events"]["published"]
    publish = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    chunked = publish + b"Transfer-Encoding: chunked\r\n\r\n"
    requests = {
        "garbage": [b"GARBAGE\r\n\r\n"],
        "bad content-length": [publish + b"Content-Length: abc\r\n\r\n{}"],
        "bad chunk size": [chunked + b"ZZ\r\n{}\r\n0\r\n\r\n"],
        # The application already waits for the body when the bad chunk comes.
        "bad second chunk": [chunked + b'e\r\n{"topic": "t",\r\n', b"ZZ\r\n"],
    }
    for case, parts in requests.items():
        with raw_socket(server) as sock:
            for part in parts:
                sock.sendall(part)
            raw = read_all(sock)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert _status_of(raw) == 400, (case, raw)
        assert b"content-type: application/json" in head.lower(), case
        assert orjson.loads(body) == {
            "error": {"code": "bad_request", "message": "the request is not valid HTTP/1.1"}
        }, case
    stats = httpx.get(server.url + "/stats", timeout=10).json()
    assert stats["events"]["published"] == published
    assert "Traceback" not in server.log()


async def test_large_but_allowed_heads_are_served(server_factory: ServerFactory) -> None:
    server = await server_factory.start("--max-header-bytes", "65536")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        cookie = {"Cookie": "session=" + "c" * 40_000}
        assert (await http.get("/healthz", headers=cookie)).status_code == 200
        long_topics = topics(*(f"{'x' * 250}/{i}" for i in range(32)))
        assert (await stream_status(http, long_topics)).status_code == 200


# -- slow clients ---------------------------------------------------------------------------


def test_slowloris_client_is_cut_and_holds_neither_server_nor_slot(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--request-timeout", "1", "--max-connections-per-ip", "1")
    # Many clients that never finish their request line, plus one that sends nothing.
    slow = [raw_socket(server, OTHER_IP) for _ in range(20)]
    for sock in slow:
        sock.sendall(b"GET /events?topic=a HT")
    silent = raw_socket(server, OTHER_IP)
    try:
        # The server still serves, and the one stream slot of that address is free.
        with raw_socket(server, OTHER_IP) as real:
            real.sendall(b"GET /events?topic=a HTTP/1.1\r\nHost: x\r\n\r\n")
            opening = real.recv(4096)
            assert opening.startswith(b"HTTP/1.1 200")
            # Each slow client is answered 408 and closed once its deadline passes; one
            # that sent nothing at all is closed without an answer.
            for sock in slow:
                raw = read_all(sock)
                assert _status_of(raw) == 408
                assert b"request_timeout" in raw
            assert read_all(silent) == b""
            # The stream's request was complete: no deadline applies to it any more.
            published = httpx.post(server.url + "/publish", json={"topic": "a"}, timeout=10)
            event_id = published.json()["id"].encode()
            received = opening
            while b"id: " + event_id not in received:
                chunk = real.recv(4096)
                assert chunk, "the stream was cut"
                received += chunk
    finally:
        for sock in [*slow, silent]:
            sock.close()
    assert "Traceback" not in server.log()


def test_a_body_that_stops_arriving_is_cut_without_a_server_error(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("--request-timeout", "1")
    with raw_socket(server) as sock:
        sock.sendall(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"topic": "t",'
        )
        assert read_all(sock) == b""
    stats = httpx.get(server.url + "/stats", timeout=10).json()
    assert stats["events"]["published"] == 0
    assert "Traceback" not in server.log()
    assert "unhandled" not in server.log()
