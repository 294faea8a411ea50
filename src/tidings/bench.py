"""``tidings bench``: a quick, self-contained load check of a hub.

It opens N streams on one topic, publishes M events at a steady rate over ``POST /publish``
(each carrying the time it was sent), and reports what arrived: delivered/expected,
deliveries per second, publish-to-receive latency (p50, p95, p99, max) and how long the
streams took to open. Without ``--url`` it starts its own ``tidings serve`` on a free
loopback port (memory backend, memory store, limits off) and stops it afterwards.

Decisions that may surprise (the streams are explained in :mod:`tidings._bench_streams`):

- Latency is measured inside this process (the publisher and the streams share one
  clock), so it includes this process's own loop delays. It is a check, not a benchmark:
  the side-by-side comparison with other servers is ``make bench`` (``benchmarks/``,
  ``docs/performance.md``).
- A ``429`` while opening a stream (the hub's connection-rate limit) is waited out
  (``Retry-After``) and counted; the bench is bounded by ``--timeout`` all the same.
- Exit code 1 when any event was not delivered to every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from tidings._bench_hub import own_hub
from tidings._bench_streams import Refused, Stream, Totals, hub_target, open_stream
from tidings._rawhttp import stream_request
from tidings.errors import ConfigError, TidingsError

__all__ = ["BenchResult", "add_bench_arguments", "bench", "run_bench"]


#: The largest ``--payload-bytes`` (16 MiB: far over any hub's ``--max-event-bytes``).
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
#: The longest ``--timeout``, in seconds (a day).
MAX_TIMEOUT = 86400.0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tidings bench`` flags (except ``--url`` and ``--token``)."""
    parser.add_argument(
        "--subscribers", type=int, default=200, metavar="N", help="streams (default: 200)"
    )
    parser.add_argument(
        "--events", type=int, default=200, metavar="M", help="events to publish (default: 200)"
    )
    parser.add_argument(
        "--rate", type=float, default=50.0, help="publishes per second (default: 50)"
    )
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=100,
        metavar="BYTES",
        help="padding in each event's data (default: 100)",
    )
    parser.add_argument(
        "--topic", default=None, help="topic to use (default: bench/<random>, unused elsewhere)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up after this long, whatever happens (default: 60)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


@dataclass(frozen=True, slots=True)
class BenchResult:
    """What a bench run measured. Times are seconds, latencies milliseconds."""

    url: str
    own_hub: bool
    subscribers: int
    streams_opened: int
    streams_refused: int
    open_seconds: float
    open_ms: dict[str, float]
    events: int
    published: int
    publish_errors: int
    publish_seconds: float
    expected: int
    delivered: int
    delivered_ratio: float
    deliveries_per_second: float
    latency_ms: dict[str, float]
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every stream received every published event."""
        return self.expected > 0 and self.delivered == self.expected

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object (``--json``)."""
        data = asdict(self)
        data["complete"] = self.complete
        return data


def _percentiles(values: list[float], points: tuple[int, ...]) -> dict[str, float]:
    if not values:
        return {f"p{p}": 0.0 for p in points} | {"max": 0.0}
    ordered = sorted(values)
    last = len(ordered) - 1
    found = {f"p{p}": round(ordered[min(last, round(p / 100 * last))], 3) for p in points}
    found["max"] = round(ordered[-1], 3)
    return found


async def bench(
    url: str,
    *,
    subscribers: int = 200,
    events: int = 200,
    rate: float = 50.0,
    payload_bytes: int = 100,
    topic: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    own_hub: bool = False,
) -> BenchResult:
    """Run the load check against the hub at ``url`` (module doc); returns what it measured.

    Raises:
        ConfigError: a bad argument.
        TidingsError: the hub refused the streams or cannot be reached.
    """
    import httpx

    target = hub_target(url)
    topic = topic or f"bench/{secrets.token_hex(4)}"
    deadline = time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    totals = Totals(loop)
    host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
    request = stream_request(target.prefix + "/events", host=host, topics=(topic,), token=token)
    errors: list[str] = []
    streams: list[Stream] = []
    gate = asyncio.Semaphore(64)  # connects in flight: below any listen backlog

    async def open_one() -> tuple[Stream, float, int]:
        async with gate:
            return await open_stream(target, request, totals, deadline)

    opening = time.perf_counter()
    results = await asyncio.gather(
        *(open_one() for _ in range(subscribers)), return_exceptions=True
    )
    open_seconds = time.perf_counter() - opening
    open_times: list[float] = []
    refused = 0
    for result in results:
        if isinstance(result, BaseException):
            if isinstance(result, Refused):
                errors.append(f"stream refused with HTTP {result.status}")
            elif isinstance(result, TimeoutError):
                errors.append("stream did not open before --timeout")
            elif isinstance(result, OSError):
                errors.append(f"cannot connect: {result.strerror or result}")
            else:
                errors.append(f"stream failed: {result!r}")
            continue
        stream, seconds, refused_here = result
        streams.append(stream)
        open_times.append(seconds * 1000)
        refused += refused_here
    if not streams:
        raise TidingsError(f"no stream could be opened on {target.url}: {errors[0]}")

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    pad = "x" * payload_bytes
    published = 0
    publish_errors = 0
    publish_started = time.perf_counter()
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=10) as http:
        for i in range(events):
            due = publish_started + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing: the next publish is due then
            if time.monotonic() > deadline:
                errors.append("--timeout ran out while publishing")
                break
            # The timestamp comes first in the data: the streams read it without JSON.
            data = {"t": time.perf_counter_ns(), "i": i, "pad": pad}
            body = {"topic": topic, "type": "bench", "data": data}
            try:
                response = await http.post("/publish", json=body)
            except httpx.HTTPError as exc:
                publish_errors += 1
                errors.append(f"publish failed: {exc!r}")
                continue
            if response.status_code == 202:
                published += 1
            else:
                publish_errors += 1
                errors.append(f"publish refused with HTTP {response.status_code}")
    publish_seconds = time.perf_counter() - publish_started

    expected = published * len(streams)
    totals.expected = expected
    if totals.delivered >= expected:
        totals.all_delivered.set()
    # Events still on their way get up to 10 s (or what --timeout leaves) to arrive.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            totals.all_delivered.wait(), max(0.1, min(10.0, deadline - time.monotonic()))
        )
    for stream in streams:
        stream.close()
    delivered = min(totals.delivered, expected)
    spent = max(1e-9, totals.last_delivery - publish_started) if delivered else 0.0
    return BenchResult(
        url=target.url,
        own_hub=own_hub,
        subscribers=subscribers,
        streams_opened=len(streams),
        streams_refused=refused,
        open_seconds=round(open_seconds, 3),
        open_ms=_percentiles(open_times, (50, 95)),
        events=events,
        published=published,
        publish_errors=publish_errors,
        publish_seconds=round(publish_seconds, 3),
        expected=expected,
        delivered=delivered,
        delivered_ratio=round(delivered / expected, 6) if expected else 0.0,
        deliveries_per_second=round(delivered / spent, 1) if delivered else 0.0,
        latency_ms=_percentiles([n / 1e6 for n in totals.latencies_ns], (50, 95, 99)),
        errors=list(dict.fromkeys(errors))[:10],
    )


def _raise_open_files_limit(subscribers: int) -> None:
    """Every stream holds a socket: make room for them (and some to spare), or say why not."""
    needed = subscribers + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigError(
            f"--subscribers {subscribers} needs {needed} open files; the limit is {hard}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _report(result: BenchResult) -> str:
    own = " (its own hub)" if result.own_hub else ""
    lat = result.latency_ms
    lines = [
        f"tidings bench on {result.url}{own}: {result.subscribers} streams, {result.events} events",
        f"streams opened   {result.streams_opened}/{result.subscribers} in "
        f"{result.open_seconds:.2f} s (p50 {result.open_ms['p50']:.1f} ms, "
        f"p95 {result.open_ms['p95']:.1f} ms per stream"
        + (f"; {result.streams_refused} waited after 429" if result.streams_refused else "")
        + ")",
        f"published        {result.published}/{result.events} in "
        f"{result.publish_seconds:.2f} s"
        + (f", {result.publish_errors} failed" if result.publish_errors else ""),
        f"delivered        {result.delivered}/{result.expected} "
        f"({100 * result.delivered_ratio:.2f}%)",
        f"deliveries/s     {result.deliveries_per_second:,.0f}",
        f"latency          p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  "
        f"p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms",
    ]
    lines += [f"error            {error}" for error in result.errors]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    """``tidings bench``: run, print, and return 0 when everything was delivered, else 1.

    Raises:
        ConfigError: a bad flag value (exit code 2 from the CLI).
        TidingsError: the hub cannot be reached or refused every stream.
    """
    if args.subscribers < 1:
        raise ConfigError("--subscribers must be at least 1")
    if args.events < 1:
        raise ConfigError("--events must be at least 1")
    if not args.rate > 0 or args.rate == float("inf"):
        raise ConfigError("--rate must be a positive number of publishes per second")
    if not 0 <= args.payload_bytes <= MAX_PAYLOAD_BYTES:
        raise ConfigError(f"--payload-bytes must be from 0 to {MAX_PAYLOAD_BYTES}")
    if not 0 < args.timeout <= MAX_TIMEOUT:
        raise ConfigError(f"--timeout must be from 0 to {MAX_TIMEOUT:g} seconds")
    if args.events / args.rate >= args.timeout:
        raise ConfigError(
            f"publishing {args.events} events at {args.rate:g}/s takes longer than "
            f"--timeout {args.timeout:g}"
        )
    if args.topic is not None:
        from tidings.topics import validate_topic

        validate_topic(args.topic)
    _raise_open_files_limit(args.subscribers)

    def measure(url: str, own: bool) -> BenchResult:
        return _run_loop(
            bench(
                url,
                subscribers=args.subscribers,
                events=args.events,
                rate=args.rate,
                payload_bytes=args.payload_bytes,
                topic=args.topic,
                token=args.token,
                timeout=args.timeout,
                own_hub=own,
            )
        )

    if args.url is None:
        with own_hub() as url:
            result = measure(url, True)
    else:
        result = measure(args.url, False)
    if args.json:
        import orjson

        print(orjson.dumps(result.to_json()).decode())
    else:
        print(_report(result))
    return 0 if result.complete else 1


def _run_loop(main: Coroutine[Any, Any, BenchResult]) -> BenchResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it exists
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
