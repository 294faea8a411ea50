"""The in-process backend: one hub, one process, history in memory.

History is kept per topic (SPEC §3: the last ``history_size`` events of each topic, none
older than ``history_ttl`` seconds). To tell a resumable id from one whose events were
evicted, each topic remembers the highest ``seq`` it ever evicted; a topic whose history
emptied out is forgotten and its watermark folds into one hub-wide watermark, so memory does
not grow with the number of topics ever used while a resume still never misses silently.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import operator
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tidings.backends.base import (
    Appended,
    Control,
    Deliver,
    Disconnect,
    Gap,
    HistoryWindow,
    PresenceEntry,
    PresencePage,
    PresenceUpdate,
    Replay,
    TopicPage,
)
from tidings.backends.presence import MemoryPresence
from tidings.events import Draft, Event, EventId, new_epoch
from tidings.topics import is_wildcard, pattern_matches

__all__ = ["MemoryBackend"]

IDEMPOTENCY_TTL = 300.0


@dataclass(slots=True)
class _TopicHistory:
    events: deque[Event] = field(default_factory=deque)
    #: The highest seq evicted from this topic (0: none yet).
    evicted: int = 0


class MemoryBackend:
    """History and fan-out for a hub that lives in one process.

    Args:
        history_size: events kept per topic.
        history_ttl: seconds an event stays in history.
        epoch: the id epoch; random by default, so ids of an earlier process are "unknown".
    """

    def __init__(
        self, *, history_size: int = 1000, history_ttl: float = 3600.0, epoch: str | None = None
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.epoch = epoch or new_epoch()
        self._seq = 0
        self._topics: dict[str, _TopicHistory] = {}
        self._forgotten = 0
        self._idempotency: dict[str, tuple[str, float]] = {}
        self._deliver: Deliver | None = None
        self._control: Control | None = None
        self._presence = MemoryPresence()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver, control: Control | None = None) -> None:
        self._deliver = deliver
        self._control = control
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="tidings-memory-sweeper")

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._deliver = None
        self._control = None

    async def append(self, draft: Draft, *, idempotency_key: str | None = None) -> Appended:
        now = time.monotonic()
        if idempotency_key is not None:
            seen = self._idempotency.get(idempotency_key)
            if seen is not None and seen[1] > now:
                return Appended(seen[0], duplicate=True)
        self._seq += 1
        event = Event.from_draft(draft, EventId(self.epoch, self._seq))
        if idempotency_key is not None:
            self._idempotency[idempotency_key] = (event.id, now + IDEMPOTENCY_TTL)
        history = self._topics.get(event.topic)
        if history is None:
            history = self._topics[event.topic] = _TopicHistory()
        events = history.events
        events.append(event)
        if len(events) > self.history_size:
            history.evicted = events.popleft().seq
        if self._deliver is not None:
            self._deliver(event)
        return Appended(event.id)

    async def replay(self, patterns: Sequence[str], after: str) -> Replay:
        latest = str(EventId(self.epoch, self._seq))
        parsed = EventId.parse(after)
        if parsed is None or parsed.epoch != self.epoch or parsed.seq > self._seq:
            return Replay(gap=Gap(after, "unknown", latest))
        horizon = time.time() - self.history_ttl
        since = parsed.seq
        if since < self._forgotten:
            return Replay(gap=Gap(after, "expired", latest))
        streams: list[list[Event]] = []
        for history in self._matching(patterns):
            _trim(history, horizon)
            if since < history.evicted:
                return Replay(gap=Gap(after, "expired", latest))
            events = history.events
            start = bisect.bisect_right(events, since, key=_seq_of)
            if start < len(events):
                streams.append([events[i] for i in range(start, len(events))])
        if len(streams) == 1:
            return Replay(events=streams[0])
        return Replay(events=list(heapq.merge(*streams, key=_seq_of)))

    async def latest_id(self) -> str:
        return str(EventId(self.epoch, self._seq))

    async def ping(self) -> bool:
        return True

    async def history(self, topic: str, *, after: str | None, limit: int) -> HistoryWindow:
        history = self._topics.get(topic)
        if history is not None:
            _trim(history, time.time() - self.history_ttl)
        events: Sequence[Event] = history.events if history is not None else ()
        complete = True
        start = 0
        if after is not None:
            parsed = EventId.parse(after)
            complete = (
                parsed is not None
                and parsed.epoch == self.epoch
                and parsed.seq <= self._seq
                and parsed.seq >= self._forgotten
                and (history is None or parsed.seq >= history.evicted)
            )
            if parsed is not None and complete:
                start = bisect.bisect_right(events, parsed.seq, key=_seq_of)
        found = [events[i] for i in range(start, min(len(events), start + limit))]
        return HistoryWindow(found, complete, start + limit < len(events))

    async def update_presence(
        self,
        node: str,
        joins: Sequence[PresenceEntry],
        leaves: Sequence[PresenceEntry],
        *,
        final: bool = False,
    ) -> PresenceUpdate:
        return self._presence.update(node, joins, leaves, final=final)

    async def presence(self, topic: str, *, limit: int, cursor: str | None) -> PresencePage:
        return self._presence.page(topic, limit=limit, cursor=cursor)

    async def presence_topics(self, *, limit: int, cursor: str | None) -> TopicPage:
        return self._presence.topics(limit=limit, cursor=cursor)

    async def disconnect(self, command: Disconnect) -> int:
        # One process, one node: its handler is the whole hub.
        return self._control(command) if self._control is not None else 0

    def _matching(self, patterns: Sequence[str]) -> list[_TopicHistory]:
        exact = [p for p in patterns if not is_wildcard(p)]
        wild = [p for p in patterns if is_wildcard(p)]
        found: dict[str, _TopicHistory] = {}
        for topic in exact:
            history = self._topics.get(topic)
            if history is not None:
                found[topic] = history
        if wild:
            for topic, history in self._topics.items():
                if topic not in found and any(pattern_matches(p, topic) for p in wild):
                    found[topic] = history
        return list(found.values())

    def _expire(self, now: float) -> None:
        """Evict events older than the TTL and forget topics whose history emptied."""
        horizon = now - self.history_ttl
        empty: list[str] = []
        for topic, history in self._topics.items():
            _trim(history, horizon)
            if not history.events:
                empty.append(topic)
        for topic in empty:
            self._forgotten = max(self._forgotten, self._topics.pop(topic).evicted)
        mono = time.monotonic()
        stale = [key for key, (_, until) in self._idempotency.items() if until <= mono]
        for key in stale:
            del self._idempotency[key]

    async def _sweep_forever(self) -> None:
        interval = max(1.0, min(60.0, self.history_ttl / 10))
        while True:
            await asyncio.sleep(interval)
            self._expire(time.time())


_seq_of = operator.attrgetter("seq")


def _trim(history: _TopicHistory, horizon: float) -> None:
    """Evict the events of ``history`` published before ``horizon`` (a wall-clock time)."""
    events = history.events
    while events and events[0].time < horizon:
        history.evicted = events.popleft().seq
