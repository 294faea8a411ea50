"""Who is calling: resolve a request to a :class:`~tidings.auth.principal.Principal`."""

from __future__ import annotations

import inspect

from starlette.requests import HTTPConnection

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.auth.proxy import Credentials
from tidings.errors import NotAuthorized, UnsupportedMediaType
from tidings.web.context import HubContext

__all__ = [
    "client_ip",
    "credentials_of",
    "principal_key",
    "resolve_principal",
    "token_of",
]

COOKIE = "tidings_token"


def token_of(conn: HTTPConnection, *, allow_query: bool) -> str | None:
    """The bearer token of a request: header, then cookie, then (if allowed) ``?token=``."""
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthorized(
                "expected 'Authorization: Bearer <token>'", status=401, code="invalid_token"
            )
        return value.strip()
    cookie = conn.cookies.get(COOKIE)
    if cookie:
        return cookie
    if allow_query:
        return conn.query_params.get("token") or None
    return None


def credentials_of(conn: HTTPConnection) -> Credentials:
    """What the auth proxy is given of a request: its cookies and ``Authorization`` header,
    as the client sent them, and nothing else (not the query, which may hold a token)."""
    cookies = conn.headers.getlist("cookie")
    return Credentials(
        cookie="; ".join(cookies) if cookies else None,
        authorization=conn.headers.get("authorization"),
    )


#: Methods that only read: streams, tasks, counters. Cookies may authenticate them, since
#: a page of another site cannot read what they answer (CORS).
_READS = ("GET", "HEAD")


async def resolve_principal(hub: HubContext, conn: HTTPConnection) -> Principal:
    """The principal of ``conn``.

    An application's own ``authenticate`` callable wins. Otherwise, with a JWT key (or a
    JWKS), a request that carries a token is checked as a JWT. Otherwise, with an auth
    proxy, the application is asked about a request that reads (streams included), and
    about a write (publish, task changes) only with ``--auth-proxy-publish``. With no
    authentication configured, the anonymous principal may use every topic.

    Raises:
        NotAuthorized: (401) no or bad credentials while auth is on, or (403) the auth
            proxy refused them.
        AuthUnavailable: (503) the auth proxy or the JWKS cannot be reached.
        AuthProxyError: (502) the auth proxy's answer is not the documented one.
        UnsupportedMediaType: (415) a write the auth proxy authenticates is not sent as
            ``application/json``.
    """
    if hub.authenticate is not None:
        result = hub.authenticate(conn)
        if inspect.isawaitable(result):
            result = await result
        if result is None:
            raise NotAuthorized("authentication required", code="unauthenticated", status=401)
        if not isinstance(result, Principal):
            raise TypeError("authenticate() must return a tidings Principal or None")
        return result
    verifier = hub.jwt_verifier
    proxy = hub.auth_proxy
    if verifier is None and proxy is None:
        return ANONYMOUS
    if verifier is not None:
        token = token_of(conn, allow_query=hub.settings.allow_query_token)
        if token is not None:
            return await verifier.averify(token)
    if proxy is not None:
        if conn.scope.get("method") in _READS:
            return await proxy.authenticate(credentials_of(conn))
        if hub.settings.auth_proxy_publish:
            _check_json_write(conn)
            return await proxy.authenticate(credentials_of(conn))
    raise NotAuthorized("authentication required", code="unauthenticated", status=401)


def _check_json_write(conn: HTTPConnection) -> None:
    """A write that cookies may authenticate must be ``application/json``: a page of
    another site can send a form or a plain-text body with the user's cookies, but JSON
    only after a CORS preflight, which only the allowed origins pass (CSRF)."""
    media_type = conn.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            "a write the auth proxy authenticates must be sent with "
            "'Content-Type: application/json'"
        )


def client_ip(conn: HTTPConnection) -> str:
    """The client's address as the server saw it.

    Behind a reverse proxy this is the proxy's address unless the server trusts it to
    name the client (``--forwarded-allow-ips``); per-IP limits key on this value.
    """
    client = conn.scope.get("client")
    return str(client[0]) if client else "unknown"


def principal_key(principal: Principal, conn: HTTPConnection) -> str:
    """What per-principal limits count by: the user id, or the client IP when anonymous."""
    if principal.user is not None:
        return f"user:{principal.user}"
    return f"ip:{client_ip(conn)}"
