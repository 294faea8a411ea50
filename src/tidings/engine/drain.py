"""Draining a node: its streams end spread over a window, so their clients come back gradually.

A node that ends 50,000 streams at once sends 50,000 clients to the other nodes in the
same second: a reconnect storm of its own making. On shutdown the engine ends its streams
in batches spread over ``--drain-window`` seconds (in random order, each batch at a
jittered time), and every ended stream first gets a ``retry:`` field of its own, between
half and one and a half times ``--retry``, so even one batch's clients spread their
reconnects. Each stream ends cleanly (its queue flushed, then the end of the body), and its
client resumes from its last id on another node: nothing is lost or repeated. As Phoenix
drains connections in batches on shutdown, and AnyCable's slow drain does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from tidings.engine.connection import Connection
from tidings.wire import encode_retry

__all__ = ["BATCH_SECONDS", "drain", "retry_frame"]

#: Seconds between two batches of a drain (at most; fewer streams, fewer batches).
BATCH_SECONDS = 0.1


def retry_frame(retry_ms: int) -> bytes:
    """A ``retry:`` field for one ended stream: ``retry_ms`` times 0.5 to 1.5, at random."""
    return encode_retry(max(1, round(retry_ms * random.uniform(0.5, 1.5))))


def drain(
    conns: Sequence[Connection],
    *,
    window: float,
    retry_ms: int,
    call_later: Callable[[float, Callable[[], None]], object],
) -> int:
    """End ``conns`` over ``window`` seconds; returns the number of batches.

    With no window (or one stream), every stream ends now. ``call_later(delay, fn)`` runs
    ``fn`` later (the loop's). A stream that ended meanwhile is skipped.
    """
    order = list(conns)
    random.shuffle(order)
    batches = 1 if window <= 0 else max(1, min(len(order), math.ceil(window / BATCH_SECONDS)))
    size = math.ceil(len(order) / batches) if order else 0
    step = window / batches if batches > 1 else 0.0
    for index in range(batches):
        batch = order[index * size : (index + 1) * size]
        if not batch:
            break
        end = _ender(batch, retry_ms)
        if index == 0:
            end()
        else:
            # Each batch at a jittered time inside its slot of the window.
            call_later(step * (index - 1) + random.uniform(step / 2, step), end)
    return batches


def _ender(batch: list[Connection], retry_ms: int) -> Callable[[], None]:
    def end() -> None:
        for conn in batch:
            if conn.close_reason is None:
                conn.push_raw(retry_frame(retry_ms))
                conn.close("shutdown")

    return end
