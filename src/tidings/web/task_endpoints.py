"""The task endpoints of SPEC §3: thin routes over :class:`~tidings.tasks.service.TaskService`.

Each route resolves the principal, parses the body with a pydantic model (``extra="forbid"``:
an unknown field is a 422), calls the same ``hub.tasks`` method the Python API offers and
renders the task JSON. Every rule (ownership, validation of counts, terminal states) lives
in the service and the model, not here.

``file_id`` is matched as a path, so file ids may hold ``/`` (``images/a.png``).

A body may be omitted where every field is optional (``POST /tasks/{id}/complete`` with no
body completes the task); a body that is present must be a JSON object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from starlette.responses import Response

from tidings.auth.principal import Principal
from tidings.errors import InvalidEvent
from tidings.tasks.model import Task
from tidings.web.errors import TidingsRoute, error_response, render, validation_message
from tidings.web.routes import ERRORS, read_json_object
from tidings.web.security import client_ip, principal_key, resolve_principal
from tidings.web.streaming import EventStreamResponse

if TYPE_CHECKING:
    from tidings.hub import Hub

__all__ = [
    "CancelTaskRequest",
    "CompleteTaskRequest",
    "CreateTaskRequest",
    "FailTaskRequest",
    "FileUpdateRequest",
    "ProgressRequest",
    "build_task_router",
    "progress_response",
    "task_id_of",
    "task_stream_response",
]

Number: TypeAlias = StrictInt | StrictFloat
M = TypeVar("M", bound=BaseModel)


class CreateTaskRequest(BaseModel):
    """Body of ``POST /tasks``."""

    model_config = ConfigDict(extra="forbid")

    task_id: str | None = Field(
        None, description="Id to use (A-Z a-z 0-9 _ . : @ -, at most 128); random if omitted."
    )
    title: str | None = Field(None, max_length=1000, description="Title for dashboards.")
    total: Number | None = Field(None, description="Units of work, if known.")
    metadata: dict[str, Any] | None = Field(
        None, description="Any JSON object; metadata.job_id becomes task_completed's job_id."
    )


class ProgressRequest(BaseModel):
    """Body of ``POST /tasks/{id}/progress``: fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    current: Number | None = Field(None, description="Units done (at most total).")
    total: Number | None = Field(None, description="Units to do.")
    progress: Number | None = Field(
        None, description="Percent 0..100; computed from current/total when omitted."
    )
    message: str | None = Field(None, description="Human-readable status line.")


class FileUpdateRequest(BaseModel):
    """Body of ``PUT /tasks/{id}/files/{file_id}``."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["pending", "processing", "completed", "failed"]
    filename: str | None = Field(None, description="Display name; the file id if never set.")
    progress: Number | None = Field(None, description="Percent 0..100 of this file.")
    message: str | None = None


class CompleteTaskRequest(BaseModel):
    """Body of ``POST /tasks/{id}/complete`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    result: Any = Field(None, description="Any JSON value, sent in task_completed.")


class FailTaskRequest(BaseModel):
    """Body of ``POST /tasks/{id}/fail``."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(min_length=1, description="What went wrong, for the user.")
    details: Any = Field(None, description="Any JSON value, sent in task_failed.")


class CancelTaskRequest(BaseModel):
    """Body of ``POST /tasks/{id}/cancel`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = None


def _body_doc(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


_TASK_DOC: dict[int | str, dict[str, Any]] = {200: {"description": "The task JSON"}}


def _task_response(task: Task, status: int = 200) -> Response:
    return Response(orjson.dumps(task.to_json()), status_code=status, media_type="application/json")


#: The field of each body that holds any JSON value: where a body too deep to parse nests.
_NESTED: dict[type[BaseModel], str] = {
    CreateTaskRequest: "metadata",
    CompleteTaskRequest: "result",
    FailTaskRequest: "details",
}


async def _parse(request: Request, model: type[M], limit: int) -> M:
    """The request body validated by ``model``; no body at all counts as ``{}``."""
    headers = request.headers
    empty = headers.get("content-length") == "0" or (
        "content-length" not in headers and "transfer-encoding" not in headers
    )
    nested = _NESTED.get(model, "the body")
    raw: dict[str, Any] = {} if empty else await read_json_object(request, limit, nested=nested)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent(validation_message(exc), code="invalid_request") from None


def build_task_router(hub: Hub) -> APIRouter:
    """The task endpoints (SPEC §3 "Tasks"), bound to ``hub``."""
    router = APIRouter(route_class=TidingsRoute, responses=ERRORS, tags=["tasks"])
    limit = hub.settings.max_body_bytes
    tasks = hub.tasks

    @router.post(
        "/tasks",
        status_code=201,
        summary="Create a task",
        response_class=Response,
        responses={201: {"description": "The new task"}},
        openapi_extra=_body_doc(CreateTaskRequest, required=False),
    )
    async def create_task(request: Request) -> Response:
        principal = await _publisher(hub, request)
        body = await _parse(request, CreateTaskRequest, limit)
        task = await tasks.create(
            owner=principal.user,
            task_id=body.task_id,
            title=body.title,
            total=body.total,
            metadata=body.metadata,
        )
        return _task_response(task, 201)

    @router.get("/tasks", summary="List tasks, newest first", response_class=Response)
    async def list_tasks(
        request: Request,
        status: Annotated[
            str | None,
            Query(description="pending, running, completed, failed or cancelled."),
        ] = None,
        limit: Annotated[int, Query(description="At most this many (1..1000).")] = 50,
    ) -> Response:
        principal = await resolve_principal(hub, request)
        found = await tasks.list(principal=principal, status=status, limit=limit)
        body = {"tasks": [task.to_json() for task in found]}
        return Response(orjson.dumps(body), media_type="application/json")

    @router.get(
        "/tasks/{task_id}", summary="Get a task", response_class=Response, responses=_TASK_DOC
    )
    async def get_task(request: Request, task_id: str) -> Response:
        principal = await resolve_principal(hub, request)
        return _task_response(await tasks.get(task_id, principal=principal))

    @router.post(
        "/tasks/{task_id}/progress",
        summary="Report progress",
        response_class=Response,
        responses=_TASK_DOC,
        openapi_extra=_body_doc(ProgressRequest, required=False),
    )
    async def progress(request: Request, task_id: str) -> Response:
        # The work is shared with the standalone app's fast path (tidings.web.app).
        return await progress_response(hub, request, task_id)

    @router.put(
        "/tasks/{task_id}/files/{file_id:path}",
        summary="Report a file's state",
        response_class=Response,
        responses=_TASK_DOC,
        openapi_extra=_body_doc(FileUpdateRequest, required=True),
    )
    async def file_update(request: Request, task_id: str, file_id: str) -> Response:
        principal = await _publisher(hub, request)
        body = await _parse(request, FileUpdateRequest, limit)
        task = await tasks.file(
            task_id,
            file_id,
            status=body.status,
            filename=body.filename,
            progress=body.progress,
            message=body.message,
            principal=principal,
        )
        return _task_response(task)

    @router.post(
        "/tasks/{task_id}/complete",
        summary="Complete a task",
        response_class=Response,
        responses=_TASK_DOC,
        openapi_extra=_body_doc(CompleteTaskRequest, required=False),
    )
    async def complete(request: Request, task_id: str) -> Response:
        principal = await _publisher(hub, request)
        body = await _parse(request, CompleteTaskRequest, limit)
        task = await tasks.complete(task_id, result=body.result, principal=principal)
        return _task_response(task)

    @router.post(
        "/tasks/{task_id}/fail",
        summary="Fail a task",
        response_class=Response,
        responses=_TASK_DOC,
        openapi_extra=_body_doc(FailTaskRequest, required=True),
    )
    async def fail(request: Request, task_id: str) -> Response:
        principal = await _publisher(hub, request)
        body = await _parse(request, FailTaskRequest, limit)
        task = await tasks.fail(
            task_id, error=body.error, details=body.details, principal=principal
        )
        return _task_response(task)

    @router.post(
        "/tasks/{task_id}/cancel",
        summary="Cancel a task",
        response_class=Response,
        responses=_TASK_DOC,
        openapi_extra=_body_doc(CancelTaskRequest, required=False),
    )
    async def cancel(request: Request, task_id: str) -> Response:
        principal = await _publisher(hub, request)
        body = await _parse(request, CancelTaskRequest, limit)
        task = await tasks.cancel(task_id, reason=body.reason, principal=principal)
        return _task_response(task)

    @router.get(
        "/tasks/{task_id}/stream",
        summary="Stream a task's progress (Server-Sent Events)",
        status_code=200,
        response_class=EventStreamResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Event stream"},
            204: {"description": "Last-Event-ID is the terminal event: nothing more to send"},
        },
    )
    async def stream(
        request: Request,
        task_id: str,
        last_event_id: Annotated[
            str | None, Query(description="Resume after this id (if no Last-Event-ID header).")
        ] = None,
        token: Annotated[str | None, Query(description="Token, if query tokens are on.")] = None,
    ) -> Response:
        # The parameters above document the query for OpenAPI; the work is shared with the
        # standalone server's protocol (tidings.web.protocol).
        return await task_stream_response(hub, request, task_id)

    return router


def task_id_of(path: str, action: str) -> str | None:
    """The id in ``/tasks/{id}/<action>`` (one path segment, as the routes match it), or
    ``None`` when ``path`` is not that route's."""
    suffix = "/" + action
    if not (path.startswith("/tasks/") and path.endswith(suffix)):
        return None
    task_id = path[len("/tasks/") : -len(suffix)]
    if not task_id or "/" in task_id:
        return None
    return task_id


async def _publisher(hub: Hub, request: Request) -> Principal:
    """The principal of a request that changes a task, after the publish rate check: every
    change publishes an event, so it counts against the publish rate (SPEC §5)."""
    principal = await resolve_principal(hub, request)
    hub.limits.check_publish(principal_key(principal, request))
    return principal


async def progress_response(hub: Hub, request: Request, task_id: str) -> Response:
    """``POST /tasks/{task_id}/progress``: the updated task JSON, or the error."""
    try:
        principal = await _publisher(hub, request)
        body = await _parse(request, ProgressRequest, hub.settings.max_body_bytes)
        task = await hub.tasks.progress(
            task_id,
            current=body.current,
            total=body.total,
            progress=body.progress,
            message=body.message,
            principal=principal,
        )
    except Exception as exc:
        return render(exc)
    return _task_response(task)


async def task_stream_response(hub: Hub, request: Request, task_id: str) -> Response:
    """``GET /tasks/{task_id}/stream``: a task's stream, ``204`` after its end, or the error."""
    try:
        if hub.shutting_down:
            return error_response(503, "shutting_down", "the hub is shutting down")
        # Attempts are counted before any other work, as for /events (SPEC §5).
        ip = client_ip(request)
        hub.limits.check_connect(ip)
        principal = await resolve_principal(hub, request)
        resume = request.headers.get("last-event-id", request.query_params.get("last_event_id"))
        conn = await hub.tasks.open_stream(
            task_id, principal=principal, last_event_id=resume or None, ip=ip
        )
    except Exception as exc:
        return render(exc)
    if conn is None:
        return Response(status_code=204)
    return EventStreamResponse(hub, conn)
