"""The practical bound: a bare uvloop Protocol server that writes pre-encoded SSE bytes.

`GET /events?topic=T` subscribes; `POST /publish` `{"topic", "data", "type"?}` encodes the
event once (chunk framing included) and calls ``transport.write`` on every subscriber of the
topic: one ``write`` syscall per subscriber per event, no queue, no task, no coalescing.
It has no flow control, history, auth or limits: it is the floor the Python peers are
measured against, not a product.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

import orjson
import uvloop

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-store\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n"
)
OPENING = b"retry: 3000\n: ok\n\n"

subscribers: defaultdict[str, set[asyncio.Transport]] = defaultdict(set)
next_id = 0


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def answer(status: str, body: bytes) -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        len(body),
        body,
    )


def publish(body: bytes) -> bytes:
    global next_id
    try:
        msg = orjson.loads(body)
        topic = msg["topic"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return answer("400 Bad Request", b'{"error":{"code":"malformed_json","message":"bad"}}')
    next_id += 1
    kind = msg.get("type", "message")
    event = b"id: %d\n" % next_id
    if kind != "message":
        event += b"event: %s\n" % kind.encode()
    event += b"data: %s\n\n" % orjson.dumps(msg.get("data"))
    frame = chunk(event)
    for transport in subscribers.get(topic, ()):
        transport.write(frame)
    return answer("202 Accepted", b'{"id":"%d"}' % next_id)


class HTTP(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.topics: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for topic in self.topics:
            subs = subscribers.get(topic)
            if subs is not None:
                subs.discard(self.transport)
                if not subs:
                    del subscribers[topic]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        transport = self.transport
        assert transport is not None
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            url = urlsplit(target)
            if method == "POST" and url.path == "/publish":
                transport.write(publish(body))
            elif method == "GET" and url.path == "/events":
                self.topics = parse_qs(url.query).get("topic", [])
                transport.write(HEAD + chunk(OPENING))
                for topic in self.topics:
                    subscribers[topic].add(transport)
                return
            else:
                transport.write(answer("404 Not Found", b"{}"))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HTTP, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
