"""Events: what is published, how it is identified, and its SSE bytes (encoded once).

A publish becomes a :class:`Draft` (validated, payload serialized to JSON once). The backend
gives it its place in the hub's total order, an :class:`EventId`, and turns it into an
:class:`Event`, whose :attr:`Event.frame` holds the exact SSE bytes every subscriber gets.
Nothing downstream encodes again, whatever the number of subscribers (SPEC §4).

Ids are ``<epoch>-<seq>``: ``seq`` rises by one with every event of the hub (across topics,
and across processes sharing a Redis backend), and ``epoch`` names the history the ids belong
to. A hub whose history was lost (a restarted memory hub, a flushed Redis) gets a new epoch,
so an id from before is recognised as "not an id this hub issues" and the client gets a
``gap`` instead of a silent hole.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from tidings.errors import EventTooLarge, InvalidEvent
from tidings.topics import validate_topic
from tidings.types import JSON, PRIORITIES, Priority
from tidings.wire import validate_field

__all__ = [
    "CONFLATED_TYPES",
    "MAX_ID_BYTES",
    "MAX_JSON_DEPTH",
    "Draft",
    "Event",
    "EventId",
    "dumps_json",
    "make_draft",
    "new_epoch",
    "too_deep",
]

#: Longest ``Last-Event-ID`` the hub accepts (SPEC §3: longer is a 400).
MAX_ID_BYTES: Final = 256

#: Event types whose queued copies are replaced by newer ones of the same topic (SPEC §4).
CONFLATED_TYPES: Final = frozenset({"task_progress"})

#: Deepest nesting of arrays and objects in a JSON value a client gives: event data, a
#: task's metadata, result and details (a number is depth 0, ``[1]`` depth 1). Deeper is
#: refused (422) at every depth. Nobody needs more, and the limit leaves room for the
#: levels a task record, an event payload or a task list wraps around such a value within
#: what orjson writes (:data:`_ORJSON_DEPTH`).
MAX_JSON_DEPTH: Final = 128
#: The deepest value ``orjson.dumps`` writes; deeper raises "Recursion limit reached".
#: ``tests/test_wire.py`` pins it, so an orjson upgrade that changes it fails there.
_ORJSON_DEPTH: Final = 254
#: Lists wrapped around a value so that orjson itself refuses one deeper than the limit.
_WRAP: Final = _ORJSON_DEPTH - MAX_JSON_DEPTH
#: Per thread (sync publishers run in threads): the wrapping lists and their innermost one.
_wrapping = threading.local()


def new_epoch() -> str:
    """A fresh random epoch: 8 lowercase hex characters."""
    return secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class EventId:
    """A parsed event id: ``epoch`` and the hub-wide sequence number ``seq``."""

    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq}"

    @classmethod
    def parse(cls, text: str) -> EventId | None:
        """Parse ``<epoch>-<seq>``; ``None`` when ``text`` is not shaped like a tidings id."""
        epoch, sep, seq = text.rpartition("-")
        if not sep or not epoch or not seq.isdigit() or not seq.isascii() or len(seq) > 20:
            return None
        return cls(epoch, int(seq))


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated event that has no id yet.

    ``payload`` is the JSON of the published data, serialized once. ``users``, when set,
    limits delivery to connections of those user ids. ``trace``, when tracing is on, is the
    W3C ``traceparent`` of the publish's span (:mod:`tidings.tracing`), carried to every
    node with the event.
    """

    topic: str
    type: str
    payload: bytes
    priority: Priority = "normal"
    users: frozenset[str] | None = None
    retry: int | None = None
    time: float = field(default_factory=time.time)
    trace: str | None = None

    @property
    def conflatable(self) -> bool:
        """Whether a newer event of the same topic may replace a queued copy of this one."""
        return self.type in CONFLATED_TYPES and self.priority != "high"


@dataclass(frozen=True, slots=True)
class Event:
    """A published event with its place in the hub's order and its SSE bytes."""

    id: str
    seq: int
    topic: str
    type: str
    payload: bytes
    priority: Priority
    users: frozenset[str] | None
    retry: int | None
    time: float
    frame: bytes
    conflatable: bool
    #: :attr:`frame` as one HTTP/1.1 chunk (``<size>\r\n<frame>\r\n``), for connections
    #: that write to the transport directly: framed once, like the frame itself.
    chunk: bytes
    #: The publish span's W3C ``traceparent`` when tracing is on (see :class:`Draft`).
    trace: str | None = None
    #: :meth:`timed`'s frame and chunk, made the first time a stream asks for them.
    _timed: tuple[bytes, bytes] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_draft(cls, draft: Draft, event_id: EventId) -> Event:
        """Give ``draft`` its id and encode its SSE frame (the only encoding it gets)."""
        ident = str(event_id)
        frame = encode_frame(ident, draft.type, draft.payload, draft.retry)
        return cls(
            id=ident,
            seq=event_id.seq,
            topic=draft.topic,
            type=draft.type,
            payload=draft.payload,
            priority=draft.priority,
            users=draft.users,
            retry=draft.retry,
            time=draft.time,
            frame=frame,
            conflatable=draft.conflatable,
            chunk=b"%x\r\n%b\r\n" % (len(frame), frame),
            trace=draft.trace,
        )

    @property
    def data(self) -> JSON:
        """The published data, decoded from :attr:`payload`."""
        return orjson.loads(self.payload)

    def timed(self) -> tuple[bytes, bytes]:
        """The frame and chunk with a ``time:`` field (the publish time, Unix ms), for the
        streams that ask for it (``time=1``); made once per event, the first time."""
        timed = self._timed
        if timed is None:
            frame = encode_frame(self.id, self.type, self.payload, self.retry, self.time)
            timed = (frame, b"%x\r\n%b\r\n" % (len(frame), frame))
            object.__setattr__(self, "_timed", timed)  # a cache: the event stays the same
        return timed


def encode_frame(
    ident: str, type: str, payload: bytes, retry: int | None, published: float | None = None
) -> bytes:
    """SSE bytes for an event whose payload is compact JSON (one ``data:`` line).

    JSON as orjson writes it never holds a raw CR or LF (they are escaped), and ``ident`` and
    ``type`` were checked by :func:`tidings.wire.validate_field`, so no event can be forged
    through them. :func:`tidings.wire.encode_event` is the general encoder for raw text.

    ``published`` (Unix seconds), for the streams that ask for it (``time=1``), is written
    as a ``time:`` field in Unix milliseconds, the time the hub took the publish: SSE
    parsers ignore a field they do not know (WHATWG §9.2.6), and readers that want it
    (tidings.js's fetch transport, the dashboard's feed) read it there. A replay shows the
    time of the publish, not of the replay. Other streams get exactly the fields of SPEC §1.
    """
    head = f"id: {ident}\n" if type == "message" else f"id: {ident}\nevent: {type}\n"
    if retry is not None:
        head += f"retry: {retry}\n"
    if published is not None:
        head += f"time: {int(published * 1000)}\n"
    return b"".join((head.encode(), b"data: ", payload, b"\n\n"))


def too_deep(name: str) -> InvalidEvent:
    """The error for a value ``name`` nested deeper than :data:`MAX_JSON_DEPTH` levels."""
    return InvalidEvent(f"{name} nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_request")


def dumps_json(value: JSON, name: str) -> bytes:
    """``value`` as compact JSON, refused if it nests deeper than :data:`MAX_JSON_DEPTH`.

    The check costs no walk of the value: orjson writes it inside :data:`_WRAP` lists, so
    its own depth limit is reached exactly when the value is too deep, and the wrapping
    brackets are cut off the output.

    Raises:
        InvalidEvent: ``value`` is not JSON-serializable, or nests too deep (the message
            names ``name``).
    """
    wrapping = getattr(_wrapping, "lists", None)
    if wrapping is None:
        inner: list[Any] = [None]
        outer = inner
        for _ in range(_WRAP - 1):
            outer = [outer]
        wrapping = _wrapping.lists = (outer, inner)
    outer, inner = wrapping
    inner[0] = value
    try:
        wrapped = orjson.dumps(outer)
    except (TypeError, orjson.JSONEncodeError) as exc:
        if "recursion limit" in str(exc).lower():
            raise too_deep(name) from exc
        raise InvalidEvent(f"{name} is not JSON-serializable: {exc}") from exc
    finally:
        inner[0] = None
    return wrapped[_WRAP:-_WRAP]


def make_draft(
    topic: str,
    data: JSON,
    *,
    type: str = "message",
    priority: str = "normal",
    users: list[str] | tuple[str, ...] | frozenset[str] | None = None,
    retry: int | None = None,
    max_bytes: int | None = None,
    limit_depth: bool = True,
) -> Draft:
    """Validate a publish and serialize its data once.

    ``limit_depth=False`` leaves out the :data:`MAX_JSON_DEPTH` check, for payloads the
    caller built around values it checked itself (a task event's ``{"result": ...}``).

    Raises:
        InvalidTopic: ``topic`` breaks SPEC §2.
        InvalidEvent: a CR, LF or NUL in ``type``, an unknown priority, a negative ``retry``,
            data that is not JSON-serializable or nests deeper than ``MAX_JSON_DEPTH``.
        EventTooLarge: the JSON payload is over ``max_bytes``.
    """
    validate_topic(topic)
    if not type:
        raise InvalidEvent("type must not be empty")
    validate_field(type, name="type")
    if priority not in PRIORITIES:
        raise InvalidEvent("priority must be one of 'low', 'normal', 'high'")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 0):
        raise InvalidEvent("retry must be a non-negative integer (milliseconds)")
    if limit_depth:
        payload = dumps_json(data, "data")
    else:
        try:
            payload = orjson.dumps(data)
        except (TypeError, orjson.JSONEncodeError) as exc:
            raise InvalidEvent(f"data is not JSON-serializable: {exc}") from exc
    if max_bytes is not None and len(payload) > max_bytes:
        raise EventTooLarge(f"data is {len(payload)} bytes as JSON; the limit is {max_bytes}")
    return Draft(
        topic=topic,
        type=type,
        payload=payload,
        priority=priority,
        users=frozenset(users) if users is not None else None,
        retry=retry,
    )
