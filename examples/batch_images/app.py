"""Batch image processing with per-file progress, watched from the browser (see README.md).

``POST /api/v1/upload`` takes N files, creates a task (``total`` = N) with one pending
file each, and processes them in the background: a ``file_update`` per step of each file,
a ``task_progress`` after each file, then ``task_completed`` (or ``task_failed`` when no
file could be used). The hub is embedded under ``$STATUS_ROOT`` (default
``/api/v1/status``), so the page's ``createProgressStream`` reads
``/api/v1/status/tasks/{taskId}/stream``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import BackgroundTasks, FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse

from tidings import Hub
from tidings.errors import TaskFinished

logger = logging.getLogger("batch_images")

PAGE = Path(__file__).with_name("page.html")

#: Where the hub's routes are mounted (the seed's status API).
ROOT = os.environ.get("STATUS_ROOT", "/api/v1/status").rstrip("/")
#: Seconds of "work" per file.
DELAY = float(os.environ.get("PROCESS_DELAY", "0.4"))
MAX_FILES = 100
MAX_FILE_BYTES = 10 * 1024 * 1024

hub = Hub(store="memory")
app = FastAPI(lifespan=hub.lifespan, title="batch images")
app.include_router(hub.router, prefix=ROOT)  # {ROOT}/tasks/{id}/stream, {ROOT}/static/tidings.js


def image_size(data: bytes) -> tuple[str, int, int]:
    """The format, width and height of a PNG, GIF or JPEG image, from its header.

    Raises:
        ValueError: not one of these formats, or a truncated header.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return "GIF", width, height
    if data.startswith(b"\xff\xd8"):
        at = 2
        while at + 9 <= len(data) and data[at] == 0xFF:
            marker = data[at + 1]
            length = struct.unpack(">H", data[at + 2 : at + 4])[0]
            # SOF0..SOF15 carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[at + 5 : at + 9])
                return "JPEG", width, height
            at += 2 + length
        raise ValueError("a JPEG file without a frame header")
    raise ValueError("not a PNG, GIF or JPEG image")


async def process(task_id: str, job_id: str, items: list[tuple[str, str, bytes]]) -> None:
    """Process each file, reporting every step; then complete or fail the task."""
    processed: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    total = len(items)
    try:
        for done, (file_id, filename, data) in enumerate(items, start=1):
            await hub.tasks.file(task_id, file_id, status="processing", progress=0)
            await asyncio.sleep(DELAY / 2)  # the work: decode
            await hub.tasks.file(
                task_id, file_id, status="processing", progress=50, message="building model"
            )
            await asyncio.sleep(DELAY / 2)  # the work: build the model
            try:
                kind, width, height = image_size(data)
            except ValueError as exc:
                failed.append({"file_id": file_id, "filename": filename, "error": str(exc)})
                await hub.tasks.file(task_id, file_id, status="failed", message=str(exc))
            else:
                model = f"{Path(filename).stem}.glb"
                processed.append(
                    {
                        "file_id": file_id,
                        "filename": filename,
                        "model": model,
                        "size": [width, height],
                    }
                )
                await hub.tasks.file(
                    task_id, file_id, status="completed", message=f"{kind} {width}x{height}"
                )
            await hub.tasks.progress(task_id, current=done, message=f"{done} of {total} files")
        if processed:
            await hub.tasks.complete(
                task_id,
                result={
                    "job_id": job_id,
                    "total_files": total,
                    "processed": processed,
                    "failed": failed,
                },
            )
        else:
            await hub.tasks.fail(
                task_id, error="no file could be processed", details={"failed": failed}
            )
    except TaskFinished:
        logger.info("task %s was cancelled; stopping", task_id)
    except Exception:
        logger.exception("processing task %s failed", task_id)
        await hub.tasks.fail(task_id, error="internal error while processing")


@app.post("/api/v1/upload", status_code=202)
async def upload(
    files: Annotated[list[UploadFile], File(description="The images to process.")],
    background: BackgroundTasks,
) -> dict[str, str]:
    """Start a batch: returns the task id the page streams."""
    if not 1 <= len(files) <= MAX_FILES:
        raise HTTPException(400, f"send 1 to {MAX_FILES} files")
    items: list[tuple[str, str, bytes]] = []
    for number, upload in enumerate(files, start=1):
        data = await upload.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise HTTPException(413, f"{upload.filename}: over {MAX_FILE_BYTES} bytes")
        items.append((f"file-{number:03d}", upload.filename or f"file-{number}", data))
    job_id = f"job-{uuid.uuid4().hex[:12]}"
    task = await hub.tasks.create(
        title=f"Process {len(items)} images", total=len(items), metadata={"job_id": job_id}
    )
    for file_id, filename, _ in items:
        await hub.tasks.file(task.task_id, file_id, status="pending", filename=filename)
    # Runs after the answer is sent, owned by this request (no stray task).
    background.add_task(process, task.task_id, job_id, items)
    return {
        "task_id": task.task_id,
        "job_id": job_id,
        "stream": f"{ROOT}/tasks/{task.task_id}/stream",
    }


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    # The page learns where the status API is from here: change $STATUS_ROOT, not the page.
    root = json.dumps(ROOT).replace("<", "\\u003c")  # safe inside <script>
    return PAGE.read_text().replace("__STATUS_ROOT__", root)
