"""The streams of ``tidings bench``: raw asyncio connections that count what they receive.

They are not an HTTP client: the bench shares the machine (and often the core) with the
hub, and a client that costs more than the server measures itself. Each stream reads the
response head, then the chunked body, and takes the send time out of each event's data
without parsing JSON.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from tidings._rawhttp import ChunkedDecoder, parse_head
from tidings.config import check_hub_url

__all__ = ["Refused", "Stream", "Target", "Totals", "hub_target", "open_stream"]


class Refused(Exception):
    """The hub answered a stream with ``status``, not 200 (``retry_after``: its Retry-After)."""

    def __init__(self, status: int, retry_after: float) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


class Totals:
    """What every stream of the run adds to."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.delivered = 0
        self.expected: int | None = None
        self.latencies_ns: list[int] = []
        self.last_delivery = 0.0
        self.all_delivered = asyncio.Event()
        self.loop = loop

    def add(self, latency_ns: int) -> None:
        self.delivered += 1
        self.latencies_ns.append(latency_ns)
        self.last_delivery = time.perf_counter()
        if self.expected is not None and self.delivered >= self.expected:
            self.all_delivered.set()


class Stream(asyncio.Protocol):
    """One subscriber: reads the response head, then the chunked body, event by event."""

    def __init__(self, totals: Totals) -> None:
        self.totals = totals
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = totals.loop.create_future()
        self.head = bytearray()
        self.in_body = False
        self.chunks: ChunkedDecoder | None = ChunkedDecoder()
        self.text = bytearray()  # body bytes not yet split into events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("the hub closed the stream"))

    def data_received(self, data: bytes) -> None:
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            self.head.clear()
            self.in_body = True
            if not self._check_head(head) or not data:
                return
        if not self.opened.done():
            self.opened.set_result(None)
        self.text += self.chunks.feed(data) if self.chunks is not None else data
        self._events()

    def _check_head(self, head: bytes) -> bool:
        status, headers = parse_head(head)
        if status != 200:
            retry = headers.get("retry-after", "1")
            error = Refused(status, float(retry) if retry.isdigit() else 1.0)
            if not self.opened.done():
                self.opened.set_exception(error)
            if self.transport is not None:
                self.transport.close()
            return False
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            self.chunks = None
        return True

    def _events(self) -> None:
        text = self.text
        start = 0
        now = time.perf_counter_ns()
        while True:
            end = text.find(b"\n\n", start)
            if end < 0:
                break
            block = bytes(text[start:end])
            start = end + 2
            at = block.find(b'data: {"t":')
            if at < 0:
                continue  # the opening, a keep-alive, or another event
            digits = block[at + 11 : block.find(b",", at)]
            if digits.isdigit():
                self.totals.add(now - int(digits))
        del text[:start]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass(frozen=True, slots=True)
class Target:
    """Where the hub is: what a stream connects to, and the URL it was given."""

    host: str
    port: int
    prefix: str
    tls: bool
    url: str


def hub_target(url: str) -> Target:
    """The :class:`Target` of the hub URL ``url``."""
    parts = urlsplit(check_hub_url(url))
    tls = parts.scheme == "https"
    return Target(
        host=parts.hostname or "",  # check_hub_url refuses a URL without a host
        port=parts.port or (443 if tls else 80),
        prefix=parts.path.rstrip("/"),
        tls=tls,
        url=url.rstrip("/"),
    )


async def open_stream(
    target: Target, request: bytes, totals: Totals, deadline: float
) -> tuple[Stream, float, int]:
    """A stream that received its opening bytes, the seconds that took, and the 429s."""
    loop = asyncio.get_running_loop()
    refused = 0
    context = ssl.create_default_context() if target.tls else None
    while True:
        started = time.perf_counter()
        stream = Stream(totals)
        await asyncio.wait_for(
            loop.create_connection(
                lambda stream=stream: stream,
                target.host,
                target.port,
                ssl=context,
            ),
            max(0.1, deadline - time.monotonic()),
        )
        assert stream.transport is not None
        stream.transport.write(request)
        try:
            await asyncio.wait_for(stream.opened, max(0.1, deadline - time.monotonic()))
        except Refused as exc:
            stream.close()
            if exc.status != 429 or time.monotonic() + exc.retry_after > deadline:
                raise
            refused += 1
            await asyncio.sleep(exc.retry_after)  # the hub's connection-rate limit
            continue
        except BaseException:
            stream.close()
            raise
        return stream, time.perf_counter() - started, refused
