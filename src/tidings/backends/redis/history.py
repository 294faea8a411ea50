"""Reading one topic's history window from Redis, page by page (``GET /topics/{t}/history``).

A topic's history is the stream ``{p}:t:<topic>`` whose ids are ``<seq>-0``, so a page is
one ``XRANGE`` from the id asked for. The window is what a resume sees
(:meth:`RedisBackend.replay <tidings.backends.redis.RedisBackend.replay>`): an id is
covered when no event of the topic after it was trimmed (``{p}:evicted``), pruned with an
idle topic (``{p}:forgotten``) or aged out (older than ``history_ttl``, by each event's
own time).
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from tidings.backends.base import HistoryWindow
from tidings.backends.redis.encoding import as_text, history_event
from tidings.backends.redis.errors import unavailable
from tidings.backends.redis.keys import RedisKeys
from tidings.events import Event, EventId

__all__ = ["read_history"]


async def read_history(
    client: Redis,
    keys: RedisKeys,
    topic: str,
    *,
    after: str | None,
    limit: int,
    history_ttl: float,
) -> HistoryWindow:
    """Up to ``limit`` events of ``topic`` after ``after`` (see ``Backend.history``).

    Raises:
        BackendUnavailable: Redis cannot be reached.
    """
    parsed = EventId.parse(after) if after is not None else None
    key = keys.history(topic)
    start = f"({parsed.seq}-0" if parsed is not None else "-"
    with unavailable("read history"):
        pipe = client.pipeline(transaction=True)
        pipe.get(keys.epoch)
        pipe.get(keys.seq)
        pipe.get(keys.forgotten)
        pipe.hget(keys.evicted, topic)
        pipe.xrange(key, start, "+", count=limit + 1)
        epoch_raw, seq, forgotten, evicted, entries = await pipe.execute()
        epoch = as_text(epoch_raw) if epoch_raw is not None else ""
        horizon = time.time() - history_ttl
        if parsed is not None:
            events = _events(epoch, topic, entries)
            complete = (
                parsed.epoch == epoch
                and parsed.seq <= int(seq or 0)
                and parsed.seq >= int(forgotten or 0)
                and parsed.seq >= int(evicted or 0)
                # and the events that followed it did not age out
                and not (events and events[0].time < horizon)
            )
            if complete:
                return HistoryWindow(events[:limit], True, len(events) > limit)
            entries = None  # read from the oldest kept instead
        events, more = await _oldest_kept(client, key, epoch, topic, limit, horizon, entries)
    # Without ``after`` nothing was asked that the window could miss.
    return HistoryWindow(events, after is None, more)


def _events(epoch: str, topic: str, entries: Any) -> list[Event]:
    return [history_event(epoch, topic, entry) for entry in entries]


async def _oldest_kept(
    client: Redis,
    key: str,
    epoch: str,
    topic: str,
    limit: int,
    horizon: float,
    entries: Any = None,
) -> tuple[list[Event], bool]:
    """The first ``limit`` events of the topic no older than ``horizon``, and whether more
    follow. Aged events come first (ids follow publish order), so they are skipped a page
    at a time: rarely more than one read."""
    kept: list[Event] = []
    start = "-"
    while True:
        if entries is None:
            entries = await client.xrange(key, start, "+", count=limit + 1)
        if not entries:
            return kept, False
        events = _events(epoch, topic, entries)
        kept.extend(event for event in events if event.time >= horizon)
        if len(kept) > limit:
            return kept[:limit], True
        if len(entries) <= limit:
            return kept, False
        start = f"({events[-1].seq}-0"
        entries = None
