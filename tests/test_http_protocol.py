"""The server protocol's set-up of a connection: the same state as uvicorn's protocol.

``GuardedHttpToolsProtocol`` sets up a connection itself instead of calling uvicorn's
``__init__`` and ``connection_made`` (a protocol is made for every connection, and
uvicorn's look up loggers and the server's address each time). These tests fail when an
upgrade of uvicorn gives its protocol state that ours would not have.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tidings._http import GuardedHttpToolsProtocol, current_loop


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never run
    raise AssertionError("not called")


def _config(host: str = "127.0.0.1", port: int = 8000) -> Config:
    config = Config(_app, host=host, port=port, log_level="warning")
    config.load()
    return config


async def test_init_sets_what_uvicorns_init_sets() -> None:
    config, state = _config(), ServerState()
    ours = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={})
    theirs = HttpToolsProtocol(config=config, server_state=state, app_state={})
    assert set(vars(theirs)) <= set(vars(ours))
    for name, value in vars(theirs).items():
        if name in ("parser", "pipeline"):  # one of their own per connection
            assert type(getattr(ours, name)) is type(value)
            assert getattr(ours, name) is not value
        else:
            assert getattr(ours, name) == value, name
    assert ours.loop is asyncio.get_running_loop()


async def _made(host: str, port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state of both protocols after ``connection_made`` on a real TCP connection."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_sock = socket.create_server((host, 0), family=family)
    port = port or server_sock.getsockname()[1]
    config, state = _config(host, port), ServerState()
    results: list[dict[str, Any]] = []
    for cls in (GuardedHttpToolsProtocol, HttpToolsProtocol):
        made: asyncio.Future[HttpToolsProtocol] = loop.create_future()

        class Recording(cls):  # type: ignore[valid-type,misc]
            def connection_made(self, transport: Any, made: Any = made) -> None:
                super().connection_made(transport)
                made.set_result(self)

        def make(recording: type[HttpToolsProtocol] = Recording) -> HttpToolsProtocol:
            return recording(config=config, server_state=state, app_state={})

        server = await loop.create_server(make, sock=server_sock.dup())
        _, writer = await asyncio.open_connection(*server_sock.getsockname()[:2])
        protocol = await made
        results.append({k: v for k, v in vars(protocol).items() if k not in ("parser", "flow")})
        protocol.transport.close()
        if isinstance(protocol, GuardedHttpToolsProtocol):
            protocol._disarm()
        writer.close()
        server.close()
        await server.wait_closed()
    server_sock.close()
    return results[0], results[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_connection_made_matches_uvicorn_for_an_address(host: str) -> None:
    ours, theirs = await _made(host, 0)
    assert set(ours) >= set(theirs)
    assert ours["server"] == theirs["server"]
    assert ours["server"][0] == host
    assert ours["client"][0] == theirs["client"][0] == host  # each has its own source port
    assert ours["scheme"] == theirs["scheme"] == "http"


async def test_connection_made_asks_the_kernel_for_a_wildcard_listener() -> None:
    # Listening on every address: the address a client reached is the socket's own.
    config = _config("0.0.0.0", 8000)
    protocol = GuardedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    assert protocol._shared.address is None
    named = GuardedHttpToolsProtocol(
        config=_config("localhost", 8000), server_state=ServerState(), app_state={}
    )
    assert named._shared.address is None  # a host name may stand for several addresses


def test_current_loop_is_the_running_loop_of_each_loop_in_turn() -> None:
    seen = []
    for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
        loop = new_loop()
        try:

            async def look() -> None:
                seen.append((current_loop(), asyncio.get_running_loop()))

            loop.run_until_complete(look())
        finally:
            loop.close()
    assert [a is b for a, b in seen] == [True, True]
    assert seen[0][0] is not seen[1][0]
