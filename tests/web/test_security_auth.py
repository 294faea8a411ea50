"""Authentication and authorization against real server processes (issue #4, points 1-5).

Tokens are HS256 from the test secret unless a test says otherwise; RS256 and ES256 keys
are made per module with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import ServerFactory, ServerProcess, free_port, run_tidings, until
from tests.web._security import (
    SECRET,
    admin_stats,
    bearer,
    expect_error,
    open_stream,
    running_server,
    stream_status,
    token,
    topics,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The shared servers of this module are not the place to test connection-rate limits.
QUIET = ("--connect-rate-limit", "0", "--keepalive", "1")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(
    header: dict[str, Any], claims: dict[str, Any], key: bytes | None, digest: str = "sha256"
) -> str:
    """A token built by hand: ``alg: none`` (no key) or an HMAC with ``key``."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), getattr(hashlib, digest)).digest()
    return f"{signing_input}.{_b64(signature)}"


def signed_raw(payload: bytes, key: bytes = SECRET.encode()) -> str:
    """An HS256 token over ``payload`` as given: JSON that orjson cannot write (``1e400``)."""
    signing_input = f"{_b64(orjson.dumps({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def claims(sub: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
        "tidings": {"subscribe": ["chat/**"]},
        **extra,
    }


# -- keys and servers ---------------------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def hs_server() -> Iterator[ServerProcess]:
    """A hub with HS256 authentication."""
    with running_server("--jwt-secret", SECRET, *QUIET) as server:
        yield server


@pytest.fixture(scope="module")
def rs_server(
    rsa_key: rsa.RSAPrivateKey, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A hub with RS256 authentication, its public key given as a file path."""
    path = tmp_path_factory.mktemp("keys") / "public.pem"
    path.write_text(_pem(rsa_key))
    with running_server("--jwt-public-key", str(path), *QUIET) as server:
        yield server


@pytest.fixture(scope="module")
def es_server(ec_key: ec.EllipticCurvePrivateKey) -> Iterator[ServerProcess]:
    """A hub with ES256 authentication, its public key given as PEM text in the environment."""
    with running_server(*QUIET, env={"TIDINGS_JWT_PUBLIC_KEY": _pem(ec_key)}) as server:
        yield server


# -- 1. JWT --------------------------------------------------------------------------------


async def test_hs256_token_opens_a_stream_and_receives_events(hs_server: ServerProcess) -> None:
    alice = token("alice", subscribe=["chat/**"], publish=["chat/**"])
    async with (
        httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http,
        open_stream(http, topics("chat/general"), bearer(alice)) as stream,
    ):
        sent = await http.post(
            "/publish", json={"topic": "chat/general", "data": "hi"}, headers=bearer(alice)
        )
        assert sent.status_code == 202
        event = await stream.next()
    assert event.id == sent.json()["id"]


async def test_rs256_token_from_a_public_key_file_authenticates(
    rs_server: ServerProcess, rsa_key: rsa.RSAPrivateKey
) -> None:
    tok = jwt.encode(claims(), rsa_key, algorithm="RS256")
    async with httpx.AsyncClient(base_url=rs_server.url, timeout=10) as http:
        response = await stream_status(http, topics("chat/general"), bearer(tok))
    assert response.status_code == 200


async def test_es256_token_from_a_pem_in_the_environment_authenticates(
    es_server: ServerProcess, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    tok = jwt.encode(claims(), ec_key, algorithm="ES256")
    async with httpx.AsyncClient(base_url=es_server.url, timeout=10) as http:
        response = await stream_status(http, topics("chat/general"), bearer(tok))
    assert response.status_code == 200


def _bad_hs_tokens() -> dict[str, str]:
    now = int(time.time())
    good = jwt.encode(claims(), SECRET, algorithm="HS256")
    head, _payload, signature = good.split(".")
    tampered_payload = _b64(orjson.dumps(claims(sub="mallory")))
    return {
        "expired": jwt.encode(claims(exp=now - 10), SECRET, algorithm="HS256"),
        "not_yet_valid": jwt.encode(claims(nbf=now + 3600), SECRET, algorithm="HS256"),
        "bad_signature": jwt.encode(claims(), "another-secret-" + "y" * 32, algorithm="HS256"),
        "tampered_claims": f"{head}.{tampered_payload}.{signature}",
        "alg_none": forged({"alg": "none", "typ": "JWT"}, claims(), None),
        "alg_none_with_signature": forged({"alg": "none"}, claims(), SECRET.encode()),
        "wrong_alg_hs512": forged({"alg": "HS512"}, claims(), SECRET.encode(), "sha512"),
        "no_sub": jwt.encode({"exp": now + 60}, SECRET, algorithm="HS256"),
        "empty_sub": jwt.encode(claims(sub=""), SECRET, algorithm="HS256"),
        "bad_grants": jwt.encode(
            claims(tidings={"subscribe": "chat/**"}), SECRET, algorithm="HS256"
        ),
        "bad_pattern": jwt.encode(
            claims(tidings={"subscribe": ["a/**/b"]}), SECRET, algorithm="HS256"
        ),
        "garbage": "not.a.token",
        "empty_segments": "..",
        # Dates no clock or timer holds, validly signed (a float overflowed in the hub).
        "exp_huge_integer": signed_raw(b'{"sub": "alice", "exp": 1' + b"0" * 400 + b"}"),
        "exp_1e400": signed_raw(b'{"sub": "alice", "exp": 1e400}'),
        "exp_1e300": jwt.encode(claims(exp=1e300), SECRET, algorithm="HS256"),
        "exp_string": jwt.encode(claims(exp=str(now + 3600)), SECRET, algorithm="HS256"),
        "nbf_huge_integer": signed_raw(b'{"sub": "alice", "nbf": -1' + b"0" * 400 + b"}"),
        "iat_huge_integer": signed_raw(b'{"sub": "alice", "iat": 1' + b"0" * 400 + b"}"),
        "iat_1e300": jwt.encode(claims(iat=-1e300), SECRET, algorithm="HS256"),
    }


@pytest.mark.parametrize("case", sorted(_bad_hs_tokens()))
async def test_bad_tokens_get_401_on_every_endpoint(hs_server: ServerProcess, case: str) -> None:
    tok = _bad_hs_tokens()[case]
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        stream = await stream_status(http, topics("chat/general"), bearer(tok))
        published = await http.post(
            "/publish", json={"topic": "chat/general", "data": 1}, headers=bearer(tok)
        )
        stats = await http.get("/stats", headers=bearer(tok))
    expected = "token_expired" if case == "expired" else "invalid_token"
    for response in (stream, published, stats):
        expect_error(response, 401, expected)


async def test_a_date_no_timer_holds_is_invalid_and_no_error_is_logged(
    hs_server: ServerProcess,
) -> None:
    tokens = _bad_hs_tokens()
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        for case in ("exp_huge_integer", "exp_1e400", "nbf_huge_integer", "iat_huge_integer"):
            response = await stream_status(http, topics("chat/general"), bearer(tokens[case]))
            expect_error(response, 401, "invalid_token")
    log = hs_server.log()
    assert "Traceback" not in log
    assert "OverflowError" not in log


async def test_hs_rs_confusion_is_refused(
    rs_server: ServerProcess, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An HS256 token whose HMAC key is the server's own public key (a public value)."""
    public_pem = _pem(rsa_key).encode()
    confused = forged({"alg": "HS256", "typ": "JWT"}, claims(), public_pem)
    hs_with_secret = jwt.encode(claims(), SECRET, algorithm="HS256")
    async with httpx.AsyncClient(base_url=rs_server.url, timeout=10) as http:
        for tok in (confused, hs_with_secret):
            expect_error(
                await stream_status(http, topics("chat/general"), bearer(tok)), 401, "invalid_token"
            )


async def test_token_for_another_algorithm_family_is_refused(
    rs_server: ServerProcess,
    es_server: ServerProcess,
    hs_server: ServerProcess,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    rs_token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    ps_token = jwt.encode(claims(), rsa_key, algorithm="PS256")
    es_token = jwt.encode(claims(), ec_key, algorithm="ES256")
    cases = [
        (hs_server, rs_token),
        (rs_server, es_token),
        (rs_server, ps_token),
        (es_server, rs_token),
    ]
    for server, tok in cases:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            response = await stream_status(http, topics("chat/general"), bearer(tok))
        expect_error(response, 401, "invalid_token")


async def test_missing_credentials_get_401_and_non_bearer_scheme_too(
    hs_server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        expect_error(await stream_status(http, topics("a")), 401, "unauthenticated")
        basic = {"Authorization": "Basic YWxpY2U6c2VjcmV0"}
        expect_error(await stream_status(http, topics("a"), basic), 401, "invalid_token")
        expect_error(await http.post("/publish", json={"topic": "a"}), 401, "unauthenticated")


# -- 2. token sources -------------------------------------------------------------------------


async def test_token_is_read_from_header_and_cookie_but_not_the_query_by_default(
    hs_server: ServerProcess,
) -> None:
    tok = token("alice", subscribe=["chat/**"])
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        by_header = await stream_status(http, topics("chat/a"), bearer(tok))
        by_cookie = await stream_status(http, topics("chat/a"), {"Cookie": f"tidings_token={tok}"})
        by_query = await stream_status(http, topics("chat/a", token=tok))
    assert by_header.status_code == 200
    assert by_cookie.status_code == 200
    expect_error(by_query, 401, "unauthenticated")


async def test_query_token_works_when_enabled_and_never_reaches_the_log(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start("--jwt-secret", SECRET, "--allow-query-token")
    tok = token("alice", subscribe=["chat/**"])
    encoded_name = "%74oken"  # the same parameter, percent-encoded
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        plain = await stream_status(http, topics("chat/a", token=tok))
        async with http.stream(
            "GET", f"/events?topic=chat/a&{encoded_name}={tok}&topic=chat/b"
        ) as odd:
            pass
        bad = await stream_status(http, topics("chat/a", token=tok + "x"))
        # A request that always reaches the access log, after the others.
        marker = await http.get("/healthz?marker=1")
    assert plain.status_code == 200
    assert odd.status_code == 200
    expect_error(bad, 401, "invalid_token")
    assert marker.status_code == 200

    async def logged() -> bool:
        return "marker=1" in server.log()

    await until(logged, 10, "the access log")
    log = server.log()
    signature = tok.rsplit(".", 1)[1]
    assert signature not in log
    assert tok.split(".")[1] not in log
    assert "token=[redacted]" in log


# -- 3. pluggable authentication ---------------------------------------------------------------


async def test_custom_authenticate_example_uses_the_apps_session_cookie(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        # Popen returns at once; the app runs beside the test's event loop.
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, str(EXAMPLES / "02_custom_auth.py")],
            env={**os.environ, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(url + "/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(up, 20, "the example app")
        async with httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
            expect_error(
                await stream_status(anonymous, topics("users/alice/**")), 401, "unauthenticated"
            )
            forged_cookie = {"Cookie": "session=alice.0000"}
            expect_error(
                await stream_status(anonymous, topics("users/alice/**"), forged_cookie),
                401,
                "unauthenticated",
            )
        async with httpx.AsyncClient(base_url=url, timeout=10) as alice:
            login = await alice.post("/login", params={"user": "alice"})
            assert login.status_code == 200
            assert "session" in alice.cookies
            forbidden = await stream_status(alice, topics("users/bob/**"))
            expect_error(forbidden, 403, "forbidden")
            async with open_stream(alice, topics("users/alice/**", "lobby")) as stream:
                note = await alice.post("/notes", json={"text": "remember the milk"})
                assert note.status_code == 200
                event = await stream.next()
        assert event.event == "note"
        assert orjson.loads(event.data) == {"text": "remember the milk"}
        assert event.id == note.json()["id"]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- 4. authorization -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("chat/general", True),
        ("chat/*", True),
        ("chat/**", True),
        ("chat/*/threads", True),
        ("chat", True),
        ("users/alice/**", True),
        ("users/alice/inbox", True),
        ("news", False),
        ("**", False),
        ("*/general", False),
        ("users/bob/**", False),
        ("users/*/inbox", False),
        ("users/**", False),
        ("tasks/abc", False),
    ],
)
async def test_subscribe_is_authorized_by_pattern(
    hs_server: ServerProcess, pattern: str, allowed: bool
) -> None:
    alice = token("alice", subscribe=["chat/**"])
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        response = await stream_status(http, topics(pattern), bearer(alice))
    if allowed:
        assert response.status_code == 200, response.text
    else:
        expect_error(response, 403, "forbidden")


async def test_one_forbidden_pattern_refuses_the_whole_subscription(
    hs_server: ServerProcess,
) -> None:
    alice = token("alice", subscribe=["chat/**"])
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        response = await stream_status(http, topics("chat/a", "news"), bearer(alice))
    expect_error(response, 403, "forbidden")


async def test_a_user_may_subscribe_to_its_own_tasks_topic(hs_server: ServerProcess) -> None:
    """SPEC §5: a user may always subscribe to its own tasks. Audit item 7: a user whose
    token has no ``tasks/...`` grant got 403 for ``tasks/<id>`` of a task it owns. Someone
    else's task and a task that does not exist get the same 403, so ids don't leak."""
    alice = bearer(token("alice", subscribe=["chat/**"]))
    bob = bearer(token("bob", subscribe=["chat/**"]))
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        task_id = (await http.post("/tasks", json={}, headers=alice)).json()["task_id"]
        async with open_stream(http, topics(f"tasks/{task_id}", "chat/a"), alice) as stream:
            await http.post(f"/tasks/{task_id}/progress", json={"current": 1}, headers=alice)
            event = await stream.next()
        assert (event.event, orjson.loads(event.data)["sequence"]) == ("task_progress", 2)
        refusals = {
            "someone else's": (f"tasks/{task_id}", bob),
            "unknown": ("tasks/no-such-task", alice),
            "a wildcard": ("tasks/*", alice),
            "below it": (f"tasks/{task_id}/**", alice),
        }
        for case, (topic, headers) in refusals.items():
            response = await stream_status(http, topics(topic), headers)
            error = expect_error(response, 403, "forbidden")
            assert error["message"] == f"not allowed to subscribe to {topic!r}", case
        # Whoever may read the task's stream may follow its topic: an admin, its worker.
        readers = {
            "an admin": bearer(token("ops", admin=True)),
            "its worker": bearer(token("worker", publish=[f"tasks/{task_id}"])),
        }
        for case, headers in readers.items():
            async with open_stream(http, topics(f"tasks/{task_id}"), headers) as stream:
                await http.post(f"/tasks/{task_id}/progress", json={"current": 2}, headers=alice)
                event = await stream.next()
            assert event.event == "task_progress", case


@pytest.mark.parametrize("sub", ["*", "**", "alice/inbox", "a b", ""])
async def test_a_sub_that_is_not_one_segment_gets_no_private_topics(
    hs_server: ServerProcess, sub: str
) -> None:
    """A ``sub`` of ``*`` must not open every user's ``users/*/**`` (nor ``alice/x`` alice's)."""
    now = int(time.time())
    tok = jwt.encode({"sub": sub, "exp": now + 60}, SECRET, algorithm="HS256")
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        for pattern in ("users/*/**", "users/alice/inbox/**", "users/bob/x"):
            response = await stream_status(http, topics(pattern), bearer(tok))
            assert response.status_code in (401, 403), (pattern, response.text)


async def test_publish_is_authorized_by_pattern(hs_server: ServerProcess) -> None:
    publisher = token("svc", publish=["alerts/**", "users/*/inbox"])
    reader = token("alice", subscribe=["alerts/**"])
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:

        async def post(tok: str, topic: str) -> httpx.Response:
            return await http.post(
                "/publish", json={"topic": topic, "data": 1}, headers=bearer(tok)
            )

        assert (await post(publisher, "alerts/disk")).status_code == 202
        assert (await post(publisher, "alerts")).status_code == 202
        assert (await post(publisher, "users/alice/inbox")).status_code == 202
        expect_error(await post(publisher, "news"), 403, "forbidden")
        expect_error(await post(publisher, "users/alice/private"), 403, "forbidden")
        expect_error(await post(reader, "alerts/disk"), 403, "forbidden")
        # Only the task service writes task events, whatever the grant says.
        everything = token("root", publish=["**"])
        expect_error(await post(everything, "tasks/abc"), 403, "reserved_topic")


async def test_users_targeting_reaches_only_those_users_live_and_in_replay(
    hs_server: ServerProcess,
) -> None:
    publisher = token("svc", publish=["news"])
    alice = token("alice", subscribe=["news"])
    bob = token("bob", subscribe=["news"])
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:

        async def send(data: str, users: list[str] | None = None) -> str:
            body: dict[str, Any] = {"topic": "news", "data": data}
            if users is not None:
                body["users"] = users
            response = await http.post("/publish", json=body, headers=bearer(publisher))
            assert response.status_code == 202, response.text
            event_id = response.json()["id"]
            assert isinstance(event_id, str)
            return event_id

        start = await send("start")
        async with (
            open_stream(http, topics("news"), bearer(alice)) as alice_stream,
            open_stream(http, topics("news"), bearer(bob)) as bob_stream,
        ):
            for_alice = await send("for alice", ["alice"])
            for_bob = await send("for bob", ["bob", "carol"])
            public = await send("everyone")
            alice_live = await alice_stream.take(2)
            bob_live = await bob_stream.take(2)
        assert [e.id for e in alice_live] == [for_alice, public]
        assert [e.id for e in bob_live] == [for_bob, public]

        # Replay after Last-Event-ID re-checks every event: still only one's own.
        last = await send("last, for alice only", ["alice"])
        marker = await send("marker")
        resume = {"Last-Event-ID": start}
        async with open_stream(http, topics("news"), {**bearer(alice), **resume}) as replay:
            alice_replay = await replay.take(4)
            # Then live events, each once: nothing replayed comes again.
            live = await send("live")
            assert (await replay.next()).id == live
        async with open_stream(http, topics("news"), {**bearer(bob), **resume}) as replay:
            bob_replay = await replay.take(3)
    assert [e.id for e in alice_replay] == [for_alice, public, last, marker]
    assert [e.id for e in bob_replay] == [for_bob, public, marker]


async def test_stats_and_metrics_are_for_admins_only(hs_server: ServerProcess) -> None:
    alice = token("alice", subscribe=["chat/**"])
    admin = token("ops", admin=True)
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        for path in ("/stats", "/metrics"):
            expect_error(await http.get(path), 401, "unauthenticated")
            expect_error(await http.get(path, headers=bearer(alice)), 403, "forbidden")
            assert (await http.get(path, headers=bearer(admin))).status_code == 200
        # Health checks stay open: load balancers carry no tokens.
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


# -- 5. no silent downgrade -----------------------------------------------------------------


async def test_stream_ends_with_auth_expired_at_exp_and_resumes_with_a_fresh_token(
    hs_server: ServerProcess,
) -> None:
    publisher = token("svc", publish=["feed"])
    # exp is whole seconds: 4 to 5 s from now, time enough to connect on a slow machine.
    short = token("alice", subscribe=["feed"], ttl=5)
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:

        async def send(data: int) -> str:
            response = await http.post(
                "/publish", json={"topic": "feed", "data": data}, headers=bearer(publisher)
            )
            assert response.status_code == 202, response.text
            event_id = response.json()["id"]
            assert isinstance(event_id, str)
            return event_id

        async with open_stream(http, topics("feed"), bearer(short)) as stream:
            first = await send(1)
            assert (await stream.next()).id == first
            expired = await stream.next(timeout=15)
            rest = await stream.until_end(timeout=10)
        assert expired.event == "auth_expired"
        assert orjson.loads(expired.data) == {"reason": "token expired", "last_event_id": first}
        assert rest == []

        # Events published while the client fetches a new token are not lost.
        missed = [await send(2), await send(3)]
        old = await stream_status(http, topics("feed"), bearer(short))
        expect_error(old, 401, "token_expired")
        fresh = token("alice", subscribe=["feed"])
        resume = {**bearer(fresh), "Last-Event-ID": first}
        async with open_stream(http, topics("feed"), resume) as stream:
            replayed = await stream.take(2)
            live = await send(4)
            assert (await stream.next()).id == live
    assert [e.id for e in replayed] == missed


async def test_an_ended_stream_is_gone_from_the_hub(hs_server: ServerProcess) -> None:
    short = token("dora", subscribe=["feed"], ttl=5)

    async def dora_open() -> bool:
        return bool((await admin_stats(hs_server))["connections"]["by_user"].get("dora") == 1)

    async def dora_gone() -> bool:
        return "dora" not in (await admin_stats(hs_server))["connections"]["by_user"]

    async with (
        httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http,
        open_stream(http, topics("feed"), bearer(short)) as stream,
    ):
        await until(dora_open, what="dora's stream to open")
        await stream.until_end(timeout=15)
    await until(dora_gone, what="dora's stream to go")


# -- the dev-token command --------------------------------------------------------------------


async def test_tidings_token_mints_a_token_the_hub_accepts(hs_server: ServerProcess) -> None:
    result = await asyncio.to_thread(
        run_tidings,
        "token",
        "--sub",
        "alice",
        "--subscribe",
        "chat/**",
        "--publish",
        "x/**",
        "--ttl",
        "1h",
        env={"TIDINGS_JWT_SECRET": SECRET},
    )
    assert result.returncode == 0, result.stderr
    tok = result.stdout.strip()
    decoded = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "alice"
    assert decoded["tidings"] == {"subscribe": ["chat/**"], "publish": ["x/**"], "admin": False}
    assert 3590 <= decoded["exp"] - decoded["iat"] <= 3600
    admin = await asyncio.to_thread(
        run_tidings, "token", "--sub", "ops", "--admin", "--jwt-secret", SECRET
    )
    assert admin.returncode == 0, admin.stderr
    async with httpx.AsyncClient(base_url=hs_server.url, timeout=10) as http:
        assert (await stream_status(http, topics("chat/a"), bearer(tok))).status_code == 200
        published = await http.post("/publish", json={"topic": "x/1"}, headers=bearer(tok))
        assert published.status_code == 202
        stats = await http.get("/stats", headers=bearer(admin.stdout.strip()))
        assert stats.status_code == 200
