"""The ``Backend`` seam: ids, history, fan-out, presence and control between the
processes of one hub.

A backend is what makes many processes act as one hub. It gives every event its place in
the hub's total order, keeps the history window that resumes (and history reads) read
from, remembers idempotency keys, and hands every event, published on any node, to every
node's hub. It also holds the hub's presence (which stream is subscribed to which topic,
on which node) and carries control commands (an administrator's disconnect) to every node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tidings.events import Draft, Event

__all__ = [
    "Appended",
    "Backend",
    "Control",
    "Deliver",
    "Disconnect",
    "Gap",
    "HistoryWindow",
    "PresenceEntry",
    "PresencePage",
    "PresenceUpdate",
    "Replay",
    "TopicCount",
    "TopicPage",
]


#: Called by the backend with every event of the hub, in id order, on the event loop.
class Deliver(Protocol):
    """The hub's dispatch, which a backend calls with every event, in order.

    ``more`` says that the backend delivers further events at once (a batch read from
    Redis): the hub then queues the events together instead of writing the first through.
    """

    def __call__(self, event: Event, more: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class Appended:
    """The result of :meth:`Backend.append`.

    ``duplicate`` is true when the idempotency key was already used: nothing was published
    and ``id`` is the first publish's id.
    """

    id: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """The backend cannot place a resume id (SPEC §3): the client must refetch state.

    ``reason`` is ``"expired"`` (older than the history window) or ``"unknown"`` (malformed,
    from another history, or never issued). ``latest_id`` is the newest id in the hub.
    """

    last_event_id: str
    reason: Literal["expired", "unknown"]
    latest_id: str


@dataclass(frozen=True, slots=True)
class Replay:
    """What a resume receives: the missed events in id order, or a gap (never both)."""

    events: Sequence[Event] = ()
    gap: Gap | None = None


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """What :meth:`Backend.history` read of one topic's history window.

    ``events`` are in id order. ``complete`` is false when the window no longer covers the
    id asked from (events after it were evicted or aged out, or the id is not one of this
    history): ``events`` then start at the oldest event kept. ``more`` says that further
    events are kept after the last of ``events``.
    """

    events: Sequence[Event]
    complete: bool
    more: bool


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One open stream subscribed to ``topic`` exactly (not through a pattern).

    ``since`` is the Unix time the stream registered; ``user`` is ``None`` for an anonymous
    stream; ``node`` names the process that serves it.
    """

    topic: str
    connection_id: str
    user: str | None
    node: str
    since: float


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """The answer to :meth:`Backend.update_presence`.

    ``lost`` is true when the backend no longer knew the node (Redis lost its data, or
    the node was silent for so long that it was taken for dead and its entries removed):
    the node must send every entry it holds again. ``expired`` lists the entries of dead
    nodes that this call removed, so that each is announced as gone exactly once.
    """

    lost: bool = False
    expired: Sequence[PresenceEntry] = ()


@dataclass(frozen=True, slots=True)
class PresencePage:
    """A page of a topic's presence: ``count`` streams in all, ``connections`` of them here.

    ``next_cursor`` is what to pass as ``cursor`` for the next page; ``None`` on the last.
    """

    topic: str
    count: int
    connections: Sequence[PresenceEntry]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class TopicCount:
    """A topic and the number of open streams subscribed to it exactly, on every node."""

    topic: str
    subscribers: int


@dataclass(frozen=True, slots=True)
class TopicPage:
    """A page of the topics that have subscribers, in topic order."""

    topics: Sequence[TopicCount]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """An administrator's command: end the streams of ``user`` and/or on ``topic``.

    ``topic`` may be a pattern: a stream matches when one of its subscriptions lies within
    it. With both set, a stream must match both.
    """

    user: str | None
    topic: str | None
    reason: str


class Control(Protocol):
    """A node's handler of control commands: ends its matching streams, returns how many."""

    def __call__(self, command: Disconnect) -> int: ...


class Backend(Protocol):
    """Ids, history and cross-node fan-out of one hub.

    Contract:

    - :meth:`start` is awaited once, before anything else, with the hub's ``deliver``
      callback. From then on the backend calls ``deliver`` with every event appended on any
      node of the hub, exactly once per node, in id order, on the event loop, and never
      while holding a lock. ``deliver`` must not block; it raises nothing.
    - :meth:`append` returns only once the event is durable in the history window (so a
      resume on any node finds it) and has been handed to fan-out. Ids are totally ordered
      across topics and nodes. An append that raises published nothing and did not use up
      its idempotency key.
    - :meth:`replay` returns, in id order, the events after ``after`` on topics matching
      any of ``patterns``, or a :class:`Gap` if it cannot place ``after``.
    - :meth:`history` reads one topic's window page by page: the same events, ids and
      payloads :meth:`replay` returns (and streams deliver), oldest first.
    - Presence: each node sends what changed with :meth:`update_presence`, and calls it at
      least every :data:`~tidings.backends.presence.HEARTBEAT` seconds (with no change, as a
      heartbeat). Entries of a node that stops calling drop out within
      :data:`~tidings.backends.presence.NODE_TIMEOUT` seconds and a heartbeat more.
      :meth:`presence` and :meth:`presence_topics` read what every node sent, with counts
      that cost O(1) per topic.
    - :meth:`disconnect` hands a command to the ``control`` handler of every node (the
      one given to :meth:`start`), and sums what they ended.
    - :meth:`aclose` stops background work; the hub calls it last.

    Errors: every method may raise :class:`tidings.errors.BackendUnavailable` while the
    backend cannot be reached; nothing else escapes.
    """

    async def start(self, deliver: Deliver, control: Control | None = None) -> None:
        """Connect and begin fan-out to ``deliver``; hand control commands to ``control``."""
        ...

    async def aclose(self) -> None:
        """Stop fan-out and release connections."""
        ...

    async def append(self, draft: Draft, *, idempotency_key: str | None = None) -> Appended:
        """Assign the next id to ``draft``, store it in history and fan it out.

        With an ``idempotency_key`` seen in the last five minutes, publish nothing and return
        the first publish's id with ``duplicate=True``.
        """
        ...

    async def replay(self, patterns: Sequence[str], after: str) -> Replay:
        """Events after the id ``after`` on topics matching ``patterns``, or a gap."""
        ...

    async def latest_id(self) -> str:
        """The id of the newest event of the hub (``<epoch>-0`` before the first)."""
        ...

    async def ping(self) -> bool:
        """Whether the backend is reachable now (for ``/readyz``)."""
        ...

    async def history(self, topic: str, *, after: str | None, limit: int) -> HistoryWindow:
        """Up to ``limit`` events of ``topic`` after the id ``after`` (from the oldest kept
        without it), oldest first.

        Events older than the window (``history_ttl``) are not kept, even where they were
        not trimmed yet. An ``after`` this history cannot place (malformed, of another
        epoch, in the future, or older than the window) reads from the oldest event kept,
        with ``complete`` false.
        """
        ...

    async def update_presence(
        self,
        node: str,
        joins: Sequence[PresenceEntry],
        leaves: Sequence[PresenceEntry],
        *,
        final: bool = False,
    ) -> PresenceUpdate:
        """Record ``node``'s new entries and remove the ``leaves`` (entries it sent before),
        refresh its heartbeat, and remove the entries of nodes found dead.

        Adding an entry twice, or removing one that is gone, does nothing, so a call may be
        repeated after an error. ``final`` (a node that stops) removes every entry of
        ``node`` and the node itself.
        """
        ...

    async def presence(self, topic: str, *, limit: int, cursor: str | None) -> PresencePage:
        """The entries of ``topic`` on every node, ``limit`` per page, in connection-id
        order, after the entry ``cursor`` names; ``count`` is all of them."""
        ...

    async def presence_topics(self, *, limit: int, cursor: str | None) -> TopicPage:
        """The topics with at least one entry, ``limit`` per page, after ``cursor``."""
        ...

    async def disconnect(self, command: Disconnect) -> int:
        """Run ``command`` on every node; the number of streams ended in all.

        Nodes that do not answer within a few seconds are not counted (their streams may
        still end).
        """
        ...
