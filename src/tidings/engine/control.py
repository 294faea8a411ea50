"""Ending streams on an administrator's command (``POST /admin/disconnect``), on one node.

The backend carries the command to every node (:meth:`Backend.disconnect
<tidings.backends.base.Backend.disconnect>`); each runs :func:`end_streams` on its own
streams. An ended stream first gets ``event: disconnect`` with ``{"reason"}`` (no id, so
the client's Last-Event-ID stays its last event's), then a clean end (its queue flushed,
the end of the body), and its client reconnects as usual: whether it may come back is its
credentials' business.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import orjson

from tidings.backends.base import Disconnect
from tidings.engine.connection import Connection
from tidings.errors import InvalidEvent
from tidings.topics import pattern_covers, validate_pattern
from tidings.wire import encode_event

__all__ = ["DEFAULT_REASON", "MAX_REASON", "disconnect_command", "end_streams", "matches"]

#: The reason a disconnect sends when none is given.
DEFAULT_REASON: Final = "disconnected by the server"
#: The longest reason, in characters.
MAX_REASON: Final = 1024
#: The longest user id a command may name, in characters.
_MAX_USER: Final = 256


def disconnect_command(
    *, user: str | None = None, topic: str | None = None, reason: str | None = None
) -> Disconnect:
    """A checked :class:`Disconnect`.

    Raises:
        InvalidEvent: (422) neither ``user`` nor ``topic``, an empty or overlong user or
            reason.
        InvalidTopic: (400) ``topic`` is not a topic or pattern.
    """
    if user is None and topic is None:
        raise InvalidEvent("give a user, a topic, or both", code="invalid_request")
    if user is not None and not 0 < len(user) <= _MAX_USER:
        raise InvalidEvent(f"user: 1 to {_MAX_USER} characters", code="invalid_request")
    if topic is not None:
        validate_pattern(topic)
    if reason is None:
        reason = DEFAULT_REASON
    elif len(reason) > MAX_REASON:
        raise InvalidEvent(f"reason: at most {MAX_REASON} characters", code="invalid_request")
    return Disconnect(user, topic, reason)


def matches(conn: Connection, command: Disconnect) -> bool:
    """Whether ``command`` ends ``conn``: its user (if named) and one of its subscriptions
    within the command's topic or pattern (if named)."""
    if command.user is not None and conn.user != command.user:
        return False
    topic = command.topic
    return topic is None or any(pattern_covers(topic, pattern) for pattern in conn.patterns)


def end_streams(conns: Iterable[Connection], command: Disconnect) -> int:
    """End the streams of ``conns`` that ``command`` names; how many."""
    frame = encode_event(orjson.dumps({"reason": command.reason}).decode(), event="disconnect")
    ended = 0
    for conn in list(conns):
        if conn.close_reason is not None or not matches(conn, command):
            continue
        # A held stream (its start waits for the backend) drops the events it queued: it
        # resumes from where it started (Connection.close).
        conn.push_raw(frame)
        conn.close("disconnect")
        ended += 1
    return ended
