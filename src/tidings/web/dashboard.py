"""The browser client and the live dashboard: ``GET /static/tidings.js`` and ``GET /``.

Decisions worth knowing:

- **A fixed set of files, not a directory.** Only the files listed in ``FILES`` are served,
  each with its content type written down (``text/javascript``, whatever the platform's
  ``mimetypes`` table says), read once from the package and kept in memory: they are a few
  tens of kilobytes, and a name from a URL never reaches the file system.
- **Revalidated, not cached blind.** The URLs carry no version, so every answer has a
  strong ``ETag`` and ``Cache-Control: no-cache``: browsers keep the file and ask with
  ``If-None-Match`` (a ``304`` costs a few bytes), and an upgraded hub is picked up on
  the next load.
- **The client is public.** ``tidings.js`` holds no data, so it is served to any origin
  (``Access-Control-Allow-Origin: *``, without credentials): a page on another origin can
  ``import`` it as a module from the hub, and its default hub is where it came from.
- **Where they are mounted.** ``/static/tidings.js`` is part of ``hub.router``, so an
  embedded app serves the client under its prefix (``/sse/static/tidings.js``). The
  dashboard is part of the standalone app (``tidings serve``) and of ``hub.asgi_app()``;
  an embedded FastAPI app adds it if it wants it (``app.include_router(
  hub.dashboard_router, prefix="/sse")`` serves it at ``/sse/``). The page finds the
  hub relative to its own URL, so any prefix works.
- **A strict page.** The dashboard is answered with a Content-Security-Policy that allows
  only its own scripts, styles and connections (no inline script, nothing from another
  origin), and may not be framed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from tidings.web.context import HubContext

__all__ = [
    "FILES",
    "dashboard",
    "dashboard_css",
    "dashboard_js",
    "static_response",
    "tidings_js",
]

#: Every file served from ``tidings/web/static``, with its content type.
FILES: dict[str, str] = {
    "tidings.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.html": "text/html; charset=utf-8",
}

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One packaged file, as served."""

    body: bytes
    content_type: str
    etag: str


@cache
def static_file(name: str) -> StaticFile:
    """The packaged file ``name`` (one of :data:`FILES`), read once.

    Raises:
        KeyError: ``name`` is not a served file.
    """
    content_type = FILES[name]
    body = resources.files("tidings.web").joinpath("static", name).read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return StaticFile(body, content_type, f'"{digest}"')


def static_response(request: Request, name: str, headers: dict[str, str] | None = None) -> Response:
    """The file ``name`` with its ETag, or ``304`` when the client already has it."""
    file = static_file(name)
    answer_headers = {
        "ETag": file.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        **(headers or {}),
    }
    if _matches(request.headers.get("if-none-match"), file.etag):
        return Response(status_code=304, headers=answer_headers)
    body = b"" if request.method == "HEAD" else file.body
    response = Response(body, media_type=file.content_type, headers=answer_headers)
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(file.body))
    return response


def _matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, RFC 9110)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    return etag in {part.strip().removeprefix("W/") for part in header.split(",")}


async def tidings_js(hub: HubContext, request: Request) -> Response:
    """``GET /static/tidings.js``: the browser client, for any origin."""
    return static_response(request, "tidings.js", {"Access-Control-Allow-Origin": "*"})


async def dashboard(hub: HubContext, request: Request) -> Response:
    """``GET /``: the live dashboard's page.

    It serves the page only: the data comes from ``/stats``, ``/tasks`` and the streams,
    with the viewer's own credentials.
    """
    return static_response(
        request,
        "dashboard.html",
        {
            "Content-Security-Policy": DASHBOARD_CSP,
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )


async def dashboard_js(hub: HubContext, request: Request) -> Response:
    """``GET /static/dashboard.js``."""
    return static_response(request, "dashboard.js")


async def dashboard_css(hub: HubContext, request: Request) -> Response:
    """``GET /static/dashboard.css``."""
    return static_response(request, "dashboard.css")
