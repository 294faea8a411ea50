"""The task endpoints of SPEC §3: thin handlers over :class:`~tidings.tasks.service.TaskService`.

Each handler resolves the principal, parses the body with a pydantic model (``extra="forbid"``:
an unknown field is a 422), calls the same ``hub.tasks`` method the Python API offers and
renders the task JSON. Every rule (ownership, validation of counts, terminal states) lives
in the service and the model, not here.

``file_id`` is matched as a path, so file ids may hold ``/`` (``images/a.png``).

A body may be omitted where every field is optional (``POST /tasks/{id}/complete`` with no
body completes the task); a body that is present must be a JSON object.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tidings.auth.principal import Principal
from tidings.errors import InvalidEvent
from tidings.tasks.model import Task
from tidings.web.context import HubContext
from tidings.web.endpoints import read_json_object, timed_option
from tidings.web.errors import error_response, validation_message
from tidings.web.security import client_ip, principal_key, resolve_principal
from tidings.web.streaming import EventStreamResponse

__all__ = [
    "CancelTaskRequest",
    "CompleteTaskRequest",
    "CreateTaskRequest",
    "FailTaskRequest",
    "FileUpdateRequest",
    "ProgressRequest",
    "cancel",
    "complete",
    "create_task",
    "fail",
    "file_update",
    "get_task",
    "list_tasks",
    "progress",
    "stream",
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


async def create_task(hub: HubContext, request: Request) -> Response:
    """``POST /tasks``: ``201`` with the new task (its owner is the caller)."""
    principal = await _publisher(hub, request)
    body = await _parse(request, CreateTaskRequest, hub.settings.max_body_bytes)
    task = await hub.tasks.create(
        owner=principal.user,
        task_id=body.task_id,
        title=body.title,
        total=body.total,
        metadata=body.metadata,
    )
    return _task_response(task, 201)


async def list_tasks(hub: HubContext, request: Request) -> Response:
    """``GET /tasks?status=&limit=``: the caller's tasks, newest first."""
    principal = await resolve_principal(hub, request)
    query = request.query_params
    raw_limit = query.get("limit", "50")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidEvent(
            f"limit: expected an integer (got {raw_limit[:40]!r})", code="invalid_request"
        ) from None
    found = await hub.tasks.list(principal=principal, status=query.get("status"), limit=limit)
    body = {"tasks": [task.to_json() for task in found]}
    return Response(orjson.dumps(body), media_type="application/json")


async def get_task(hub: HubContext, request: Request) -> Response:
    """``GET /tasks/{task_id}``: the task."""
    principal = await resolve_principal(hub, request)
    task_id = request.path_params["task_id"]
    return _task_response(await hub.tasks.get(task_id, principal=principal))


async def progress(hub: HubContext, request: Request) -> Response:
    """``POST /tasks/{task_id}/progress``: the updated task."""
    principal = await _publisher(hub, request)
    body = await _parse(request, ProgressRequest, hub.settings.max_body_bytes)
    task = await hub.tasks.progress(
        request.path_params["task_id"],
        current=body.current,
        total=body.total,
        progress=body.progress,
        message=body.message,
        principal=principal,
    )
    return _task_response(task)


async def file_update(hub: HubContext, request: Request) -> Response:
    """``PUT /tasks/{task_id}/files/{file_id}``: the updated task (file ids may hold ``/``)."""
    principal = await _publisher(hub, request)
    body = await _parse(request, FileUpdateRequest, hub.settings.max_body_bytes)
    task = await hub.tasks.file(
        request.path_params["task_id"],
        request.path_params["file_id"],
        status=body.status,
        filename=body.filename,
        progress=body.progress,
        message=body.message,
        principal=principal,
    )
    return _task_response(task)


async def complete(hub: HubContext, request: Request) -> Response:
    """``POST /tasks/{task_id}/complete``: the finished task."""
    principal = await _publisher(hub, request)
    body = await _parse(request, CompleteTaskRequest, hub.settings.max_body_bytes)
    task = await hub.tasks.complete(
        request.path_params["task_id"], result=body.result, principal=principal
    )
    return _task_response(task)


async def fail(hub: HubContext, request: Request) -> Response:
    """``POST /tasks/{task_id}/fail``: the failed task."""
    principal = await _publisher(hub, request)
    body = await _parse(request, FailTaskRequest, hub.settings.max_body_bytes)
    task = await hub.tasks.fail(
        request.path_params["task_id"],
        error=body.error,
        details=body.details,
        principal=principal,
    )
    return _task_response(task)


async def cancel(hub: HubContext, request: Request) -> Response:
    """``POST /tasks/{task_id}/cancel``: the cancelled task."""
    principal = await _publisher(hub, request)
    body = await _parse(request, CancelTaskRequest, hub.settings.max_body_bytes)
    task = await hub.tasks.cancel(
        request.path_params["task_id"], reason=body.reason, principal=principal
    )
    return _task_response(task)


async def stream(hub: HubContext, request: Request) -> Response:
    """``GET /tasks/{task_id}/stream``: a task's stream, or ``204`` after its end."""
    engine = hub.engine
    if engine.shutting_down:
        return error_response(503, "shutting_down", "the hub is shutting down")
    # Attempts are counted before any other work, as for /events (SPEC §5).
    ip = client_ip(request)
    engine.limits.check_connect(ip)
    principal = await resolve_principal(hub, request)
    resume = request.headers.get("last-event-id", request.query_params.get("last_event_id"))
    conn = await hub.tasks.open_stream(
        request.path_params["task_id"],
        principal=principal,
        last_event_id=resume or None,
        ip=ip,
        timed=timed_option(request.query_params.get("time")),
    )
    if conn is None:
        return Response(status_code=204)
    return EventStreamResponse(conn)


async def _publisher(hub: HubContext, request: Request) -> Principal:
    """The principal of a request that changes a task, after the publish rate check: every
    change publishes an event, so it counts against the publish rate (SPEC §5)."""
    principal = await resolve_principal(hub, request)
    hub.engine.limits.check_publish(principal_key(principal, request))
    return principal
