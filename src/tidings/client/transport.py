"""Transports: how a :class:`~tidings.client.publisher.Publisher` reaches a hub.

A transport is a one-method seam in the spirit of httpx's transports: a :class:`Call` goes
in, the hub's JSON answer comes out, and every failure comes out as a
:mod:`tidings.errors` exception. :class:`HTTPTransport` speaks the hub's HTTP API (SPEC §3).

A ``redis://`` URL selects the module ``tidings.client.redis``, a direct-to-Redis
transport, when it is installed: it must offer ``open_transport(url) -> Transport`` and
``open_async_transport(url) -> AsyncTransport`` honouring the contract below.

Connection failures are retried twice (the request was not sent, so that is safe); other
errors are raised at once.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias
from urllib.parse import quote

import httpx

from tidings.errors import (
    BackendUnavailable,
    ConfigError,
    EventTooLarge,
    InvalidEvent,
    InvalidTopic,
    LimitExceeded,
    NotAuthorized,
    ShuttingDown,
    TaskExists,
    TaskFinished,
    TaskNotFound,
    TidingsError,
)
from tidings.types import JSON

__all__ = [
    "AsyncHTTPTransport",
    "AsyncTransport",
    "Call",
    "HTTPTransport",
    "Operation",
    "Transport",
    "error_from_response",
    "open_async_transport",
    "open_transport",
]

Operation: TypeAlias = Literal[
    "publish", "create_task", "get_task", "progress", "file", "complete", "fail", "cancel"
]


@dataclass(frozen=True, slots=True)
class Call:
    """One publisher operation, as a transport receives it.

    ``body`` holds only the fields the caller gave (a missing field means "unchanged").
    """

    op: Operation
    body: dict[str, JSON] = field(default_factory=dict)
    task_id: str | None = None
    file_id: str | None = None


class Transport(Protocol):
    """Carries calls to a hub (sync).

    Contract: :meth:`handle` returns the hub's JSON answer (the task JSON, or ``{"id"}`` for
    a publish) or raises a :class:`~tidings.errors.TidingsError`: the hub's own error
    (``TaskNotFound``, ``TaskFinished``, ``InvalidEvent``, ``NotAuthorized``,
    ``LimitExceeded``...), or ``BackendUnavailable`` when the hub cannot be reached (the
    cause in ``__cause__``). No other exception escapes. :meth:`close` releases
    connections; the publisher that made the transport closes it.
    """

    def handle(self, call: Call) -> JSON:
        """Perform ``call`` and return the hub's JSON answer."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class AsyncTransport(Protocol):
    """The async twin of :class:`Transport`, with the same contract."""

    async def handle(self, call: Call) -> JSON:
        """Perform ``call`` and return the hub's JSON answer."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _route(call: Call) -> tuple[str, str]:
    """The HTTP method and path of ``call`` (SPEC §3)."""
    if call.op == "publish":
        return "POST", "/publish"
    if call.op == "create_task":
        return "POST", "/tasks"
    task = "/tasks/" + quote(call.task_id or "", safe="")
    if call.op == "get_task":
        return "GET", task
    if call.op == "file":
        return "PUT", f"{task}/files/" + quote(call.file_id or "", safe="")
    return "POST", f"{task}/{call.op}"


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def error_from_response(response: httpx.Response) -> TidingsError:
    """The tidings exception for an HTTP error answer of a hub.

    404 → ``TaskNotFound``; 409 → ``TaskExists`` or ``TaskFinished``; 413 →
    ``EventTooLarge``; 422 → ``InvalidEvent``; 400 → ``InvalidTopic`` for topic errors;
    401/403 → ``NotAuthorized``; 429 → ``LimitExceeded`` (with ``retry_after``); 503 →
    ``ShuttingDown`` or ``BackendUnavailable``; anything else → ``TidingsError`` with the
    answer's status.
    """
    status = response.status_code
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"the hub answered HTTP {status}"
    exc: TidingsError
    if status == 404:
        exc = TaskNotFound(message, code=code)
    elif status == 409:
        exc = TaskExists(message) if code == "task_exists" else TaskFinished(message, code=code)
    elif status == 413:
        exc = EventTooLarge(message, code=code)
    elif status == 422:
        exc = InvalidEvent(message, code=code)
    elif status == 400 and "topic" in code:
        exc = InvalidTopic(message, code=code)
    elif status in (401, 403):
        exc = NotAuthorized(message, code=code, status=status)
    elif status == 429:
        retry_after = response.headers.get("retry-after", "1")
        exc = LimitExceeded(
            message, code=code, retry_after=int(retry_after) if retry_after.isdigit() else 1
        )
    elif status == 503:
        exc = ShuttingDown(message) if code == "shutting_down" else BackendUnavailable(message)
    else:
        exc = TidingsError(message, code=code)
        exc.status = status
    return exc


def _answer(response: httpx.Response) -> JSON:
    if response.status_code >= 400:
        raise error_from_response(response)
    try:
        return response.json()
    except ValueError as exc:
        raise BackendUnavailable("the hub sent an answer that is not JSON") from exc


class HTTPTransport:
    """Calls a hub's HTTP API with ``httpx.Client``.

    Args:
        url: the hub's base URL (``http://127.0.0.1:8000``, or ``https://app/sse`` when the
            routes are mounted under a prefix).
        token: a bearer token (a worker's JWT), sent as ``Authorization``.
        timeout: seconds for each request.
        client: an ``httpx.Client`` to use instead of making one (not closed by us).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self._own = client is None
        self._client = client or httpx.Client(
            base_url=url,
            headers=_headers(token),
            timeout=timeout,
            transport=httpx.HTTPTransport(retries=2),
        )

    def handle(self, call: Call) -> JSON:
        """Send ``call`` as an HTTP request; map the answer (see :class:`Transport`)."""
        method, path = _route(call)
        try:
            response = self._client.request(
                method, path, json=call.body if method != "GET" else None
            )
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the hub at {self.url}") from exc
        return _answer(response)

    def close(self) -> None:
        """Close the HTTP client (if we made it)."""
        if self._own:
            self._client.close()


class AsyncHTTPTransport:
    """The async twin of :class:`HTTPTransport` (``httpx.AsyncClient``)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self._own = client is None
        self._client = client or httpx.AsyncClient(
            base_url=url,
            headers=_headers(token),
            timeout=timeout,
            transport=httpx.AsyncHTTPTransport(retries=2),
        )

    async def handle(self, call: Call) -> JSON:
        """Send ``call`` as an HTTP request; map the answer (see :class:`Transport`)."""
        method, path = _route(call)
        try:
            response = await self._client.request(
                method, path, json=call.body if method != "GET" else None
            )
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the hub at {self.url}") from exc
        return _answer(response)

    async def aclose(self) -> None:
        """Close the HTTP client (if we made it)."""
        if self._own:
            await self._client.aclose()


def _redis_module(url: str) -> Any:
    if importlib.util.find_spec("tidings.client.redis") is None:
        raise ConfigError(
            f"publishing straight to Redis ({url.split('@')[-1]}) is not available in this "
            "version; publish over HTTP to a hub (http://...)"
        )
    return importlib.import_module("tidings.client.redis")


def open_transport(url: str, *, token: str | None = None, timeout: float = 10.0) -> Transport:
    """The transport for ``url``: HTTP for ``http(s)://``, ``tidings.client.redis`` for
    ``redis://`` (when installed).

    Raises:
        ConfigError: an unknown scheme, or a Redis URL without the Redis transport.
    """
    if url.startswith(("http://", "https://")):
        return HTTPTransport(url, token=token, timeout=timeout)
    if url.startswith(("redis://", "rediss://")):
        transport: Transport = _redis_module(url).open_transport(url)
        return transport
    raise ConfigError(f"expected an http://, https:// or redis:// URL (got {url!r})")


def open_async_transport(
    url: str, *, token: str | None = None, timeout: float = 10.0
) -> AsyncTransport:
    """The async twin of :func:`open_transport`."""
    if url.startswith(("http://", "https://")):
        return AsyncHTTPTransport(url, token=token, timeout=timeout)
    if url.startswith(("redis://", "rediss://")):
        transport: AsyncTransport = _redis_module(url).open_async_transport(url)
        return transport
    raise ConfigError(f"expected an http://, https:// or redis:// URL (got {url!r})")
