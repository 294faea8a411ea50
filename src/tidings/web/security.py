"""Who is calling: resolve a request to a :class:`~tidings.auth.principal.Principal`."""

from __future__ import annotations

import inspect

from starlette.requests import HTTPConnection

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.errors import NotAuthorized
from tidings.web.context import HubContext

__all__ = ["client_ip", "principal_key", "resolve_principal", "token_of"]

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


async def resolve_principal(hub: HubContext, conn: HTTPConnection) -> Principal:
    """The principal of ``conn``.

    An application's own ``authenticate`` callable wins; otherwise JWT when configured;
    otherwise (auth off) the anonymous principal, which may use every topic.

    Raises:
        NotAuthorized: (401) no or bad credentials while auth is on.
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
    if verifier is None:
        return ANONYMOUS
    token = token_of(conn, allow_query=hub.settings.allow_query_token)
    if token is None:
        raise NotAuthorized("authentication required", code="unauthenticated", status=401)
    return verifier.verify(token)


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
