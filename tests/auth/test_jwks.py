"""``tidings.auth.jwks`` in this process: which keys of a set are used, and one fetch for
concurrent tokens, against a real local HTTP server.

Over HTTP, through ``tidings serve``: ``tests/web/test_jwks.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests._local_http import LocalApp, Reply, Seen
from tidings.auth.jwks import JWKSVerifier, parse_jwks
from tidings.errors import ConfigError, NotAuthorized

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())


def jwk(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str | None, **extra: Any
) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


def keyset(*keys: dict[str, Any]) -> bytes:
    return orjson.dumps({"keys": list(keys)})


def test_rs256_and_es256_public_keys_with_a_kid_are_used() -> None:
    keys = parse_jwks(keyset(jwk(RSA, "r"), jwk(P256, "e", use="sig", alg="ES256")))
    assert {kid: key.algorithm for kid, key in keys.items()} == {"r": "RS256", "e": "ES256"}


@pytest.mark.parametrize(
    "other",
    [
        {"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"},
        jwk(RSA, None),
        jwk(RSA, "enc", use="enc"),
        jwk(RSA, "ps", alg="PS256"),
        jwk(P384, "p384"),
        jwk(P256, "wrong-alg", alg="ES384"),
        {"kty": "RSA", "kid": "broken", "n": "x"},
        "not a key",
    ],
    ids=["oct", "no-kid", "use-enc", "ps256", "p384", "es384-alg", "broken", "not-an-object"],
)
def test_other_keys_are_skipped(other: Any) -> None:
    assert set(parse_jwks(keyset(jwk(RSA, "good"), other))) == {"good"}
    with pytest.raises(ValueError, match="no usable key"):
        parse_jwks(keyset(other))


def test_a_private_key_in_the_set_is_not_used() -> None:
    private = jwt.algorithms.RSAAlgorithm.to_jwk(RSA, as_dict=True)
    with pytest.raises(ValueError, match="no usable key"):
        parse_jwks(keyset({**private, "kid": "leaked"}))


def test_the_first_of_two_keys_with_one_kid_is_kept() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = parse_jwks(keyset(jwk(RSA, "k"), jwk(other, "k")))
    assert keys["k"].key.public_numbers() == RSA.public_key().public_numbers()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html>", "not JSON"),
        (b"[]", "'keys' list"),
        (b'{"keys": {}}', "'keys' list"),
        (b'{"keys": []}', "no usable key"),
    ],
)
def test_what_is_not_a_key_set_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_jwks(body)


async def test_concurrent_tokens_with_an_unknown_kid_share_one_fetch() -> None:
    published = [jwk(RSA, "old")]

    def serve(seen: Seen) -> Reply:
        return Reply(200, body=keyset(*published))

    with LocalApp(serve) as app:
        verifier = JWKSVerifier(app.url, ttl=300)
        await verifier.start()
        try:
            published.append(jwk(P256, "new"))
            token = jwt.encode({"sub": "alice"}, P256, algorithm="ES256", headers={"kid": "new"})
            app.hold.clear()
            checks = [asyncio.ensure_future(verifier.averify(token)) for _ in range(5)]
            await app.wait_requests(2)
            app.hold.set()
            principals = await asyncio.gather(*checks)
            assert {p.user for p in principals} == {"alice"}
            assert app.count() == 2  # start-up, and one fetch for the new kid
            stats = verifier.statistics()
            assert (stats.keys, stats.fetched, stats.failed) == (2, 2, 0)
            # The next unknown kid waits its turn: no fetch, a 401.
            stranger = jwt.encode({"sub": "m"}, P256, algorithm="ES256", headers={"kid": "x"})
            with pytest.raises(NotAuthorized):
                await verifier.averify(stranger)
            assert app.count() == 2
        finally:
            await verifier.aclose()


async def test_a_first_fetch_that_fails_is_a_config_error_naming_the_setting() -> None:
    with LocalApp(lambda seen: Reply(503, body=b"")) as app:
        verifier = JWKSVerifier(app.url + "/jwks?key=hidden")
        with pytest.raises(ConfigError) as failed:
            await verifier.start()
    assert failed.value.message.startswith("invalid --jwt-jwks-url / TIDINGS_JWT_JWKS_URL:")
    assert "HTTP 503" in failed.value.message
    assert "hidden" not in failed.value.message
