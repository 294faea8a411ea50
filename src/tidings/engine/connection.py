"""One subscriber's stream: a bounded queue of SSE bytes with conflation and backpressure.

Decisions worth knowing before changing this file (docs/architecture.md, "The publish
path" and "Delivery under load", draws them):

- The queue holds *frames* (encoded once, shared by every connection), never events.
- :meth:`Connection.push` runs in the dispatch loop, once per matching connection per
  event: it must not await, allocate much, or touch the index (being iterated). It appends
  and, the first time in a tick, marks the connection dirty; the dispatcher then flushes
  every dirty connection once. :func:`fan_out` and :func:`write_through` are that loop and
  the idle engine's write-through; they repeat a few lines of ``push`` for speed. A
  connection with frames queued always gets the next event queued behind them.
- Two ways to write, chosen by whoever serves the stream: **sink** (``tidings serve``
  attaches the socket's transport: no task per stream, one ``write`` per tick, ``on_end``
  says when it is over) or **pull** (an ASGI response's task waits in
  :meth:`next_chunk` and sends each tick's bytes as one chunk).
- Backpressure: while a sink holds over :data:`HIGH_WATER` unsent bytes, frames wait in
  the queue (where newer ``task_progress`` replaces older: blanked and appended at the end,
  so ids and ``sequence`` never go backwards); over its bound a connection is cut, not
  trimmed (counted), and its client resumes from its last id.
- A *held* stream sends no event until its start is done (replay, task state, owner
  check); meanwhile it may send its opening bytes and keep-alive comments
  (:meth:`send_ahead`), and if it ends first it sends none of its events
  (:meth:`drop_events`).
- Whoever serves the stream calls :meth:`finish` once when it is over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from tidings.auth.principal import Principal
from tidings.engine.frames import chunk, seq_of_frame
from tidings.engine.types import HIGH_WATER, CloseReason, Scheduler, Sink
from tidings.events import Event

__all__ = ["Connection", "fan_out", "write_through"]


class Connection:
    """A subscriber's stream, served by whoever answered its request.

    In pull mode (an ASGI response) the writer calls :meth:`next_chunk` in a loop and sends
    each chunk; ``None`` means the stream is over (see :attr:`close_reason`). In sink mode
    the server calls :meth:`attach` with the socket's transport and is told through
    ``on_end`` when the stream is over. Either way it then calls :meth:`finish`.
    """

    __slots__ = (
        "_bytes",
        "_conflate",
        "_count",
        "_dirty",
        "_dispatcher",
        "_early",
        "_on_end",
        "_plain",
        "_queue",
        "_release",
        "_transport",
        "_waiter",
        "aborter",
        "close_reason",
        "connection_id",
        "created",
        "end_types",
        "holding",
        "ip",
        "last_id",
        "last_write",
        "max_bytes",
        "max_events",
        "min_seq",
        "patterns",
        "principal",
        "retire_at",
        "task_id",
        "timed",
        "user",
    )

    def __init__(
        self,
        dispatcher: Scheduler[Connection],
        patterns: tuple[str, ...],
        principal: Principal,
        *,
        max_events: int,
        max_bytes: int,
        end_types: frozenset[str] = frozenset(),
        task_id: str | None = None,
        ip: str | None = None,
        release: Callable[[Connection], None] | None = None,
        timed: bool = False,
        connection_id: str = "",
    ) -> None:
        self._dispatcher = dispatcher
        #: Unique in the hub (the engine gives it): how presence names this stream.
        self.connection_id = connection_id
        self._release = release
        #: Frames with the publish time (``time:``), which this stream asked for.
        self.timed = timed
        self.patterns = patterns
        self.principal = principal
        self.user = principal.user
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.end_types = end_types
        self.task_id = task_id
        self.ip = ip
        self._queue: list[bytes] = []
        #: Frames to send although the stream is held (see :meth:`send_ahead`).
        self._early: tuple[bytes, ...] = ()  # no list per stream: most never need one
        self._conflate: dict[str, int] = {}
        self._count = 0
        self._bytes = 0
        self._dirty = False
        #: Direct mode, released, open, and not ending on an event type: what
        #: :func:`fan_out` delivers to without calling :meth:`push`.
        self._plain = False
        self._transport: Sink | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._on_end: Callable[[], None] | None = None
        #: Called once to cut a slow client at once (set by whoever serves the stream).
        self.aborter: Callable[[], None] | None = None
        self.close_reason: CloseReason | None = None
        #: While true nothing is sent: the replay is being put in front of the queue.
        self.holding = True
        #: Events with a seq at or below this were replayed already (de-duplication).
        self.min_seq = 0
        #: Id of the last event queued for this client (what it resumes from).
        self.last_id: str | None = None
        now = time.monotonic()
        self.created = now
        self.last_write = now
        #: Monotonic time at which the stream is ended cleanly (max age, token expiry).
        self.retire_at: float | None = None

    def finish(self) -> None:
        """The stream is over and its server is done with it: free its place in the engine
        (the index, its stream slot). Called once by whoever serves the stream; later calls
        do nothing."""
        release, self._release = self._release, None
        if self.close_reason is None:
            self.close_reason = "client"
        if release is not None:
            release(self)

    # -- producer side (the dispatcher) ------------------------------------------------

    def push(self, event: Event) -> None:
        """Queue ``event`` (dispatch path: no await, no index access)."""
        if self.close_reason is not None or event.seq <= self.min_seq:
            return
        if event.users is not None and (self.user is None or self.user not in event.users):
            return
        if self.timed:
            timed_frame, timed_chunk = event.timed()
            frame = timed_chunk if self._transport is not None else timed_frame
        else:
            frame = event.chunk if self._transport is not None else event.frame
        queue = self._queue
        if event.conflatable:
            at = self._conflate.get(event.topic)
            if at is not None:
                self._bytes -= len(queue[at])
                self._count -= 1
                queue[at] = b""
                self._dispatcher.counters.conflated += 1
            self._conflate[event.topic] = len(queue)
        queue.append(frame)
        self._count += 1
        self._bytes += len(frame)
        self.last_id = event.id
        if self._count > self.max_events or self._bytes > self.max_bytes:
            self._overflow()
            return
        if event.type in self.end_types:
            self.close_reason = "end"
            self._plain = False
        if self._transport is not None:
            # _wake's direct-write branch, inlined: this runs once per delivery.
            if not self._dirty and not self.holding:
                self._dirty = True
                self._dispatcher.mark_dirty(self)
            return
        self._wake()

    def push_raw(self, frame: bytes) -> None:
        """Queue bytes that are not an event (a comment, a ``gap`` or ``auth_expired``)."""
        if self.close_reason is not None:
            return
        if self._transport is not None:
            frame = chunk(frame)
        self._queue.append(frame)
        self._bytes += len(frame)
        self._wake()

    def put_front(self, events: list[Event], head: bytes = b"", *, min_seq: int = 0) -> None:
        """Put replayed ``events`` (after ``head``) before everything queued, de-duplicated.

        Live events queued while the replay was read are kept only if newer than the last
        replayed one (or than ``min_seq``), so each event reaches the client exactly once
        and in order.
        """
        self.min_seq = max(self.min_seq, min_seq, events[-1].seq if events else 0)
        chunked = self._transport is not None
        frames = [chunk(head) if chunked else head] if head else []
        count = 0
        for event in events:
            if self.principal.may_receive(event.users):
                if self.timed:
                    frames.append(event.timed()[1 if chunked else 0])
                else:
                    frames.append(event.chunk if chunked else event.frame)
                count += 1
                self.last_id = event.id
                if event.type in self.end_types:
                    self.close_reason = "end"
                    self._plain = False
        # What was queued before the first event (the opening bytes) stays in front.
        queued = self._queue
        first = 0
        while first < len(queued) and not seq_of_frame(queued[first]):
            first += 1
        lead, live = queued[:first], queued[first:]
        if self.min_seq and live:
            live = [f for f in live if (seq := seq_of_frame(f)) == 0 or seq > self.min_seq]
        self._queue = lead + frames + live
        self._conflate.clear()
        # Replayed frames do not count against the bound: they are bounded by the history
        # window, and cutting them would only make the client ask for them again.
        self._count = sum(1 for f in live if f)
        self._bytes = sum(len(f) for f in lead) + sum(len(f) for f in live)
        self._dispatcher.counters.delivered += count

    def send_ahead(self, comment: bytes = b"") -> None:
        """Send what is queued ahead of the first event (the opening bytes), then
        ``comment``, now, although the stream is held.

        For a stream whose start waits for the backend: its client and the proxies on the
        way must see it open and alive (SPEC §1), and neither is an event, so sending them
        before the held events reorders nothing.
        """
        if self.close_reason is not None and not self.holding:
            return  # ending: its writer sends what is left
        queue = self._queue
        first = 0
        while first < len(queue) and not seq_of_frame(queue[first]):
            first += 1
        ahead = [frame for frame in queue[:first] if frame]
        del queue[:first]
        self._bytes -= sum(len(frame) for frame in ahead)
        transport = self._transport
        if transport is None:
            # ASGI mode, or not attached yet: the writer (or attach) sends them.
            self._early += (*ahead, comment) if comment else tuple(ahead)
            waiter = self._waiter
            if self._early and waiter is not None and not waiter.done():
                self._waiter = None
                waiter.set_result(None)
            return
        if comment:
            ahead.append(chunk(comment))
        if ahead and not transport.is_closing():
            transport.write(b"".join(ahead))
            self.last_write = time.monotonic()

    def drop_events(self, *, through: int | None = None) -> None:
        """Forget the events queued so far (with ``through``, those whose seq is at most
        that); comments and other frames stay.

        For a held stream: what it queued is either covered by what its start reads next
        (a task's state or replay), or must not be sent at all (a refused check, an end
        before the replay).
        """
        if through is None:
            kept = [frame for frame in self._queue if frame and not seq_of_frame(frame)]
        else:
            kept = [
                frame for frame in self._queue if frame and not 0 < seq_of_frame(frame) <= through
            ]
        self._queue = kept
        self._conflate.clear()
        self._count = sum(1 for frame in kept if seq_of_frame(frame))
        self._bytes = sum(len(frame) for frame in kept)
        if not self._count:
            self.last_id = None
            if self.holding and self.close_reason == "end":
                self.close_reason = None  # set by a dropped event (a task's last)
                self._update_plain()

    def release(self) -> None:
        """End the hold: what is queued may be sent."""
        self.holding = False
        self._update_plain()
        self._wake()

    def close(self, reason: CloseReason) -> None:
        """End the stream: ``slow``/``client`` at once, other reasons after a flush."""
        # Every event dispatched before the end is queued first (a write-through pass may
        # not have reached this connection yet).
        self._dispatcher.settle_pass()
        if self.holding and reason in ("shutdown", "max_age", "auth_expired", "disconnect"):
            self.drop_events()  # see the module docstring
        ending_now = ("slow", "client")
        if self.close_reason is None or (
            reason in ending_now and self.close_reason not in ending_now
        ):
            # An end at once beats a clean end under way; the first of those is kept
            # (a client gone after its cut stays "slow", as counted).
            self.close_reason = reason
        self.holding = False
        self._plain = False
        if reason in ("slow", "client"):
            self._end()
        self._wake(force=True)

    def _overflow(self) -> None:
        counters = self._dispatcher.counters
        counters.slow_disconnects += 1
        counters.dropped += self._count
        self._queue = []
        self._conflate.clear()
        self._count = self._bytes = 0
        self.close_reason = "slow"
        self._plain = False
        self._end()
        self._wake(force=True)
        if self.aborter is not None:
            self.aborter()

    def _wake(self, *, force: bool = False) -> None:
        if self.holding and not force:
            return
        if self._transport is not None:
            if not self._dirty:
                self._dirty = True
                self._dispatcher.mark_dirty(self)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- sink mode ---------------------------------------------------------------------

    def attach(self, transport: Sink, on_end: Callable[[], None], head: bytes = b"") -> None:
        """Write straight to ``transport`` from now on.

        ``head`` is written first, with what is queued: the response head, when the caller
        has not sent it, so that it leaves with the stream's opening bytes in one write
        (at once if the stream is held: the client must see its response start).
        ``on_end`` is called once when the stream is over: everything was written, or the
        client is gone or cut.
        """
        self._transport = transport
        self._on_end = on_end
        # From now on the queue holds HTTP chunks (see Event.chunk).
        self._queue = [chunk(frame) for frame in self._queue if frame]
        early = b""
        if self._early:
            early = b"".join(chunk(frame) for frame in self._early)
            self._early = ()
        if self.holding:
            # Nothing may be sent before the replay (the backend is down): the head now,
            # with what goes ahead of the events (see send_ahead).
            if head or early:
                transport.write(head + early)
        elif head or early:
            self._queue.insert(0, head + early)
        self._conflate.clear()
        self._bytes = sum(len(frame) for frame in self._queue)
        self._update_plain()
        if self.close_reason in ("slow", "client"):
            self._end()
        elif self._queue or self.close_reason is not None:
            self._wake(force=True)

    def detach(self) -> None:
        """Stop writing to the sink (its server sends the end of the body)."""
        self._transport = None
        self._plain = False

    def _update_plain(self) -> None:
        self._plain = (
            self._transport is not None
            and not self.holding
            and self.close_reason is None
            and not self.end_types
            and not self.timed
        )

    def flush(self, now: float) -> int:
        """Write everything queued to the transport as one chunk (the hub's flush).

        ``now`` is the monotonic time of the flush; returns the events written.
        """
        self._dirty = False
        transport = self._transport
        if transport is None or self.holding:
            return 0
        if transport.is_closing():
            self._lost()
            return 0
        written = 0
        queue = self._queue
        if queue:
            if transport.get_write_buffer_size() > HIGH_WATER:
                # The client is behind: keep the frames here, where progress is conflated
                # and the bound applies, until the transport drains.
                self._dispatcher.backlog(self)
                return 0
            data = b"".join(queue) if len(queue) > 1 else queue[0]
            written = self._count
            queue.clear()
            if self._conflate:
                self._conflate.clear()
            self._count = self._bytes = 0
            if data:
                transport.write(data)
                self.last_write = now
        if self.close_reason is not None:
            self._end()
        return written

    def _lost(self) -> None:
        """The sink is closing: the client is gone or was cut."""
        self.close_reason = self.close_reason or "client"
        self._plain = False
        self._end()

    @property
    def backlogged(self) -> bool:
        """Whether the sink holds over :data:`HIGH_WATER` unsent bytes (sink mode)."""
        transport = self._transport
        return transport is not None and transport.get_write_buffer_size() > HIGH_WATER

    def _end(self) -> None:
        on_end = self._on_end
        if on_end is not None:
            self._on_end = None
            on_end()

    # -- pull mode -----------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Events waiting to be sent."""
        return self._count

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be sent."""
        return self._bytes

    async def next_chunk(self) -> bytes | None:
        """Wait for bytes to send, and take everything queued as one chunk.

        Returns ``None`` when the stream is over. For ``end``, ``shutdown``, ``max_age`` and
        ``auth_expired`` the queue is flushed first; for ``slow`` and ``client`` it is not.
        """
        while True:
            reason = self.close_reason
            if reason == "slow" or reason == "client":
                return None
            if self._early:
                chunk = b"".join(self._early)
                self._early = ()
                self.last_write = time.monotonic()
                return chunk
            if self._queue and not self.holding:
                queue = self._queue
                chunk = b"".join(queue) if len(queue) > 1 else queue[0]
                self._dispatcher.counters.delivered += self._count
                self._queue = []
                if self._conflate:
                    self._conflate.clear()
                self._count = self._bytes = 0
                self.last_write = time.monotonic()
                if chunk:
                    return chunk
                continue
            if reason is not None and not self.holding:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None


def fan_out(event: Event, conns: Iterable[Connection], dirty: list[Connection]) -> bool:
    """Queue ``event`` on every connection of ``conns``; the hub's dispatch loop.

    Connections that write to their transport directly and need no per-event decision
    (the common case: a plain subscriber, an event for everyone) get the event's shared
    chunk appended here, without a call to :meth:`Connection.push`; those that become
    ready to write are appended to ``dirty``. Everything else goes through ``push``.
    Returns whether ``dirty`` grew, so the hub knows to schedule a flush.

    This is the inner loop of every publish (once per matching connection), which is why
    it repeats a few lines of ``push`` instead of calling it.
    """
    if event.users is not None or event.conflatable:
        for conn in conns:
            conn.push(event)
        return False
    chunk = event.chunk
    size = len(chunk)
    seq = event.seq
    ident = event.id
    grew = False
    for conn in conns:
        if conn._plain and seq > conn.min_seq:
            conn._queue.append(chunk)
            conn.last_id = ident
            conn._count += 1
            conn._bytes += size
            if conn._count > conn.max_events or conn._bytes > conn.max_bytes:
                conn._overflow()
            elif not conn._dirty:
                conn._dirty = True
                dirty.append(conn)
                grew = True
        else:
            conn.push(event)
    return grew


def write_through(event: Event, conns: Iterable[Connection], now: float) -> int:
    """Write ``event`` at once to each idle connection of ``conns``; queue it on the others.

    The hub's dispatch when it has been idle (see ``Hub._dispatch``): a direct, released,
    open connection with nothing queued and room in its transport gets the event's shared
    chunk in one ``write`` here, with no queue, no dirty mark and no second pass. Any other
    connection gets it through :meth:`Connection.push`, in order behind what it holds.
    ``event`` must be for everyone and not conflatable (the caller checks). ``now`` is the
    monotonic time of the pass; returns the events written.
    """
    chunk = event.chunk
    seq = event.seq
    ident = event.id
    written = 0
    for conn in conns:
        if conn._plain and not conn._queue and seq > conn.min_seq:
            transport = conn._transport
            if (
                transport is not None  # always, for a plain connection
                and not transport.is_closing()
                and transport.get_write_buffer_size() <= HIGH_WATER
            ):
                transport.write(chunk)
                conn.last_id = ident
                conn.last_write = now
                written += 1
                continue
        conn.push(event)
    return written
