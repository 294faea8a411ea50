"""Python clients of a tidings hub.

- :func:`subscribe`: ``async for event in subscribe(url, topics)``, reconnecting by itself.
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

__all__ = [
    "AsyncHTTPTransport",
    "AsyncPublisher",
    "AsyncTracker",
    "AsyncTransport",
    "Call",
    "HTTPTransport",
    "Publisher",
    "Tracker",
    "Transport",
    "subscribe",
]
