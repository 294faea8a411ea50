"""`tidings publish` and `tidings tail` from a terminal, against a real server."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess, run_main, wait_for
from tidings import __version__


def tidings(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args], capture_output=True, text=True, timeout=30
    )


def test_tail_shows_what_publish_sends(server: ServerProcess, uid: str) -> None:
    topic = f"{uid}/general"
    tail = subprocess.Popen(
        [sys.executable, "-u", "-m", "tidings", "tail", topic, "--url", server.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _streams(server, topic) == 1, what="tail to subscribe")
        published = tidings(
            "publish",
            topic,
            '{"text": "hi from a terminal"}',
            "--type",
            "chat_message",
            "--url",
            server.url,
        )
        assert published.returncode == 0, published.stderr
        event_id = published.stdout.strip()
        assert tail.stdout is not None
        line = tail.stdout.readline().rstrip("\n")
        ident, kind, data = line.split("  ", 2)
        assert ident == event_id
        assert kind == "chat_message"
        assert orjson.loads(data) == {"text": "hi from a terminal"}
        tail.send_signal(signal.SIGINT)  # Ctrl-C: 130, one quiet exit
        _, err = tail.communicate(timeout=60)  # room for a machine whose cores are all busy
        assert tail.returncode == 130
        assert err == ""
    finally:
        if tail.poll() is None:
            tail.kill()
        tail.communicate()  # and close its pipes


def test_tail_json_prints_one_object_per_event_and_resumes(server: ServerProcess, uid: str) -> None:
    first = tidings("publish", f"{uid}/general", '{"n": 1}', "--url", server.url).stdout.strip()
    second = tidings("publish", f"{uid}/general", '"two"', "--url", server.url).stdout.strip()
    third = tidings("publish", f"{uid}/other", "3", "--url", server.url).stdout.strip()
    argv = ["tail", f"{uid}/*", "--json", "--last-event-id", first, "--url", server.url]
    tail = subprocess.Popen(
        [sys.executable, "-u", "-m", "tidings", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stdout is not None
        lines = [orjson.loads(tail.stdout.readline()) for _ in range(2)]
    finally:
        tail.terminate()
        tail.communicate(timeout=10)
    assert lines == [
        {"id": second, "event": "message", "data": "two"},
        {"id": third, "event": "message", "data": 3},
    ]


def _streams(server: ServerProcess, topic: str) -> int:
    """How many streams of ``server`` follow ``topic``."""
    by_topic = httpx.get(server.url + "/stats").json()["connections"]["by_topic"]
    count = by_topic.get(topic, 0)
    assert isinstance(count, int)
    return count


def test_publish_with_bad_json_is_one_clear_line() -> None:
    result = run_main("publish", "chat/general", "{not json", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("tidings: DATA is not valid JSON")


def test_publish_to_an_unreachable_hub_is_one_clear_line() -> None:
    result = tidings("publish", "chat/general", "1", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert result.stderr.startswith("tidings: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in result.stderr


def test_publish_refused_by_the_hub_prints_its_error(server: ServerProcess) -> None:
    result = tidings("publish", "bad topic", "1", "--url", server.url)
    assert result.returncode == 1
    assert result.stderr.startswith("tidings: 422 invalid_topic: invalid topic 'bad topic'")
    assert result.stderr.count("\n") == 1


def test_tail_with_a_bad_topic_is_one_clear_line() -> None:
    result = run_main("tail", "a//b", "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.startswith("tidings: ")
    assert result.stderr.count("\n") == 1


BAD_URLS = ["notaurl", "ftp://x", "http://[bad", "http://x:99999", "http://x:abc", "http://x:0"]


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize(
    "command", [["publish", "chat/general", "1"], ["tail", "chat/general"], ["watch", "t1"]]
)
def test_a_bad_url_is_exit_code_2_at_once(command: list[str], url: str) -> None:
    """Every client command checks --url the same way, before it connects (or retries)."""
    result = run_main(*command, "--url", url)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith(f"tidings: invalid --url: {url!r} (expected e.g. http://")
    assert result.stderr.count("\n") == 1


def test_tail_says_once_that_the_hub_is_unreachable_while_it_retries() -> None:
    """A hub that closes every connection: tail retries, and says so in one line, not one a try."""
    attempts = 0
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def refuse_all() -> None:
            nonlocal attempts
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                attempts += 1
                conn.close()

        refuser = threading.Thread(target=refuse_all)
        refuser.start()
        tail = subprocess.Popen(
            [sys.executable, "-u", "-m", "tidings", "tail", "chat/general", "--url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: attempts >= 2, 30, "tail to try twice")
        finally:
            tail.terminate()
            out, err = tail.communicate(timeout=10)
            stop.set()
            refuser.join()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tidings: cannot reach {url} (")
    assert lines[0].endswith("; retrying until it answers")


def test_version_is_printed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout == f"tidings {__version__}\n"
