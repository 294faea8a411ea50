"""Reading a topic's history and presence page by page: the checks of the arguments, and
what a caller may see of the events.

The events are those a stream delivers (same ids, same payloads), so a client can render
a page and then follow the stream from the last id. Events targeted at ``users`` are left
out for every other principal, as a stream leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from tidings.auth.principal import Principal
from tidings.backends.base import Backend
from tidings.errors import InvalidEvent
from tidings.events import MAX_ID_BYTES, Event

__all__ = [
    "HISTORY_LIMIT",
    "PAGE_LIMIT",
    "History",
    "check_cursor",
    "check_limit",
    "read_history",
]

#: Most events in one page of history, and the default (SPEC §3).
HISTORY_LIMIT: Final = 100
#: Most entries in one page of presence or topics.
PAGE_LIMIT: Final = 1000
#: The longest cursor: a connection id or a topic.
_MAX_CURSOR: Final = 256


@dataclass(frozen=True, slots=True)
class History:
    """A page of a topic's history (``hub.history``, ``GET /topics/{topic}/history``).

    Attributes:
        topic: the topic.
        events: oldest first; those targeted at other users left out.
        complete: false when the history no longer holds every event after ``since``
            (``events`` then start at the oldest event kept): refetch state.
        next_since: the id to ask from for the next page; ``None`` when nothing more is
            kept after this page.
    """

    topic: str
    events: Sequence[Event]
    complete: bool
    next_since: str | None


def check_limit(limit: int, most: int) -> int:
    """``limit`` if it is an integer from 1 to ``most``.

    Raises:
        InvalidEvent: (422) it is not.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidEvent(f"limit must be between 1 and {most}", code="invalid_request")
    return limit


def check_cursor(cursor: str | None) -> str | None:
    """``cursor`` if it can be one: printable ASCII without spaces, at most 256 characters.

    Raises:
        InvalidEvent: (422) it cannot.
    """
    if cursor is None:
        return None
    if (
        not isinstance(cursor, str)
        or not 0 < len(cursor) <= _MAX_CURSOR
        or not cursor.isascii()
        or not all("!" <= char <= "~" for char in cursor)
    ):
        raise InvalidEvent("cursor is not one this hub gives", code="invalid_request")
    return cursor


async def read_history(
    backend: Backend,
    topic: str,
    *,
    since: str | None,
    limit: int,
    principal: Principal | None,
) -> History:
    """A page of ``topic``'s history after ``since`` (see :meth:`tidings.Hub.history`).

    Raises:
        InvalidEvent: (422) ``limit`` is not from 1 to 100, or ``since`` is over 256 bytes.
        BackendUnavailable: the backend cannot be read.
    """
    check_limit(limit, HISTORY_LIMIT)
    if since is not None and (not since or len(since.encode()) > MAX_ID_BYTES):
        raise InvalidEvent(f"since: 1 to {MAX_ID_BYTES} bytes", code="invalid_request")
    window = await backend.history(topic, after=since, limit=limit)
    events = window.events
    next_since = events[-1].id if window.more and events else None
    if principal is not None:
        events = [event for event in events if principal.may_receive(event.users)]
    return History(topic, events, window.complete, next_since)
