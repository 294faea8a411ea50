"""Rate limits and connection caps (SPEC §5), pure: no I/O, no event loop, no settings.

- :class:`RateLimiter` is a token bucket per key (a client IP, a principal). A bucket holds
  up to one second's worth of tokens (at least one), so ``rate=50`` allows a burst of 50
  and then 50 a second. A refused attempt costs nothing, so a client that keeps hammering
  is let in again as soon as its bucket refills.
- :class:`StreamSlots` counts open streams per user and per IP. A stream takes its slot in
  :meth:`StreamSlots.acquire` and gives it back in :meth:`StreamSlots.release`, which the
  hub calls from the same place that unregisters the stream, so a slot lives exactly as
  long as the stream is registered: it cannot leak, and it is free the moment the stream
  ends.

Memory stays bounded under a flood of distinct keys (IPv6 clients can use many addresses):
a bucket that has refilled holds nothing worth keeping and is dropped, idle buckets are
swept as new keys arrive, and at most ``max_keys`` are kept (the least recently used goes
first, which can only make a limit laxer, never stricter). Caps keep no entry for a key
with no open stream.

A limit of ``0`` means no limit. Every refusal raises
:class:`~tidings.errors.LimitExceeded` carrying a ``retry_after`` in whole seconds, which
the web layer turns into ``429`` and a ``Retry-After`` header.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from tidings.errors import LimitExceeded

__all__ = ["Limits", "RateLimiter", "StreamSlots"]

Clock = Callable[[], float]


class RateLimiter:
    """A token bucket per key: at most ``rate`` hits per second, bursts up to ``burst``.

    Args:
        rate: tokens added per second; ``0`` turns the limiter off.
        burst: bucket size; defaults to one second's worth (at least 1).
        max_keys: most buckets kept at once (least recently used dropped first).
        clock: a monotonic clock, for tests.

    >>> limiter = RateLimiter(0.5, clock=lambda: 0.0)
    >>> limiter.retry_after("10.0.0.1")
    0.0
    >>> limiter.retry_after("10.0.0.1")
    2.0
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if rate < 0 or math.isnan(rate):
            raise ValueError("rate must be a non-negative number")
        self.rate = rate
        self.burst = max(1.0, rate) if burst is None else burst
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self.max_keys = max(1, max_keys)
        self._clock = clock
        # key -> (tokens, time of last update); oldest update first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether this limiter limits anything (``rate`` above 0)."""
        return self.rate > 0

    def retry_after(self, key: Hashable) -> float:
        """Take a token for ``key``: ``0.0`` if allowed, else the seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._sweep(now)
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        if tokens < self.burst:
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        return wait

    def hit(self, key: Hashable, *, what: str = "requests") -> None:
        """Take a token for ``key``.

        Raises:
            LimitExceeded: no token is left; ``retry_after`` says when one will be.
        """
        wait = self.retry_after(key)
        if wait > 0:
            raise LimitExceeded(
                f"too many {what}; retry in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )

    def __len__(self) -> int:
        """Buckets held now (full ones are not held)."""
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        """Drop buckets that have refilled since their last use (oldest first, a few)."""
        full_after = self.burst / self.rate
        buckets = self._buckets
        for _ in range(2):
            if not buckets:
                return
            key, (_, then) = next(iter(buckets.items()))
            if now - then < full_after:
                return
            del buckets[key]


@dataclass(slots=True)
class _Slot:
    user: str | None
    ip: str | None


class StreamSlots:
    """Open streams per user and per IP, with caps.

    Args:
        per_user: most open streams of one user id (``0``: no cap). Anonymous streams
            (no user id) are capped per IP only.
        per_ip: most open streams from one client IP (``0``: no cap).
        retry_after: the ``Retry-After`` (seconds) of a refusal: a stream frees its slot
            when it closes, which cannot be predicted, so this is a polite pause.
    """

    def __init__(self, *, per_user: int = 0, per_ip: int = 0, retry_after: int = 5) -> None:
        if per_user < 0 or per_ip < 0:
            raise ValueError("caps must be non-negative")
        self.per_user = per_user
        self.per_ip = per_ip
        self.retry_after = retry_after
        self._by_user: dict[str, int] = {}
        self._by_ip: dict[str, int] = {}
        self._held: dict[Hashable, _Slot] = {}

    def acquire(self, owner: Hashable, *, user: str | None, ip: str | None) -> None:
        """Give ``owner`` (a stream) a slot for ``user`` and ``ip``; idempotent per owner.

        Raises:
            LimitExceeded: ``user`` or ``ip`` has its cap of open streams.
        """
        if owner in self._held:
            return
        if self.per_user and user is not None and self._by_user.get(user, 0) >= self.per_user:
            raise LimitExceeded(
                f"too many open streams for this user (at most {self.per_user})",
                retry_after=self.retry_after,
                code="too_many_streams",
            )
        if self.per_ip and ip is not None and self._by_ip.get(ip, 0) >= self.per_ip:
            raise LimitExceeded(
                f"too many open streams from this address (at most {self.per_ip})",
                retry_after=self.retry_after,
                code="too_many_streams",
            )
        self._held[owner] = _Slot(user, ip)
        if user is not None:
            self._by_user[user] = self._by_user.get(user, 0) + 1
        if ip is not None:
            self._by_ip[ip] = self._by_ip.get(ip, 0) + 1

    def release(self, owner: Hashable) -> None:
        """Free ``owner``'s slot; does nothing if it holds none (safe on every end path)."""
        slot = self._held.pop(owner, None)
        if slot is None:
            return
        if slot.user is not None:
            _decrement(self._by_user, slot.user)
        if slot.ip is not None:
            _decrement(self._by_ip, slot.ip)

    def count(self, *, user: str | None = None, ip: str | None = None) -> int:
        """Open streams of ``user`` (or from ``ip``)."""
        if user is not None:
            return self._by_user.get(user, 0)
        if ip is not None:
            return self._by_ip.get(ip, 0)
        return len(self._held)

    def __len__(self) -> int:
        """Slots held now."""
        return len(self._held)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class Limits:
    """Every limit of one hub: connect rate per IP, publish rate per principal, stream caps.

    Args:
        connect_rate: stream attempts per IP per second (``0``: no limit).
        publish_rate: publishes per principal per second (``0``: no limit).
        streams_per_user: open streams per user id (``0``: no cap).
        streams_per_ip: open streams per client IP (``0``: no cap).
        clock: a monotonic clock, for tests.
    """

    def __init__(
        self,
        *,
        connect_rate: float = 0.0,
        publish_rate: float = 0.0,
        streams_per_user: int = 0,
        streams_per_ip: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.connect = RateLimiter(connect_rate, clock=clock)
        self.publish = RateLimiter(publish_rate, clock=clock)
        self.streams = StreamSlots(per_user=streams_per_user, per_ip=streams_per_ip)

    def check_connect(self, ip: str) -> None:
        """Count a stream attempt from ``ip``.

        Raises:
            LimitExceeded: ``ip`` is over its attempts per second.
        """
        self.connect.hit(ip, what="connection attempts from this address")

    def check_publish(self, principal_key: str) -> None:
        """Count a publish by the principal named ``principal_key``.

        Raises:
            LimitExceeded: the principal is over its publishes per second.
        """
        self.publish.hit(principal_key, what="publishes")
