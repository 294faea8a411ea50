"""A FastAPI app with tidings embedded: its own routes publish, browsers subscribe.

Run it:

    uvicorn examples.01_fastapi_embedded:app          # or: python examples/01_fastapi_embedded.py

then, in another terminal:

    curl -N 'http://127.0.0.1:8000/sse/events?topic=chat/general'
    curl -X POST 'http://127.0.0.1:8000/chat?text=hello'
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from tidings import Hub

hub = Hub(store=os.environ.get("TIDINGS_STORE", "memory"))
app = FastAPI(lifespan=hub.lifespan)
app.include_router(hub.router, prefix="/sse")


@app.post("/chat")
async def chat(text: str) -> dict[str, str]:
    """An application endpoint: store the message (not shown), then tell every subscriber."""
    event_id = await hub.publish(
        "chat/general", {"text": text}, type="chat_message", priority="high"
    )
    return {"id": event_id}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
