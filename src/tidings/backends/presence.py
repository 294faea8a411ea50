"""Presence in one process: which stream is subscribed to which topic, for the memory backend.

The Redis backend keeps the same records in Redis for every node
(:mod:`tidings.backends.redis.presence`); both answer pages in connection-id order, with
a count per topic that costs O(1).

Timing shared by every backend: a node calls
:meth:`~tidings.backends.base.Backend.update_presence` at least every :data:`HEARTBEAT`
seconds, and a node silent for :data:`NODE_TIMEOUT` seconds is dead: its entries are
removed by the next call of any other node. So a node killed outright drops out of
presence within about ``NODE_TIMEOUT + HEARTBEAT`` seconds (20), inside the 30 s of SPEC §3.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Final

from tidings.backends.base import (
    PresenceEntry,
    PresencePage,
    PresenceUpdate,
    TopicCount,
    TopicPage,
)

__all__ = ["HEARTBEAT", "NODE_TIMEOUT", "MemoryPresence"]

#: Seconds between two presence updates of a node, at most (a heartbeat when idle).
HEARTBEAT: Final = 5.0
#: Seconds after its last update at which a node is taken for dead.
NODE_TIMEOUT: Final = 15.0


class _Topic:
    """A topic's entries by connection id, kept in id order (ids of one node rise)."""

    __slots__ = ("entries", "last", "ordered")

    def __init__(self) -> None:
        self.entries: dict[str, PresenceEntry] = {}
        self.last = ""
        self.ordered = True

    def add(self, entry: PresenceEntry) -> None:
        ident = entry.connection_id
        if ident in self.entries:
            return
        if ident < self.last:
            self.ordered = False
        self.last = ident
        self.entries[ident] = entry

    def after(self, cursor: str | None) -> Iterator[PresenceEntry]:
        """The entries whose id sorts after ``cursor``, in id order."""
        if not self.ordered:
            self.entries = dict(sorted(self.entries.items()))
            self.ordered = True
        values = iter(self.entries.values())
        if cursor is None:
            return values
        return itertools.dropwhile(lambda entry: entry.connection_id <= cursor, values)


class MemoryPresence:
    """The presence of a hub whose nodes share one process (the memory backend).

    Nodes here share the process, so none can die alone: :meth:`update` never reports
    ``lost`` or ``expired`` entries.
    """

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}

    def update(
        self,
        node: str,
        joins: Sequence[PresenceEntry],
        leaves: Sequence[PresenceEntry],
        *,
        final: bool = False,
    ) -> PresenceUpdate:
        """Apply a node's changes (see ``Backend.update_presence``)."""
        topics = self._topics
        for entry in joins:
            topic = topics.get(entry.topic)
            if topic is None:
                topic = topics[entry.topic] = _Topic()
            topic.add(entry)
        for entry in leaves:
            self._remove(entry.topic, entry.connection_id)
        if final:
            for name, topic in list(topics.items()):
                for ident in [i for i, e in topic.entries.items() if e.node == node]:
                    self._remove(name, ident)
        return PresenceUpdate()

    def _remove(self, name: str, ident: str) -> None:
        topic = self._topics.get(name)
        if topic is None:
            return
        topic.entries.pop(ident, None)
        if not topic.entries:
            del self._topics[name]

    def page(self, name: str, *, limit: int, cursor: str | None) -> PresencePage:
        """A page of ``name``'s entries after ``cursor`` (see ``Backend.presence``)."""
        topic = self._topics.get(name)
        if topic is None:
            return PresencePage(name, 0, [], None)
        found = list(itertools.islice(topic.after(cursor), limit + 1))
        more = len(found) > limit
        found = found[:limit]
        next_cursor = found[-1].connection_id if more else None
        return PresencePage(name, len(topic.entries), found, next_cursor)

    def topics(self, *, limit: int, cursor: str | None) -> TopicPage:
        """A page of the topics with entries (see ``Backend.presence_topics``)."""
        names = sorted(name for name in self._topics if cursor is None or name > cursor)
        page = names[:limit]
        counts = [TopicCount(name, len(self._topics[name].entries)) for name in page]
        return TopicPage(counts, page[-1] if len(names) > limit else None)
