"""``tidings bench``: the load check users run, against a real hub and against its own."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import ServerProcess, wait_for
from tidings.cli import main


def tidings(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args], capture_output=True, text=True, timeout=90
    )


def run_main(argv: list[str]) -> int:
    """``main(argv)``, with argparse's own usage errors as their exit code."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else -1


def test_bench_against_a_running_hub_delivers_everything(server: ServerProcess) -> None:
    result = tidings(
        "bench", "--url", server.url, "--subscribers", "20", "--events", "25", "--rate", "250",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["streams_opened"] == 20
    assert report["published"] == 25
    assert report["expected"] == report["delivered"] == 500
    assert report["delivered_ratio"] == 1.0
    assert report["complete"] is True
    assert report["own_hub"] is False
    assert report["errors"] == []
    assert set(report["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    assert report["deliveries_per_second"] > 0


def test_bench_without_a_url_runs_its_own_hub() -> None:
    result = tidings("bench", "--subscribers", "10", "--events", "10", "--rate", "200")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "(its own hub): 10 streams, 10 events" in lines[0]
    assert "streams opened   10/10 in " in result.stdout
    assert "delivered        100/100 (100.00%)" in lines
    assert any(line.startswith("latency          p50 ") for line in lines)
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subscribers", "0"], "tidings: --subscribers must be at least 1\n"),
        (["--rate", "0"], "tidings: --rate must be a positive number of publishes per second\n"),
        (["--events", "100", "--rate", "1", "--timeout", "5"], "tidings: publishing 100 events"),
        (["--topic", "bad topic"], "tidings: invalid topic 'bad topic'"),
        (["--url", "nowhere"], "tidings: invalid --url: 'nowhere'"),
        (["--subscribers", "many"], "tidings: argument --subscribers: invalid int value"),
        (["--url", "http://x:99999"], "tidings: invalid --url: 'http://x:99999'"),
        (["--url", "http://[bad"], "tidings: invalid --url: 'http://[bad'"),
        (["--timeout", "inf"], "tidings: --timeout must be from 0 to 86400 seconds"),
        (["--payload-bytes", "100000000000"], "tidings: --payload-bytes must be from 0 to"),
    ],
)
def test_bench_with_bad_flags_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run_main(["bench", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_bench_against_an_unreachable_hub_is_one_clear_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--url", "http://127.0.0.1:9", "--subscribers", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "tidings: no stream could be opened on http://127.0.0.1:9: cannot connect"
    )
    assert err.count("\n") == 1


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it just ended
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def test_sigterm_stops_the_bench_and_its_own_hub() -> None:
    # A test runner may start us with SIGINT ignored; give the bench the default, as a
    # terminal would (SIGTERM is then handled as Ctrl-C).
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'tidings', *sys.argv[1:]])"
    )
    argv = ["bench", "--subscribers", "5", "--events", "5000", "--rate", "50", "--timeout", "300"]
    bench = subprocess.Popen(
        [sys.executable, "-c", launcher, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: bool(children(bench.pid)), 20, "the bench to start its hub")
        [hub] = children(bench.pid)
        args = Path(f"/proc/{hub}/cmdline").read_text().split("\0")
        port = int(args[args.index("--port") + 1])

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(answers, 20, "the bench's hub to answer")
        bench.send_signal(signal.SIGTERM)
        out, err = bench.communicate(timeout=30)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, err
    assert "Traceback" not in out + err
    wait_for(lambda: not Path(f"/proc/{hub}").exists(), 10, "the bench's hub to end")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
