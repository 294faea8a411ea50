"""Watching a task: ``watch_task()`` in Python and ``tidings watch`` in a terminal.

Against real ``tidings serve`` processes: a watch must end with its task, say how it ended
(exit codes 0, 1, 2), and never show a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory, ServerProcess, wait_for
from tests.web._security import SECRET as JWT_SECRET
from tests.web._security import bearer, token
from tidings.cli import main
from tidings.client import TaskUpdate, subscribe, watch_task, watch_task_sync
from tidings.errors import LimitExceeded, NotAuthorized, TaskNotFound


@pytest.fixture
def hub(server: ServerProcess) -> ServerProcess:
    """The shared hub: each test makes its own tasks."""
    return server


def create_task(hub: ServerProcess, **body: Any) -> str:
    response = httpx.post(hub.url + "/tasks", json=body)
    assert response.status_code == 201, response.text
    task_id = response.json()["task_id"]
    assert isinstance(task_id, str)
    return task_id


def change(hub: ServerProcess, task_id: str, op: str, body: dict[str, Any]) -> None:
    if op.startswith("files/"):
        response = httpx.put(f"{hub.url}/tasks/{task_id}/{op}", json=body)
    else:
        response = httpx.post(f"{hub.url}/tasks/{task_id}/{op}", json=body)
    assert response.status_code == 200, response.text


def watchers(hub: ServerProcess, task_id: str) -> int:
    count = httpx.get(hub.url + "/stats").json()["connections"]["by_task"].get(task_id, 0)
    assert isinstance(count, int)
    return count


def run_a_task(hub: ServerProcess, task_id: str) -> None:
    """Two files, progress after each, then completion."""
    for i, name in enumerate(["a.png", "b.png"], start=1):
        change(hub, task_id, f"files/{name}", {"status": "processing", "message": "resizing"})
        change(hub, task_id, "progress", {"current": i, "message": f"{i} of 2"})
        change(hub, task_id, f"files/{name}", {"status": "completed"})
    change(hub, task_id, "complete", {"result": {"converted": 2}})


# -- the Python client ----------------------------------------------------------------------


async def test_watch_task_follows_a_task_until_it_completes(hub: ServerProcess) -> None:
    task_id = await asyncio.to_thread(create_task, hub, total=2, title="Convert images")
    updates: list[TaskUpdate] = []

    async def watch() -> None:
        async for update in watch_task(hub.url, task_id):
            updates.append(update)

    watching = asyncio.create_task(watch())
    await asyncio.to_thread(wait_for, lambda: watchers(hub, task_id) == 1)
    await asyncio.to_thread(run_a_task, hub, task_id)
    await asyncio.wait_for(watching, 10)

    first, last = updates[0], updates[-1]
    assert (first.event, first.task.status, first.task.title) == (
        "task_progress",
        "pending",
        "Convert images",
    )
    assert last.event == "task_completed"
    assert last.finished
    assert last.task.status == "completed"
    assert last.task.progress == 100.0
    assert last.task.result == {"converted": 2}
    assert {f.filename: f.status for f in last.task.files.values()} == {
        "a.png": "completed",
        "b.png": "completed",
    }
    files = [u.file for u in updates if u.event == "file_update"]
    assert [(f.filename, f.status) for f in files if f is not None][:2] == [
        ("a.png", "processing"),
        ("a.png", "completed"),
    ]
    sequences = [u.task.sequence for u in updates]
    assert sequences == sorted(sequences)


def test_watch_task_sync_gives_the_end_of_a_finished_task(hub: ServerProcess) -> None:
    task_id = create_task(hub, total=1)
    change(hub, task_id, "fail", {"error": "disk full", "details": {"disk": "/tmp"}})
    updates = list(watch_task_sync(hub.url, task_id))
    assert [u.event for u in updates] == ["task_failed"]
    assert updates[0].task.status == "failed"
    assert updates[0].task.error == "disk full"
    assert updates[0].task.details == {"disk": "/tmp"}


async def test_watch_task_of_an_unknown_task_raises_task_not_found(hub: ServerProcess) -> None:
    with pytest.raises(TaskNotFound):
        async for _ in watch_task(hub.url, "no-such-task"):
            pass


async def test_watch_task_errors_for_tokens_and_limits(server_factory: ServerFactory) -> None:
    server = await server_factory.start("--jwt-secret", JWT_SECRET, "--max-connections-per-ip", "1")
    alice = token("alice")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        created = await http.post("/tasks", json={"total": 1}, headers=bearer(alice))
    task_id = created.json()["task_id"]
    # No token: 401, and the exception says so.
    with pytest.raises(NotAuthorized) as refused:
        async for _ in watch_task(server.url, task_id):
            pass
    assert refused.value.status == 401
    # Someone else's task looks like no task at all (ids don't leak).
    with pytest.raises(TaskNotFound):
        async for _ in watch_task(server.url, task_id, token=token("mallory")):
            pass
    # Over the per-IP stream cap, the first attempt raises instead of waiting.
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("GET", f"/tasks/{task_id}/stream", headers=bearer(alice)) as held,
    ):
        assert held.status_code == 200
        with pytest.raises(LimitExceeded) as limited:
            async for _ in watch_task(server.url, task_id, token=alice):
                pass
        assert limited.value.retry_after >= 1
        with pytest.raises(LimitExceeded):
            async for _ in subscribe(server.url, ["users/alice/**"], token=alice):
                pass


# -- tidings watch ---------------------------------------------------------------------------


def test_watch_prints_progress_and_file_lines_when_not_a_terminal(hub: ServerProcess) -> None:
    task_id = create_task(hub, total=2, title="Convert images")
    watch = subprocess.Popen(
        [sys.executable, "-m", "tidings", "watch", task_id, "--url", hub.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: watchers(hub, task_id) == 1, what="the watch to subscribe")
        run_a_task(hub, task_id)
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    assert watch.returncode == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "pending      0.0%  0/2"
    assert "file a.png  processing  0%  resizing" in lines
    assert "file a.png  completed  100%  resizing" in lines
    assert "file b.png  completed  100%  resizing" in lines
    assert any(line.startswith("running     50.0%  1/2") and "1 of 2" in line for line in lines)
    assert lines[-1].startswith("completed in ")
    assert lines[-1].endswith('result: {"converted":2}')


@pytest.mark.parametrize(
    ("op", "body", "line"),
    [
        ("fail", {"error": "disk full\non /data"}, "failed: disk full on /data"),
        ("cancel", {"reason": "user asked"}, "cancelled: user asked"),
    ],
)
def test_watch_of_a_failed_or_cancelled_task_exits_1_with_one_line(
    hub: ServerProcess,
    capsys: pytest.CaptureFixture[str],
    op: str,
    body: dict[str, str],
    line: str,
) -> None:
    task_id = create_task(hub, total=3)
    change(hub, task_id, "files/x.csv", {"status": "failed", "message": "bad row"})
    change(hub, task_id, op, body)
    assert main(["watch", task_id, "--url", hub.url]) == 1
    out, err = capsys.readouterr()
    assert out == "file x.csv  failed  0%  bad row\n"
    assert err == f"tidings: task {task_id} {line}\n"


def test_watch_json_prints_one_state_per_line(
    hub: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = create_task(hub, total=2)
    run_a_task(hub, task_id)
    assert main(["watch", task_id, "--url", hub.url, "--json"]) == 0
    states = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(states) == 1  # a finished task: its last event only
    assert states[0]["event"] == "task_completed"
    assert states[0]["status"] == "completed"
    assert states[0]["task_id"] == task_id
    assert states[0]["result"] == {"converted": 2}
    assert set(states[0]["files"]) == {"a.png", "b.png"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-task"], "tidings: no task 'no-such-task' at {url}\n"),
        (["bad/id"], "tidings: task_id may only hold A-Z a-z 0-9 _ . : @ -\n"),
        (
            ["t", "--url", "http://127.0.0.1:9"],
            "tidings: cannot reach the hub at http://127.0.0.1:9\n",
        ),
        (["t", "--url", "localhost:8000"], "tidings: invalid --url: 'localhost:8000' (expected"),
    ],
)
def test_watch_that_cannot_start_exits_2_with_one_line(
    hub: ServerProcess, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    argv = ["watch", *args] if "--url" in args else ["watch", *args, "--url", hub.url]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message.format(url=hub.url))
    assert err.count("\n") == 1


def test_watch_in_a_terminal_draws_the_task_and_exits_0(hub: ServerProcess) -> None:
    task_id = create_task(hub, total=2, title="Convert images")
    run_a_task(hub, task_id)
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "30", "TERM": "xterm"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "tidings", "watch", task_id, "--url", hub.url],
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(secondary)
    output = bytearray()
    with contextlib.suppress(OSError):  # EIO once the watch has exited and closed the tty
        while chunk := os.read(primary, 65536):
            output += chunk
    os.close(primary)
    assert watch.wait(30) == 0
    assert watch.stderr is not None
    assert watch.stderr.read() == b""
    watch.stderr.close()
    text = output.decode(errors="replace")
    assert "Convert images" in text
    assert "b.png" in text
    assert "completed in " in text
    assert "\x1b[" in text  # drawn with terminal control codes, not plain lines


def test_watch_goes_on_across_a_hub_restart_and_ends_with_the_task(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Tasks in SQLite survive the restart; the memory backend's history does not, so the
    # watch comes back to the task's state (a snapshot), then follows it to its end.
    hub = server_factory("--store", f"sqlite:///{tmp_path / 'tasks.db'}", "--retry", "200")
    task_id = create_task(hub, total=4)
    change(hub, task_id, "progress", {"current": 1})
    watch = subprocess.Popen(
        [sys.executable, "-u", "-m", "tidings", "watch", task_id, "--json", "--url", hub.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first = orjson.loads(watch.stdout.readline())
        assert (first["status"], first["current"]) == ("running", 1)
        hub.restart()
        wait_for(lambda: watchers(hub, task_id) == 1, 20, "the watch to come back")
        change(hub, task_id, "progress", {"current": 3})
        change(hub, task_id, "complete", {"result": {"n": 4}})
        out, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    states = [first] + [orjson.loads(line) for line in out.splitlines()]
    assert watch.returncode == 0, err
    assert states[-1]["event"] == "task_completed"
    assert states[-1]["result"] == {"n": 4}
    currents = [state["current"] for state in states]
    assert currents == sorted(currents)
    assert 3 in currents
    assert "Traceback" not in err
