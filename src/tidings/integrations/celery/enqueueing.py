"""Enqueueing: :func:`enqueue` creates the hub task before it queues the Celery task."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Task
from celery.result import AsyncResult

from tidings.client.publisher import Publisher
from tidings.errors import TidingsError
from tidings.integrations.celery.publishers import publisher_for
from tidings.integrations.celery.reporter import failure
from tidings.tasks.record import Number
from tidings.types import JSON

__all__ = ["enqueue"]


def enqueue(
    task: Task[Any, Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    publisher: Publisher | None = None,
    title: str | None = None,
    total: Number | None = None,
    metadata: Mapping[str, JSON] | None = None,
    **options: Any,
) -> AsyncResult[Any]:
    """Create the tidings task (``pending``), then ``task.apply_async`` with the same id.

    The stream ``/tasks/<result.id>/stream`` exists as soon as this returns, so a web view
    can hand it to the browser before a worker picks the task up (no 404 race); the
    worker adopts the task, keeping ``title``, ``total`` and ``metadata``.

    Args:
        task: a Celery task (a :class:`TidingsTask`, or one reported by :func:`connect`).
        args, kwargs: the task's arguments.
        publisher: the hub to create the task on (default: :func:`publisher_for` the
            task's app). The task belongs to this publisher's token user.
        title: the title on the hub (default: the task name); ``total``, ``metadata`` as
            for :meth:`Publisher.create_task` (``celery_task`` is added to ``metadata``).
        options: passed to ``apply_async`` (``countdown``, ``queue``, ``task_id``...).

    Raises:
        TaskExists: the ``task_id`` given is taken on the hub.
        BackendUnavailable: the hub cannot be reached; nothing was enqueued. (To enqueue
            anyway, catch it and call ``apply_async``: the stream 404s until a worker
            starts the task.)
        Whatever ``apply_async`` raises (the broker is down): the hub task is then
            failed, so no stream waits for a task that was never queued.

    Example::

        result = enqueue(convert_images, (paths,), total=len(paths))
        return {"task_id": result.id, "stream": f"/tasks/{result.id}/stream"}
    """
    task_id = str(options.pop("task_id", None) or uuid.uuid4())
    pub = publisher if publisher is not None else publisher_for(task.app)
    info: dict[str, JSON] = {"celery_task": task.name}
    info.update(metadata or {})
    title = title or getattr(task, "tidings_title", None) or task.name
    pub.create_task(task_id=task_id, title=title, total=total, metadata=info)
    try:
        return task.apply_async(tuple(args), dict(kwargs or {}), task_id=task_id, **options)
    except BaseException as exc:
        error, details = failure(exc)
        try:
            pub.fail(task_id, error=f"could not enqueue: {error}", details=details)
        except TidingsError as report_error:
            exc.add_note(f"tidings: the task {task_id} could not be failed: {report_error}")
        raise
