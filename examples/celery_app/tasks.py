"""Celery tasks that report to a tidings hub (see README.md beside this file).

- ``convert_images``: a :class:`~tidings.integrations.celery.TidingsTask` that "converts"
  N images, with a ``file_update`` per image and a progress bar;
- ``convert_corrupt``: the same, but an image is corrupt: the task fails;
- ``fetch_thumbnails``: fails its first attempt and retries: the hub task stays running;
- ``build_report``: an ordinary task, untouched, that ``connect(app)`` reports through
  Celery's signals (started, then completed with its return value).

The broker is ``$CELERY_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``); the hub is
``$TIDINGS_URL`` (default ``http://127.0.0.1:8000``).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from tidings.integrations.celery import TidingsTask, connect, enqueue

app = Celery("celery_app", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    # No result backend: the hub is where results and progress go.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # tidings_url / tidings_token could go here; the environment is used otherwise.
)

# Report ordinary tasks too (build_report below); TidingsTask tasks report themselves.
reporter = connect(app)


@app.task(base=TidingsTask, bind=True, tidings_title="Convert images")
def convert_images(self: TidingsTask, count: int = 5, delay: float = 0.05) -> dict[str, object]:
    """Convert ``count`` images, ``delay`` seconds each, reporting each file."""
    names = [f"image-{i:03d}.png" for i in range(1, count + 1)]
    for name in names:
        self.file(name, status="pending")
    for name in self.track(names, message="converting"):
        self.file(name, status="processing")
        time.sleep(delay)  # the "conversion"
        self.file(name, status="completed", message="converted to webp")
    return {"converted": len(names), "files": [name.replace(".png", ".webp") for name in names]}


@app.task(base=TidingsTask, bind=True, tidings_title="Convert images (one is corrupt)")
def convert_corrupt(self: TidingsTask, count: int = 3) -> dict[str, object]:
    """Convert ``count`` images; the last one is corrupt, so the task fails."""
    names = [f"image-{i:03d}.png" for i in range(1, count)] + ["broken.png"]
    for name in self.track(names):
        self.file(name, status="processing")
        if name == "broken.png":
            self.file(name, status="failed", message="not a PNG file")
            raise ValueError(f"corrupt image: {name}")
        self.file(name, status="completed")
    return {"converted": len(names)}


@app.task(base=TidingsTask, bind=True, max_retries=3, tidings_title="Fetch thumbnails")
def fetch_thumbnails(self: TidingsTask) -> dict[str, int]:
    """A flaky download: the first attempt fails and retries, the second succeeds."""
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("mirror timed out"), countdown=0)
    return {"attempts": self.request.retries + 1}


@app.task
def build_report(rows: int = 10) -> dict[str, int]:
    """An existing task that knows nothing of tidings: ``connect(app)`` reports it."""
    return {"rows": rows}


def start_conversion(count: int = 5, delay: float = 0.05) -> str:
    """What a web view does: create the hub task, enqueue, return the id for the browser.

    ``/tasks/<id>/stream`` works at once, before any worker has picked the task up.
    """
    result = enqueue(convert_images, (count, delay), total=count)
    return str(result.id)
