"""Python clients of a tidings hub.

- :func:`subscribe`: ``async for event in subscribe(url, topics)``, reconnecting by itself.
- :func:`watch_task`: ``async for update in watch_task(url, task_id)``, one task's states
  until it ends (:func:`watch_task_sync` for scripts).
- :class:`Publisher` / :class:`AsyncPublisher`: publish events and report task progress
  (``track()``, tqdm-like) from scripts, Flask views and Celery workers.
- :class:`Transport`: the seam a publisher reaches the hub through (HTTP built in).
"""

from __future__ import annotations

from tidings.client.publisher import AsyncPublisher, Publisher
from tidings.client.subscriber import subscribe
from tidings.client.tracker import AsyncTracker, Tracker
from tidings.client.transport import (
    AsyncHTTPTransport,
    AsyncTransport,
    Call,
    HTTPTransport,
    Transport,
)
from tidings.client.watcher import TaskUpdate, watch_task, watch_task_sync

__all__ = [
    "AsyncHTTPTransport",
    "AsyncPublisher",
    "AsyncTracker",
    "AsyncTransport",
    "Call",
    "HTTPTransport",
    "Publisher",
    "TaskUpdate",
    "Tracker",
    "Transport",
    "subscribe",
    "watch_task",
    "watch_task_sync",
]
