"""``tidings.auth.proxy`` in this process, against a real local HTTP endpoint.

Over HTTP, through ``tidings serve``: ``tests/web/test_auth_proxy.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests._local_http import LocalApp, Reply, Seen
from tidings.auth.principal import Principal
from tidings.auth.proxy import AuthProxy, Credentials, principal_from_answer
from tidings.errors import AuthUnavailable, NotAuthorized


def who(seen: Seen) -> Reply:
    user = seen.headers.get("cookie", "").removeprefix("session=")
    if not user:
        return Reply(401, json={})
    return Reply(200, json={"sub": user, "tidings": {"subscribe": [f"rooms/{user}"]}})


@pytest.fixture
def app() -> Iterator[LocalApp]:
    with LocalApp(who) as app:
        yield app


@pytest.fixture
async def proxy(app: LocalApp) -> AsyncIterator[AuthProxy]:
    proxy = AuthProxy(app.url + "/auth", ttl=60, timeout=5)
    await proxy.start()
    yield proxy
    await proxy.aclose()


async def test_concurrent_requests_with_the_same_credentials_share_one_round_trip(
    proxy: AuthProxy, app: LocalApp
) -> None:
    alice = Credentials(cookie="session=alice")
    app.hold.clear()
    try:
        asking = [asyncio.ensure_future(proxy.authenticate(alice)) for _ in range(5)]
        # All five start in the same loop iteration: one asks, four wait for its answer.
        await app.wait_requests(1)
    finally:
        app.hold.set()
    principals = await asyncio.gather(*asking)
    assert {p.user for p in principals} == {"alice"}
    assert app.count() == 1
    stats = proxy.statistics()
    assert (stats.granted, stats.reused, stats.cached) == (1, 4, 1)


async def test_a_waiter_asks_itself_when_the_request_it_waited_for_is_cancelled(
    proxy: AuthProxy, app: LocalApp
) -> None:
    alice = Credentials(cookie="session=alice")
    app.hold.clear()
    first = asyncio.ensure_future(proxy.authenticate(alice))
    second = asyncio.ensure_future(proxy.authenticate(alice))
    await app.wait_requests(1)
    first.cancel()  # its client went away
    await app.wait_requests(2)  # the waiter asked again, not left without an answer
    app.hold.set()
    assert (await second).user == "alice"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_refusals_are_cached_like_answers_and_raised_afresh(
    proxy: AuthProxy, app: LocalApp
) -> None:
    errors = []
    for _ in range(2):
        with pytest.raises(NotAuthorized) as refused:
            await proxy.authenticate(Credentials())
        errors.append(refused.value)
    assert errors[0] is not errors[1]
    assert (errors[1].status, errors[1].code) == (401, "unauthenticated")
    assert app.count() == 1


async def test_a_zero_ttl_asks_every_time(app: LocalApp) -> None:
    proxy = AuthProxy(app.url, ttl=0)
    await proxy.start()
    try:
        for _ in range(3):
            await proxy.authenticate(Credentials(cookie="session=bob"))
    finally:
        await proxy.aclose()
    assert app.count() == 3


async def test_a_proxy_that_is_not_started_grants_nothing(app: LocalApp) -> None:
    with pytest.raises(AuthUnavailable):
        await AuthProxy(app.url).authenticate(Credentials(cookie="session=a"))
    assert app.count() == 0


def test_credentials_keys_differ_whenever_the_credentials_do() -> None:
    pairs = [
        Credentials(),
        Credentials(cookie=""),
        Credentials(authorization=""),
        Credentials(cookie="a", authorization="b"),
        Credentials(cookie="ab"),
        Credentials(cookie="a", authorization=None),
        Credentials(authorization="a"),
        Credentials(cookie="b", authorization="a"),
    ]
    assert len({c.key() for c in pairs}) == len(pairs)
    assert Credentials(cookie="a").key() == Credentials(cookie="a").key()
    assert b"a" not in Credentials(cookie="a" * 40).key()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"sub": "alice"}, Principal(user="alice")),
        (
            {"sub": "alice", "tidings": {"subscribe": ["chat/**"], "publish": ["chat/a"]}},
            Principal(user="alice", subscribe=("chat/**",), publish=("chat/a",)),
        ),
        (
            {"sub": "ops", "tidings": {"admin": True}, "exp": 2_000_000_000, "name": "x"},
            Principal(user="ops", admin=True, expires_at=2e9),
        ),
        ({"sub": None, "tidings": {"subscribe": ["news/**"]}}, Principal(subscribe=("news/**",))),
    ],
    ids=["bare", "grants", "admin-exp-extra", "visitor"],
)
def test_principal_from_answer_reads_jwt_claims(
    answer: dict[str, Any], expected: Principal
) -> None:
    assert principal_from_answer(answer) == expected


@pytest.mark.parametrize(
    "answer",
    [
        [],
        "alice",
        {},
        {"sub": ""},
        {"sub": 42},
        {"sub": "a", "tidings": []},
        {"sub": "a", "tidings": {"subscribe": "chat/**"}},
        {"sub": "a", "tidings": {"publish": [1]}},
        {"sub": "a", "tidings": {"subscribe": ["a/**/b"]}},
        {"sub": "a", "tidings": {"admin": 1}},
        {"sub": "a", "exp": "tomorrow"},
        {"sub": "a", "exp": 10**400},
    ],
    ids=repr,
)
def test_principal_from_answer_refuses_what_is_not_the_documented_json(answer: Any) -> None:
    with pytest.raises(ValueError, match=r"."):
        principal_from_answer(answer)
