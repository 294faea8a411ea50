"""The embedded example under the ASGI servers users run it with: plain ASGI everywhere.

Each server runs ``examples/01_fastapi_embedded.py`` behind a pure ASGI middleware that
counts response-body bytes (:mod:`tests.web.embedded_app`). A stream must pass every one of
its bytes through the application's ``send`` (so logging, metrics, tracing and compression
middleware see them), and a client that stops reading is cut by ending its response.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import IN_CI, free_port, wait_for
from tidings.wire import EventParser, ServerSentEvent

ROOT = Path(__file__).parents[2]
APP = "tests.web.embedded_app:app"


def _command(server: str, port: int) -> list[str]:
    python = sys.executable
    if server == "uvicorn":
        return [python, "-m", "uvicorn", APP, "--port", str(port), "--log-level", "warning"]
    if server == "hypercorn":
        return [python, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}"]
    if server == "granian":
        return [
            python, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", APP,
        ]  # fmt: skip
    return [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP]


class EmbeddedServer:
    def __init__(self, server: str) -> None:
        self.name = server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"{server}-", suffix=".log")  # noqa: SIM115
        env = {**os.environ, "TIDINGS_STORE": "memory", "TIDINGS_QUEUE_SIZE": "20"}
        env.pop("TIDINGS_URL", None)
        self.proc = subprocess.Popen(
            _command(server, self.port), cwd=ROOT, env=env, stdout=self.log, stderr=self.log
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{server} exited early:\n{self.output()}")
            try:
                return httpx.get(self.url + "/sse/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, f"{server} to start")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


SERVERS = ["uvicorn", "hypercorn", "granian", "daphne"]
#: The servers whose ``send`` waits while a client does not read (flow control). daphne
#: buffers whatever is sent: a client that stops reading grows daphne's memory, out of the
#: application's reach (docs/integrations.md says so).
FLOW_CONTROLLED = ["uvicorn", "hypercorn", "granian"]


@pytest.fixture(scope="module", params=SERVERS)
def embedded(request: pytest.FixtureRequest) -> Iterator[EmbeddedServer]:
    server: str = request.param
    if importlib.util.find_spec(server) is None:
        if IN_CI:
            pytest.fail(f"{server} is not installed (make test installs it)")
        pytest.skip(f"{server} is not installed")
    running = EmbeddedServer(server)
    yield running
    running.close()


def test_middleware_sees_every_byte_of_a_task_stream(embedded: EmbeddedServer) -> None:
    with httpx.Client(base_url=embedded.url, timeout=10) as http:
        task_id = http.post("/sse/tasks", json={"total": 2}).json()["task_id"]
        path = f"/sse/tasks/{task_id}/stream"
        received = b""
        events: list[ServerSentEvent] = []
        parser = EventParser()
        with http.stream("GET", path) as stream:
            chunks = stream.iter_raw()
            for step in ("progress", "progress", "complete"):
                while not events:
                    data = next(chunks)
                    received += data
                    events += parser.feed(data)
                events.clear()
                body = {"current": 1} if step == "progress" else {}
                assert http.post(f"/sse/tasks/{task_id}/{step}", json=body).status_code == 200
            for data in chunks:  # to the end: the stream ends after the terminal event
                received += data
                events += parser.feed(data)
        assert [event.event for event in events][-1] == "task_completed"
        counted = http.get("/counted").json()
    assert counted[path] == len(received) > 0


def test_middleware_sees_the_bytes_of_an_open_stream(embedded: EmbeddedServer) -> None:
    with httpx.Client(base_url=embedded.url, timeout=10) as http:
        received = b""
        events: list[ServerSentEvent] = []
        parser = EventParser()
        with http.stream("GET", "/sse/events", params={"topic": "chat/general"}) as stream:
            chunks = stream.iter_raw()
            received += next(chunks)  # the opening bytes: subscribed
            for n in range(3):
                assert http.post("/chat", params={"text": f"hi {n}"}).status_code == 200
            while len(events) < 3:
                data = next(chunks)
                received += data
                events += parser.feed(data)
            counted = http.get("/counted").json()
    assert [orjson.loads(event.data)["text"] for event in events] == ["hi 0", "hi 1", "hi 2"]
    assert counted["/sse/events"] >= len(received) > 0


@pytest.mark.parametrize("embedded", FLOW_CONTROLLED, indirect=True)
def test_a_client_that_stops_reading_is_cut_by_ending_its_response(
    embedded: EmbeddedServer,
) -> None:
    def stats() -> dict[str, int]:
        return httpx.get(embedded.url + "/sse/stats", timeout=5).json()["events"]  # type: ignore[no-any-return]

    before = stats()["slow_disconnects"]
    with socket.create_connection(("127.0.0.1", embedded.port), timeout=10) as slow:
        slow.sendall(b"GET /sse/events?topic=feed HTTP/1.1\r\nhost: x\r\n\r\n")
        assert slow.recv(1024).startswith(b"HTTP/1.1 200")
        text = "x" * 60_000  # the socket's buffers fill after a few megabytes
        with httpx.Client(base_url=embedded.url, timeout=10) as http:
            deadline = time.monotonic() + 60
            while stats()["slow_disconnects"] == before:
                assert time.monotonic() < deadline, "the hub never cut the client"
                for _ in range(10):
                    http.post("/sse/publish", json={"topic": "feed", "data": text})
        # The response ends: reading on, the client gets what was sent, then the end of
        # the chunked body (and reconnects, resuming from its last id).
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            chunk = slow.recv(65536)
            assert chunk, "the connection closed without the end of the body"
            tail += chunk
    assert "Traceback" not in embedded.output()
