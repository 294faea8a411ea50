"""Side-by-side SSE fan-out benchmarks (issue 8): ``python -m benchmarks.run``.

Scenarios, each run against every server in one run (server on core 0, load on core 1):

  A  1,000 subscribers, publish as fast as the server delivers, 10 s
  B  10,000 subscribers, 10 publishes/s for 20 s: delivery and publish->receive latency
  C  10,000 idle subscribers: server memory per connection and time to open them all
     (measured in B's opening phase when B runs, alone otherwise)
  D  19,500 subscribers, 10 publishes/s: sustained deliveries/s
  E  1,000 tasks x 5 watchers, progress 10x/s per task (tidings only: the task API)
  F  two tidings nodes on one Redis, against one node; plus Redis's own capacity measured
     with redis-benchmark (tidings only)

A full run's results go to ``benchmarks/results/<timestamp>.json`` and
``benchmarks/results/latest.md``, and its plots to ``docs/images/``. ``--quick`` runs the same
scenarios, smaller and shorter; quick, partial (``--scenarios``, ``--servers``) and modified
(``--set``) runs keep their results in the ignored ``benchmarks/results/tmp/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import profile_summary, redis_capacity, report
from benchmarks.procs import (
    BUILD,
    LOAD_CORE,
    PYTHON,
    ROOT,
    SERVER_CORE,
    SERVERS,
    BenchError,
    LoadGen,
    Publisher,
    Server,
    ServerSpec,
    build_loadgen,
    free_port,
    http_post,
    pinned,
    run_server,
    spawn,
    stop_process,
    warm_up,
)

RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ROOT / "docs" / "images"
#: The whole run must end within 15 minutes; stop starting new runs after this.
BUDGET_SECONDS = 14 * 60
ALL_SCENARIOS = "A,A1,B,C,D,E,F"
#: D2 compares tidings with the bound (see ``Plan.d2_rate``).
D2_SERVERS = ("tidings", "bare-uvloop")
#: Debian packages the run uses, installed when missing and running as root.
SYSTEM_PACKAGES = {
    "nginx": "nginx",
    "libnginx-mod-nchan": "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "redis-server": "redis-server",
    "redis-tools": "redis-benchmark",
}


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one run (full, or ``--quick``)."""

    a_subs: int = 1000
    a_seconds: float = 10.0
    a_lead: int = 256
    #: Publisher connections in A and F, each with up to 32 pipelined requests: publishes
    #: arrive concurrently, as from many application processes.
    a_publishers: int = 8
    b_subs: int = 10_000
    b_seconds: float = 20.0
    b_rate: float = 10.0
    b_drain_ms: int = 5000
    d_subs: int = 19_500
    d_seconds: float = 10.0
    d_rate: float = 10.0
    d_drain_ms: int = 5000
    #: D2, D's capacity check: the same subscribers at this rate, against
    #: :data:`D2_SERVERS`. At D's rate a server that keeps up delivers the offered load and
    #: no more, so D's ratio cannot exceed offered / bare; D2 asks for more than either can
    #: send one event per ``write`` (0 skips it).
    d2_rate: float = 20.0
    e_tasks: int = 1000
    e_watchers: int = 5
    e_rate: float = 10.0
    e_seconds: float = 10.0
    e_drain_ms: int = 15_000
    #: E's workers: connections, each with up to ``e_window`` pipelined progress requests.
    #: Together they hold a whole tick's updates (``e_tasks``) in flight, so the publisher
    #: never caps the rate; an update is skipped only while the server has not answered
    #: the previous ones on its connection.
    e_conns: int = 16
    e_window: int = 64
    f_subs: int = 1000
    f_seconds: float = 10.0


QUICK = Plan(
    a_subs=500,
    a_seconds=3.0,
    b_subs=2000,
    b_seconds=4.0,
    b_drain_ms=2000,
    d_subs=4000,
    d_seconds=3.0,
    d_drain_ms=2000,
    e_tasks=200,
    e_seconds=3.0,
    e_drain_ms=8000,
    f_subs=500,
    f_seconds=3.0,
)


class Run:
    """One benchmark run: its plan, its results and its notes."""

    def __init__(
        self, plan: Plan, servers: list[ServerSpec], *, profile: bool, profile_e: bool = False
    ) -> None:
        self.plan = plan
        self.servers = servers
        self.profile = profile
        #: Profile E's measured run (``--profile E``): E is tidings-only, nothing to compare.
        self.profile_e = profile_e
        self.results: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.loadgen = build_loadgen()

    def left(self) -> float:
        return BUDGET_SECONDS - (time.monotonic() - self.started)

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def record(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        print("  " + report.one_line(result), flush=True)

    def attempt(self, scenario: str, server: str, needed: float, fn: Callable[[], None]) -> None:
        """Run one step unless the time budget is spent; record a failure and go on."""
        if self.left() < needed:
            self.note(f"{scenario}/{server}: skipped, the 15-minute budget is spent")
            return
        print(f"[{scenario}] {server} ...", flush=True)
        t0 = time.monotonic()
        try:
            fn()
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as exc:
            self.note(f"{scenario}/{server}: failed: {exc}")
            self.results.append({"scenario": scenario, "server": server, "error": str(exc)})
        print(f"  ({time.monotonic() - t0:.1f} s; {self.left():.0f} s of budget left)", flush=True)


# -- one fan-out run --------------------------------------------------------------------------


def fanout(
    run: Run,
    spec: ServerSpec,
    *,
    scenario: str,
    subs: int,
    mode: str,
    seconds: float,
    rate: float = 0.0,
    lead: int = 0,
    drain_ms: int = 0,
    memory_scenario: str | None = None,
    server_extra: list[str] | None = None,
    publishers: int | None = None,
) -> None:
    """Open ``subs`` subscribers, publish for ``seconds``, and record what arrived."""
    with run_server(spec, extra=server_extra) as server:
        result = measure_fanout(
            run,
            server,
            scenario=scenario,
            subs=subs,
            mode=mode,
            seconds=seconds,
            rate=rate,
            lead=lead,
            drain_ms=drain_ms,
            memory_scenario=memory_scenario,
            publishers=publishers,
        )
    if result is not None:
        run.record(result)


def measure_fanout(
    run: Run,
    server: Server,
    *,
    scenario: str,
    subs: int,
    mode: str,
    seconds: float,
    rate: float = 0.0,
    lead: int = 0,
    drain_ms: int = 0,
    memory_scenario: str | None = None,
    profile_out: Path | None = None,
    publishers: int | None = None,
) -> dict[str, Any] | None:
    spec = server.spec
    warm_up(server)
    time.sleep(0.5)
    rss_before = server.rss_kib()
    stats_file = BUILD / f"stats-{server.port}"
    lg = LoadGen(
        run.loadgen,
        server.port,
        subs,
        path=spec.subscribe_path,
        max_run=seconds + drain_ms / 1000 + 180,
        stats_file=stats_file,
    )
    profiler: subprocess.Popen[bytes] | None = None
    try:
        ready = lg.wait_ready(120)
        if memory_scenario is not None:
            time.sleep(1.0)
            rss_after = server.rss_kib()
            opened = ready["connections_opened"]
            run.record(
                {
                    "scenario": memory_scenario,
                    "server": spec.name,
                    "connections_opened": opened,
                    "connections_requested": subs,
                    "open_seconds": ready["open_seconds"],
                    "rss_before_kib": rss_before,
                    "rss_after_kib": rss_after,
                    "kib_per_connection": round((rss_after - rss_before) / max(opened, 1), 2),
                }
            )
        if mode == "idle":
            lg.finish(0, 0, timeout=10)
            return None
        pub_args = ["--port", str(server.port), "--format", spec.publish_format]
        pub_args += ["--duration", str(seconds)]
        if mode == "rate":
            pub_args += ["--rate", str(rate)]
        else:
            pub_args += ["--stats-file", str(stats_file), "--subscribers", str(subs)]
            conns = publishers if publishers is not None else run.plan.a_publishers
            pub_args += ["--lead", str(lead), "--conns", str(conns)]
        meter = server.meter()
        publisher = Publisher(mode, pub_args)
        try:
            publisher.wait_started()
            meter.start()
            lg.send("start")
            if profile_out is not None:
                profiler = start_profiler(server, seconds, profile_out)
            pub = publisher.report(seconds + 60)
            expected = int(pub["sent"]) if mode == "rate" else 0
            lg_report = lg.finish(drain_ms, expected, timeout=30)
            cpu = meter.read()
        finally:
            publisher.close()
    finally:
        lg.close()
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(30)
            stop_process(profiler, grace=5)
    deliveries = lg_report["events_total"]
    result: dict[str, Any] = {
        "scenario": scenario,
        "server": spec.name,
        "subscribers": subs,
        "mode": mode,
        "rate": rate if mode == "rate" else None,
        "lead": lead if mode == "max" else None,
        "publishes_sent": pub["sent"],
        "publishes_ok": pub["ok"],
        "publishes_unanswered": pub.get("unanswered"),
        "publish_errors": pub["errors"],
        "publish_statuses": pub["statuses"],
        "publisher_cpu_seconds": pub["publisher_cpu_seconds"],
        **{k: v for k, v in lg_report.items() if k != "per_second"},
        "per_second": lg_report.get("per_second", []),
        **cpu,
        "us_cpu_per_delivery": round(cpu["server_cpu_seconds"] * 1e6 / deliveries, 2)
        if deliveries
        else None,
        "us_core_per_delivery": round(cpu["server_core_busy_seconds"] * 1e6 / deliveries, 2)
        if deliveries
        else None,
    }
    if mode == "rate":
        wanted = pub["sent"] * lg_report["connections_opened"]
        result["expected_deliveries"] = wanted
        result["delivered_fraction"] = round(deliveries / wanted, 4) if wanted else None
        result["all_delivered"] = lg_report["conns_complete"] == lg_report["connections_opened"]
    return result


def start_profiler(server: Server, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(py_spy).exists():
        return None
    argv = [py_spy, "record", "--pid", str(server.proc.pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--nonblocking", "--format", "raw", "--output", str(out)]
    log = open(BUILD / "py-spy.log", "wb")  # noqa: SIM115
    return spawn(pinned(LOAD_CORE, argv), stdout=log, stderr=subprocess.STDOUT)


# -- scenarios --------------------------------------------------------------------------------


def scenario_a(run: Run) -> None:
    p = run.plan
    for spec in run.servers:
        run.attempt(
            "A",
            spec.name,
            p.a_seconds + 15,
            lambda spec=spec: fanout(  # type: ignore[misc]
                run,
                spec,
                scenario="A",
                subs=p.a_subs,
                mode="max",
                seconds=p.a_seconds,
                lead=p.a_lead,
            ),
        )


def scenario_a1(run: Run) -> None:
    """A with one publishing connection (an application that publishes in one place): the
    requests of one keep-alive connection, pipelined, against the same subscribers."""
    p = run.plan
    for spec in run.servers:
        run.attempt(
            "A1",
            spec.name,
            p.a_seconds + 15,
            lambda spec=spec: fanout(  # type: ignore[misc]
                run,
                spec,
                scenario="A1",
                subs=p.a_subs,
                mode="max",
                seconds=p.a_seconds,
                lead=p.a_lead,
                publishers=1,
            ),
        )


def scenario_b(run: Run, *, with_c: bool) -> None:
    p = run.plan
    for spec in run.servers:
        run.attempt(
            "B",
            spec.name,
            p.b_seconds + p.b_drain_ms / 1000 + 20,
            lambda spec=spec: fanout(  # type: ignore[misc]
                run,
                spec,
                scenario="B",
                subs=p.b_subs,
                mode="rate",
                seconds=p.b_seconds,
                rate=p.b_rate,
                drain_ms=p.b_drain_ms,
                memory_scenario="C" if with_c else None,
            ),
        )


def scenario_c(run: Run) -> None:
    p = run.plan
    for spec in run.servers:
        run.attempt(
            "C",
            spec.name,
            20,
            lambda spec=spec: fanout(  # type: ignore[misc]
                run, spec, scenario="C", subs=p.b_subs, mode="idle", seconds=0, memory_scenario="C"
            ),
        )


def scenario_d(run: Run) -> None:
    """D against every server, then D2 (D at ``d2_rate``) against :data:`D2_SERVERS`."""
    p = run.plan
    runs = [("D", p.d_rate, [spec.name for spec in run.servers])]
    if p.d2_rate:
        runs.append(("D2", p.d2_rate, list(D2_SERVERS)))
    for scenario, rate, names in runs:
        for spec in run.servers:
            if spec.name not in names:
                continue
            run.attempt(
                scenario,
                spec.name,
                p.d_seconds + p.d_drain_ms / 1000 + 25,
                lambda spec=spec, scenario=scenario, rate=rate: fanout(  # type: ignore[misc]
                    run,
                    spec,
                    scenario=scenario,
                    subs=p.d_subs,
                    mode="rate",
                    seconds=p.d_seconds,
                    rate=rate,
                    drain_ms=p.d_drain_ms,
                ),
            )


def scenario_e(run: Run) -> None:
    p = run.plan
    spec = SERVERS["tidings"]
    e_profile = BUILD / "profile-tidings-E.txt"

    def go() -> None:
        with run_server(spec) as server:
            status, _ = http_post(server.port, "/tasks", b'{"title":"probe","total":1}')
            if status != 201:
                run.note(f"E skipped: POST /tasks answered {status} (task API not there yet)")
                return
            ids_file = BUILD / f"task-ids-{server.port}"
            creator = Publisher(
                "tasks-create",
                ["--port", str(server.port), "--n", str(p.e_tasks), "--out", str(ids_file)],
            )
            created = creator.report(120)
            creator.close()
            ids = [line for line in ids_file.read_text().splitlines() if line]
            paths = BUILD / f"task-paths-{server.port}"
            paths.write_text("".join(f"/tasks/{i}/stream\n" for i in ids))
            watchers = len(ids) * p.e_watchers
            lg = LoadGen(
                run.loadgen,
                server.port,
                watchers,
                path="/",
                max_run=p.e_seconds + p.e_drain_ms / 1000 + 180,
                extra=[
                    "--paths-file",
                    str(paths),
                    "--ts-key",
                    '"message":"',
                    "--seq-key",
                    '"sequence":',
                    "--count-type",
                    "task_completed",
                ],
            )
            try:
                ready = lg.wait_ready(120)
                meter = server.meter()
                worker = Publisher(
                    "tasks-run",
                    [
                        "--port",
                        str(server.port),
                        "--ids",
                        str(ids_file),
                        "--rate",
                        str(p.e_rate),
                        "--duration",
                        str(p.e_seconds),
                        "--conns",
                        str(p.e_conns),
                        "--window",
                        str(p.e_window),
                    ],
                )
                profiler = None
                try:
                    worker.wait_started()
                    meter.start()
                    lg.send("start")
                    if run.profile_e:
                        profiler = start_profiler(server, p.e_seconds, e_profile)
                    pub = worker.report(p.e_seconds + 120)
                    lg_report = lg.finish(p.e_drain_ms, 0, timeout=30)
                    cpu = meter.read()
                finally:
                    worker.close()
                    if profiler is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            profiler.wait(30)
                        stop_process(profiler, grace=5)
            finally:
                lg.close()
        updates = pub["ok"] + pub["final_ok"]
        profiled = {}
        if profiler is not None and e_profile.exists():
            profiled = {
                "profile": str(e_profile.relative_to(ROOT)),
                "profile_summary": profile_summary.summarize(profile_summary.load(e_profile), 30),
            }
        run.record(
            {
                "scenario": "E",
                "server": "tidings",
                "tasks": len(ids),
                "watchers": watchers,
                "tasks_created": created["created"],
                "open_seconds": ready["open_seconds"],
                "progress_target_per_second": pub["target_per_second"],
                "progress_ok": pub["ok"],
                "progress_errors": pub["errors"],
                "progress_ok_per_second": round(pub["ok"] / pub["run_seconds"], 1),
                "skipped_window_full": pub["skipped_window_full"],
                "final_ok": pub["final_ok"],
                "final_errors": pub["final_errors"],
                "terminal_expected": watchers,
                **{k: v for k, v in lg_report.items() if k != "per_second"},
                **cpu,
                "us_cpu_per_task_update": round(cpu["server_cpu_seconds"] * 1e6 / updates, 1)
                if updates
                else None,
                **profiled,
            }
        )

    run.attempt("E", "tidings", p.e_seconds + p.e_drain_ms / 1000 + 40, go)


def scenario_f(run: Run) -> None:
    p = run.plan
    spec = SERVERS["tidings"]
    if shutil.which("redis-server") is None:
        run.note("F skipped: redis-server is not installed")
        return
    port = free_port()
    redis = spawn(
        pinned(
            SERVER_CORE,
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--protected-mode", "no"),
            ],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        time.sleep(0.5)
        run.attempt("F", "redis-benchmark", 40, lambda: run.record(redis_capacity.measure(port)))

        def flush() -> None:
            subprocess.run(
                ["redis-cli", "-p", str(port), "flushall"],
                check=False,
                capture_output=True,
                timeout=10,
            )

        def one_node() -> None:
            flush()
            with run_server(spec, extra=["--backend", url]) as server:
                result = measure_fanout(
                    run,
                    server,
                    scenario="F",
                    subs=p.f_subs,
                    mode="max",
                    seconds=p.f_seconds,
                    lead=p.a_lead,
                )
            assert result is not None
            result["server"] = "tidings-redis-1-node"
            result["redis_port"] = port
            run.record(result)

        def two_nodes() -> None:
            flush()
            with (
                run_server(spec, extra=["--backend", url]) as node1,
                run_server(spec, extra=["--backend", url]) as node2,
            ):
                run.record(two_node_run(run, node1, node2))

        run.attempt("F", "tidings-redis-1-node", p.f_seconds + 25, one_node)
        run.attempt("F", "tidings-redis-2-nodes", p.f_seconds + 30, two_nodes)
    finally:
        stop_process(redis, grace=3)


def two_node_run(run: Run, node1: Server, node2: Server) -> dict[str, Any]:
    """Half the subscribers on each node; every publish goes to node 1."""
    p = run.plan
    half = p.f_subs // 2
    for node in (node1, node2):
        warm_up(node)
    gens: list[LoadGen] = []
    files = [BUILD / f"stats-{n.port}" for n in (node1, node2)]
    try:
        for node, stats in zip((node1, node2), files, strict=True):
            gens.append(
                LoadGen(
                    run.loadgen,
                    node.port,
                    half,
                    path=node.spec.subscribe_path,
                    max_run=p.f_seconds + 180,
                    stats_file=stats,
                )
            )
        for g in gens:
            g.wait_ready(120)
        meters = [node1.meter(), node2.meter()]
        publisher = Publisher(
            "max",
            [
                *("--port", str(node1.port), "--duration", str(p.f_seconds)),
                *("--lead", str(p.a_lead), "--subscribers", str(half * 2)),
                *("--conns", str(p.a_publishers)),
                *("--stats-file", ",".join(map(str, files))),
            ],
        )
        try:
            publisher.wait_started()
            for m in meters:
                m.start()
            for g in gens:
                g.send("start")
            pub = publisher.report(p.f_seconds + 60)
            reports = [g.finish(0, 0, timeout=30) for g in gens]
            cpus = [m.read() for m in meters]
        finally:
            publisher.close()
    finally:
        for g in gens:
            g.close()
    deliveries = sum(r["events_total"] for r in reports)
    window = max(r["window_seconds"] for r in reports)
    cpu = sum(c["server_cpu_seconds"] for c in cpus)
    return {
        "scenario": "F",
        "server": "tidings-redis-2-nodes",
        "subscribers": half * 2,
        "mode": "max",
        "publishes_ok": pub["ok"],
        "publish_errors": pub["errors"],
        "events_total": deliveries,
        "events_window": sum(r["events_window"] for r in reports),
        "window_seconds": window,
        "deliveries_per_second": round(sum(r["deliveries_per_second"] for r in reports), 1),
        "deliveries_per_second_by_node": [r["deliveries_per_second"] for r in reports],
        "latency_us": {
            "p50": max(r["latency_us"]["p50"] for r in reports),
            "p90": max(r["latency_us"]["p90"] for r in reports),
            "p99": max(r["latency_us"]["p99"] for r in reports),
            "max": max(r["latency_us"]["max"] for r in reports),
            "by_node": [r["latency_us"] for r in reports],
        },
        "loadgen_cpu_share": round(sum(r["loadgen_cpu_share"] for r in reports), 3),
        "server_cpu_seconds": round(cpu, 3),
        "server_core_busy": cpus[0]["server_core_busy"],
        "us_cpu_per_delivery": round(cpu * 1e6 / deliveries, 2) if deliveries else None,
        "note": "both nodes and Redis share core 0",
    }


def profile_tidings(run: Run, scenario: str) -> None:
    """Scenario A or B against tidings again, under py-spy (kept out of the measured runs)."""
    p = run.plan
    out = BUILD / f"profile-tidings-{scenario}.txt"
    if scenario == "B":
        shape: dict[str, Any] = dict(
            subs=p.b_subs, mode="rate", seconds=p.b_seconds, rate=p.b_rate, drain_ms=p.b_drain_ms
        )
    else:
        shape = dict(subs=p.a_subs, mode="max", seconds=p.a_seconds, lead=p.a_lead)

    def go() -> None:
        with run_server(SERVERS["tidings"]) as server:
            result = measure_fanout(
                run, server, scenario=f"{scenario}-profile", profile_out=out, **shape
            )
        if result is not None:
            result["profile"] = str(out.relative_to(ROOT))
            result["profile_summary"] = profile_summary.summarize(profile_summary.load(out), 30)
            run.record(result)

    run.attempt(f"{scenario}-profile", "tidings", float(shape["seconds"]) + 40, go)


# -- setup ------------------------------------------------------------------------------------


def ensure_system_packages(install: bool) -> list[str]:
    """Install the Debian packages the run uses when missing (as root); return notes."""
    missing = [pkg for pkg, probe in SYSTEM_PACKAGES.items() if not _present(probe)]
    if not missing:
        return []
    if not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return [f"missing system packages (their runs are skipped): {' '.join(missing)}"]
    print(f"installing: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", *missing],
        check=False,
        env=env,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    # A package's install may start its service; the benchmark starts its own processes.
    for service in ("nginx", "redis-server"):
        if service in missing and shutil.which("systemctl"):
            subprocess.run(["systemctl", "stop", service], check=False, capture_output=True)
    still = [pkg for pkg, probe in SYSTEM_PACKAGES.items() if not _present(probe)]
    return [f"could not install: {' '.join(still)}"] if still else []


def _present(probe: str) -> bool:
    return Path(probe).exists() if probe.startswith("/") else shutil.which(probe) is not None


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions: dict[str, str] = {}
    for dist in (
        "tidings",
        "uvicorn",
        "uvloop",
        "starlette",
        "fastapi",
        "sse-starlette",
        "granian",
    ):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    for dist in ("aiohttp", "aiohttp-sse"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    nginx = (
        subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
        if shutil.which("nginx")
        else ""
    )
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "open_files_limit": _nofile(),
        "load_average_at_start": list(os.getloadavg()),
        "commit": _head_commit(),
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
        "versions": versions,
        "nginx": nginx,
    }


def write_floor() -> dict[str, float]:
    """The kernel's cost of one event's ``send`` on the server core (benchmarks/write_floor.py)."""
    argv = pinned(SERVER_CORE, [PYTHON, "-m", "benchmarks.write_floor"])
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stop_process(proc, grace=1)
        return {}
    with contextlib.suppress(ValueError):
        found: dict[str, float] = json.loads(out)
        return found
    return {}


def _head_commit() -> str:
    """The checked-out commit, read from .git (the tree may hold uncommitted changes)."""
    git = ROOT / ".git"
    with contextlib.suppress(OSError):
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return "unknown"


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small and short (about 2 min)")
    parser.add_argument("--scenarios", default=ALL_SCENARIOS, help="e.g. A,B (default: all)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="A",
        choices=["A", "B", "E"],
        help="also run tidings under py-spy in scenario A (default) or B; E profiles the "
        "measured run of E (task progress) itself",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a plan field, e.g. --set a_publishers=1 (see Plan)",
    )
    args = parser.parse_args(argv)

    scenarios = {s.strip().upper() for s in args.scenarios.replace(",", " ").split()}
    unknown = scenarios - set(ALL_SCENARIOS.split(","))
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [n for n in names if n not in SERVERS]
    if unknown or bad:
        parser.error(f"unknown scenarios {sorted(unknown)} or servers {bad}")
    if os.cpu_count() is not None and (os.cpu_count() or 0) < 2:
        print("warning: fewer than 2 cores; server and load share one", file=sys.stderr)

    notes = ensure_system_packages(not args.no_install)
    servers: list[ServerSpec] = []
    for name in names:
        why = SERVERS[name].missing()
        if why:
            notes.append(f"{name} skipped: {why}")
        else:
            servers.append(SERVERS[name])
    plan = QUICK if args.quick else Plan()
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in Plan.__dataclass_fields__:
            parser.error(f"--set: no plan field {name!r}")
        current = getattr(plan, name)
        plan = replace(plan, **{name: type(current)(value)})
    run = Run(plan, servers, profile=args.profile is not None, profile_e=args.profile == "E")
    for n in notes:
        run.note(n)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"tidings benchmarks ({'quick' if args.quick else 'full'}): {command}", flush=True)

    floor = write_floor()
    if floor:
        print(f"kernel cost of one send (µs, by sockets open): {floor}", flush=True)
    try:
        if "A" in scenarios:
            scenario_a(run)
        if "A1" in scenarios:
            scenario_a1(run)
        if "B" in scenarios:
            scenario_b(run, with_c="C" in scenarios)
        elif "C" in scenarios:
            scenario_c(run)
        if "D" in scenarios:
            scenario_d(run)
        if "E" in scenarios and "tidings" in names:
            scenario_e(run)
        if "F" in scenarios and "tidings" in names:
            scenario_f(run)
        if args.profile in ("A", "B") and "tidings" in names:
            profile_tidings(run, args.profile)
    except KeyboardInterrupt:
        run.note("interrupted")

    elapsed = time.monotonic() - run.started
    data = {
        "timestamp": stamp,
        "command": command.strip(),
        "quick": args.quick,
        "plan": asdict(plan),
        "elapsed_seconds": round(elapsed, 1),
        "machine": {**machine(), "send_us_by_sockets": floor},
        "results": run.results,
        "notes": run.notes,
    }
    # A full run of everything is the record (kept in git, shown in docs/performance.md);
    # quick, partial or modified runs are for development and stay in the ignored build
    # directory.
    record = (
        not args.quick
        and not args.set
        and scenarios == set(ALL_SCENARIOS.split(","))
        and names == list(SERVERS)
    )
    results_dir = RESULTS if record else BUILD
    images_dir = IMAGES if record else BUILD / "images"
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{stamp}{'-quick' if args.quick else ''}.json"
    out.write_text(json.dumps(data, indent=1) + "\n")
    table = report.markdown(data)
    (results_dir / ("latest.md" if record else "latest-dev.md")).write_text(table)
    print()
    print(table)
    if not args.no_plots:
        try:
            paths = report.plots(data, images_dir)
            print("plots: " + ", ".join(str(p.relative_to(ROOT)) for p in paths))
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
    print(f"results: {out.relative_to(ROOT)} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
