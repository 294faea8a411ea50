"""The async Python client: ``async for event in subscribe(url, topics)``.

It reconnects by itself, sends ``Last-Event-ID`` so nothing is lost, honours the server's
``retry``, and backs off exponentially with full jitter while the hub is unreachable (the
EventSource rules, plus the backoff that browsers lack). A ``204`` or a ``4xx`` answer ends
the iteration: retrying would not help.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence

import httpx

from tidings.errors import NotAuthorized, TidingsError
from tidings.wire import EventParser, ServerSentEvent

__all__ = ["subscribe"]


async def subscribe(
    url: str,
    topics: Sequence[str],
    *,
    last_event_id: str | None = None,
    token: str | None = None,
    path: str = "/events",
    reconnect: bool = True,
    max_backoff: float = 30.0,
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[ServerSentEvent]:
    """Yield the events of ``topics`` from the hub at ``url``, across reconnects.

    Args:
        url: the hub's base URL, e.g. ``http://127.0.0.1:8000``.
        topics: topics or patterns to subscribe to.
        last_event_id: resume after this id.
        token: a bearer token, sent in the ``Authorization`` header.
        path: the stream's path (``/tasks/<id>/stream`` for a task).
        reconnect: reconnect when the stream ends or fails (default), or stop.
        max_backoff: the longest wait between attempts while the hub is down, in seconds.
        client: an ``httpx.AsyncClient`` to use (one is made otherwise).

    Raises:
        NotAuthorized: the hub answered 401 or 403.
        TidingsError: another 4xx answer (bad topic, too many topics...).
    """
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
    retry_ms = 3000
    failures = 0
    params = httpx.QueryParams([("topic", t) for t in topics])
    try:
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                async with http.stream(
                    "GET", url.rstrip("/") + path, params=params, headers=headers
                ) as response:
                    if response.status_code == 204:
                        return
                    if 400 <= response.status_code < 500 and response.status_code != 429:
                        await response.aread()
                        raise _error_of(response)
                    if response.status_code != 200:
                        raise httpx.HTTPStatusError(
                            "unavailable", request=response.request, response=response
                        )
                    failures = 0
                    parser = EventParser()
                    async for chunk in response.aiter_raw():
                        for event in parser.feed(chunk):
                            if event.id:
                                last_event_id = event.id
                            yield event
                    if parser.retry is not None:
                        retry_ms = parser.retry
            except (httpx.TransportError, httpx.HTTPStatusError):
                failures += 1
            if not reconnect:
                return
            delay = (
                retry_ms / 1000
                if failures == 0
                else min(max_backoff, retry_ms / 1000 * 2 ** min(failures, 10))
            )
            await asyncio.sleep(random.uniform(delay / 2, delay) if failures else delay)
    finally:
        if own:
            await http.aclose()


def _error_of(response: httpx.Response) -> TidingsError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {response.status_code}"
    if response.status_code in (401, 403):
        return NotAuthorized(message, code=code, status=response.status_code)
    exc = TidingsError(message, code=code)
    exc.status = response.status_code
    return exc
