"""``tidings bench``: the load check users run, against a real hub and against its own."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.conftest import ServerProcess
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
