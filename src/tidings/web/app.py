"""The standalone ASGI app: every route, the error shape for framework errors, and CORS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from tidings import __version__
from tidings.web.errors import error_response, validation_message

if TYPE_CHECKING:
    from tidings.hub import Hub

__all__ = ["create_app"]

CORS_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID"]


def create_app(hub: Hub) -> FastAPI:
    """A FastAPI app serving ``hub``: what ``tidings serve`` runs."""
    app = FastAPI(
        title="tidings",
        version=__version__,
        summary="Server-Sent Events hub: topics, resumable streams, task progress.",
        lifespan=hub.lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.include_router(hub.router)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "invalid_request", validation_message(exc))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)

    origins = hub.settings.cors_origin
    if origins:
        wildcard = "*" in origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            # `*` is never combined with credentials (SPEC §5).
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=CORS_HEADERS,
            expose_headers=["Retry-After"],
            max_age=600,
        )
    return app
