"""The one place where errors become HTTP responses (SPEC §3's error shape).

Every tidings endpoint is answered through :func:`render` (see :mod:`tidings.web.routes`),
so the shape holds even when an application mounts ``hub.router`` into its own FastAPI
app, whose exception handlers we do not own. Unknown exceptions are logged with their
traceback and answered with a bare 500: no stack trace or internal detail reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from tidings.errors import LimitExceeded, TidingsError

__all__ = ["error_response", "render", "validation_message"]

logger = logging.getLogger("tidings.web")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """``{"error": {"code": ..., "message": ...}}`` with ``status``."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def render(exc: Exception) -> Response:
    """The response for an exception raised by a route."""
    if isinstance(exc, TidingsError):
        headers = None
        if isinstance(exc, LimitExceeded):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(exc.status, exc.code, exc.message, headers)
    if isinstance(exc, RequestValidationError | ValidationError):
        return error_response(422, "invalid_request", validation_message(exc))
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail), exc.headers)
    logger.error("unhandled error in a tidings route", exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


def validation_message(exc: RequestValidationError | ValidationError) -> str:
    """One readable line from a pydantic validation error: ``field: problem``."""
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    where = ".".join(loc)
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {msg}{more}" if where else f"{msg}{more}"
