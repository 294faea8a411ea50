"""Dispatch: from one event to every matching connection, in as few writes as possible.

The backend calls :meth:`Dispatcher.dispatch` with every event of the hub, in id order.
The dispatcher looks the topic up in the subscription index and either writes the shared
frame through to each matching connection (an idle engine) or queues it on each, to be
flushed in batches (a busy one). No encoding, no matching per subscriber, no task per
event, and no lock (everything here runs on the event loop, between two awaits).

- **Idle** (nothing waits to be flushed, no pass under way) and an event for everyone: the
  event is written through, straight to each sink connection, :data:`FLUSH_BATCH`
  connections per loop iteration, with no queue and no second pass. Under light load,
  where nothing could coalesce anyway, this saves about a third of the Python spent per
  delivery (docs/performance.md).
- **Busy**: dispatch appends the shared frame and, the first time in a tick, puts the
  connection on the dirty list; a flush callback then writes every dirty connection once.
  Events published in one tick leave in one write per connection.

An event that arrives while a write-through pass is under way (or in the loop iteration
after its last batch) first queues the pass's event on the connections it has not reached,
and is queued itself, so each connection still sees the events in order. A backend that
delivers several events at once says so (``more=True``), and they are queued together.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from tidings.backends.base import Deliver
from tidings.engine.connection import Connection, fan_out, write_through
from tidings.engine.types import Counters
from tidings.events import Event
from tidings.topics import TopicIndex
from tidings.tracing import deliver_span

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

__all__ = ["BACKLOG_RETRY", "FLUSH_BATCH", "Counters", "Dispatcher"]

#: Connections written per loop iteration by a flush or write-through pass.
FLUSH_BATCH = 500
#: Seconds between retries of connections whose sink is full.
BACKLOG_RETRY = 0.05
#: The rest of a write-through pass that reached every connection at once.
_NOTHING: list[Connection] = []


class Dispatcher:
    """The connections an engine delivers to, and the delivery of each event to them.

    Connections call back into it (it is their :class:`~tidings.engine.connection.Scheduler`:
    :meth:`mark_dirty`, :meth:`settle_pass`, :meth:`backlog`) and count into
    :attr:`counters`.
    """

    def __init__(self) -> None:
        self.counters = Counters()
        self.index: TopicIndex[Connection] = TopicIndex()
        #: Every registered connection.
        self.live: set[Connection] = set()
        #: Connections to write, in order (each at most once: see ``Connection._dirty``).
        self._dirty: list[Connection] = []
        self._flush_handle: asyncio.Handle | None = None
        #: A write-through pass in progress: its event, the connections it had matched,
        #: and the position of the next batch.
        self._pass: tuple[Event, list[Connection], int] | None = None
        self._pass_handle: asyncio.Handle | None = None
        self._backlogged: set[Connection] = set()
        self._backlog_handle: asyncio.TimerHandle | None = None
        #: The loop, from :meth:`bind` (``asyncio.get_running_loop()`` makes a ``getpid``
        #: system call on every call on Python 3.11, and this is the hot path).
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` from now on (the engine's start)."""
        self._loop = loop

    def stop(self) -> None:
        """Cancel pending callbacks (the engine's close); queued passes are settled."""
        self.settle_pass()
        for handle in (self._flush_handle, self._backlog_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._backlog_handle = None

    # -- registration --------------------------------------------------------------------

    def register(self, conn: Connection) -> None:
        """Deliver to ``conn`` from now on."""
        self.live.add(conn)
        for pattern in conn.patterns:
            self.index.add(pattern, conn)

    def unregister(self, conn: Connection) -> bool:
        """Stop delivering to ``conn``; whether it was registered."""
        if conn not in self.live:
            return False
        self.live.discard(conn)
        self._backlogged.discard(conn)
        for pattern in conn.patterns:
            self.index.discard(pattern, conn)
        return True

    # -- dispatch ------------------------------------------------------------------------

    def dispatch(self, event: Event, more: bool = False) -> None:
        """Send ``event`` to every matching connection (the backend's ``deliver``).

        ``more`` (from the backend: more events follow at once) queues the event, so that
        a batch leaves together.
        """
        through = (
            not more
            and self._pass is None
            and self._flush_handle is None
            and event.users is None
            and not event.conflatable
        )
        self.settle_pass()
        conns = self.index.match(event.topic)
        if through:
            if len(conns) <= FLUSH_BATCH:
                self.counters.delivered += write_through(event, conns, time.monotonic())
                self._pass = (event, _NOTHING, 0)
            else:
                snapshot = list(conns)
                batch = snapshot[:FLUSH_BATCH]
                self.counters.delivered += write_through(event, batch, time.monotonic())
                self._pass = (event, snapshot, FLUSH_BATCH)
            self._pass_handle = self._running_loop().call_soon(self._write_pass)
            return
        grew = fan_out(event, conns, self._dirty)
        if grew and self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    def traced(self, tracer: Tracer) -> Deliver:
        """:meth:`dispatch` with a ``tidings deliver`` span per event (the backend's
        ``deliver`` when tracing is on; when it is off, :meth:`dispatch` is, untouched).

        The span counts the event's subscribers on this node and the writes made at once
        (the rest are queued for the next flush).
        """
        dispatch, counters, index = self.dispatch, self.counters, self.index

        def deliver(event: Event, more: bool = False) -> None:
            with deliver_span(tracer, event) as span:
                span.set_attribute("tidings.subscribers", len(index.match(event.topic)))
                before = counters.delivered
                dispatch(event, more)
                span.set_attribute("tidings.written", counters.delivered - before)

        return deliver

    def _write_pass(self) -> None:
        """Write the next :data:`FLUSH_BATCH` connections of the pass through.

        The pass ends one loop iteration after its last batch, so that the events which
        arrive together are queued together.
        """
        self._pass_handle = None
        current = self._pass
        if current is None:
            return
        event, conns, start = current
        if start >= len(conns):
            self._pass = None
            return
        end = start + FLUSH_BATCH
        self.counters.delivered += write_through(event, conns[start:end], time.monotonic())
        self._pass = (event, conns, end)
        self._pass_handle = self._running_loop().call_soon(self._write_pass)

    def settle_pass(self) -> None:
        """Queue the pass's event on the connections it has not reached (if one is on).

        A connection that ends calls this first, so every event dispatched before its end
        is queued before it.
        """
        current = self._pass
        if current is None:
            return
        self._pass = None
        if self._pass_handle is not None:
            self._pass_handle.cancel()
            self._pass_handle = None
        event, conns, start = current
        if fan_out(event, conns[start:], self._dirty) and self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    @property
    def busy(self) -> bool:
        """Whether a flush or a write-through pass is pending."""
        return self._pass is not None or self._flush_handle is not None

    # -- flush ---------------------------------------------------------------------------

    def mark_dirty(self, conn: Connection) -> None:
        """Flush ``conn`` at the next tick, with every other connection written this tick."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return asyncio.get_running_loop() if loop is None else loop

    def _flush(self) -> None:
        """Write the dirty connections, at most :data:`FLUSH_BATCH` per loop iteration.

        Between batches the loop reads sockets, so publishes that arrive during a long
        pass (10,000 subscribers take tens of milliseconds) are queued on the connections
        not written yet and leave with the earlier events in one ``write``: an engine that
        falls behind coalesces more and catches up, instead of queueing whole passes.
        Connections marked dirty meanwhile are appended and written in their turn; the
        list holds each connection at most once, however long the engine stays behind.
        """
        self._flush_handle = None
        dirty = self._dirty
        batch = dirty[:FLUSH_BATCH]
        del dirty[:FLUSH_BATCH]
        now = time.monotonic()
        written = 0
        for conn in batch:
            written += conn.flush(now)
        self.counters.delivered += written
        if dirty and self._flush_handle is None:
            self._flush_handle = self._running_loop().call_soon(self._flush)

    def backlog(self, conn: Connection) -> None:
        """Retry ``conn`` later: its sink holds too many unsent bytes."""
        self._backlogged.add(conn)
        if self._backlog_handle is None:
            self._backlog_handle = self._running_loop().call_later(
                BACKLOG_RETRY, self._retry_backlog
            )

    def _retry_backlog(self) -> None:
        self._backlog_handle = None
        waiting = self._backlogged
        self._backlogged = set()
        for conn in waiting:
            if conn.close_reason in ("slow", "client") or conn not in self.live:
                continue
            if conn.backlogged:
                self._backlogged.add(conn)
            else:
                self.counters.delivered += conn.flush(time.monotonic())
        if self._backlogged and self._backlog_handle is None:
            self._backlog_handle = self._running_loop().call_later(
                BACKLOG_RETRY, self._retry_backlog
            )
