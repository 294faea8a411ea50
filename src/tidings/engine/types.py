"""The engine's small vocabulary: why a stream ends, what it writes to, what it counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

__all__ = ["HIGH_WATER", "CloseReason", "Counters", "Scheduler", "Sink"]

C_contra = TypeVar("C_contra", contravariant=True)

#: Why a stream ends. ``slow`` and ``client`` end it at once; the others flush first.
#: ``disconnect``: an administrator ended it (``POST /admin/disconnect``).
CloseReason = Literal[
    "end", "shutdown", "max_age", "auth_expired", "disconnect", "slow", "client", "gone"
]

#: Unsent bytes a sink may hold before frames wait in the queue instead.
HIGH_WATER = 64 * 1024


@dataclass(slots=True)
class Counters:
    """The engine's event counters (plain integers: the hot path only adds to them)."""

    published: int = 0
    delivered: int = 0
    conflated: int = 0
    dropped: int = 0
    slow_disconnects: int = 0


class Scheduler(Protocol[C_contra]):
    """What a connection asks of the dispatcher that delivers to it."""

    counters: Counters

    def mark_dirty(self, conn: C_contra) -> None:
        """Flush ``conn`` at the next tick."""
        ...

    def settle_pass(self) -> None:
        """Queue a write-through pass's event where it has not been written yet."""
        ...

    def backlog(self, conn: C_contra) -> None:
        """Retry ``conn`` later: its sink is full."""
        ...


class Sink(Protocol):
    """Where a sink-mode stream's bytes go: the socket's transport, in HTTP/1.1 chunks.

    An :class:`asyncio.Transport` is one. The connection only writes; the server that
    attached it owns it (closes it, and aborts it through :attr:`Connection.aborter`).
    """

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...
