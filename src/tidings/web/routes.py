"""Every endpoint of the hub, listed once, and the two ways it is served.

:data:`API` and :data:`DASHBOARD` list each endpoint once: its path, its methods, the
handler that answers it, and how OpenAPI documents it. From that one list:

- :class:`Routes` is a pure ASGI app that matches a request (exact paths by a dict, the
  others by a precompiled pattern) and calls the handler: what ``tidings serve`` and
  ``hub.asgi_app()`` run. No framework sits on the way of a publish or a stream open, and
  the handler's errors are rendered by :func:`~tidings.web.errors.render`.
- :func:`build_router` is a FastAPI ``APIRouter`` of the same endpoints (``hub.router``),
  for applications that include it in their own FastAPI app; it also carries the OpenAPI
  description. Its routes call the same handlers directly: FastAPI's parameter parsing
  only documents the query (the handlers parse their own input), so a request costs the
  same work either way and every rule lives in the handler.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from tidings.tracing import request_context
from tidings.web import admin_endpoints, dashboard, endpoints, task_endpoints, topic_endpoints
from tidings.web.admin_endpoints import DisconnectRequest, DisconnectResponse, TopicsResponse
from tidings.web.context import HubContext
from tidings.web.endpoints import ERRORS, PublishRequest, PublishResponse
from tidings.web.errors import error_response, render
from tidings.web.streaming import EventStreamResponse
from tidings.web.task_endpoints import (
    CancelTaskRequest,
    CompleteTaskRequest,
    CreateTaskRequest,
    FailTaskRequest,
    FileUpdateRequest,
    ProgressRequest,
)
from tidings.web.topic_endpoints import HistoryResponse, PresenceResponse

__all__ = ["API", "DASHBOARD", "Endpoint", "Routes", "TidingsRoute", "build_router"]

Handler = Callable[[HubContext, Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint: where it is, what answers it, and what OpenAPI says of it.

    ``params``, when given, is a function whose signature documents the path and query
    parameters (it is never called); ``doc`` holds the other FastAPI route arguments
    (``summary``, ``status_code``, ``responses``, ...). Without ``summary`` the endpoint is
    left out of the OpenAPI document.
    """

    path: str
    methods: tuple[str, ...]
    handler: Handler
    name: str
    params: Callable[..., None] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = False
    doc: dict[str, Any] = field(default_factory=dict)


# -- what OpenAPI documents of the parameters (never called) --------------------------


def _stream_params(
    topic: Annotated[list[str], Query(description="Topic or pattern (1 to 32).")] = [],  # noqa: B006
    last_event_id: Annotated[
        str | None, Query(description="Resume after this id (if no Last-Event-ID header).")
    ] = None,
    token: Annotated[str | None, Query(description="Token, if query tokens are on.")] = None,
    time: Annotated[
        bool, Query(description="Give each event's publish time in a time: field (Unix ms).")
    ] = False,
) -> None: ...


def _task_params(task_id: str) -> None: ...


def _file_params(task_id: str, file_id: str) -> None: ...


def _task_stream_params(
    task_id: str,
    last_event_id: Annotated[
        str | None, Query(description="Resume after this id (if no Last-Event-ID header).")
    ] = None,
    token: Annotated[str | None, Query(description="Token, if query tokens are on.")] = None,
    time: Annotated[
        bool, Query(description="Give each event's publish time in a time: field (Unix ms).")
    ] = False,
) -> None: ...


def _list_params(
    status: Annotated[
        str | None, Query(description="pending, running, completed, failed or cancelled.")
    ] = None,
    limit: Annotated[int, Query(description="At most this many (1..1000).")] = 50,
) -> None: ...


_TOPIC = Path(description="A topic (not a pattern), URL-encoded: chat%2Fgeneral.")


def _presence_params(
    topic: Annotated[str, _TOPIC],
    limit: Annotated[int, Query(description="Entries per page (1..1000).")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page.")] = None,
) -> None: ...


def _history_params(
    topic: Annotated[str, _TOPIC],
    since: Annotated[
        str | None, Query(description="Events after this id (all kept without it).")
    ] = None,
    limit: Annotated[int, Query(description="Events per page (1..100).")] = 100,
) -> None: ...


def _topics_params(
    limit: Annotated[int, Query(description="Topics per page (1..1000).")] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page.")] = None,
) -> None: ...


def _doc(summary: str) -> dict[str, Any]:
    return {"summary": summary}


_SSE = {200: {"content": {"text/event-stream": {}}, "description": "Event stream"}}
_STREAM_DOC = {"response_class": EventStreamResponse, "status_code": 200}
_TASK = {200: {"description": "The task JSON"}}

#: The hub's endpoints: ``hub.router``, and the standalone app.
API: tuple[Endpoint, ...] = (
    Endpoint(
        "/events",
        ("GET",),
        endpoints.events,
        "events",
        params=_stream_params,
        doc={
            "summary": "Subscribe to topics (Server-Sent Events)",
            "responses": _SSE,
            **_STREAM_DOC,
        },
    ),
    Endpoint(
        "/publish",
        ("POST",),
        endpoints.publish,
        "publish",
        body=PublishRequest,
        body_required=True,
        doc={"summary": "Publish an event", "status_code": 202, "response_model": PublishResponse},
    ),
    Endpoint(
        "/stats",
        ("GET",),
        endpoints.stats,
        "stats",
        doc={"summary": "Connection and event counters"},
    ),
    Endpoint(
        "/metrics",
        ("GET",),
        endpoints.metrics,
        "metrics",
        doc={"summary": "Prometheus metrics", "response_class": PlainTextResponse},
    ),
    Endpoint("/healthz", ("GET",), endpoints.healthz, "healthz", doc=_doc("The process is up")),
    Endpoint("/readyz", ("GET",), endpoints.readyz, "readyz", doc=_doc("The backend is reachable")),
    Endpoint(
        "/tasks",
        ("POST",),
        task_endpoints.create_task,
        "create_task",
        body=CreateTaskRequest,
        doc={"summary": "Create a task", "status_code": 201, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks",
        ("GET",),
        task_endpoints.list_tasks,
        "list_tasks",
        params=_list_params,
        doc={"summary": "List tasks, newest first", "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}",
        ("GET",),
        task_endpoints.get_task,
        "get_task",
        params=_task_params,
        doc={"summary": "Get a task", "responses": _TASK, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}/progress",
        ("POST",),
        task_endpoints.progress,
        "progress",
        params=_task_params,
        body=ProgressRequest,
        doc={"summary": "Report progress", "responses": _TASK, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}/files/{file_id:path}",
        ("PUT",),
        task_endpoints.file_update,
        "file_update",
        params=_file_params,
        body=FileUpdateRequest,
        body_required=True,
        doc={"summary": "Report a file's state", "responses": _TASK, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}/complete",
        ("POST",),
        task_endpoints.complete,
        "complete",
        params=_task_params,
        body=CompleteTaskRequest,
        doc={"summary": "Complete a task", "responses": _TASK, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}/fail",
        ("POST",),
        task_endpoints.fail,
        "fail",
        params=_task_params,
        body=FailTaskRequest,
        body_required=True,
        doc={"summary": "Fail a task", "responses": _TASK, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}/cancel",
        ("POST",),
        task_endpoints.cancel,
        "cancel",
        params=_task_params,
        body=CancelTaskRequest,
        doc={"summary": "Cancel a task", "responses": _TASK, "tags": ["tasks"]},
    ),
    Endpoint(
        "/tasks/{task_id}/stream",
        ("GET",),
        task_endpoints.stream,
        "task_stream",
        params=_task_stream_params,
        doc={
            "summary": "Stream a task's progress (Server-Sent Events)",
            **_STREAM_DOC,
            "responses": {
                **_SSE,
                204: {"description": "Last-Event-ID is the terminal event: nothing more to send"},
            },
            "tags": ["tasks"],
        },
    ),
    Endpoint(
        "/topics/{topic:path}/presence",
        ("GET",),
        topic_endpoints.presence,
        "presence",
        params=_presence_params,
        doc={
            "summary": "Who is subscribed to a topic, on every node",
            "response_model": PresenceResponse,
            "tags": ["topics"],
        },
    ),
    Endpoint(
        "/topics/{topic:path}/history",
        ("GET",),
        topic_endpoints.history,
        "history",
        params=_history_params,
        doc={
            "summary": "A topic's events, oldest first",
            "response_model": HistoryResponse,
            "tags": ["topics"],
        },
    ),
    Endpoint(
        "/admin/disconnect",
        ("POST",),
        admin_endpoints.disconnect,
        "disconnect",
        body=DisconnectRequest,
        body_required=True,
        doc={
            "summary": "End the streams of a user or on a topic, on every node (admins)",
            "response_model": DisconnectResponse,
            "tags": ["admin"],
        },
    ),
    Endpoint(
        "/admin/topics",
        ("GET",),
        admin_endpoints.topics,
        "topics",
        params=_topics_params,
        doc={
            "summary": "The topics with subscribers, on every node (admins)",
            "response_model": TopicsResponse,
            "tags": ["admin"],
        },
    ),
    # The browser client, so an embedded app serves it under its prefix too.
    Endpoint("/static/tidings.js", ("GET", "HEAD"), dashboard.tidings_js, "tidings_js"),
)

#: The live dashboard's page and files: the standalone app, or an app that includes them.
DASHBOARD: tuple[Endpoint, ...] = (
    Endpoint("/", ("GET", "HEAD"), dashboard.dashboard, "dashboard"),
    Endpoint("/static/dashboard.js", ("GET", "HEAD"), dashboard.dashboard_js, "dashboard_js"),
    Endpoint("/static/dashboard.css", ("GET", "HEAD"), dashboard.dashboard_css, "dashboard_css"),
)


async def answer(hub: HubContext, handler: Handler, request: Request) -> Response:
    """``handler``'s response to ``request``, or the error it raised in the SPEC's shape.

    A hub that no lifespan started (daphne runs none) starts with its first request.
    """
    try:
        if not hub.started:
            await hub.start_on_request()
        if hub.engine.tracer is not None and request.method != "GET":
            # A publish, a task change: under the caller's trace (its traceparent header).
            with request_context(request.headers):
                return await handler(hub, request)
        return await handler(hub, request)
    except Exception as exc:
        return render(exc)


# -- served directly ------------------------------------------------------------------


class Routes:
    """The endpoints as a pure ASGI app; other paths are a 404 (or 405) in the error shape."""

    def __init__(self, hub: HubContext, table: tuple[Endpoint, ...]) -> None:
        self.hub = hub
        #: path -> method -> endpoint, for paths without parameters.
        self._exact: dict[str, dict[str, Endpoint]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, Any], dict[str, Endpoint]]] = []
        by_path: dict[str, dict[str, Endpoint]] = {}
        for endpoint in table:
            methods = by_path.setdefault(endpoint.path, {})
            for method in endpoint.methods:
                methods[method] = endpoint
        for path, methods in by_path.items():
            if "{" not in path:
                self._exact[path] = methods
            else:
                regex, _, convertors = compile_path(path)
                self._patterns.append((regex, convertors, methods))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets: see tidings.web.app
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        methods = self._exact.get(path)
        if methods is None:
            for regex, convertors, candidates in self._patterns:
                match = regex.match(path)
                if match is not None:
                    scope["path_params"] = {
                        key: convertors[key].convert(value)
                        for key, value in match.groupdict().items()
                    }
                    methods = candidates
                    break
        if methods is None:
            response = error_response(404, "not_found", "Not Found")
        else:
            endpoint = methods.get(scope["method"])
            if endpoint is None:
                allow = {"Allow": ", ".join(methods)}
                response = error_response(405, "method_not_allowed", "Method Not Allowed", allow)
            else:
                response = await answer(self.hub, endpoint.handler, Request(scope, receive))
        await response(scope, receive, send)


# -- in a FastAPI app -----------------------------------------------------------------


class _Documented:
    """An endpoint as FastAPI sees it: a signature that documents the parameters, and the
    handler that :class:`TidingsRoute` calls instead."""

    def __init__(self, hub: HubContext, endpoint: Endpoint) -> None:
        self.hub = hub
        self.handler = endpoint.handler
        self.__name__ = endpoint.name
        self.__doc__ = endpoint.handler.__doc__
        params = endpoint.params or _no_params
        self.__signature__ = inspect.signature(params, eval_str=True)

    async def __call__(self, **params: Any) -> None:  # pragma: no cover - never called
        raise RuntimeError("answered by TidingsRoute")


def _no_params() -> None: ...


class TidingsRoute(APIRoute):
    """A FastAPI route whose request goes straight to a tidings handler.

    FastAPI still reads the endpoint's signature (for OpenAPI), but does not parse the
    request: the handler does, and errors come back in the SPEC's shape. Routes of other
    endpoints (an application's own, in a router of this class) behave as usual.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        if not isinstance(endpoint, _Documented):
            return super().get_route_handler()
        hub, handler = endpoint.hub, endpoint.handler

        async def route(request: Request) -> Response:
            return await answer(hub, handler, request)

        return route


def build_router(hub: HubContext, table: tuple[Endpoint, ...] = API) -> APIRouter:
    """A FastAPI router of ``table``'s endpoints bound to ``hub`` (``hub.router``)."""
    router = APIRouter(route_class=TidingsRoute, responses=ERRORS)
    for endpoint in table:
        doc = dict(endpoint.doc)
        if endpoint.body is not None:
            schema = endpoint.body.model_json_schema()
            doc["openapi_extra"] = {
                "requestBody": {
                    "required": endpoint.body_required,
                    "content": {"application/json": {"schema": schema}},
                }
            }
        router.add_api_route(
            endpoint.path,
            _Documented(hub, endpoint),
            methods=list(endpoint.methods),
            name=endpoint.name,
            include_in_schema="summary" in doc,
            **doc,
        )
    return router
