"""Events in Redis: the append script's arguments and reply, and events read back.

An event is written as two fields, ``m`` (the JSON array ``[type, priority, users, retry,
time]``, and the publish's ``traceparent`` sixth when tracing is on) and ``p`` (the
payload, as published); a log entry adds ``e`` (the epoch), ``s`` (the seq) and ``t`` (the
topic), and a topic history entry's id is ``<seq>-0`` (see
:mod:`tidings.backends.redis.keys`).
"""

from __future__ import annotations

import operator
from typing import Any, Final

import orjson

from tidings.backends.base import Appended
from tidings.backends.redis.keys import RedisKeys
from tidings.events import Draft, Event, EventId, new_epoch
from tidings.types import Priority

__all__ = [
    "IDEMPOTENCY_TTL",
    "append_arguments",
    "as_text",
    "decode_event",
    "history_event",
    "parse_appended",
    "seq_of",
]

#: Seconds an idempotency key is remembered (SPEC §3).
IDEMPOTENCY_TTL: Final = 300.0


def append_arguments(
    keys: RedisKeys,
    draft: Draft,
    *,
    idempotency_key: str | None = None,
    history_size: int | None = None,
    log_size: int | None = None,
    floor: int = 0,
) -> tuple[list[str], list[str | bytes]]:
    """The ``keys`` and ``args`` of :data:`APPEND_SCRIPT` for publishing ``draft``.

    Publishers that write straight into Redis (the sync ``Publisher``) call the script with
    these; leave ``history_size`` and ``log_size`` unset to use what the hub's nodes stored
    in ``{prefix}:config``. ``floor`` is the highest seq the caller has seen (0 if none).
    """
    users = sorted(draft.users) if draft.users is not None else None
    fields = [draft.type, draft.priority, users, draft.retry, draft.time]
    if draft.trace is not None:
        fields.append(draft.trace)
    meta = orjson.dumps(fields)
    script_keys = [*keys.common, keys.history(draft.topic)]
    if idempotency_key is not None:
        script_keys.append(keys.idempotency(idempotency_key))
    args: list[str | bytes] = [
        draft.topic,
        meta,
        draft.payload,
        repr(draft.time),
        "" if history_size is None else str(history_size),
        "" if log_size is None else str(log_size),
        new_epoch(),
        str(floor),
        str(int(IDEMPOTENCY_TTL * 1000)),
        keys.topic_prefix,
    ]
    return script_keys, args


def parse_appended(reply: Any) -> Appended:
    """The :class:`Appended` of an :data:`APPEND_SCRIPT` reply."""
    ident, duplicate = reply
    return Appended(as_text(ident), duplicate=bool(int(duplicate)))


def as_text(value: bytes | str) -> str:
    """``value`` as a string (redis-py returns bytes: the clients do not decode)."""
    return value.decode() if isinstance(value, bytes) else value


def decode_event(epoch: str, seq: int, topic: str, meta: bytes, payload: bytes) -> Event:
    """The event of the fields ``m`` (``meta``) and ``p`` (``payload``) of an entry."""
    type_, priority, users, retry, at, *rest = orjson.loads(meta)
    draft = Draft(
        topic=topic,
        type=type_,
        payload=payload,
        priority=_priority(priority),
        users=frozenset(users) if users is not None else None,
        retry=retry,
        time=at,
        trace=rest[0] if rest else None,
    )
    return Event.from_draft(draft, EventId(epoch, seq))


def history_event(epoch: str, topic: str, entry: tuple[bytes, dict[bytes, bytes]]) -> Event:
    """The event of an entry of ``topic``'s history (its id is ``<seq>-0``)."""
    entry_id, fields = entry
    seq = int(entry_id.partition(b"-")[0])
    return decode_event(epoch, seq, topic, fields[b"m"], fields[b"p"])


def _priority(value: str) -> Priority:
    if value == "low":
        return "low"
    if value == "high":
        return "high"
    return "normal"


#: The key that orders events by seq (``heapq.merge``, ``sort``).
seq_of = operator.attrgetter("seq")
