"""The limits module on its own: token buckets, stream slots, the bundle, on a clock set by hand.

The same limits over HTTP, against real server processes: ``tests/web/test_security_limits.py``.
"""

from __future__ import annotations

import pytest

from tidings.errors import LimitExceeded
from tidings.limits import Limits, RateLimiter, StreamSlots


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock)
    assert [limiter.retry_after("ip") for _ in range(3)] == [0.0, 0.0, 0.5]
    clock.now += 0.5
    assert limiter.retry_after("ip") == 0.0
    assert limiter.retry_after("ip") == 0.5
    assert limiter.retry_after("other") == 0.0


def test_rate_limiter_refusal_costs_nothing_and_says_when_to_return() -> None:
    clock = FakeClock()
    limiter = RateLimiter(0.1, clock=clock)
    limiter.hit("ip")
    with pytest.raises(LimitExceeded) as refused:
        limiter.hit("ip")
    assert refused.value.retry_after == 10
    assert refused.value.status == 429
    clock.now += 9.9
    assert limiter.retry_after("ip") == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.retry_after("ip") == 0.0


def test_rate_limiter_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, clock=clock, max_keys=100)
    for i in range(10_000):
        limiter.retry_after(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 100
    # Buckets that refilled are swept as traffic goes on.
    clock.now += 60
    for i in range(200):
        limiter.retry_after(f"fresh-{i}")
        clock.now += 1.0
    assert len(limiter) <= 2


def test_zero_rate_never_limits() -> None:
    limiter = RateLimiter(0, clock=FakeClock())
    assert not limiter.enabled
    assert all(limiter.retry_after("ip") == 0.0 for _ in range(1000))
    assert len(limiter) == 0


def test_stream_slots_cap_users_and_ips_and_free_on_release() -> None:
    slots = StreamSlots(per_user=2, per_ip=3)
    a, b, c, d = object(), object(), object(), object()
    slots.acquire(a, user="alice", ip="1.1.1.1")
    slots.acquire(a, user="alice", ip="1.1.1.1")  # idempotent per owner
    slots.acquire(b, user="alice", ip="1.1.1.1")
    with pytest.raises(LimitExceeded) as refused:
        slots.acquire(c, user="alice", ip="2.2.2.2")
    assert refused.value.code == "too_many_streams"
    slots.acquire(c, user=None, ip="1.1.1.1")
    with pytest.raises(LimitExceeded):
        slots.acquire(d, user="bob", ip="1.1.1.1")
    slots.release(a)
    slots.release(a)  # safe to call twice
    slots.acquire(d, user="bob", ip="1.1.1.1")
    assert slots.count(user="alice") == 1
    assert slots.count(ip="1.1.1.1") == 3
    for owner in (b, c, d):
        slots.release(owner)
    assert len(slots) == 0
    assert slots.count(user="alice") == 0
    assert slots._by_user == {}
    assert slots._by_ip == {}


def test_limits_bundle_checks_connects_and_publishes() -> None:
    clock = FakeClock()
    limits = Limits(connect_rate=1, publish_rate=1, streams_per_user=1, clock=clock)
    limits.check_connect("1.1.1.1")
    with pytest.raises(LimitExceeded):
        limits.check_connect("1.1.1.1")
    limits.check_publish("user:alice")
    with pytest.raises(LimitExceeded):
        limits.check_publish("user:alice")
    limits.check_publish("user:bob")
    assert limits.streams.per_user == 1
