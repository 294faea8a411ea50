"""Shared fixtures: real server processes, a real redis-server, SSE helpers.

Streams are tested over real sockets against a real ``tidings serve`` process: in-process
ASGI clients buffer whole bodies and cannot see a live stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import httpx
import pytest
import pytest_asyncio
from scripts.chromium import CHROMIUM, CHROMIUM_ARGS

from tidings.wire import EventParser, ServerSentEvent

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def run_tidings(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m tidings ARGS`` to its end, with no ``TIDINGS_*`` setting but ``env``'s."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, **(env or {})},
        check=False,
    )


async def until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """:func:`wait_for` for async tests: await ``predicate()`` every 20 ms until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def get_stats(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``GET <url>/stats`` (async); the JSON body."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url + "/stats", headers=headers)
    assert response.status_code == 200, response.text
    stats: dict[str, Any] = response.json()
    return stats


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tidings ARGS`` through :func:`tidings.cli.main` in this process: the exit code and
    output the command gives, without a new interpreter. Only for what the command refuses
    before it connects, listens or loops (bad flags, values, URLs); anything that runs is
    tested as a process (:func:`run_tidings`)."""
    from tidings.cli import main

    clean = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    out, err = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, {**clean, **(env or {})}, clear=True),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's refusals
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["tidings", *args], code, out.getvalue(), err.getvalue())


#: Seconds a ``tidings serve`` process has to answer ``/healthz``. It starts in about a
#: second; the margin is for a machine whose cores are all busy (parallel test workers).
START_TIMEOUT = 60.0


class PortTaken(Exception):
    """The server could not bind its port: another process took it first."""


class ServerProcess:
    """A ``tidings serve`` process on a free port."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tidings-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Start the process and wait until it answers ``/healthz``.

        A port found free can be taken by another process before the server binds it;
        then the server is started again on another port.
        """
        for _ in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                self._new_port()
        return self._start(timeout)

    async def astart(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """:meth:`start` for async tests: the wait does not block the event loop."""
        for _ in range(3):
            try:
                return await self._astart(timeout)
            except PortTaken:
                self._new_port()
        return await self._astart(timeout)

    def _new_port(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> None:
        env = {**os.environ, **self.extra_env}
        env.pop("TIDINGS_URL", None)
        argv = [sys.executable, "-m", "tidings", "serve", "--port", str(self.port), *self.args]
        if "--store" not in self.args:
            argv += ["--store", "memory"]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log()
            if "address already in use" in log:
                raise PortTaken(log)
            raise AssertionError(f"server exited early:\n{log}")

    def _start(self, timeout: float) -> ServerProcess:
        self._spawn()

        def up() -> bool:
            self._check_alive()
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, "the server to start")
        return self

    async def _astart(self, timeout: float) -> ServerProcess:
        self._spawn()
        async with httpx.AsyncClient(timeout=1) as client:

            async def up() -> bool:
                self._check_alive()
                try:
                    return (await client.get(self.url + "/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await until(up, timeout, "the server to start")
        return self

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """Stop and start again on the same port (clients come back to it).

        Another test's server may have probed the port while it was free: the start is
        tried again until ``timeout``, never moved to another port.
        """
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._start(max(1.0, deadline - time.monotonic()))
            except PortTaken:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # the port is someone else's for now: try again

    async def arestart(self) -> ServerProcess:
        """:meth:`restart` for async tests."""
        return await asyncio.to_thread(self.restart)

    async def await_exit(self, timeout: float = 20.0) -> int:
        """:meth:`wait` for async tests."""
        return await asyncio.to_thread(self.wait, timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


class ServerFactory:
    """Starts ``tidings serve`` processes with extra flags; all are stopped afterwards.

    ``server_factory(*flags)`` in sync code, ``await server_factory.start(*flags)`` in
    async tests (its wait does not block the event loop).
    """

    def __init__(self) -> None:
        self.started: list[ServerProcess] = []

    def _new(self, args: tuple[str, ...], env: dict[str, str] | None) -> ServerProcess:
        proc = ServerProcess(args, env)
        self.started.append(proc)  # closed at teardown even if it fails to start
        return proc

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        return self._new(args, env).start()

    async def start(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        return await self._new(args, env).astart()

    def close(self) -> None:
        for proc in self.started:
            proc.close()


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """A :class:`ServerFactory` for this test."""
    factory = ServerFactory()
    yield factory
    factory.close()


#: The flags of the shared hub (:func:`server`): the embedded defaults, keep-alive 1 s,
#: and no limit on stream attempts per second, which many tests in a row would reach.
SHARED_FLAGS = ("--keepalive", "1", "--connect-rate-limit", "0")


@pytest.fixture(scope="session")
def shared_server() -> Iterator[ServerProcess]:
    """One hub for the run (memory backend, memory store), shared by every test that needs
    no flags of its own: such a test uses topics and tasks of its own (:func:`uid`) and
    reads counters as differences. A test that stops, restarts or signals a hub, or needs
    its counters from zero, starts its own with ``server_factory``."""
    proc = ServerProcess(SHARED_FLAGS)
    try:
        yield proc.start()
    finally:
        proc.close()


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    """The shared hub (:func:`shared_server`); a module may give ``server`` its own."""
    return shared_server


@pytest.fixture
def uid() -> str:
    """A short id of this test's own, for topics, tasks and users on a shared hub."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An async HTTP client for ``server``."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


class SSEReader:
    """Reads a live event stream over a real socket, event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.comments: list[str] = []
        self.parser = EventParser(on_comment=self.comments.append)
        self.pending: list[ServerSentEvent] = []
        self._chunks = response.aiter_raw()

    async def next(self, timeout: float = 10.0) -> ServerSentEvent:
        """The next event (comments are collected in :attr:`comments`)."""

        async def read() -> ServerSentEvent:
            while not self.pending:
                chunk = await self._chunks.__anext__()
                self.pending.extend(self.parser.feed(chunk))
            return self.pending.pop(0)

        return await asyncio.wait_for(read(), timeout)

    async def take(self, count: int, timeout: float = 10.0) -> list[ServerSentEvent]:
        """The next ``count`` events."""
        return [await self.next(timeout) for _ in range(count)]

    async def until_end(self, timeout: float = 10.0) -> list[ServerSentEvent]:
        """Every event until the server ends the response."""

        async def read() -> list[ServerSentEvent]:
            events = list(self.pending)
            self.pending.clear()
            async for chunk in self._chunks:
                events.extend(self.parser.feed(chunk))
            return events

        return await asyncio.wait_for(read(), timeout)


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    path: str = "/events",
    *,
    params: httpx.QueryParams | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SSEReader]:
    """Open a stream and yield a reader once the response headers arrived."""
    async with client.stream("GET", path, params=params, headers=headers) as response:
        yield SSEReader(response)


# -- redis ----------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of the tests' own, on a random port, that tests may stop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            with socket.socket() as sock:
                sock.settimeout(0.2)
                try:
                    sock.connect(("127.0.0.1", self.port))
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
                except OSError:
                    return False

        wait_for(up, 10, "redis-server to start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the run (tests restart it when they need to)."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (make test installs it)")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the tests' redis-server, flushed for this test (restarted if stopped)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


# -- network faults -----------------------------------------------------------------------


class TcpProxy:
    """A TCP proxy on a fixed local port that a test can cut, restore and point elsewhere.

    It stands for the network between two parts (a node and Redis, a client and a node):
    :meth:`cut` closes the listener and resets every open connection, :meth:`restore`
    listens again on the same port, :meth:`retarget` sends new connections elsewhere.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    def url(self, scheme: str = "http", path: str = "") -> str:
        """``<scheme>://127.0.0.1:<port><path>``."""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        """Stop listening and reset every connection through the proxy."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def restore(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            await self.start()

    def retarget(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        """Send connections made from now on to another address."""
        self.target = (target_host, target_port)

    async def aclose(self) -> None:
        await self.cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()


@pytest.fixture
async def tcp_proxy() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    """``await tcp_proxy(port)``: a started :class:`TcpProxy` to ``127.0.0.1:port``."""
    proxies: list[TcpProxy] = []

    async def make(port: int) -> TcpProxy:
        proxy = await TcpProxy(port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.aclose()


# -- a real browser -------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the run; each test opens its own context in it.

    Playwright's async API, on the session's event loop: its sync API leaves its own loop
    marked as running in the main thread, which would break every async test after it.
    Browser tests therefore run with ``pytest.mark.asyncio(loop_scope="session")``.
    """
    if shutil.which(CHROMIUM) is None:
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is not installed (make test installs it)")
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS)
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (its own storage, cookies and tabs), closed afterwards."""
    context = await browser.new_context()
    context.set_default_timeout(15_000)
    yield context
    await context.close()
