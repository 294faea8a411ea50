"""Helpers shared by the security tests: tokens, clients bound to a source IP, error checks."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from tests.conftest import ServerProcess, get_stats, open_sse, until
from tests.conftest import SSEReader as SSEReader
from tidings.auth.jwt import mint_token

#: The HS256 secret of the test servers (32 bytes or more, as the hub requires).
SECRET = "tidings-test-secret-0123456789abcdef"


@contextlib.contextmanager
def running_server(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A ``tidings serve`` process, stopped (and its log file closed) however the block ends."""
    server = ServerProcess(args, env)
    try:
        yield server.start()
    finally:
        server.close()


def token(
    sub: str = "alice",
    *,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    admin: bool = False,
    ttl: float = 3600.0,
    secret: str = SECRET,
) -> str:
    """A token of the test secret."""
    return mint_token(secret, sub=sub, subscribe=subscribe, publish=publish, admin=admin, ttl=ttl)


def bearer(tok: str) -> dict[str, str]:
    """The Authorization header of ``tok``."""
    return {"Authorization": f"Bearer {tok}"}


def topics(*names: str, **extra: str) -> httpx.QueryParams:
    """``?topic=a&topic=b&...`` plus ``extra`` parameters."""
    pairs: list[tuple[str, str | int | float | bool | None]] = [("topic", n) for n in names]
    pairs += extra.items()
    return httpx.QueryParams(pairs)


def client_at(server: ServerProcess, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client of ``server`` whose connections come from ``ip`` (any 127.x.y.z on Linux)."""
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=10,
        transport=httpx.AsyncHTTPTransport(local_address=ip),
    )


def expect_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the SPEC's error shape with ``status`` and ``code``; the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == code, error
    assert error["message"]
    assert "Traceback" not in response.text
    return error


async def stream_status(
    client: httpx.AsyncClient,
    params: httpx.QueryParams,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Open ``/events`` and close it at once; the response (its body read if not a stream)."""
    async with client.stream("GET", "/events", params=params, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
        return response


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient,
    params: httpx.QueryParams,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SSEReader]:
    """A live stream that is known to be registered (its opening bytes arrived)."""
    async with open_sse(client, params=params, headers=headers) as stream:
        assert stream.response.status_code == 200
        # The opening bytes arrive once the hub has registered the stream.
        chunk = await asyncio.wait_for(anext(stream._chunks), 10)
        stream.pending.extend(stream.parser.feed(chunk))
        yield stream


async def admin_stats(server: ServerProcess) -> dict[str, Any]:
    """``/stats`` as an admin of the test secret."""
    return await get_stats(server.url, bearer(token("ops", admin=True)))


async def wait_connections(server: ServerProcess, total: int, *, auth: bool = True) -> None:
    """Wait until the hub counts ``total`` open streams."""

    async def counted() -> bool:
        stats = await (admin_stats(server) if auth else get_stats(server.url))
        return bool(stats["connections"]["total"] == total)

    await until(counted, 10, f"{total} open streams")


def raw_socket(server: ServerProcess, ip: str = "127.0.0.1") -> socket.socket:
    """A plain TCP connection to ``server`` from ``ip``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15, source_address=(ip, 0))
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the server closes it (the socket's timeout holds)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
