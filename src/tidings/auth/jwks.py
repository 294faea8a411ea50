"""Keys from a JWKS URL (``--jwt-jwks-url``): fetched, cached, refreshed, rotated.

An identity provider (Auth0, Keycloak, Cognito, Entra ID, ...) publishes the public keys
that sign its tokens as a JSON Web Key Set (RFC 7517) and rotates them: it lists a new key
before signing with it, and drops the old one when no token signed with it is valid any
more. A token names its key by ``kid``.

Decisions worth knowing before changing this file:

- PyJWT parses the keys (:class:`jwt.PyJWKSet`), but does not fetch them: its
  ``PyJWKClient`` fetches with blocking ``urllib`` (the event loop would stall), fetches
  again for every unknown ``kid`` with no limit (a stream of made-up ``kid`` values would
  make the hub hammer the provider), and forgets its keys when a fetch fails. Fetching is
  done here, with httpx.
- Only RS256 keys (RSA) and ES256 keys (EC P-256) with a ``kid``, for signatures, are
  used; the algorithm comes from the key, never from the token, so a token cannot pick
  HS256 with a public key as its secret. An ``oct`` key in the set is ignored: a published
  key must never be an HMAC secret.
- The set is used as fetched: a key the provider no longer lists is refused at once
  (401), after the fetch that finds it gone. Providers drop a key on purpose.
- A token whose ``kid`` is not in the set fetches the set again, at most once every
  :data:`REFETCH_INTERVAL` seconds; until then, and if the key is still missing, 401.
- Every ``ttl`` seconds the set is fetched again (on the first request that finds it
  older). A fetch that fails is logged and counted (``/metrics``), and the last good keys
  stay in use until they are twice ``ttl`` old; after that, tokens get 503 until a fetch
  succeeds: nothing is granted on keys the hub could not confirm for that long.
- The first fetch, at start-up, must succeed: an unreachable or malformed set stops
  start-up with one line naming ``--jwt-jwks-url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tidings._version import __version__
from tidings.auth.jwt import decode_token
from tidings.auth.principal import Principal
from tidings.errors import AuthUnavailable, ConfigError, NotAuthorized

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = ["MAX_JWKS_BYTES", "REFETCH_INTERVAL", "JWKSStatistics", "JWKSVerifier", "parse_jwks"]

logger = logging.getLogger("tidings.auth")

#: Fetches for unknown ``kid`` values, and retries after a failed fetch, are at least this
#: many seconds apart.
REFETCH_INTERVAL = 30.0
#: Seconds a fetch may take.
FETCH_TIMEOUT = 10.0
#: The largest key set read; a longer one is malformed.
MAX_JWKS_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key of the set: the public key and the one algorithm it verifies."""

    key: Any
    algorithm: str


@dataclass(frozen=True, slots=True)
class JWKSStatistics:
    """Counters of a :class:`JWKSVerifier`, for ``/metrics``.

    Attributes:
        keys: signing keys in use.
        fetched: fetches that brought a valid set (the first one included).
        failed: fetches that failed (unreachable, an HTTP error, a malformed set).
        age_seconds: seconds since the keys in use were fetched.
    """

    keys: int
    fetched: int
    failed: int
    age_seconds: float


class JWKSVerifier:
    """Verifies tokens with the keys of a JWKS URL (a :class:`~tidings.auth.jwt.TokenVerifier`).

    Args:
        url: the key set's URL, ``http(s)://``.
        ttl: seconds a fetched set is used before it is fetched again.
        audience, issuer: as for :class:`~tidings.auth.jwt.JWTVerifier`.
        transport: an httpx transport, for tests.
        refetch_interval: the least number of seconds between fetches for unknown ``kid``
            values (and between retries after a failed fetch).

    :meth:`start` makes the first fetch; :meth:`aclose` closes the connection pool.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        audience: str | None = None,
        issuer: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        refetch_interval: float = REFETCH_INTERVAL,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        self.shown_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self.ttl = ttl
        self._audience = audience
        self._issuer = issuer
        self._transport = transport
        self._refetch_interval = refetch_interval
        #: After a failed fetch, the next one waits this long (and never past the keys' use).
        self._retry_after_failure = min(refetch_interval, ttl)
        self._client: httpx.AsyncClient | None = None
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at = -float("inf")
        self._failed_at = -float("inf")
        self._unknown_kid_at = -float("inf")
        self._fetching: asyncio.Task[None] | None = None
        self._fetched = 0
        self._failed = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> JWKSVerifier | None:
        """The verifier ``settings`` configure, or ``None`` (``--jwt-jwks-url`` unset)."""
        if settings.jwt_jwks_url is None:
            return None
        return cls(
            settings.jwt_jwks_url,
            ttl=settings.jwt_jwks_ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    async def start(self) -> None:
        """Open the connection pool and fetch the keys.

        Raises:
            ConfigError: the first fetch failed (unreachable, an HTTP error, a malformed
                set); the message names ``--jwt-jwks-url`` and says why.
        """
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=FETCH_TIMEOUT,
                follow_redirects=False,
                headers={"User-Agent": f"tidings/{__version__}", "Accept": "application/json"},
            )
        if self._keys:
            return
        try:
            self._use(await self._fetch())
        except _FetchFailed as exc:
            self._failed += 1
            await self.aclose()
            raise ConfigError(
                f"invalid --jwt-jwks-url / TIDINGS_JWT_JWKS_URL: cannot use the keys at "
                f"{self.shown_url}: {exc}"
            ) from None

    async def aclose(self) -> None:
        """Stop a fetch under way and close the connection pool."""
        task, self._fetching = self._fetching, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def statistics(self) -> JWKSStatistics:
        """The counters, for ``/metrics``."""
        return JWKSStatistics(
            keys=len(self._keys),
            fetched=self._fetched,
            failed=self._failed,
            age_seconds=max(0.0, time.monotonic() - self._fetched_at),
        )

    async def averify(self, token: str) -> Principal:
        """The principal of ``token``, checked with the key its ``kid`` names.

        Raises:
            NotAuthorized: (401) a malformed token, one without a ``kid``, a ``kid`` the set
                does not hold (after a fetch, when one is allowed), or any reason
                :class:`~tidings.auth.jwt.JWTVerifier` refuses a token for.
            AuthUnavailable: (503) no fetch has succeeded for twice ``ttl``.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise NotAuthorized("invalid token", code="invalid_token", status=401) from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise NotAuthorized(
                "invalid token: it names no key ('kid')", code="invalid_token", status=401
            )
        now = time.monotonic()
        refreshed = False
        if now - self._fetched_at >= self.ttl and self._may_fetch(now):
            await self._refresh()
            refreshed = True
        if time.monotonic() - self._fetched_at >= 2 * self.ttl:
            raise AuthUnavailable("the keys that check tokens cannot be fetched")
        key = self._keys.get(kid)
        if key is None and not refreshed:
            if self._fetching is not None:
                await self._refresh()  # the fetch under way may bring it
            elif now - self._unknown_kid_at >= self._refetch_interval and self._may_fetch(now):
                self._unknown_kid_at = now
                await self._refresh()
            key = self._keys.get(kid)
        if key is None:
            raise NotAuthorized(
                "invalid token: its key ('kid') is not one of the hub's",
                code="invalid_token",
                status=401,
            )
        return decode_token(
            token, key.key, algorithm=key.algorithm, audience=self._audience, issuer=self._issuer
        )

    # -- fetching ----------------------------------------------------------------------

    def _may_fetch(self, now: float) -> bool:
        return now - self._failed_at >= self._retry_after_failure

    async def _refresh(self) -> None:
        """Fetch the set again (or wait for the fetch under way); failures are logged and
        counted, and the keys in use stay."""
        task = self._fetching
        if task is None:
            task = self._fetching = asyncio.create_task(self._fetch_and_use())
            task.add_done_callback(self._fetch_done)
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _fetch_and_use(self) -> None:
        try:
            keys = await self._fetch()
        except _FetchFailed as exc:
            self._failed += 1
            self._failed_at = time.monotonic()
            logger.warning(
                "JWKS %s: %s; the %d keys fetched %.0f s ago stay in use",
                self.shown_url,
                exc,
                len(self._keys),
                time.monotonic() - self._fetched_at,
            )
            return
        self._use(keys)

    def _use(self, keys: dict[str, SigningKey]) -> None:
        self._fetched += 1
        self._fetched_at = time.monotonic()
        if keys.keys() != self._keys.keys():
            logger.info("JWKS %s: keys %s", self.shown_url, ", ".join(sorted(keys)))
        self._keys = keys

    async def _fetch(self) -> dict[str, SigningKey]:
        """One fetch of the set.

        Raises:
            _FetchFailed: it cannot be fetched, or it holds no usable key (the message
                says why, in words for a log line).
        """
        client = self._client
        if client is None:
            raise _FetchFailed("the hub is stopped")
        try:
            async with client.stream("GET", self.url) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"HTTP {response.status_code} (expected 200)")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise _FetchFailed(f"the key set is over {MAX_JWKS_BYTES} bytes")
        except httpx.TimeoutException:
            raise _FetchFailed(f"no answer within {FETCH_TIMEOUT:g} s") from None
        except httpx.HTTPError as exc:
            raise _FetchFailed(" ".join(str(exc).split()) or type(exc).__name__) from None
        try:
            return parse_jwks(bytes(body))
        except ValueError as exc:
            raise _FetchFailed(str(exc)) from None


class _FetchFailed(Exception):
    pass


def parse_jwks(body: bytes) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document, by ``kid``.

    Usable: an RSA key (RS256) or an EC P-256 key (ES256), public, with a ``kid``, and a
    ``use`` of ``sig`` or none. Other keys are skipped; the first of two keys with one
    ``kid`` is kept.

    Raises:
        ValueError: the document is not a key set, or holds no usable key.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("the key set is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("the key set is not a JSON object with a 'keys' list")
    try:
        jwk_set = jwt.PyJWKSet.from_dict(data)
    except jwt.PyJWTError:
        jwk_set = None
    keys: dict[str, SigningKey] = {}
    for jwk in jwk_set.keys if jwk_set is not None else ():
        kid = jwk.key_id
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        if jwk.public_key_use not in (None, "sig"):
            continue
        key = jwk.key
        if jwk.algorithm_name == "RS256" and isinstance(key, rsa.RSAPublicKey):
            keys[kid] = SigningKey(key, "RS256")
        elif (
            jwk.algorithm_name == "ES256"
            and isinstance(key, ec.EllipticCurvePublicKey)
            and isinstance(key.curve, ec.SECP256R1)
        ):
            keys[kid] = SigningKey(key, "ES256")
    if not keys:
        raise ValueError(
            "the key set holds no usable key (an RS256 or ES256 public key with a 'kid')"
        )
    return keys
