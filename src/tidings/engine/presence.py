"""Presence of one node: which of its streams are subscribed to which topic, sent per tick.

A stream that opens is an entry per topic it names exactly (not a pattern): its
connection id, user, node and start time. The engine tells the tracker when a stream
registers (:meth:`PresenceTracker.joined`) and when it ends (:meth:`PresenceTracker.left`);
neither awaits nor touches the backend, and the publish path never sees presence at all.
Once per :data:`TICK` the tracker sends what changed to the backend in one call
(:meth:`~tidings.backends.base.Backend.update_presence`), and at least every
:data:`~tidings.backends.presence.HEARTBEAT` seconds, which is the node's heartbeat.

Decisions worth knowing:

- **Changes are merged, then batched.** A stream that opens and ends within one tick is
  never sent (nor announced). A batch the backend refused (Redis down) is kept and sent
  again, merged with what changed meanwhile; sending an entry twice is harmless, and a
  removal is never dropped, since a failed call may still have reached Redis.
- **A node the backend forgot** (``lost``: Redis lost its data, or the node was silent so
  long that others removed its entries) sends every entry it holds again.
- **Announcements** (the ``presence_events`` setting): ``presence_join`` and
  ``presence_leave`` events ``{"topic", "user", "connection_id"}`` are published on the
  topic itself, once the change reached the backend, as ordinary events (ids, history,
  every node). The entries of a dead node are announced as gone by the node that removed
  them. ``tasks/...`` topics carry only task events, so they are never announced on. An
  announcement the backend refuses is logged and dropped: presence itself stays right.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

from tidings.backends.base import Backend, PresenceEntry
from tidings.backends.presence import HEARTBEAT
from tidings.engine.connection import Connection
from tidings.errors import BackendUnavailable, TidingsError
from tidings.events import Draft, make_draft
from tidings.topics import TASK_PREFIX, TopicIndex

__all__ = ["FINAL_SECONDS", "JOIN", "LEAVE", "TICK", "PresenceTracker"]

logger = logging.getLogger("tidings.presence")

#: Seconds during which changes gather before they are sent together.
TICK: Final = 0.05
#: Seconds a stopping node spends, at most, taking its entries out of the hub's presence.
FINAL_SECONDS: Final = 2.0
#: The types of the announcements.
JOIN: Final = "presence_join"
LEAVE: Final = "presence_leave"
#: Announcements published at once, at most (the Redis outbox pipelines them).
_ANNOUNCE_BATCH: Final = 1000


#: A stream's change waiting to be sent: (added, else removed; published as an event once
#: sent; never sent, not even by a call that failed, so a removal cancels it; the stream's
#: start, as a Unix time). Plain tuples: a stream's open and end make one each.
_Change = tuple[bool, bool, bool, float]


class PresenceTracker:
    """The entries of one node's streams, and the loop that sends their changes.

    Args:
        backend: where the hub's presence lives.
        node: this node's name, unique in the hub.
        announce: patterns of the topics whose changes are published as events.
        publish: publishes an announcement (the engine's ``append``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        node: str,
        announce: Sequence[str] = (),
        publish: Callable[[Draft], Awaitable[Any]],
    ) -> None:
        self.backend = backend
        self.node = node
        self._announce: TopicIndex[str] = TopicIndex()
        for pattern in announce:
            self._announce.add(pattern, pattern)
        self._publish = publish
        #: This node's streams that name a topic exactly, and when each started.
        self._local: dict[Connection, float] = {}
        #: Changes to send, by stream, in order.
        self._pending: dict[Connection, _Change] = {}
        self._wake = asyncio.Event()
        #: Whether an update reached the backend since start (the first one finds the
        #: node unknown: that is no loss).
        self._synced = False
        self._task: asyncio.Task[None] | None = None

    # -- changes (the engine's open and close; no await) -----------------------------

    def joined(self, conn: Connection) -> None:
        """``conn`` registered: an entry for each topic it names exactly."""
        for pattern in conn.patterns:
            if "*" not in pattern:  # (a valid pattern with a "*" is a wildcard)
                break
        else:
            return
        since = time.time()
        self._local[conn] = since
        self._pending[conn] = (True, True, True, since)
        self._wake.set()

    def left(self, conn: Connection) -> None:
        """``conn`` ended: its entries go."""
        since = self._local.pop(conn, None)
        if since is None:
            return
        pending = self._pending
        waiting = pending.get(conn)
        if waiting is None:
            pending[conn] = (False, True, False, since)
        elif waiting[2]:
            del pending[conn]  # never sent: nothing to remove, nothing to announce
        else:
            # Sent again after a loss (announced before), or sent by a call that failed
            # (not announced): remove it either way.
            pending[conn] = (False, not waiting[1], False, since)
        self._wake.set()

    def _entries(self, conn: Connection, since: float) -> list[PresenceEntry]:
        """``conn``'s entries: one per topic it names exactly."""
        node, ident, user = self.node, conn.connection_id, conn.user
        return [
            PresenceEntry(topic, ident, user, node, since)
            for topic in conn.patterns
            if "*" not in topic
        ]

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Start sending changes (the engine's start)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tidings-presence")

    async def aclose(self) -> None:
        """Stop the loop, send what is left and take the node out of the hub's presence."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            # Bounded: the node is stopping within its grace. What is not removed now is
            # removed (and announced) by the other nodes once this one is found dead.
            async with asyncio.timeout(FINAL_SECONDS):
                await self.flush(final=True)
        except (BackendUnavailable, TimeoutError):
            logger.warning("presence: could not remove this node's entries; they expire")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT):
                    await self._wake.wait()
            await asyncio.sleep(TICK)  # what changes meanwhile goes in the same call
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except BackendUnavailable as exc:
                logger.debug("presence: update deferred (%s)", exc.__cause__ or exc)
            except Exception:
                logger.exception("presence: update failed; retrying")

    async def flush(self, *, final: bool = False) -> None:
        """Send the changes made since the last call (a heartbeat when there are none).

        Raises:
            BackendUnavailable: the backend is down; the changes are kept for next time.
        """
        batch, self._pending = self._pending, {}
        joins: list[PresenceEntry] = []
        leaves: list[PresenceEntry] = []
        news: list[tuple[str, PresenceEntry]] = []
        for conn, (added, announce, _, since) in batch.items():
            entries = self._entries(conn, since)
            (joins if added else leaves).extend(entries)
            if announce:
                kind = JOIN if added else LEAVE
                news += [(kind, entry) for entry in entries]
        try:
            update = await self.backend.update_presence(self.node, joins, leaves, final=final)
        except BaseException:
            self._restore(batch)
            raise
        if update.lost and self._synced and not final:
            logger.warning("presence: the backend had lost this node's entries; sending them")
            for conn, since in self._local.items():
                self._pending.setdefault(conn, (True, False, False, since))
            self._wake.set()
        self._synced = True
        news += [(LEAVE, entry) for entry in update.expired]
        await self._publish_news(news)

    def _restore(self, batch: dict[Connection, _Change]) -> None:
        """Put a batch that may not have reached the backend back before the newer changes."""
        newer = self._pending
        merged: dict[Connection, _Change] = {}
        for conn, (added, announce, _, since) in batch.items():
            later = newer.pop(conn, None)
            if later is None:
                # No longer fresh: the failed call may have reached Redis all the same.
                merged[conn] = (added, announce, False, since)
            else:
                # Added in the failed batch, removed since: send the removal; announce it
                # only if the addition had been announced (a resend after a loss).
                merged[conn] = (False, later[1] and not announce, False, later[3])
        merged.update(newer)
        self._pending = merged

    async def _publish_news(self, news: Iterable[tuple[str, PresenceEntry]]) -> None:
        drafts = [
            make_draft(
                entry.topic,
                {"topic": entry.topic, "user": entry.user, "connection_id": entry.connection_id},
                type=kind,
            )
            for kind, entry in news
            if not entry.topic.startswith(TASK_PREFIX) and self._announce.match(entry.topic)
        ]
        for start in range(0, len(drafts), _ANNOUNCE_BATCH):
            batch = drafts[start : start + _ANNOUNCE_BATCH]
            results = await asyncio.gather(
                *(self._publish(draft) for draft in batch), return_exceptions=True
            )
            failed = [r for r in results if isinstance(r, BaseException)]
            for error in failed:
                if not isinstance(error, TidingsError):
                    raise error
            if failed:
                logger.warning(
                    "presence: %d announcements were not published (%s)", len(failed), failed[0]
                )
