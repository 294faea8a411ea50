"""tidings embedded: a FastAPI app that mounts ``hub.router``, served by uvicorn.

What an application that embeds the hub runs (``app.include_router(hub.router)``): every
stream is a plain ASGI response writing through uvicorn's ``send``, one ``send`` per tick.
The hub has the same settings as the ``tidings serve`` of the benchmark (from ``TIDINGS_*``
variables, which the harness sets). Served by uvicorn with uvloop and httptools.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

from tidings import Hub

hub = Hub()
app = FastAPI(lifespan=hub.lifespan)
app.include_router(hub.router)


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
        access_log=False,
        backlog=4096,
    )
