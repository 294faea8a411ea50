"""CORS (SPEC §5): one policy, for every answer the hub gives to a browser on another origin.

:class:`CorsPolicy` decides which headers an origin gets; :class:`CorsMiddleware` applies
it to every response of the app (JSON, streams, static files) and answers preflights. The
standalone server asks the same policy for the answers it gives before the app runs (a
request head too large, a request that never finished), so a page can read why.

The rules: an explicit allow-list of origins, with credentials (cookies, ``Authorization``);
or ``*``, never combined with credentials. Preflights may ask for ``Authorization``,
``Content-Type`` and ``Last-Event-ID`` (and the CORS-safelisted headers); ``Retry-After``
is exposed, so a page can honour a 429. A refused preflight is a 400 in the SPEC's error
shape whose message says what was refused; the browser decides on the headers alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.web.errors import error_response

__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "CorsMiddleware", "CorsPolicy"]

ALLOWED_METHODS = ("GET", "POST", "PUT", "OPTIONS")
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID")
#: Request headers a browser may always send (the Fetch standard's CORS-safelisted ones).
_SAFELISTED = frozenset({"accept", "accept-language", "content-language", "content-type"})
_MAX_AGE = "600"


class CorsPolicy:
    """Which origins may read the hub's answers, and the headers that say so.

    Args:
        origins: allowed origins (``https://app.example``), or ``["*"]`` for any origin
            without credentials. Empty: no CORS headers at all.
    """

    def __init__(self, origins: Sequence[str]) -> None:
        self.origins = frozenset(origins)
        self.any_origin = "*" in self.origins
        self._allowed_headers = frozenset(name.lower() for name in ALLOWED_HEADERS) | _SAFELISTED

    def allows(self, origin: str) -> bool:
        """Whether a page on ``origin`` may read the hub's answers."""
        return self.any_origin or origin in self.origins

    def simple_headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The headers of an answer to a request from ``origin`` (its ``Origin`` header)."""
        if origin is None or not self.origins:
            return []
        if self.any_origin:
            return [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", b"Retry-After"),
            ]
        if origin not in self.origins:
            # The answer still depends on the origin: caches must not share it.
            return [(b"vary", b"Origin")]
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", b"Retry-After"),
            (b"vary", b"Origin"),
        ]

    def preflight(self, headers: Headers) -> Response:
        """The answer to a preflight (``OPTIONS`` with ``Access-Control-Request-Method``)."""
        origin = headers["origin"]
        answer = {
            "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
            "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
            "Access-Control-Max-Age": _MAX_AGE,
        }
        if self.allows(origin):
            answer["Access-Control-Allow-Origin"] = "*" if self.any_origin else origin
        if not self.any_origin:
            answer["Access-Control-Allow-Credentials"] = "true"
            answer["Vary"] = "Origin"
        refusals = self._refusals(headers)
        if refusals:
            message = "CORS preflight refused: " + "; ".join(refusals)
            return error_response(400, "cors_refused", message, answer)
        return Response("OK", media_type="text/plain", headers=answer)

    def _refusals(self, headers: Headers) -> list[str]:
        refusals = []
        if not self.allows(headers["origin"]):
            refusals.append("this origin is not allowed (--cors-origin)")
        method = headers["access-control-request-method"]
        if method not in ALLOWED_METHODS:
            allowed = ", ".join(m for m in ALLOWED_METHODS if m != "OPTIONS")
            refusals.append(f"method {method!r} is not allowed (only {allowed})")
        requested = headers.get("access-control-request-headers") or ""
        names = [name.strip().lower() for name in requested.split(",") if name.strip()]
        extra = [name for name in names if name not in self._allowed_headers]
        if extra:
            refusals.append(
                f"header {extra[0]!r} is not allowed (only {', '.join(ALLOWED_HEADERS)} and the "
                "CORS-safelisted ones)"
            )
        if "access-control-request-private-network" in headers:
            refusals.append("private network access is not allowed")
        return refusals


class CorsMiddleware:
    """Applies a :class:`CorsPolicy` to every HTTP answer of ``app``."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"access-control-request-method":
                preflight = True
        if origin is None:
            await self.app(scope, receive, send)
            return
        if preflight and scope["method"] == "OPTIONS":
            response = self.policy.preflight(Headers(scope=scope))
            await response(scope, receive, send)
            return
        extra = self.policy.simple_headers(origin)

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in extra:
                    if name == b"vary":
                        headers.add_vary_header("Origin")
                    else:
                        headers[name.decode("latin-1")] = value.decode("latin-1")
            await send(message)

        await self.app(scope, receive, send_with_cors)
