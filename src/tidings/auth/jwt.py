"""JWT verification (HS256 with a secret, RS256/ES256 with a public key) into a Principal.

Decisions worth knowing before changing this file:

- Exactly one algorithm is accepted, the one that fits the configured key: HS256 for a
  secret, RS256 for an RSA public key, ES256 for a P-256 public key. So ``alg: none`` and
  the HS/RS confusion attack (an HS256 token signed with the public key as its secret) are
  refused, whatever the token's header says.
- The key is checked when the verifier is built, not on the first request: an HS256
  secret under 32 bytes (RFC 7518 §3.2), a private key where a public key belongs, an EC
  key on another curve are configuration errors that stop start-up.
- ``exp`` and ``nbf`` are checked when present, with no leeway. ``exp``, ``nbf`` and
  ``iat`` must be JSON numbers up to the end of year 9999 (:data:`MAX_NUMERIC_DATE`): a
  string, or a date no timer can hold (``1e400``), makes the token invalid (401).
- ``aud`` and ``iss`` are checked only when configured; configure them whenever the
  signing key is shared with other services (an identity provider's key signs tokens for
  every application).
- A ``sub`` that is not one topic segment still authenticates, but gets no private
  ``users/<sub>/**`` topics (see :attr:`Principal.private_pattern`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings.auth.principal import Principal
from tidings.errors import ConfigError, InvalidTopic, NotAuthorized
from tidings.topics import validate_pattern

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = [
    "MAX_NUMERIC_DATE",
    "MAX_TOKEN_TTL",
    "MIN_SECRET_BYTES",
    "JWTVerifier",
    "TokenVerifier",
    "decode_token",
    "mint_token",
    "principal_from_claims",
]

#: Shortest HS256 secret accepted: the hash's output size (RFC 7518 §3.2).
MIN_SECRET_BYTES = 32
#: The longest lifetime :func:`mint_token` gives a token: ten years.
MAX_TOKEN_TTL = 3650 * 86400
#: The latest ``exp``/``nbf``/``iat`` accepted: the end of year 9999 (a later date is not a
#: real one, and no timer holds it).
MAX_NUMERIC_DATE = 253402300799


class TokenVerifier(Protocol):
    """What the web layer asks of a verifier: the principal of a bearer token.

    :class:`JWTVerifier` (a configured key) and
    :class:`~tidings.auth.jwks.JWKSVerifier` (keys fetched from a JWKS URL) are the two.
    """

    async def averify(self, token: str) -> Principal:
        """The principal of ``token``.

        Raises:
            NotAuthorized: (401) the token is not valid.
            AuthUnavailable: (503) the keys to check it cannot be had now.
        """
        ...


class JWTVerifier:
    """Verifies tokens and maps their claims to a :class:`Principal`.

    Claims: ``sub`` (the user id), and ``tidings: {subscribe: [patterns], publish:
    [patterns], admin: bool}``; ``exp`` and ``nbf`` are checked when present.

    Args:
        secret: an HS256 secret (at least 32 bytes).
        public_key: an RSA or P-256 EC public key, as PEM text or the path of a PEM file.
        audience: when set, tokens must carry this ``aud``.
        issuer: when set, tokens must carry this ``iss``.

    Raises:
        ConfigError: no key, a short secret, or a key that is not an RSA or P-256 public key.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._audience = audience
        self._issuer = issuer
        if secret is not None:
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"invalid --jwt-secret / TIDINGS_JWT_SECRET: at least {MIN_SECRET_BYTES} "
                    "bytes are needed for HS256"
                )
            self._key: Any = secret
            self._algorithms = ["HS256"]
        elif public_key is not None:
            self._key, algorithm = _load_public_key(public_key)
            self._algorithms = [algorithm]
        else:
            raise ConfigError("a JWT secret or public key is required")

    @classmethod
    def from_settings(cls, settings: Settings) -> JWTVerifier | None:
        """The verifier of the key ``settings`` configure, or ``None`` when they configure
        none (no JWTs, or a JWKS URL).

        Raises:
            ConfigError: the key or secret is unusable (the message names the setting).
        """
        if settings.jwt_secret is None and settings.jwt_public_key is None:
            return None  # no JWTs, or keys from a JWKS (tidings.auth.jwks)
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        return cls(
            secret=secret,
            public_key=settings.jwt_public_key,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    @property
    def algorithm(self) -> str:
        """The one algorithm this verifier accepts."""
        return self._algorithms[0]

    def verify(self, token: str) -> Principal:
        """The principal of ``token``.

        Raises:
            NotAuthorized: (401) the token is malformed, expired, not yet valid, signed
                with another key or algorithm, for another audience or issuer, or its
                claims are malformed.
        """
        return decode_token(
            token,
            self._key,
            algorithm=self._algorithms[0],
            audience=self._audience,
            issuer=self._issuer,
        )

    async def averify(self, token: str) -> Principal:
        """:meth:`verify`, as the :class:`TokenVerifier` protocol asks."""
        return self.verify(token)


def decode_token(
    token: str, key: Any, *, algorithm: str, audience: str | None, issuer: str | None
) -> Principal:
    """The principal of ``token``, checked with ``key`` and ``algorithm`` only.

    Raises:
        NotAuthorized: (401) the token is malformed, expired, not yet valid, signed with
            another key or algorithm, for another audience or issuer, or its claims are
            malformed.
    """
    require = ["sub"]
    if audience is not None:
        require.append("aud")
    if issuer is not None:
        require.append("iss")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=audience,
            issuer=issuer,
            options={"require": require, "verify_aud": audience is not None},
            leeway=0,
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthorized("token expired", code="token_expired", status=401) from None
    except (jwt.PyJWTError, OverflowError):
        # OverflowError: a date claim no float holds (PyJWT compares it with the clock).
        raise NotAuthorized("invalid token", code="invalid_token", status=401) from None
    return principal_from_claims(claims)


def _load_public_key(text: str) -> tuple[Any, str]:
    """The verification key in ``text`` (PEM, or a path to a PEM file) and its algorithm."""
    if "-----BEGIN" not in text:
        path = Path(text)
        try:
            data = path.read_bytes() if path.is_file() else None
        except OSError as exc:
            raise ConfigError(
                f"invalid --jwt-public-key / TIDINGS_JWT_PUBLIC_KEY: cannot read {text!r}: "
                f"{exc.strerror or exc}"
            ) from None
        if data is None:
            raise ConfigError(
                "invalid --jwt-public-key / TIDINGS_JWT_PUBLIC_KEY: neither PEM text nor a file"
            )
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = ""
        if "-----BEGIN" not in text:
            raise ConfigError(
                f"invalid --jwt-public-key / TIDINGS_JWT_PUBLIC_KEY: {str(path)!r} is not a PEM "
                "file (a DER key? convert it: openssl pkey -pubin -inform DER -in KEY -out "
                "key.pem)"
            )
    if "PRIVATE KEY" in text:
        raise ConfigError(
            "invalid --jwt-public-key / TIDINGS_JWT_PUBLIC_KEY: this is a private key; give "
            "the hub the public key only"
        )
    algorithms = jwt.algorithms.get_default_algorithms()
    for name in ("RS256", "ES256"):
        try:
            key = algorithms[name].prepare_key(text)
        except (ValueError, TypeError, jwt.InvalidKeyError):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            return key, "RS256"
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            return key, "ES256"
    raise ConfigError(
        "invalid --jwt-public-key / TIDINGS_JWT_PUBLIC_KEY: not an RSA or P-256 (ES256) public key"
    )


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    """Map verified claims to a principal; malformed claims are a 401."""
    sub = claims.get("sub")
    grants = claims.get("tidings", {})
    if not isinstance(sub, str) or not sub or not isinstance(grants, dict):
        raise NotAuthorized("invalid token claims", code="invalid_token", status=401)
    try:
        subscribe = tuple(validate_pattern(p) for p in _strings(grants.get("subscribe", [])))
        publish = tuple(validate_pattern(p) for p in _strings(grants.get("publish", [])))
    except (ValueError, InvalidTopic):
        raise NotAuthorized("invalid token claims", code="invalid_token", status=401) from None
    for name in ("exp", "nbf", "iat"):
        if name in claims and _numeric_date(claims[name]) is None:
            raise NotAuthorized("invalid token claims", code="invalid_token", status=401)
    exp = claims.get("exp")
    return Principal(
        user=sub,
        subscribe=subscribe,
        publish=publish,
        admin=grants.get("admin") is True,
        expires_at=None if exp is None else _numeric_date(exp),
    )


def _numeric_date(value: Any) -> float | None:
    """A ``NumericDate`` claim (RFC 7519 §2) as seconds, or ``None`` when it is not one.

    A JSON number from 0 to :data:`MAX_NUMERIC_DATE`: not a string, not a boolean, not a
    number no clock or timer can hold (``1e400``, ``10**400``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and not 0 <= value <= MAX_NUMERIC_DATE:
        return None
    seconds = float(value)
    return seconds if 0 <= seconds <= MAX_NUMERIC_DATE else None


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return value


def mint_token(
    secret: str,
    *,
    sub: str,
    subscribe: Sequence[str] = (),
    publish: Sequence[str] = (),
    admin: bool = False,
    ttl: float | None = 3600.0,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token with tidings' claims, for development and tests (``tidings token``).

    Production tokens should come from your own auth service; this mints what it would.

    Raises:
        ConfigError: the secret is under 32 bytes, ``sub`` is empty, ``ttl`` is not from
            0 to :data:`MAX_TOKEN_TTL` seconds, or a pattern is invalid.

    >>> token = mint_token("s" * 32, sub="alice", subscribe=["chat/**"], ttl=60)
    >>> JWTVerifier(secret="s" * 32).verify(token).user
    'alice'
    """
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"invalid --jwt-secret / TIDINGS_JWT_SECRET: at least {MIN_SECRET_BYTES} bytes "
            "are needed for HS256"
        )
    if not sub:
        raise ConfigError("invalid --sub: empty (the hub refuses a token without a user id)")
    if ttl is not None and not 0 < ttl <= MAX_TOKEN_TTL:
        raise ConfigError(
            f"invalid --ttl: {ttl:g} seconds (from 1 s to {MAX_TOKEN_TTL // 86400} days)"
        )
    for pattern in (*subscribe, *publish):
        try:
            validate_pattern(pattern)
        except InvalidTopic as exc:
            raise ConfigError(exc.message) from None
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": issued,
        "tidings": {"subscribe": list(subscribe), "publish": list(publish), "admin": admin},
    }
    if ttl is not None:
        claims["exp"] = issued + max(1, round(ttl))
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
