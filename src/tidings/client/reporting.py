"""What a tracker reports through: the task calls of a publisher, as protocols.

:class:`~tidings.client.tracker.Tracker` takes a :class:`TaskReporter` and
:class:`~tidings.client.tracker.AsyncTracker` an :class:`AsyncTaskReporter`.
:class:`~tidings.client.publisher.Publisher` and
:class:`~tidings.client.publisher.AsyncPublisher` are ones; their ``track()`` makes the
trackers. Naming the calls here, below both modules, keeps the tracker from importing the
publisher that imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from tidings.tasks.record import Number, Task
from tidings.types import JSON

__all__ = ["AsyncTaskReporter", "TaskReporter", "given"]


def given(**fields: Any) -> dict[str, JSON]:
    """The fields that were given (``None`` means "leave as is")."""
    return {name: value for name, value in fields.items() if value is not None}


class TaskReporter(Protocol):
    """Creates a task and reports its progress and its end to a hub, blocking.

    Each call returns the task as the hub holds it afterwards and raises what
    :class:`~tidings.client.publisher.Publisher` raises: :class:`~tidings.errors.TaskFinished`
    once the task is over (cancelled elsewhere, say), other :mod:`tidings.errors` exceptions
    for a refused call or a hub that cannot be reached.
    """

    def create_task(
        self,
        *,
        task_id: str | None = None,
        title: str | None = None,
        total: Number | None = None,
        metadata: Mapping[str, JSON] | None = None,
    ) -> Task:
        """Create a task (``POST /tasks``)."""
        ...

    def progress(
        self,
        task_id: str,
        *,
        current: Number | None = None,
        total: Number | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> Task:
        """Report progress (``POST /tasks/{id}/progress``)."""
        ...

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
        ...

    def complete(self, task_id: str, *, result: JSON = None) -> Task:
        """Complete the task (``POST /tasks/{id}/complete``)."""
        ...

    def fail(self, task_id: str, *, error: str, details: JSON = None) -> Task:
        """Fail the task (``POST /tasks/{id}/fail``)."""
        ...

    def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        """Cancel the task (``POST /tasks/{id}/cancel``)."""
        ...


class AsyncTaskReporter(Protocol):
    """The async twin of :class:`TaskReporter`; the same calls, awaited."""

    async def create_task(
        self,
        *,
        task_id: str | None = None,
        title: str | None = None,
        total: Number | None = None,
        metadata: Mapping[str, JSON] | None = None,
    ) -> Task:
        """See :meth:`TaskReporter.create_task`."""
        ...

    async def progress(
        self,
        task_id: str,
        *,
        current: Number | None = None,
        total: Number | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> Task:
        """See :meth:`TaskReporter.progress`."""
        ...

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
        """See :meth:`TaskReporter.file`."""
        ...

    async def complete(self, task_id: str, *, result: JSON = None) -> Task:
        """See :meth:`TaskReporter.complete`."""
        ...

    async def fail(self, task_id: str, *, error: str, details: JSON = None) -> Task:
        """See :meth:`TaskReporter.fail`."""
        ...

    async def cancel(self, task_id: str, *, reason: str | None = None) -> Task:
        """See :meth:`TaskReporter.cancel`."""
        ...
