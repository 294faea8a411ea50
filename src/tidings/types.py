"""Shared aliases and small records, so every module speaks one vocabulary.

This module and :mod:`tidings.errors` are the bottom layer: they import nothing else from
tidings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import orjson

__all__ = ["JSON", "PRIORITIES", "Priority", "ServerSentEvent"]

#: A JSON value as it comes in from the outside world (``Any`` stops at this edge).
JSON: TypeAlias = Any

#: How an event is treated under load (SPEC §4): ``high`` events are never conflated or
#: dropped; ``normal`` and ``low`` ``task_progress`` events may be conflated.
Priority: TypeAlias = Literal["low", "normal", "high"]

PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high")


# Here rather than in tidings.wire (which parses it, and re-exports it) so that
# tidings.errors can name it (StreamEnded.events) without importing wire, which imports errors.
@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event as a client receives it.

    Attributes:
        data: the event's data, its ``data:`` lines joined with ``\\n``.
        event: the event type; ``"message"`` when the event had no (or an empty) ``event:``.
        id: the last event ID at dispatch time, as WHATWG's ``lastEventId``: the most recent
            ``id:`` seen on the stream, in this event or an earlier one; ``""`` if none.
        retry: the value of a valid ``retry:`` field inside this event's block, else
            ``None``. (WHATWG ties retry to the stream, not the event; see
            ``tidings.wire.EventParser.retry`` for that.)
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (a hub's events carry their payload as JSON).

        Raises:
            ValueError: the data is not JSON.
        """
        return orjson.loads(self.data)
