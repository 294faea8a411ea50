"""``tidings serve --jwt-jwks-url``: keys from an identity provider's JWKS (issue 20, 5).

The provider is a real HTTP server in a thread of this process (:class:`LocalApp`) whose
key set a test changes as it runs (rotation), breaks or stops; the hub is a real
``tidings serve`` process of each test's own (the refetch limits are per process).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests._local_http import LocalApp, Reply, Seen
from tests.conftest import ServerFactory, ServerProcess, run_tidings, until
from tests.web._security import bearer, expect_error, stream_status, topics
from tests.web.test_security_auth import forged

QUIET = ("--connect-rate-limit", "0", "--keepalive", "1")
CHAT = topics("chat/general")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class Provider:
    """An identity provider: signing keys by kid, the set it publishes, and how."""

    keys: dict[str, PrivateKey] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    #: Extra JWKs published as they are (an HMAC key, say).
    extra: list[dict[str, Any]] = field(default_factory=list)
    broken: Reply | None = None

    def add(self, kid: str, kind: str = "rsa") -> None:
        self.keys[kid] = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if kind == "rsa"
            else ec.generate_private_key(ec.SECP256R1())
        )

    def jwk(self, kid: str) -> dict[str, Any]:
        key = self.keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            data = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            alg = "RS256"
        else:
            data = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            alg = "ES256"
        return {**data, "kid": kid, "use": "sig", "alg": alg}

    def answer(self, seen: Seen) -> Reply:
        if self.broken is not None:
            return self.broken
        return Reply(200, json={"keys": [self.jwk(k) for k in self.published] + self.extra})

    def token(self, kid: str, sub: str = "alice", **claims: Any) -> str:
        key = self.keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        payload = {"sub": sub, "tidings": {"subscribe": ["chat/**"]}, **claims}
        return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, PrivateKey]:
    """Keys made once per module (RSA keys take a while)."""
    provider = Provider()
    for kid, kind in (("k1", "rsa"), ("k2", "rsa"), ("e1", "ec"), ("other", "rsa")):
        provider.add(kid, kind)
    return provider.keys


@pytest.fixture
def provider(signing_keys: dict[str, PrivateKey]) -> Provider:
    return Provider(keys=dict(signing_keys), published=["k1"])


@pytest.fixture
def jwks(provider: Provider) -> Iterator[LocalApp]:
    with LocalApp(provider.answer) as app:
        yield app


async def status(hub: ServerProcess, tok: str, params: httpx.QueryParams = CHAT) -> httpx.Response:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        return await stream_status(http, params, bearer(tok))


async def metrics(hub: ServerProcess, provider: Provider) -> str:
    async with httpx.AsyncClient(base_url=hub.url, timeout=10) as http:
        admin = provider.token("k1", "ops", tidings={"admin": True})
        response = await http.get("/metrics", headers=bearer(admin))
    assert response.status_code == 200, response.text
    return response.text


async def test_tokens_signed_with_a_listed_rs256_or_es256_key_are_accepted(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider
) -> None:
    provider.published = ["k1", "e1"]
    hub = await server_factory.start("--jwt-jwks-url", f"{jwks.url}/jwks.json", *QUIET)
    assert (await status(hub, provider.token("k1"))).status_code == 200
    assert (await status(hub, provider.token("e1"))).status_code == 200
    expect_error(await status(hub, provider.token("k1"), topics("news")), 403, "forbidden")
    text = await metrics(hub, provider)
    assert "tidings_jwks_keys 2.0" in text
    assert 'tidings_jwks_fetches_total{outcome="failed"} 0.0' in text


async def test_a_token_is_checked_with_the_key_its_kid_names_and_its_algorithm_only(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider
) -> None:
    secret = b"s" * 32
    # An HMAC key in a published set must never verify anything: it is public.
    provider.extra = [{"kty": "oct", "kid": "h1", "k": jwt.utils.base64url_encode(secret).decode()}]
    hub = await server_factory.start("--jwt-jwks-url", jwks.url, *QUIET)
    claims = {"sub": "alice", "tidings": {"subscribe": ["chat/**"]}}
    refused = {
        "no kid": jwt.encode(claims, provider.keys["k1"], algorithm="RS256"),
        "another key, a listed kid": jwt.encode(
            claims, provider.keys["other"], algorithm="RS256", headers={"kid": "k1"}
        ),
        "HS256 with the oct key": jwt.encode(
            claims, secret, algorithm="HS256", headers={"kid": "h1"}
        ),
        "alg none": forged({"alg": "none", "kid": "k1"}, claims, None),
        "garbage": "not.a.token",
    }
    fetches = jwks.count()
    for why, tok in refused.items():
        response = await status(hub, tok)
        assert response.status_code == 401, (why, response.text)
        expect_error(response, 401, "invalid_token")
    # One fetch at most, for the unknown kid "h1" (rate-limited after that).
    assert jwks.count() - fetches <= 1


async def test_a_rotated_key_is_fetched_when_a_token_names_it_and_a_dropped_key_is_refused(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider
) -> None:
    hub = await server_factory.start("--jwt-jwks-url", jwks.url, *QUIET)
    old = provider.token("k1")
    assert (await status(hub, old)).status_code == 200
    fetches = jwks.count()
    # The provider rotates: k2 signs from now on, and k1 is no longer listed.
    provider.published = ["k2"]
    assert (await status(hub, provider.token("k2"))).status_code == 200
    assert jwks.count() == fetches + 1
    # The set is used as fetched: a key the provider dropped is refused at once.
    expect_error(await status(hub, old), 401, "invalid_token")
    assert jwks.count() == fetches + 1
    assert "JWKS" in hub.log()
    assert "k2" in hub.log()


async def test_unknown_kids_cannot_make_the_hub_hammer_the_jwks(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider
) -> None:
    hub = await server_factory.start("--jwt-jwks-url", jwks.url, *QUIET)
    fetches = jwks.count()
    signer = provider.keys["other"]
    for _ in range(20):
        kid = uuid.uuid4().hex
        tok = jwt.encode({"sub": "mallory"}, signer, algorithm="RS256", headers={"kid": kid})
        expect_error(await status(hub, tok), 401, "invalid_token")
    assert jwks.count() - fetches == 1
    assert (await status(hub, provider.token("k1"))).status_code == 200


@pytest.mark.parametrize(
    "broken",
    [Reply(500, body=b"oops"), Reply(200, body=b"<html>"), Reply(200, json={"keys": []})],
    ids=["500", "not-json", "no-keys"],
)
async def test_a_failed_refetch_keeps_the_last_good_keys_and_is_counted(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider, broken: Reply
) -> None:
    hub = await server_factory.start("--jwt-jwks-url", jwks.url, *QUIET)
    provider.broken = broken
    provider.published = ["k2"]
    fetches = jwks.count()
    expect_error(await status(hub, provider.token("k2")), 401, "invalid_token")
    assert jwks.count() == fetches + 1
    assert (await status(hub, provider.token("k1"))).status_code == 200
    text = await metrics(hub, provider)
    assert 'tidings_jwks_fetches_total{outcome="failed"} 1.0' in text
    assert "tidings_jwks_keys 1.0" in text
    assert "stay in use" in hub.log()


async def test_keys_are_fetched_again_after_their_ttl(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider
) -> None:
    hub = await server_factory.start("--jwt-jwks-url", jwks.url, "--jwt-jwks-ttl", "1", *QUIET)
    old = provider.token("k1")
    assert (await status(hub, old)).status_code == 200
    provider.published = ["k2"]

    async def dropped() -> bool:
        return (await status(hub, old)).status_code == 401

    await until(dropped, 15, "the hub to fetch the set again and drop k1")


async def test_keys_no_fetch_has_confirmed_for_twice_their_ttl_give_503(
    server_factory: ServerFactory, jwks: LocalApp, provider: Provider
) -> None:
    hub = await server_factory.start("--jwt-jwks-url", jwks.url, "--jwt-jwks-ttl", "1", *QUIET)
    tok = provider.token("k1")
    assert (await status(hub, tok)).status_code == 200
    jwks.stop()

    async def unavailable() -> bool:
        response = await status(hub, tok)
        assert response.status_code in (200, 503), response.text
        return response.status_code == 503

    await until(unavailable, 15, "the hub to stop trusting keys it cannot confirm")
    expect_error(await status(hub, tok), 503, "auth_unavailable")
    assert "stay in use" in hub.log()


# -- start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (None, "cannot use the keys at"),
        (Reply(404, body=b"no"), "HTTP 404"),
        (Reply(200, body=b"keys"), "not JSON"),
        (Reply(200, json={"keys": "k1"}), "'keys' list"),
        (Reply(200, json={"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}), "no usable key"),
        (Reply(302, body=b"", headers={"Location": "/elsewhere"}), "HTTP 302"),
    ],
    ids=["unreachable", "404", "not-json", "keys-not-a-list", "only-hmac", "redirect"],
)
def test_a_jwks_that_cannot_be_used_at_start_up_is_one_line_and_exit_code_2(
    jwks: LocalApp, provider: Provider, broken: Reply | None, reason: str
) -> None:
    url = f"{jwks.url}/jwks.json?tenant=secret-tenant"
    if broken is None:
        jwks.stop()
    else:
        provider.broken = broken
    result = run_tidings("serve", "--store", "memory", "--jwt-jwks-url", url)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("tidings: invalid --jwt-jwks-url / TIDINGS_JWT_JWKS_URL: ")
    assert reason in line
    assert "secret-tenant" not in line
