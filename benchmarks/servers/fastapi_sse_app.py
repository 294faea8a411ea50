"""FastAPI's own SSE (``fastapi.sse``), written the way its docs show.

A path operation with ``response_class=EventSourceResponse`` yields ``ServerSentEvent``
objects taken from a queue per subscriber; `POST /publish` puts the event on every
subscriber's queue. Served by uvicorn with uvloop and httptools.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterable
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

app = FastAPI()
subscribers: defaultdict[str, set[asyncio.Queue[tuple[str, str, str]]]] = defaultdict(set)
ids = itertools.count(1)


@app.get("/events", response_class=EventSourceResponse)
async def events(topic: list[str] = Query()) -> AsyncIterable[ServerSentEvent]:  # noqa: B008
    queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    for t in topic:
        subscribers[t].add(queue)
    try:
        while True:
            event_id, kind, data = await queue.get()
            yield ServerSentEvent(
                raw_data=data, id=event_id, event=None if kind == "message" else kind
            )
    finally:
        for t in topic:
            subscribers[t].discard(queue)


@app.post("/publish", status_code=202)
async def publish(request: Request) -> Response:
    msg: dict[str, Any] = orjson.loads(await request.body())
    event_id = str(next(ids))
    item = (event_id, msg.get("type", "message"), orjson.dumps(msg.get("data")).decode())
    for queue in subscribers.get(msg["topic"], ()):
        queue.put_nowait(item)
    return Response(
        b'{"id":"%s"}' % event_id.encode(), status_code=202, media_type="application/json"
    )


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
