"""The ``Backend`` seam: ids, history and fan-out between the processes of one hub.

A backend is what makes many processes act as one hub. It gives every event its place in
the hub's total order, keeps the history window that resumes read from, remembers
idempotency keys, and hands every event, published on any node, to every node's hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tidings.events import Draft, Event

__all__ = ["Appended", "Backend", "Deliver", "Gap", "Replay"]


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
    - :meth:`aclose` stops background work; the hub calls it last.

    Errors: every method may raise :class:`tidings.errors.BackendUnavailable` while the
    backend cannot be reached; nothing else escapes.
    """

    async def start(self, deliver: Deliver) -> None:
        """Connect and begin fan-out to ``deliver``."""
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
