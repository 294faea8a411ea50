"""aiohttp + aiohttp-sse, written the way its README shows: a queue per subscriber.

`GET /events?topic=T` opens ``sse_response`` and sends what its ``asyncio.Queue`` yields;
`POST /publish` puts the event on every subscriber's queue. Runs on uvloop, as aiohttp
deployments usually do.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections import defaultdict

import orjson
import uvloop
from aiohttp import web
from aiohttp_sse import sse_response

subscribers: defaultdict[str, set[asyncio.Queue[tuple[str, str, str]]]] = defaultdict(set)
ids = itertools.count(1)


async def events(request: web.Request) -> web.StreamResponse:
    topics = request.query.getall("topic", [])
    queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    for topic in topics:
        subscribers[topic].add(queue)
    try:
        async with sse_response(request) as resp:  # pings every 15 s by default
            while resp.is_connected():
                event_id, kind, data = await queue.get()
                await resp.send(data, id=event_id, event=None if kind == "message" else kind)
    finally:
        for topic in topics:
            subscribers[topic].discard(queue)
    return resp


async def publish(request: web.Request) -> web.Response:
    msg = orjson.loads(await request.read())
    event_id = str(next(ids))
    item = (event_id, msg.get("type", "message"), orjson.dumps(msg.get("data")).decode())
    for queue in subscribers.get(msg["topic"], ()):
        queue.put_nowait(item)
    return web.Response(
        body=b'{"id":"%s"}' % event_id.encode(), status=202, content_type="application/json"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_post("/publish", publish)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=4096)
