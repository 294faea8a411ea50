"""Every exception tidings raises, under one root.

::

    TidingsError
    ├── ConfigError            a bad setting; the message names it
    ├── BadRequest             a request body that is not a JSON object (HTTP 400)
    │   ├── RequestTooLarge    a request body over the body limit (HTTP 413)
    │   └── UnsupportedMediaType  a write cookies may authenticate, not sent as JSON (HTTP 415)
    ├── InvalidTopic           a topic or pattern that breaks SPEC §2
    ├── InvalidEvent           an event type, id, payload or field that breaks SPEC §1/§3
    │   └── EventTooLarge      the encoded payload is over ``max_event_bytes``
    ├── NotAuthorized          the principal may not do this (HTTP 401/403)
    ├── AuthUnavailable        the auth proxy or the JWKS cannot be reached (HTTP 503)
    ├── AuthProxyError         the auth proxy's answer is not the documented JSON (HTTP 502)
    ├── LimitExceeded          a rate or connection limit was hit (HTTP 429)
    ├── ShuttingDown           the hub is stopping and takes no new work (HTTP 503)
    ├── TaskError
    │   ├── TaskNotFound       no such task, or not visible to this principal (HTTP 404)
    │   ├── TaskExists         ``create`` with a task id that is taken (HTTP 409)
    │   └── TaskFinished       the task is terminal; it takes no more updates (HTTP 409)
    ├── BackendUnavailable     the backend (Redis) cannot be reached; ``__cause__`` holds why
    └── StreamEnded            a test stream ended before what the test waited for
                               (``tidings.testing``; never raised by the hub itself)

Each class carries a machine ``code`` (the ``error.code`` of the HTTP error body) and the
HTTP ``status`` the web layer answers with. The web layer renders them; nothing else does.
"""

from __future__ import annotations

from tidings.types import ServerSentEvent

__all__ = [
    "AuthProxyError",
    "AuthUnavailable",
    "BackendUnavailable",
    "BadRequest",
    "ConfigError",
    "EventTooLarge",
    "InvalidEvent",
    "InvalidTopic",
    "LimitExceeded",
    "NotAuthorized",
    "RequestTooLarge",
    "ShuttingDown",
    "StreamEnded",
    "TaskError",
    "TaskExists",
    "TaskFinished",
    "TaskNotFound",
    "TidingsError",
    "UnsupportedMediaType",
    "error_line",
]


class TidingsError(Exception):
    """Root of every tidings error.

    ``code`` is a stable machine-readable name and ``status`` the HTTP status the web layer
    uses when the error reaches a client. ``message`` is safe to show to a client: it never
    holds internal detail.
    """

    code: str = "error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(TidingsError):
    """A setting has a bad value. The message names the setting; start-up stops."""

    code = "config_error"
    status = 500


class BadRequest(TidingsError):
    """The request itself is malformed: its body is not JSON, or not a JSON object."""

    code = "malformed_json"
    status = 400


class RequestTooLarge(BadRequest):
    """The request body is over the body limit; nothing was read further or done."""

    code = "body_too_large"
    status = 413


class UnsupportedMediaType(BadRequest):
    """A write that the auth proxy authenticates (so cookies may) was not sent as
    ``Content-Type: application/json``. Browsers send that type to another origin only
    after a CORS preflight, so the rule keeps other sites from publishing with a user's
    cookies (CSRF). Send the body as JSON, with that header; nothing was done."""

    code = "unsupported_media_type"
    status = 415


class InvalidTopic(TidingsError):
    """A topic or pattern is malformed (SPEC §2). Fix the name; nothing was done."""

    code = "invalid_topic"
    status = 400


class InvalidEvent(TidingsError):
    """An event field is invalid: a CR/LF/NUL in a type or id, an unknown field, a bad value.

    Raised before anything is published, so nothing was sent. Differs from ``EventTooLarge``,
    which is about size only.
    """

    code = "invalid_event"
    status = 422


class EventTooLarge(InvalidEvent):
    """The event's payload is over ``max_event_bytes``. Send less, or raise the limit."""

    code = "payload_too_large"
    status = 413


class NotAuthorized(TidingsError):
    """The caller may not do this.

    ``status`` is 401 when credentials are missing or invalid (get a token and retry) and 403
    when they are valid but do not allow the topic (retrying will not help).
    """

    code = "forbidden"
    status = 403

    def __init__(self, message: str, *, code: str | None = None, status: int = 403) -> None:
        super().__init__(message, code=code)
        self.status = status


class AuthUnavailable(TidingsError):
    """Who is calling cannot be checked now: the auth proxy is down, answered with a server
    error or not in time, or the JWKS could not be fetched for too long. Nothing was
    granted; retry later.

    Differs from :class:`NotAuthorized`, which is an answer about the caller, and from
    :class:`AuthProxyError`, which is an auth proxy that answers, but not as documented.
    ``__cause__`` holds the detail (logged, never sent to a client).
    """

    code = "auth_unavailable"
    status = 503


class AuthProxyError(TidingsError):
    """The auth proxy answered, but not with what docs/security.md documents (a redirect to
    a login page, a 404, JSON of another shape). Nothing was granted; the hub's log says
    what was wrong. A configuration error of the application's endpoint: retrying will
    not help until it is fixed.
    """

    code = "auth_proxy_error"
    status = 502


class LimitExceeded(TidingsError):
    """A rate or connection limit was hit. Retry after ``retry_after`` seconds."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class ShuttingDown(TidingsError):
    """The hub is shutting down and accepts no new streams or publishes; go to another node."""

    code = "shutting_down"
    status = 503


class TaskError(TidingsError):
    """Base of the task errors."""

    code = "task_error"
    status = 400


class TaskNotFound(TaskError):
    """No task has this id, or the caller may not see it (both answer 404, so ids don't leak)."""

    code = "task_not_found"
    status = 404


class TaskExists(TaskError):
    """``create`` was given a ``task_id`` that is already taken."""

    code = "task_exists"
    status = 409


class TaskFinished(TaskError):
    """The task is completed, failed or cancelled; terminal states are final.

    Raised for any later update and for the loser of two racing terminal requests. Nothing
    was published and no ``sequence`` was used.
    """

    code = "task_finished"
    status = 409


class BackendUnavailable(TidingsError):
    """The backend (Redis) cannot be reached. Nothing was published; retry later.

    ``__cause__`` holds the underlying error; its text never reaches a client.
    """

    code = "backend_unavailable"
    status = 503


class StreamEnded(TidingsError):
    """A stream of the test kit (:mod:`tidings.testing`) ended while a test waited on it.

    The server ended the response (a task stream after its last event, a shutdown) or cut
    it, before the events the test asked for. ``events`` holds what the wait read before
    the end. Differs from ``TimeoutError``, which means the stream stayed open but the
    events did not come in time.
    """

    code = "stream_ended"
    status = 500

    def __init__(self, message: str, events: list[ServerSentEvent] | None = None) -> None:
        super().__init__(message)
        self.events: list[ServerSentEvent] = events or []


def error_line(exc: BaseException) -> str:
    """One line for an error a person reads (start-up, the command line): its message, and
    its cause's when that adds something. Never a traceback."""
    message = exc.message if isinstance(exc, TidingsError) else f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in message:
        message = f"{message}: {cause}"
    return " ".join(message.split())
