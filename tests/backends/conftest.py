"""Fixtures of the backend tests: nodes on the tests' Redis, a client for their absolute
URLs, and nginx with the documented recipe in front of nodes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, ServerFactory, ServerProcess, free_port, wait_for

StartNodes = Callable[..., Awaitable[list[ServerProcess]]]


@pytest.fixture
def start_nodes(server_factory: ServerFactory, redis_url: str) -> StartNodes:
    """``await start_nodes(n, *flags)``: ``n`` servers sharing the tests' Redis, started
    side by side."""

    async def start(count: int, *flags: str) -> list[ServerProcess]:
        args = ("--backend", redis_url, "--keepalive", "1", *flags)
        return list(await asyncio.gather(*(server_factory.start(*args) for _ in range(count))))

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client for absolute URLs (each node has its own)."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


DEPLOYMENT_DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def nginx_snippet() -> str:
    """The proxy settings of docs/deployment.md (the ``tidings-proxy.conf`` block)."""
    text = DEPLOYMENT_DOC.read_text()
    after = text.split("tidings-proxy.conf", 1)[1]
    return after.split("```nginx\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[list[ServerProcess]], str]]:
    """``nginx(nodes)``: nginx with the documented snippet in front of ``nodes``; its URL."""
    binary = shutil.which("nginx")
    if binary is None:
        if IN_CI:
            pytest.fail("nginx is not installed")
        pytest.skip("nginx is not installed: the documented nginx recipe is not tested")
    procs: list[subprocess.Popen[bytes]] = []

    def start(nodes: list[ServerProcess]) -> str:
        port = free_port()
        servers = "".join(f"server 127.0.0.1:{node.port};" for node in nodes)
        user = "user root;" if os.geteuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {tmp_path}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"""{user} daemon off; worker_processes 1; pid {tmp_path}/nginx.pid;
            error_log {tmp_path}/error.log info;
            events {{ worker_connections 512; }}
            http {{
                access_log off; {temp}
                upstream tidings {{ least_conn; {servers} keepalive 8; }}
                server {{
                    listen 127.0.0.1:{port};
                    location / {{
                        {nginx_snippet()}
                    }}
                }}
            }}
            """
        )
        procs.append(
            subprocess.Popen(
                [binary, "-p", str(tmp_path), "-e", f"{tmp_path}/error.log", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )

        def up() -> bool:
            if procs[-1].poll() is not None:
                raise AssertionError((tmp_path / "error.log").read_text())
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, 10, "nginx to start")
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
