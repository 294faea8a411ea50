"""The async Python client: ``async for event in subscribe(url, topics)``.

It reconnects by itself, sends ``Last-Event-ID`` so nothing is lost, honours the server's
``retry`` with jitter (0.5 to 1.5 times it, so the clients of a draining node come back
spread out), and backs off exponentially with jitter while the hub is unreachable (the
EventSource rules, plus the backoff that browsers lack). A ``204`` ends the iteration and a
``4xx`` answer raises: retrying would not help.

``429`` (too many streams, or too many attempts) is the exception to the exception: on the
first attempt it raises :class:`~tidings.errors.LimitExceeded`, so a caller learns at once
that it is over a limit; on a reconnect, a stream that was working waits the answer's
``Retry-After`` (or the backoff, if longer) and tries again, as it does through an outage.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Sequence

import httpx

from tidings.client.transport import error_from_response
from tidings.errors import LimitExceeded, TaskNotFound, TidingsError
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
) -> AsyncGenerator[ServerSentEvent, None]:
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
        InvalidTopic: a bad topic or pattern, or too many of them (400).
        TaskNotFound: a task stream (``path``) of a task that does not exist (404).
        LimitExceeded: the first attempt was answered 429 (too many streams for this user
            or IP, or too many attempts); ``retry_after`` holds the hub's ``Retry-After``.
        TidingsError: another 4xx answer.
    """
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))
    retry_ms = 3000
    failures = 0
    connected = False
    wait_at_least = 0.0
    params = httpx.QueryParams([("topic", t) for t in topics])
    try:
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            if token:
                headers["Authorization"] = f"Bearer {token}"
            streaming = False
            try:
                async with http.stream(
                    "GET", url.rstrip("/") + path, params=params, headers=headers
                ) as response:
                    if response.status_code == 204:
                        return
                    if 400 <= response.status_code < 500:
                        await response.aread()
                        error = _error_of(response)
                        if not isinstance(error, LimitExceeded) or not connected:
                            raise error
                        wait_at_least = error.retry_after
                    if response.status_code != 200:
                        raise httpx.HTTPStatusError(
                            "unavailable", request=response.request, response=response
                        )
                    failures = 0
                    connected = streaming = True
                    wait_at_least = 0.0
                    parser = EventParser()
                    async for chunk in response.aiter_raw():
                        for event in parser.feed(chunk):
                            if event.id:
                                last_event_id = event.id
                            yield event
                        if parser.retry is not None:
                            retry_ms = parser.retry  # kept however the stream ends
            except (httpx.TransportError, httpx.HTTPStatusError):
                # A stream that was open and broke reconnects after ``retry``, as one that
                # ended; only failed attempts back off.
                if not streaming:
                    failures += 1
            if not reconnect:
                return
            if failures == 0:
                # The stream ended (a node draining, a maximum age): back after about
                # ``retry``, each client at its own moment, not all in one storm.
                delay = retry_ms / 1000 * random.uniform(0.5, 1.5)
            else:
                delay = min(max_backoff, retry_ms / 1000 * 2 ** min(failures, 10))
                delay = random.uniform(delay / 2, delay)
            await asyncio.sleep(max(delay, wait_at_least))
    finally:
        if own:
            await http.aclose()


def _error_of(response: httpx.Response) -> TidingsError:
    """The exception for a 4xx answer; a 404 that is not about a task is a wrong URL."""
    error = error_from_response(response)
    if isinstance(error, TaskNotFound) and error.code != TaskNotFound.code:
        plain = TidingsError(error.message, code=error.code)
        plain.status = 404
        return plain
    return error
