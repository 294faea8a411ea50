"""The auth proxy: ask the application who a caller is, with the caller's own credentials.

A standalone hub (``tidings serve --auth-proxy URL``) has no session store of its own. For
a request it must authenticate, it sends the caller's ``Cookie`` and ``Authorization``
headers to the application's endpoint, which answers with the caller's claims, in the
shape of tidings' JWT claims, or refuses (docs/security.md, "Auth proxy"):

    GET <URL>                          200 {"sub": "alice", "exp": 1767225600,
    Cookie: sessionid=...                   "tidings": {"subscribe": ["chat/**"],
    Authorization: ...                                  "publish": [], "admin": false}}
    Accept: application/json           401 / 403: not signed in / refused

Decisions worth knowing before changing this file:

- The endpoint is asked who the caller is, never about one topic: its answer holds the
  caller's grants, the hub checks every topic against them (the same rules as for a JWT),
  and so one answer serves every request made with the same credentials. Answers are
  cached by a hash of exactly the credentials passed on, so two callers share an answer
  only when they send the same cookies and the same ``Authorization`` header: then the
  endpoint could not tell them apart either.
- ``GET``, with no body: an endpoint that reads its session on ``GET`` needs no CSRF
  exemption (Django, Rails and Flask-WTF check forms on ``POST``), and nginx'
  ``auth_request`` and Traefik's ``ForwardAuth`` ask the same way.
- Nothing else of the request is passed on: not the query string (a ``?token=``), not the
  ``Last-Event-ID``, not other headers. The client never keeps a cookie the endpoint sets
  (a shared cookie jar would send one caller's session with the next caller's request),
  follows no redirect (a login page is not an answer) and reads at most 64 KiB.
- Failures never grant: no answer, an answer too late or a 5xx is
  :class:`~tidings.errors.AuthUnavailable` (503); any other answer that is not the
  documented one is :class:`~tidings.errors.AuthProxyError` (502), with one log line
  saying what was wrong. Neither is cached: the next request asks again.
- One round trip per credentials at a time: requests that arrive while an answer for
  the same credentials is on its way wait for that answer instead of asking again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import Request

import httpx
import orjson

from tidings._version import __version__
from tidings.auth.jwt import principal_from_claims
from tidings.auth.principal import Principal
from tidings.errors import AuthProxyError, AuthUnavailable, NotAuthorized

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = ["MAX_ANSWER_BYTES", "MAX_CACHED", "AuthProxy", "AuthProxyStatistics", "Credentials"]

logger = logging.getLogger("tidings.auth")

#: The largest answer read from the endpoint; a longer one is a 502.
MAX_ANSWER_BYTES = 64 * 1024
#: Answers kept at most (the least recently used go first): a flood of made-up cookies
#: cannot grow the hub's memory without bound.
MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the hub passes on to the auth proxy: the caller's ``Cookie`` and
    ``Authorization`` headers as it sent them (``None`` when absent).

    Header values are text decoded as Latin-1, as ASGI servers decode them, so every byte
    the client sent goes to the endpoint unchanged (a cookie need not be ASCII).
    """

    cookie: str | None = None
    authorization: str | None = None

    def key(self) -> bytes:
        """The cache key: a hash of both values, each length-prefixed (an absent one is a
        length no value has) so that no two different pairs share a key, and the raw
        credentials are not kept as keys."""
        digest = hashlib.sha256()
        for value in (self.cookie, self.authorization):
            data = b"" if value is None else _raw(value)
            size = 2**64 - 1 if value is None else len(data)
            digest.update(size.to_bytes(8, "big"))
            digest.update(data)
        return digest.digest()

    def headers(self) -> dict[bytes, bytes]:
        """The headers of the request to the endpoint that carry these credentials."""
        headers = {}
        if self.cookie is not None:
            headers[b"Cookie"] = _raw(self.cookie)
        if self.authorization is not None:
            headers[b"Authorization"] = _raw(self.authorization)
        return headers


def _raw(value: str) -> bytes:
    """The bytes of a header value (text that is not Latin-1 is sent as UTF-8)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class AuthProxyStatistics:
    """Counters of an :class:`AuthProxy`, for ``/metrics``.

    Attributes:
        granted, refused, unavailable, invalid: round trips to the endpoint, by outcome
            (claims; 401/403; no answer, late, or 5xx; not the documented answer).
        reused: requests answered without a round trip (a cached answer, or one on its way
            for the same credentials).
        cached: answers held now.
    """

    granted: int
    refused: int
    unavailable: int
    invalid: int
    reused: int
    cached: int


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing: a cookie the endpoint sets for one caller must
    never go out with another caller's request."""

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def add_cookie_header(self, request: Request) -> None:
        return None


#: An answer: the caller's principal, or the refusal to raise.
_Answer = Principal | NotAuthorized


class _AskAgain(Exception):
    """The request that was asking for these credentials was cancelled (its client left);
    a request that waited for it asks itself."""


class AuthProxy:
    """Asks the application's endpoint who a caller is; caches answers per credentials.

    Args:
        url: the endpoint, ``http(s)://``.
        ttl: seconds an answer is reused for the same credentials (0: never); an answer
            whose ``exp`` comes sooner is reused until then.
        timeout: seconds to wait for an answer (connecting included).
        transport: an httpx transport, for tests; the default pools connections.

    Start it with :meth:`start` and close it with :meth:`aclose` (the hub does both).
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 10.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        #: The URL as logs show it: a query may hold a key of the application's.
        self.shown_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self.ttl = ttl
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._cache: OrderedDict[bytes, tuple[float, _Answer]] = OrderedDict()
        self._asking: dict[bytes, asyncio.Future[_Answer]] = {}
        self._counts = dict.fromkeys(("granted", "refused", "unavailable", "invalid", "reused"), 0)

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthProxy | None:
        """The auth proxy ``settings`` configure, or ``None`` (``--auth-proxy`` unset)."""
        if settings.auth_proxy is None:
            return None
        return cls(
            settings.auth_proxy,
            ttl=settings.auth_proxy_ttl,
            timeout=settings.auth_proxy_timeout,
        )

    async def start(self) -> None:
        """Open the connection pool. Idempotent."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.timeout,
                follow_redirects=False,
                cookies=_NoCookies(),
                headers={"User-Agent": f"tidings/{__version__}", "Accept": "application/json"},
            )

    async def aclose(self) -> None:
        """Close the connection pool and forget every answer."""
        client, self._client = self._client, None
        self._cache.clear()
        if client is not None:
            await client.aclose()

    def statistics(self) -> AuthProxyStatistics:
        """The counters, for ``/metrics``."""
        return AuthProxyStatistics(**self._counts, cached=len(self._cache))

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The principal the endpoint gives ``credentials``: from the cache, from an answer
        already on its way for the same credentials, or from one round trip.

        Raises:
            NotAuthorized: the endpoint answered 401 (not signed in) or 403 (refused), or
                its claims had expired.
            AuthUnavailable: (503) no answer in time, or a 5xx; not cached.
            AuthProxyError: (502) an answer that is not the documented one; not cached.
        """
        key = credentials.key()
        while True:
            answer = self._cached(key)
            if answer is None:
                waiting = self._asking.get(key)
                if waiting is None:
                    break
                try:
                    answer = await asyncio.shield(waiting)
                except _AskAgain:
                    continue
            self._counts["reused"] += 1
            return _result(answer)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            answer, lifetime = await self._ask(credentials)
        except Exception as exc:
            future.set_exception(exc)  # the same failure for who waited
            raise
        except BaseException:
            future.set_exception(_AskAgain())  # cancelled (its client left): not theirs
            raise
        else:
            future.set_result(answer)
            self._remember(key, answer, lifetime)
        finally:
            del self._asking[key]
            if future.done():
                future.exception()  # retrieved: nobody may be waiting for it
        return _result(answer)

    # -- the cache ---------------------------------------------------------------------

    def _cached(self, key: bytes) -> _Answer | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        deadline, answer = entry
        if time.monotonic() >= deadline:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return answer

    def _remember(self, key: bytes, answer: _Answer, lifetime: float) -> None:
        if lifetime <= 0:
            return
        self._cache[key] = (time.monotonic() + lifetime, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    # -- one round trip ----------------------------------------------------------------

    async def _ask(self, credentials: Credentials) -> tuple[_Answer, float]:
        """One request to the endpoint: its answer and how long it may be reused."""
        client = self._client
        if client is None:
            raise AuthUnavailable("the auth proxy is not started")
        try:
            async with client.stream("GET", self.url, headers=credentials.headers()) as response:
                status = response.status_code
                body = await _read_limited(response)
        except httpx.DecodingError:
            raise self._invalid("its answer cannot be decoded (Content-Encoding)") from None
        except httpx.TimeoutException as exc:
            self._counts["unavailable"] += 1
            logger.warning("auth proxy %s did not answer within %g s", self.shown_url, self.timeout)
            raise AuthUnavailable("the auth proxy did not answer in time") from exc
        except httpx.HTTPError as exc:
            self._counts["unavailable"] += 1
            why = " ".join(str(exc).split()) or type(exc).__name__
            logger.warning("auth proxy %s cannot be reached: %s", self.shown_url, why)
            raise AuthUnavailable("the auth proxy cannot be reached") from exc
        except _TooLong:
            too_long = f"its answer (HTTP {status}) is over {MAX_ANSWER_BYTES} bytes"
            raise self._invalid(too_long) from None
        if status == 200:
            try:
                principal = principal_from_answer(orjson.loads(body))
            except orjson.JSONDecodeError:
                raise self._invalid("its 200 answer is not JSON") from None
            except ValueError as exc:
                raise self._invalid(f"its 200 answer is not the documented JSON: {exc}") from None
            return self._granted(principal)
        if status in (401, 403):
            self._counts["refused"] += 1
            refusal = (
                NotAuthorized(
                    "the application did not authenticate this request",
                    code="unauthenticated",
                    status=401,
                )
                if status == 401
                else NotAuthorized("the application refused this request", status=403)
            )
            return refusal, self.ttl
        if status >= 500 or status == 429:
            self._counts["unavailable"] += 1
            logger.warning("auth proxy %s answered HTTP %d", self.shown_url, status)
            raise AuthUnavailable(f"the auth proxy answered HTTP {status}")
        if 300 <= status < 400:
            raise self._invalid(
                f"it answered HTTP {status}, a redirect (to a login page?): it must answer "
                "401 to a caller who is not signed in"
            )
        raise self._invalid(f"it answered HTTP {status} (expected 200, 401 or 403)")

    def _granted(self, principal: Principal) -> tuple[_Answer, float]:
        lifetime = self.ttl
        if principal.expires_at is not None:
            left = principal.expires_at - time.time()
            if left <= 0:
                self._counts["refused"] += 1
                expired = NotAuthorized(
                    "the application's answer has expired", code="token_expired", status=401
                )
                return expired, 0.0
            lifetime = min(lifetime, left)
        self._counts["granted"] += 1
        return principal, lifetime

    def _invalid(self, problem: str) -> AuthProxyError:
        """Count and log an answer that is not the documented one; the error to raise."""
        self._counts["invalid"] += 1
        logger.error("auth proxy %s: %s; nothing was granted", self.shown_url, problem)
        return AuthProxyError(
            "the auth proxy's answer is not the documented one (the hub's log says why)"
        )


def principal_from_answer(answer: Any) -> Principal:
    """The principal of an auth proxy's ``200`` answer: tidings' JWT claims, where ``sub``
    may also be ``null`` for a caller who is not signed in but may use some topics.

    Raises:
        ValueError: ``answer`` is not such an object (the message says what is wrong).
    """
    if not isinstance(answer, dict):
        raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
    if "sub" not in answer:
        raise ValueError("'sub' is missing (a user id, or null)")
    sub = answer["sub"]
    if sub is not None and (not isinstance(sub, str) or not sub):
        raise ValueError("'sub' must be a non-empty string or null")
    grants = answer.get("tidings", {})
    if not isinstance(grants, dict):
        raise ValueError("'tidings' must be an object")
    for name in ("subscribe", "publish"):
        value = grants.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"'tidings.{name}' must be a list of patterns")
    if "admin" in grants and not isinstance(grants["admin"], bool):
        raise ValueError("'tidings.admin' must be true or false")
    try:
        principal = principal_from_claims({**answer, "sub": sub or "-"})
    except NotAuthorized:
        raise ValueError(
            "a pattern is not a valid topic pattern, or 'exp' is not a number of seconds"
        ) from None
    if sub is None:
        # A visitor: the grants it was given, but no user id, so no private topics and
        # no events targeted at users; limits count it by IP.
        return Principal(
            subscribe=principal.subscribe,
            publish=principal.publish,
            admin=principal.admin,
            expires_at=principal.expires_at,
        )
    return principal


def _result(answer: _Answer) -> Principal:
    if isinstance(answer, NotAuthorized):
        raise NotAuthorized(answer.message, code=answer.code, status=answer.status)
    return answer


class _TooLong(Exception):
    pass


async def _read_limited(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _TooLong
    return bytes(body)
