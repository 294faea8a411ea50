"""The FastAPI side of the Celery example: start a task, stream it to the browser.

The hub is embedded at the app's root, so the browser streams ``/tasks/{task_id}/stream``
from the app itself (the seed's URL) and the workers report to the app's URL
(``$TIDINGS_URL``). ``POST /convert`` creates the hub task first (``pending``), then
enqueues the Celery task with the same id: the stream exists before any worker starts.
``python -m examples.celery_app.run`` runs this app with a worker and a broker.
"""

from __future__ import annotations

import os
from pathlib import Path

from examples.celery_app import tasks
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from tidings import Hub

PAGE = Path(__file__).with_name("page.html")

#: Seconds per image in ``convert_images`` (the "conversion").
DELAY = float(os.environ.get("CONVERT_DELAY", "0.2"))

hub = Hub(store="memory")
app = FastAPI(lifespan=hub.lifespan, title="celery + tidings")
app.include_router(hub.router)  # /tasks/{id}/stream, and the task API the workers call


@app.post("/convert", status_code=202)
async def convert(count: int = Query(8, ge=1, le=500), corrupt: bool = False) -> dict[str, str]:
    """Start a conversion of ``count`` images (one of them corrupt if ``corrupt``)."""
    task = tasks.convert_corrupt if corrupt else tasks.convert_images
    args: tuple[object, ...] = (count,) if corrupt else (count, DELAY)
    created = await hub.tasks.create(
        title=getattr(task, "tidings_title", task.name),
        total=count,
        metadata={"celery_task": task.name},
    )
    try:
        # Sending to the broker blocks: not on the event loop.
        await run_in_threadpool(task.apply_async, args, task_id=created.task_id)
    except Exception as exc:
        # No stream may wait for a task that was never queued.
        await hub.tasks.fail(created.task_id, error="could not enqueue the task")
        raise HTTPException(503, "the task queue is unavailable") from exc
    return {"task_id": created.task_id, "stream": f"/tasks/{created.task_id}/stream"}


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE.read_text()
