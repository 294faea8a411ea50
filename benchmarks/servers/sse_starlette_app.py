"""sse-starlette + uvicorn, written the way its README shows: a queue per subscriber.

`GET /events?topic=T` returns an ``EventSourceResponse`` over an async generator that awaits
its own ``asyncio.Queue``; `POST /publish` puts the event on every subscriber's queue. The
JSON payload is encoded once per publish (the fair choice); sse-starlette frames it per
subscriber, as it does for its users.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator

import orjson
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

subscribers: defaultdict[str, set[asyncio.Queue[dict[str, str]]]] = defaultdict(set)
ids = itertools.count(1)


async def events(request: Request) -> EventSourceResponse:
    topics = request.query_params.getlist("topic")

    async def stream() -> AsyncIterator[dict[str, str]]:
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        for topic in topics:
            subscribers[topic].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            for topic in topics:
                subscribers[topic].discard(queue)

    return EventSourceResponse(stream(), ping=15)


async def publish(request: Request) -> Response:
    msg = orjson.loads(await request.body())
    event_id = str(next(ids))
    event = {
        "id": event_id,
        "event": msg.get("type", "message"),
        "data": orjson.dumps(msg.get("data")).decode(),
    }
    for queue in subscribers.get(msg["topic"], ()):
        queue.put_nowait(event)
    return Response(
        b'{"id":"%s"}' % event_id.encode(), status_code=202, media_type="application/json"
    )


app = Starlette(routes=[Route("/events", events), Route("/publish", publish, methods=["POST"])])

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        backlog=4096,
    )
