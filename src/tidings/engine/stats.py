"""The engine's statistics: a snapshot for ``/stats`` and ``/metrics``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from tidings.engine.connection import Connection
from tidings.engine.types import Counters

__all__ = ["HubStatistics", "statistics"]


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of the hub for ``/stats`` and ``/metrics``."""

    connections: int
    by_topic: dict[str, int]
    by_task: dict[str, int]
    by_user: dict[str, int]
    published: int
    delivered: int
    conflated: int
    dropped: int
    slow_disconnects: int
    uptime_seconds: float
    queued_events: int = 0
    by_ip: dict[str, int] = field(default_factory=dict)


def statistics(
    live: Collection[Connection], counters: Counters, started_at: float
) -> HubStatistics:
    """A snapshot of the streams ``live`` and the event ``counters`` (``started_at``: the
    monotonic time the engine was made)."""
    by_topic: Counter[str] = Counter()
    by_task: Counter[str] = Counter()
    by_user: Counter[str] = Counter()
    by_ip: Counter[str] = Counter()
    queued = 0
    for conn in live:
        by_topic.update(conn.patterns)
        if conn.task_id is not None:
            by_task[conn.task_id] += 1
        by_user[conn.user if conn.user is not None else "anonymous"] += 1
        if conn.ip is not None:
            by_ip[conn.ip] += 1
        queued += conn.queued
    return HubStatistics(
        connections=len(live),
        by_topic=dict(by_topic),
        by_task=dict(by_task),
        by_user=dict(by_user),
        by_ip=dict(by_ip),
        published=counters.published,
        delivered=counters.delivered,
        conflated=counters.conflated,
        dropped=counters.dropped,
        slow_disconnects=counters.slow_disconnects,
        uptime_seconds=time.monotonic() - started_at,
        queued_events=queued,
    )
