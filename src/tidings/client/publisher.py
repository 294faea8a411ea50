"""Publish events and report task progress from anywhere: scripts, Flask views, Celery workers.

:class:`Publisher` (sync, ``httpx.Client``) and :class:`AsyncPublisher` (``httpx.AsyncClient``)
call a hub through a :mod:`transport <tidings.client.transport>` chosen by the URL.
``track()`` reports a loop's progress like tqdm, without flooding the hub::

    pub = Publisher("http://127.0.0.1:8000")
    with pub.track(total=len(files), title="Convert images") as t:
        for f in t.iter(files):
            convert(f)

Every failure is a :mod:`tidings.errors` exception: ``TaskNotFound`` (404),
``TaskFinished`` (409: the task is over, e.g. cancelled), ``InvalidEvent`` (422),
``NotAuthorized`` (401/403), ``LimitExceeded`` (429), ``BackendUnavailable`` (503, or the
hub cannot be reached).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeAlias

from tidings.client.reporting import given
from tidings.client.tracker import AsyncTracker, Tracker
from tidings.client.transport import (
    AsyncTransport,
    Call,
    Transport,
    open_async_transport,
    open_transport,
)
from tidings.errors import BackendUnavailable
from tidings.tasks.model import Task
from tidings.types import JSON

__all__ = ["AsyncPublisher", "Publisher"]

Number: TypeAlias = int | float


def _task(answer: JSON) -> Task:
    if not isinstance(answer, Mapping) or "task_id" not in answer:
        raise BackendUnavailable("the hub's answer is not a task")
    return Task.from_record(answer)


def _event_id(answer: JSON) -> str:
    if not isinstance(answer, Mapping) or not isinstance(answer.get("id"), str):
        raise BackendUnavailable("the hub's answer has no event id")
    return str(answer["id"])


def _publish_call(
    topic: str,
    data: JSON,
    type: str,
    priority: str,
    users: Iterable[str] | None,
    retry: int | None,
    idempotency_key: str | None,
) -> Call:
    body: dict[str, JSON] = {"topic": topic, "type": type, "data": data, "priority": priority}
    body.update(
        given(
            users=list(users) if users is not None else None,
            retry=retry,
            idempotency_key=idempotency_key,
        )
    )
    return Call("publish", body)


class Publisher:
    """A sync client that publishes events and reports tasks to a hub.

    Args:
        url: the hub: ``http(s)://host:port[/prefix]``, or ``redis://...`` when the Redis
            transport is installed.
        token: a bearer token (JWT) allowed to publish where you publish.
        timeout: seconds for each request.
        transport: a :class:`Transport` to use instead of the one ``url`` selects (tests,
            custom clients).

    Raises:
        ConfigError: ``url`` has an unknown scheme, or needs a transport that is missing.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: Transport | None = None,
    ) -> None:
        self.url = url
        self.transport: Transport = transport or open_transport(url, token=token, timeout=timeout)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the transport's connections."""
        self.transport.close()

    def publish(
        self,
        topic: str,
        data: JSON = None,
        *,
        type: str = "message",
        priority: str = "normal",
        users: Iterable[str] | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish ``data`` on ``topic``; return the event id (``POST /publish``).

        Retrying with the same ``idempotency_key`` within five minutes publishes nothing
        new and returns the first id.
        """
        call = _publish_call(topic, data, type, priority, users, retry, idempotency_key)
        return _event_id(self.transport.handle(call))

    def create_task(
        self,
        *,
        task_id: str | None = None,
        title: str | None = None,
        total: Number | None = None,
        metadata: Mapping[str, JSON] | None = None,
    ) -> Task:
        """Create a task (``POST /tasks``); it belongs to the token's user.

        Raises:
            TaskExists: ``task_id`` is taken.
        """
        body = given(
            task_id=task_id,
            title=title,
            total=total,
            metadata=dict(metadata) if metadata is not None else None,
        )
        return _task(self.transport.handle(Call("create_task", body)))

    def get_task(self, task_id: str) -> Task:
        """The task (``GET /tasks/{id}``); :class:`TaskNotFound` if missing or not yours."""
        return _task(self.transport.handle(Call("get_task", task_id=task_id)))

    def progress(
        self,
        task_id: str,
        *,
        current: Number | None = None,
        total: Number | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> Task:
        """Report progress (``POST /tasks/{id}/progress``).

        Raises:
            TaskFinished: the task is completed, failed or cancelled.
            InvalidEvent: ``current`` > ``total`` or ``progress`` outside 0..100.
        """
        body = given(current=current, total=total, progress=progress, message=message)
        return _task(self.transport.handle(Call("progress", body, task_id=task_id)))

    def file(
        self,
        task_id: str,
        file_id: str,
        *,
        status: str,
        filename: str | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> Task:
        """Report a file's state (``PUT /tasks/{id}/files/{file_id}``)."""
        body = given(status=status, filename=filename, progress=progress, message=message)
        call = Call("file", body, task_id=task_id, file_id=file_id)
        return _task(self.transport.handle(call))

    def complete(self, task_id: str, *, result: JSON = None) -> Task:
        """Complete the task (``POST /tasks/{id}/complete``)."""
        return _task(self.transport.handle(Call("complete", {"result": result}, task_id)))

    def fail(self, task_id: str, *, error: str, details: JSON = None) -> Task:
        """Fail the task (``POST /tasks/{id}/fail``)."""
        body: dict[str, JSON] = {"error": error, "details": details}
        return _task(self.transport.handle(Call("fail", body, task_id)))

    def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        """Cancel the task (``POST /tasks/{id}/cancel``)."""
        return _task(self.transport.handle(Call("cancel", given(reason=reason), task_id)))

    def track(
        self,
        task_id: str | None = None,
        *,
        total: Number | None = None,
        title: str | None = None,
        metadata: Mapping[str, JSON] | None = None,
        min_interval: float = 0.1,
    ) -> Tracker:
        """A context manager that reports a block's progress, like tqdm.

        With no ``task_id`` a task is created (``title``, ``total``, ``metadata``);
        otherwise the existing task is reported on. On entry the task moves to running; on
        a clean exit the final state is sent and the task completed (with
        :attr:`Tracker.result`); an exception fails the task and is re-raised.

        Example::

            with pub.track(task_id, total=len(files)) as t:
                for f in t.iter(files):
                    convert(f)
                t.result = {"converted": len(files)}
        """
        return Tracker(
            self,
            task_id,
            total=total,
            title=title,
            metadata=metadata,
            min_interval=min_interval,
        )


class AsyncPublisher:
    """The async twin of :class:`Publisher` (``httpx.AsyncClient``); same arguments.

    Use it as an async context manager, or call :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        transport: AsyncTransport | None = None,
    ) -> None:
        self.url = url
        self.transport: AsyncTransport = transport or open_async_transport(
            url, token=token, timeout=timeout
        )

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the transport's connections."""
        await self.transport.aclose()

    async def publish(
        self,
        topic: str,
        data: JSON = None,
        *,
        type: str = "message",
        priority: str = "normal",
        users: Iterable[str] | None = None,
        retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """See :meth:`Publisher.publish`."""
        call = _publish_call(topic, data, type, priority, users, retry, idempotency_key)
        return _event_id(await self.transport.handle(call))

    async def create_task(
        self,
        *,
        task_id: str | None = None,
        title: str | None = None,
        total: Number | None = None,
        metadata: Mapping[str, JSON] | None = None,
    ) -> Task:
        """See :meth:`Publisher.create_task`."""
        body = given(
            task_id=task_id,
            title=title,
            total=total,
            metadata=dict(metadata) if metadata is not None else None,
        )
        return _task(await self.transport.handle(Call("create_task", body)))

    async def get_task(self, task_id: str) -> Task:
        """See :meth:`Publisher.get_task`."""
        return _task(await self.transport.handle(Call("get_task", task_id=task_id)))

    async def progress(
        self,
        task_id: str,
        *,
        current: Number | None = None,
        total: Number | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> Task:
        """See :meth:`Publisher.progress`."""
        body = given(current=current, total=total, progress=progress, message=message)
        return _task(await self.transport.handle(Call("progress", body, task_id=task_id)))

    async def file(
        self,
        task_id: str,
        file_id: str,
        *,
        status: str,
        filename: str | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> Task:
        """See :meth:`Publisher.file`."""
        body = given(status=status, filename=filename, progress=progress, message=message)
        call = Call("file", body, task_id=task_id, file_id=file_id)
        return _task(await self.transport.handle(call))

    async def complete(self, task_id: str, *, result: JSON = None) -> Task:
        """See :meth:`Publisher.complete`."""
        return _task(await self.transport.handle(Call("complete", {"result": result}, task_id)))

    async def fail(self, task_id: str, *, error: str, details: JSON = None) -> Task:
        """See :meth:`Publisher.fail`."""
        body: dict[str, JSON] = {"error": error, "details": details}
        return _task(await self.transport.handle(Call("fail", body, task_id)))

    async def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        """See :meth:`Publisher.cancel`."""
        call = Call("cancel", given(reason=reason), task_id)
        return _task(await self.transport.handle(call))

    def track(
        self,
        task_id: str | None = None,
        *,
        total: Number | None = None,
        title: str | None = None,
        metadata: Mapping[str, JSON] | None = None,
        min_interval: float = 0.1,
    ) -> AsyncTracker:
        """See :meth:`Publisher.track`; use ``async with`` and ``async for``."""
        return AsyncTracker(
            self,
            task_id,
            total=total,
            title=title,
            metadata=metadata,
            min_interval=min_interval,
        )
