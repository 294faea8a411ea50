"""The benchmark publisher: HTTP publishes with a send timestamp in every payload.

Every payload carries ``"t"``: the send time in microseconds of CLOCK_REALTIME, which the
load generator (another process on the same machine) subtracts from its receive time.
Requests go over a few keep-alive connections, pipelined, with raw sockets (an asyncio
Protocol on uvloop): the client costs a few microseconds per publish, so the server is what
is measured.

Modes (one JSON report on stdout at the end):

- ``rate``: a fixed number of publishes per second for a duration (open loop, with a cap on
  requests in flight).
- ``max``: as fast as possible, closed loop. With ``--stats-file`` (the load generator's live
  counters, shared with mmap) and ``--subscribers N``, the publisher keeps at most
  ``--lead`` events published but not yet received by every subscriber: the server's
  sustainable fan-out rate is measured, and servers that accept publishes faster than they
  deliver them cannot grow their queues without bound. (A probe subscriber of our own
  would not do: a server that buffers behind full sockets would serve it first.)
- ``tasks-create`` / ``tasks-run``: the task API (scenario E): create tasks, then report
  progress on each at a fixed rate, then complete them all.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import mmap
import resource
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop

Callback = Callable[[int, bytes], None]
#: Seconds between "started" and the first publish of a fixed-rate run (see ``run_rate``).
START_DELAY = 0.2


def now_us() -> int:
    return time.time_ns() // 1000


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    errors: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    def done(self, status: int) -> None:
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.ok += 1
        else:
            self.errors += 1


class HTTPPipe(asyncio.Protocol):
    """One keep-alive connection; requests are pipelined and answered in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: collections.deque[Callback] = collections.deque()
        self.closed = asyncio.get_running_loop().create_future()
        self.out: list[bytes] = []
        self.idle = asyncio.Event()
        self.idle.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def inflight(self) -> int:
        return len(self.waiting)

    def queue(self, request: bytes, callback: Callback) -> None:
        self.out.append(request)
        self.waiting.append(callback)
        self.idle.clear()

    async def wait_idle(self) -> None:
        """Until every request queued so far is answered (or the connection closed)."""
        await asyncio.wait(
            [asyncio.ensure_future(self.idle.wait()), self.closed],
            return_when=asyncio.FIRST_COMPLETED,
        )

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            status = int(head[9:12])
            pos = head.find(b"content-length:")
            if pos >= 0:
                eol = head.find(b"\r\n", pos)
                length = int(head[pos + 15 : eol if eol >= 0 else None])
                if len(buf) < end + 4 + length:
                    return
                body = bytes(buf[end + 4 : end + 4 + length])
                del buf[: end + 4 + length]
            elif b"transfer-encoding: chunked" in head:
                last = buf.find(b"\r\n0\r\n\r\n", end)
                if last < 0:
                    return
                body = bytes(buf[end + 4 : last])
                del buf[: last + 7]
            else:
                body = b""
                del buf[: end + 4]
            if self.waiting:
                self.waiting.popleft()(status, body)
                if not self.waiting:
                    self.idle.set()


def build_request(method: str, path: str, body: bytes, port: int) -> bytes:
    return (
        b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            method.encode(),
            path.encode(),
            port,
            len(body),
            body,
        )
    )


class Publishing:
    """Builds the publish request for the target server's API."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port: int = args.port
        self.nchan: bool = args.format == "nchan"
        self.topic: str = args.topic
        self.path: str = f"/pub?id={args.topic}" if self.nchan else args.path
        self.pad = "x" * args.pad
        self.n = 0

    def next(self) -> bytes:
        self.n += 1
        data = b'{"t":%d,"n":%d,"pad":"%s"}' % (now_us(), self.n, self.pad.encode())
        body = data if self.nchan else b'{"topic":"%s","data":%s}' % (self.topic.encode(), data)
        return build_request("POST", self.path, body, self.port)


async def open_pipes(port: int, count: int) -> list[HTTPPipe]:
    loop = asyncio.get_running_loop()
    pipes = []
    for _ in range(count):
        _, proto = await loop.create_connection(HTTPPipe, "127.0.0.1", port)
        pipes.append(proto)
    return pipes


def announce_start() -> None:
    """Tells the harness the measured activity begins now (the first line on stdout)."""
    sys.stdout.write('{"started":true}\n')
    sys.stdout.flush()


def report(stats: Stats, started: float, cpu0: float, **extra: Any) -> None:
    elapsed = time.monotonic() - started
    out = {
        "sent": stats.sent,
        "ok": stats.ok,
        "errors": stats.errors,
        "statuses": {str(k): v for k, v in stats.statuses.items()},
        "seconds": round(elapsed, 4),
        "ok_per_second": round(stats.ok / elapsed, 1) if elapsed else 0.0,
        "publisher_cpu_seconds": round(cpu_seconds() - cpu0, 3),
        **extra,
    }
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    sys.stdout.flush()


async def wait_answers(pipes: list[HTTPPipe], timeout: float) -> None:
    """Until every request sent on ``pipes`` is answered, or ``timeout`` passed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            for pipe in pipes:
                await pipe.wait_idle()


async def run_rate(args: argparse.Namespace) -> None:
    """Open loop: publish ``i`` is sent at ``start + i / rate``, answered or not.

    The report comes as soon as the last one is sent (``sent`` is what subscribers should
    receive); answers still outstanding then are counted as ``unanswered``.
    """
    pub = Publishing(args)
    pipes = await open_pipes(args.port, args.conns)
    stats = Stats()
    cpu0 = cpu_seconds()
    started = time.monotonic()
    total = int(args.rate * args.duration)
    announce_start()
    # The harness starts the load generator's window when it reads that line: the first
    # publish waits a moment, so no subscriber can receive it before the window opens.
    await asyncio.sleep(START_DELAY)
    started = time.monotonic()
    i = 0
    while i < total:
        delay = started + i / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        while i < total and started + i / args.rate <= now:
            pipes[i % len(pipes)].queue(pub.next(), lambda status, _b: stats.done(status))
            stats.sent += 1
            i += 1
        for pipe in pipes:
            pipe.flush()
    # Give the last publish one interval to be answered, as the others had.
    await asyncio.sleep(1.0 / args.rate)
    unanswered = sum(p.inflight for p in pipes)
    report(stats, started, cpu0, target=total, unanswered=unanswered)
    # Keep the connections open until every publish is answered: a server drops the
    # pipelined requests of a connection that closes before it read them.
    await wait_answers(pipes, args.linger)


class Delivered:
    """Events received by the load generators, read live from their stats files."""

    def __init__(self, paths: str) -> None:
        self.maps = []
        for path in paths.split(","):
            with open(path, "rb") as f:
                self.maps.append(mmap.mmap(f.fileno(), 4096, access=mmap.ACCESS_READ))

    def events(self) -> int:
        return sum(struct.unpack_from("<Q", m, 0)[0] for m in self.maps)


async def run_max(args: argparse.Namespace) -> None:
    pub = Publishing(args)
    pipes = await open_pipes(args.port, args.conns)
    stats = Stats()
    loop = asyncio.get_running_loop()
    delivered = Delivered(args.stats_file) if args.stats_file else None
    subscribers = max(1, args.subscribers)
    base = delivered.events() if delivered else 0
    stop = False
    waits = 0

    def pump() -> None:
        nonlocal waits
        if stop:
            return
        budget = len(pipes) * args.window
        if delivered is not None:
            done = (delivered.events() - base) // subscribers
            budget = min(budget, args.lead - (stats.sent - done))
        for pipe in pipes:
            while budget > 0 and pipe.inflight < args.window:
                pipe.queue(pub.next(), answered)
                stats.sent += 1
                budget -= 1
            pipe.flush()
        if delivered is not None and budget <= 0:
            waits += 1

    def answered(status: int, _body: bytes) -> None:
        stats.done(status)

    def tick() -> None:
        pump()
        if not stop:
            loop.call_later(args.poll, tick)

    cpu0 = cpu_seconds()
    started = time.monotonic()
    announce_start()
    tick()
    await asyncio.sleep(args.duration)
    stop = True
    extra: dict[str, Any] = {"lead_waits": waits}
    if delivered is not None:
        extra["delivered_per_subscriber"] = (delivered.events() - base) / subscribers
    report(stats, started, cpu0, **extra)
    await wait_answers(pipes, 2.0)


async def run_tasks_create(args: argparse.Namespace) -> list[str]:
    pipes = await open_pipes(args.port, args.conns)
    stats = Stats()
    ids: list[str] = []
    cpu0 = cpu_seconds()
    started = time.monotonic()

    def created(status: int, body: bytes) -> None:
        stats.done(status)
        if status == 201:
            ids.append(orjson.loads(body)["task_id"])

    for i in range(args.n):
        body = orjson.dumps({"title": f"bench {i}", "total": args.total})
        pipes[i % len(pipes)].queue(build_request("POST", "/tasks", body, args.port), created)
        stats.sent += 1
        if i % 100 == 99:
            for pipe in pipes:
                pipe.flush()
            await wait_answers(pipes, 10.0)
    for pipe in pipes:
        pipe.flush()
    await wait_answers(pipes, 10.0)
    report(stats, started, cpu0, created=len(ids))
    return ids


async def run_tasks(args: argparse.Namespace) -> None:
    ids: list[str] = args.task_ids
    pipes = await open_pipes(args.port, args.conns)
    stats = Stats()
    final = Stats()
    cpu0 = cpu_seconds()
    started = time.monotonic()
    counts = dict.fromkeys(ids, 0)
    skipped = 0
    tick = 1.0 / args.rate
    k = 0
    port = args.port
    announce_start()
    await asyncio.sleep(START_DELAY)
    started = time.monotonic()

    def progress(task_id: str, current: int) -> bytes:
        body = b'{"current":%d,"total":%d,"message":"%d"}' % (current, args.total, now_us())
        return build_request("POST", f"/tasks/{task_id}/progress", body, port)

    while time.monotonic() - started < args.duration:
        due = started + k * tick
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for n, task_id in enumerate(ids):
            pipe = pipes[n % len(pipes)]
            if pipe.inflight >= args.window:
                skipped += 1
                continue
            counts[task_id] += 1
            pipe.queue(progress(task_id, counts[task_id]), lambda s, _b: stats.done(s))
            stats.sent += 1
        for pipe in pipes:
            pipe.flush()
        k += 1
    await wait_answers(pipes, 10.0)
    run_seconds = time.monotonic() - started
    # The last progress (current == total), then the terminal event, in order per task.
    for n, task_id in enumerate(ids):
        pipe = pipes[n % len(pipes)]
        pipe.queue(progress(task_id, args.total), lambda s, _b: final.done(s))
        body = b'{"result":{"files":%d}}' % counts[task_id]
        pipe.queue(
            build_request("POST", f"/tasks/{task_id}/complete", body, port),
            lambda s, _b: final.done(s),
        )
        final.sent += 2
        if n % 100 == 99:
            for p in pipes:
                p.flush()
            await wait_answers(pipes, 10.0)
    for pipe in pipes:
        pipe.flush()
    await wait_answers(pipes, 20.0)
    report(
        stats,
        started,
        cpu0,
        run_seconds=round(run_seconds, 3),
        target_per_second=len(ids) * args.rate,
        skipped_window_full=skipped,
        final_ok=final.ok,
        final_errors=final.errors,
        final_statuses={str(k): v for k, v in final.statuses.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("rate", "max", "tasks-create", "tasks-run"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--conns", type=int, default=4 if name == "rate" else 2)
        p.add_argument("--window", type=int, default=32, help="requests in flight per connection")
        if name in ("rate", "max"):
            p.add_argument("--format", choices=["json", "nchan"], default="json")
            p.add_argument("--path", default="/publish")
            p.add_argument("--topic", default="bench")
            p.add_argument("--pad", type=int, default=0, help="extra payload bytes")
            p.add_argument("--duration", type=float, default=10.0)
        if name == "rate":
            p.add_argument("--rate", type=float, default=10.0)
            p.add_argument("--linger", type=float, default=60.0, help="seconds to await answers")
        if name == "max":
            p.add_argument(
                "--stats-file", default=None, help="load generators' counters (comma-separated)"
            )
            p.add_argument("--subscribers", type=int, default=1)
            p.add_argument("--lead", type=int, default=64, help="events ahead of delivery")
            p.add_argument("--poll", type=float, default=0.002, help="seconds between checks")
        if name == "tasks-create":
            p.add_argument("--n", type=int, default=1000)
            p.add_argument("--total", type=int, default=1_000_000)
            p.add_argument("--out", required=True)
        if name == "tasks-run":
            p.add_argument("--ids", required=True)
            p.add_argument("--rate", type=float, default=10.0, help="updates per task per second")
            p.add_argument("--total", type=int, default=1_000_000)
            p.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.mode == "tasks-create":
        ids = uvloop.run(run_tasks_create(args))
        Path(args.out).write_text("".join(f"{i}\n" for i in ids))
        return
    if args.mode == "tasks-run":
        args.task_ids = [i for i in Path(args.ids).read_text().split() if i]
    runners = {"rate": run_rate, "max": run_max, "tasks-run": run_tasks}
    uvloop.run(runners[args.mode](args))


if __name__ == "__main__":
    main()
