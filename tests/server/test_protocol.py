"""tidings' own HTTP/1.1 server, as any client sees it: keep-alive, pipelining, framing.

A small ASGI app (not the hub) runs on a real :class:`tidings.server.Server` in a thread,
and the tests talk to it over raw sockets, byte for byte. The hub's own behaviour over this
server (streams, limits, refusals) is tested with the hub elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tidings.config import load_settings
from tidings.server import Server

Scope = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    """Echoes bodies, streams parts, fails on purpose: what the tests below ask of it."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/parts":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/early":  # refuses a body without reading it all, as a 413 does
        await receive()
        headers = [(b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": b"too large"})
    elif path == "/fail":
        raise RuntimeError("a bug in the application")
    elif path == "/nothing":
        return
    else:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    settings = load_settings(host="127.0.0.1", port=0, shutdown_grace=1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(app, settings, sockets=[sock])
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    assert server.started.wait(10)
    yield sock.getsockname()[1]
    server.stop()
    thread.join(10)
    sock.close()


def exchange(port: int, data: bytes, *, until_closed: bool = True) -> bytes:
    """Send ``data`` and read until the server closes (or a response seems complete)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
            if not until_closed and received.endswith(b"\r\n\r\n"):
                return received


def test_a_kept_alive_connection_answers_requests_in_turn(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for word in (b"first", b"second"):
            sock.sendall(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
                len(word), word))  # fmt: skip
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"content-length: %d\r\n" % len(word) in answer
            assert b"connection: close" not in answer
            assert answer.endswith(b"\r\n\r\n" + word)


def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    requests = b"".join(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\n%d" % n for n in range(3)
    )
    answer = exchange(port, requests + b"GET /close HTTP/1.1\r\nconnection: close\r\n\r\n")
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"0", b"1", b"2", b""]


def test_an_answer_of_unknown_length_is_chunked_and_ends_cleanly(port: int) -> None:
    answer = exchange(port, b"GET /parts HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n"


def test_an_http_1_0_client_gets_a_body_that_ends_with_the_connection(port: int) -> None:
    answer = exchange(port, b"GET /parts HTTP/1.0\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert body == b"one two three"


def test_a_head_request_gets_the_head_without_the_body(port: int) -> None:
    answer = exchange(port, b"HEAD /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n")


def test_expect_100_continue_is_answered_before_the_body_is_read(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        assert sock.recv(65536).endswith(b"\r\n\r\nhello")


def test_a_chunked_request_body_reaches_the_application_whole(port: int) -> None:
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    request = (
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert exchange(port, request + body).endswith(b"\r\n\r\nhello world")


def test_an_application_error_is_a_json_500_and_a_log_line_not_a_traceback_to_the_client(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="tidings.server"):
        answer = exchange(port, b"GET /fail HTTP/1.1\r\nhost: x\r\n\r\n")
        nothing = exchange(port, b"GET /nothing HTTP/1.1\r\nhost: x\r\n\r\n")
    for response in (answer, nothing):
        assert response.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert response.endswith(
            b'{"error":{"code":"internal_error","message":"internal server error"}}'
        )
        assert b"Traceback" not in response
    assert b"RuntimeError" not in answer
    logged = [record.getMessage() for record in caplog.records]
    assert "the application failed on a request" in logged
    assert "the application returned without answering a request" in logged


def test_an_upgrade_request_is_answered_as_plain_http(port: int) -> None:
    request = b"GET /other HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    answer = exchange(port, request)
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"connection: close" in answer


def test_every_answer_has_a_date_and_no_server_header(port: int) -> None:
    answer = exchange(port, b"GET /other HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert b"\r\ndate: " in head
    assert b"\r\nserver:" not in head


def test_an_answer_given_before_the_whole_body_arrived_ends_the_connection(port: int) -> None:
    """The application answered (a 413) before the request body was all in. The connection
    was kept alive without ``connection: close`` while the rest of the body sat unread
    (reading paused), so a client's next request on it got no answer but a reset. The
    answer now says ``connection: close``, and the server ends the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n")
        sock.sendall(b"x" * 300_000)  # more than the server buffers before it pauses reading
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head
    assert body == b"too large"
