"""Tables and plots of a benchmark run (results JSON in, markdown and PNG out)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Result = dict[str, Any]

ORDER = [
    "tidings",
    "tidings-embedded",
    "tidings-granian",
    "bare-uvloop",
    "nchan",
    "sse-starlette",
    "aiohttp-sse",
    "fastapi-sse",
]
COLORS = {
    "tidings": "#d1495b",
    "tidings-embedded": "#a4243b",
    "tidings-granian": "#e8838f",
    "bare-uvloop": "#30638e",
    "nchan": "#00798c",
    "sse-starlette": "#edae49",
    "aiohttp-sse": "#66a182",
    "fastapi-sse": "#8d6a9f",
}
REFERENCES = ("bare-uvloop", "sse-starlette")


def _ms(us: float | None) -> str:
    if us is None or us < 0:
        return "n/a"
    ms = us / 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}"


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref <= 0:
        return "n/a"
    return f"{value / ref:.2f}x"


def one_line(r: Result) -> str:
    """A short progress line for one result."""
    if "error" in r:
        return f"{r['scenario']} {r['server']}: error: {r['error']}"
    if r["scenario"] == "C":
        return (
            f"C {r['server']}: {r['connections_opened']} open in {r['open_seconds']:.2f} s, "
            f"{r['kib_per_connection']:.1f} KiB/conn"
        )
    if r["server"] == "redis-benchmark":
        return f"F redis-benchmark: {r.get('summary', '')}"
    lat = r.get("latency_us", {})
    text = (
        f"{r['scenario']} {r['server']}: {r.get('deliveries_per_second', 0):,.0f} deliveries/s, "
        f"p50 {_ms(lat.get('p50'))} ms, p99 {_ms(lat.get('p99'))} ms"
    )
    if r.get("us_cpu_per_delivery") is not None:
        text += f", {r['us_cpu_per_delivery']:.1f} µs CPU/delivery"
    if r.get("us_core_per_delivery") is not None:
        text += f" ({r['us_core_per_delivery']:.1f} µs of core)"
    if r.get("server_core_busy") is not None:
        text += f", server core {r['server_core_busy'] * 100:.0f}%"
    if r.get("loadgen_cpu_share") is not None:
        text += f", loadgen {r['loadgen_cpu_share'] * 100:.0f}%"
    if r.get("delivered_fraction") is not None:
        text += f", delivered {r['delivered_fraction'] * 100:.1f}%"
    if r["scenario"] == "E":
        text += (
            f", {r['progress_ok_per_second']:,.0f} updates/s, "
            f"{r['counted_type_events']}/{r['terminal_expected']} terminal"
        )
    return text


def _by_server(results: list[Result], scenario: str) -> dict[str, Result]:
    rows = {r["server"]: r for r in results if r["scenario"] == scenario and "error" not in r}
    return dict(sorted(rows.items(), key=lambda kv: _rank(kv[0])))


def _rank(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _refs(rows: dict[str, Result], get: Callable[[Result], float | None]) -> list[float | None]:
    return [get(rows[name]) if name in rows else None for name in REFERENCES]


def markdown(data: dict[str, Any]) -> str:
    """The results as markdown tables, with ratios against the two reference servers."""
    results: list[Result] = data["results"]
    plan = data["plan"]
    out = [
        f"# Benchmark results ({data['timestamp']}{', quick' if data['quick'] else ''})",
        "",
        f"Command: `{data['command']}` — {data['elapsed_seconds']:.0f} s. "
        f"Server on core {data['machine']['server_core']}, load on core "
        f"{data['machine']['load_core']}; {data['machine']['cpu']}.",
        "Ratios: the row's value divided by the reference's (bare uvloop, sse-starlette).",
    ]
    floor = data["machine"].get("send_us_by_sockets") or {}
    if floor:
        costs = ", ".join(f"{us} µs with {int(n):,} sockets" for n, us in floor.items())
        out += [
            "",
            f"One `send` of an event costs this machine's kernel {costs} "
            "(`benchmarks/write_floor.py` on the server core): the floor under CPU per "
            "delivery wherever events are not coalesced.",
        ]

    def deliveries(r: Result) -> float | None:
        value = r.get("deliveries_per_second")
        return float(value) if value is not None else None

    def p99(r: Result) -> float | None:
        value = r.get("latency_us", {}).get("p99")
        return float(value) if value is not None and value >= 0 else None

    for a_name, a_title in (
        ("A", "publish as fast as delivered"),
        ("A1", "one publishing connection, as fast as delivered"),
    ):
        rows = _by_server(results, a_name)
        if not rows:
            continue
        refs = _refs(rows, deliveries)
        out += [
            "",
            f"## {a_name} — {plan['a_subs']:,} subscribers, {a_title} "
            f"({plan['a_seconds']:.0f} s, at most {plan['a_lead']} events ahead)",
            "",
        ]
        out += _table(
            [
                "server",
                "deliveries/s",
                "x bare uvloop",
                "x sse-starlette",
                "publishes/s",
                "p50 ms",
                "p99 ms",
                "server µs CPU/delivery",
                "server core busy",
                "loadgen core",
            ],
            [
                [
                    name,
                    _num(r["deliveries_per_second"]),
                    _ratio(deliveries(r), refs[0]),
                    _ratio(deliveries(r), refs[1]),
                    _num(r["publishes_ok"] / r["window_seconds"]),
                    _ms(r["latency_us"]["p50"]),
                    _ms(r["latency_us"]["p99"]),
                    _num(r["us_cpu_per_delivery"]),
                    f"{r['server_core_busy'] * 100:.0f}%",
                    f"{r['loadgen_cpu_share'] * 100:.0f}%",
                ]
                for name, r in rows.items()
            ],
        )

    for scenario, subs, secs, rate in (
        ("B", plan["b_subs"], plan["b_seconds"], plan["b_rate"]),
        ("D", plan["d_subs"], plan["d_seconds"], plan["d_rate"]),
        ("D2", plan["d_subs"], plan["d_seconds"], plan.get("d2_rate", 0)),
    ):
        rows = _by_server(results, scenario)
        if not rows:
            continue
        drefs = _refs(rows, deliveries)
        lrefs = _refs(rows, p99)
        drain = plan[f"{scenario.lower()[:1]}_drain_ms"] / 1000
        out += [
            "",
            f"## {scenario} — {'capacity: ' if scenario == 'D2' else ''}{subs:,} subscribers, "
            f"{rate:.0f} publishes/s for {secs:.0f} s (then up to {drain:.0f} s to catch up)",
            "",
        ]
        out += _table(
            [
                "server",
                "opened",
                "deliveries/s",
                "x bare uvloop",
                "x sse-starlette",
                "delivered",
                "all in window",
                "p50 ms",
                "p99 ms",
                "p99 x bare",
                "p99 x sse-starlette",
                "max ms",
                "server µs CPU/delivery",
                "loadgen core",
            ],
            [
                [
                    name,
                    f"{r['connections_opened']:,}",
                    _num(r["deliveries_per_second"]),
                    _ratio(deliveries(r), drefs[0]),
                    _ratio(deliveries(r), drefs[1]),
                    f"{(r['delivered_fraction'] or 0) * 100:.1f}%",
                    "yes" if r["all_delivered"] else "no",
                    _ms(r["latency_us"]["p50"]),
                    _ms(r["latency_us"]["p99"]),
                    _ratio(p99(r), lrefs[0]),
                    _ratio(p99(r), lrefs[1]),
                    _ms(r["latency_us"]["max"]),
                    _num(r["us_cpu_per_delivery"]),
                    f"{r['loadgen_cpu_share'] * 100:.0f}%",
                ]
                for name, r in rows.items()
            ],
        )

    rows = _by_server(results, "C")
    if rows:

        def kib(r: Result) -> float | None:
            return float(r["kib_per_connection"])

        refs = _refs(rows, kib)
        out += ["", f"## C — {plan['b_subs']:,} idle subscribers: memory and time to open", ""]
        out += _table(
            [
                "server",
                "opened",
                "open all (s)",
                "RSS before (MiB)",
                "RSS after (MiB)",
                "KiB/connection",
                "x bare uvloop",
                "x sse-starlette",
            ],
            [
                [
                    name,
                    f"{r['connections_opened']:,}",
                    f"{r['open_seconds']:.2f}",
                    f"{r['rss_before_kib'] / 1024:.0f}",
                    f"{r['rss_after_kib'] / 1024:.0f}",
                    f"{r['kib_per_connection']:.1f}",
                    _ratio(kib(r), refs[0]),
                    _ratio(kib(r), refs[1]),
                ]
                for name, r in rows.items()
            ],
        )

    for r in results:
        if r["scenario"] == "E" and "error" not in r:
            out += [
                "",
                f"## E — {r['tasks']:,} tasks x {r['watchers'] // max(r['tasks'], 1)} watchers, "
                f"progress {plan['e_rate']:.0f}x/s per task for {plan['e_seconds']:.0f} s "
                "(tidings only)",
                "",
            ]
            out += _table(
                ["measure", "value"],
                [
                    [
                        "watchers opened",
                        f"{r['connections_opened']:,} in {r['open_seconds']:.2f} s",
                    ],
                    [
                        "progress updates accepted",
                        f"{r['progress_ok']:,} ({r['progress_ok_per_second']:,.0f}/s of "
                        f"{r['progress_target_per_second']:,.0f}/s asked; "
                        f"{r['skipped_window_full']:,} not sent: the server had not answered "
                        "the ones before)",
                    ],
                    ["progress errors", str(r["progress_errors"] + r["final_errors"])],
                    ["server µs CPU per task update", _num(r["us_cpu_per_task_update"])],
                    ["server core busy", f"{r['server_core_busy'] * 100:.0f}%"],
                    ["events received", f"{r['events_total']:,}"],
                    [
                        "terminal events delivered",
                        f"{r['counted_type_events']:,} of {r['terminal_expected']:,}",
                    ],
                    ["streams ended by the server", f"{r['streams_ended_clean']:,}"],
                    ["sequence went backwards", str(r["seq_regressions"])],
                    ["terminal not right after the last progress", str(r["stale_terminal"])],
                    [
                        "progress latency p50 / p99 ms",
                        f"{_ms(r['latency_us']['p50'])} / {_ms(r['latency_us']['p99'])}",
                    ],
                ],
            )

    f_rows = [r for r in results if r["scenario"] == "F" and "error" not in r]
    if f_rows:
        out += [
            "",
            f"## F — tidings on Redis: one node vs two ({plan['f_subs']:,} subscribers)",
            "",
        ]
        nodes = [r for r in f_rows if r["server"] != "redis-benchmark"]
        if nodes:
            out += _table(
                [
                    "setup",
                    "deliveries/s",
                    "publishes/s",
                    "p50 ms",
                    "p99 ms",
                    "server µs CPU/delivery",
                    "loadgen core",
                ],
                [
                    [
                        r["server"],
                        _num(r["deliveries_per_second"]),
                        _num(r["publishes_ok"] / r["window_seconds"]),
                        _ms(r["latency_us"]["p50"]),
                        _ms(r["latency_us"]["p99"]),
                        _num(r["us_cpu_per_delivery"]),
                        f"{r['loadgen_cpu_share'] * 100:.0f}%",
                    ]
                    for r in nodes
                ],
            )
        for r in f_rows:
            if r["server"] == "redis-benchmark":
                out += ["", "Redis capacity (redis-benchmark, Redis on core 0):", ""]
                out += _table(
                    ["command", "requests/s", "p50 ms"],
                    [[t["name"], _num(t["rps"]), f"{t['p50_ms']:.3f}"] for t in r["tests"]],
                )

    errors = [r for r in results if "error" in r]
    if errors or data["notes"]:
        out += ["", "## Notes", ""]
        out += [f"- {n}" for n in data["notes"]]
    return "\n".join(out) + "\n"


# -- plots ------------------------------------------------------------------------------------


def plots(data: dict[str, Any], folder: Path) -> list[Path]:
    """Throughput bars, latency CDFs and memory per connection, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    results: list[Result] = data["results"]
    plan = data["plan"]
    made: list[Path] = []
    tag = " (quick run)" if data["quick"] else ""

    panels = [
        (s, t, _by_server(results, s))
        for s, t in (
            ("A", f"A: {plan['a_subs']:,} subscribers, as fast as delivered"),
            ("B", f"B: {plan['b_subs']:,} subscribers, {plan['b_rate']:.0f} publishes/s"),
            ("D", f"D: {plan['d_subs']:,} subscribers, {plan['d_rate']:.0f} publishes/s"),
        )
    ]
    panels = [p for p in panels if p[2]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
        for ax, (_, title, rows) in zip(axes[0], panels, strict=True):
            names = list(rows)
            values = [rows[n]["deliveries_per_second"] / 1000 for n in names]
            bars = ax.bar(names, values, color=[COLORS.get(n, "#999") for n in names])
            ax.bar_label(bars, labels=[f"{v:,.0f}k" for v in values], fontsize=8)
            offered = [
                r["publishes_sent"] / r["window_seconds"] * r["connections_opened"] / 1000
                for r in rows.values()
                if r.get("mode") == "rate" and r.get("window_seconds")
            ]
            if offered:
                ax.axhline(max(offered), color="#555", linestyle="--", linewidth=1)
                ax.annotate(
                    "offered",
                    (len(names) - 1, max(offered)),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                    color="#555",
                )
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("deliveries/s (thousands)")
            ax.tick_params(axis="x", rotation=30, labelsize=8)
            ax.margins(y=0.15)
        fig.suptitle(f"Fan-out throughput: server on one core{tag}", fontsize=11)
        fig.tight_layout()
        path = folder / "bench_throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    cdf_panels = [(s, _by_server(results, s)) for s in ("A", "B", "D") if _by_server(results, s)]
    if cdf_panels:
        fig, axes = plt.subplots(
            1, len(cdf_panels), figsize=(5.2 * len(cdf_panels), 4.4), squeeze=False
        )
        for ax, (scenario, rows) in zip(axes[0], cdf_panels, strict=True):
            for name, r in rows.items():
                points = [(us / 1000, pct) for pct, us in r["latency_us"].get("cdf", []) if us >= 0]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=".", label=name, color=COLORS.get(name, "#999"))
            ax.set_xscale("log")
            ax.set_xlabel("publish → receive (ms, log scale)")
            ax.set_ylabel("percentile")
            ax.set_title(f"Latency CDF, scenario {scenario}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Publish → receive latency{tag}", fontsize=11)
        fig.tight_layout()
        path = folder / "bench_latency_cdf.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    rows = _by_server(results, "C")
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4.4))
        names = list(rows)
        values = [rows[n]["kib_per_connection"] for n in names]
        bars = ax.bar(names, values, color=[COLORS.get(n, "#999") for n in names])
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=8)
        ax.set_ylabel("server RSS per idle connection (KiB)")
        ax.set_title(
            f"C: memory per connection, {plan['b_subs']:,} idle subscribers{tag}", fontsize=10
        )
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.margins(y=0.15)
        fig.tight_layout()
        path = folder / "bench_memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made
