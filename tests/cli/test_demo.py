"""``tidings demo``: every workload reaches a real hub, and Ctrl-C ends it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess, SSEReader, free_port, open_sse, run_main
from tidings.client import AsyncPublisher
from tidings.demo import first_failure
from tidings.errors import BackendUnavailable, TidingsError


def demo_command(*args: str) -> list[str]:
    # A test runner may start us with SIGINT ignored (a background job), and a child
    # inherits that: give the demo the default handler, as a terminal would.
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'tidings', 'demo', *sys.argv[1:]])"
    )
    return [sys.executable, "-c", launcher, *args]


def demo_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}


async def test_the_demo_publishes_every_workload_through_the_hub(
    server: ServerProcess, http: httpx.AsyncClient
) -> None:
    async with AsyncPublisher(server.url) as pub:
        start = await pub.publish("chat/general", "start", type="marker")
        demo = await asyncio.create_subprocess_exec(
            *demo_command("--url", server.url, "--once", "--speed", "25"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=demo_env(),
        )
        out, err = await asyncio.wait_for(demo.communicate(), 60)
        assert demo.returncode == 0, err.decode()
        assert err == b""
        assert f"the dashboard is at {server.url}/" in out.decode()
        await pub.publish("chat/general", "end", type="marker")

    tasks = {task["title"]: task for task in (await http.get("/tasks")).json()["tasks"]}
    batch = tasks["Convert 12 images"]
    assert batch["status"] == "completed"
    statuses = sorted(state["status"] for state in batch["files"].values())
    assert statuses == ["completed"] * 11 + ["failed"]
    assert batch["result"] == {"converted": 11, "failed": 1}
    failed = tasks["Re-index search"]
    assert (failed["status"], failed["error"], failed["progress"]) == (
        "failed",
        "shard 3 is unreachable",
        50.0,
    )
    cancelled = tasks["Export monthly report"]
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", "cancelled by a user")

    # Chat and the request feed, read back from the hub's history.
    params = httpx.QueryParams([("topic", "chat/general"), ("topic", "dashboard:requests")])
    async with open_sse(http, params=params, headers={"Last-Event-ID": start}) as reader:
        types = await types_until_marker(reader)
    assert {"chat_message", "request_start", "request_complete"} <= types


async def types_until_marker(reader: SSEReader) -> set[str]:
    types: set[str] = set()
    while (event := await reader.next()).event != "marker":
        types.add(event.event)
    return types


@contextlib.contextmanager
def demo_at_work(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``tidings demo`` with ``args``, once it has announced its first task (its hub, its
    own or the one at ``--url``, is up and work is under way); killed if still running."""
    demo = subprocess.Popen(
        demo_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=demo_env(),
    )
    try:
        assert demo.stdout is not None
        while not (line := demo.stdout.readline()).startswith("  task "):
            assert line, "the demo ended before it started a task"
        yield demo
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_ends_the_demo_and_its_hub_in_one_line(stop: signal.Signals) -> None:
    port = free_port()
    with demo_at_work("--port", str(port)) as demo:
        demo.send_signal(stop)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0
    assert err == "tidings demo: stopped\n"
    assert "Traceback" not in out
    with socket.socket() as sock:  # its hub is gone too, not left running on its own
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_port_in_use_is_one_clear_line(server: ServerProcess) -> None:
    demo = run_demo("--port", str(server.port))
    assert demo.returncode == 2
    assert demo.stderr.startswith(f"tidings: port {server.port} is in use")
    assert demo.stderr.count("\n") == 1


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        demo_command(*args),
        capture_output=True,
        text=True,
        timeout=30,
        env=demo_env(),
        check=False,
    )


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "0", "eighty"])
def test_a_bad_port_is_one_clear_line(port: str) -> None:
    demo = run_main("demo", "--port", port)
    assert demo.returncode == 2
    assert demo.stderr.startswith("tidings: argument --port: expected a port from 1 to 65535")
    assert demo.stderr.count("\n") == 1


@pytest.mark.parametrize("speed", ["0", "-1", "inf", "nan"])
def test_a_bad_speed_is_one_clear_line(speed: str) -> None:
    demo = run_main("demo", "--speed", speed, "--url", "http://127.0.0.1:9")
    assert demo.returncode == 2
    assert demo.stderr.startswith("tidings: invalid --speed")
    assert demo.stderr.count("\n") == 1


def test_a_hub_that_goes_away_ends_the_demo_in_one_line(server_factory: ServerFactory) -> None:
    hub = server_factory()
    with demo_at_work("--url", hub.url, "--speed", "20") as demo:
        hub.stop()
        _, err = demo.communicate(timeout=60)
    assert demo.returncode != 0
    assert "Traceback" not in err
    assert err.splitlines()[-1] == f"tidings: cannot reach the hub at {hub.url}"


def test_the_first_failure_is_found_inside_nested_task_groups() -> None:
    cause = BackendUnavailable("cannot reach the hub at http://127.0.0.1:9")
    nested = ExceptionGroup("jobs", [ExceptionGroup("requests", [cause]), TidingsError("later")])
    assert first_failure(nested) is cause
