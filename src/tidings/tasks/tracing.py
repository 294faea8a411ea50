"""Spans of task changes (:mod:`tidings.tracing`): :func:`traced` wraps a method of the
task service in ``tidings task.<op>`` when tracing is on, and is one check when it is off.

With the Redis task store a change and its event are written in one script, not published
through the engine (so no ``tidings publish`` span): the event then carries the change's
span (:func:`with_trace`), and each node's ``tidings deliver`` span is its child.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeAlias, TypeVar

from tidings.engine import Engine
from tidings.events import Draft
from tidings.tasks.model import Task
from tidings.tracing import current_traceparent, task_span

__all__ = ["traced", "with_trace"]

P = ParamSpec("P")


class _HasEngine(Protocol):
    _engine: Engine


S = TypeVar("S", bound=_HasEngine)
#: A method of the task service that changes a task and returns it.
Change: TypeAlias = Callable[Concatenate[S, P], Coroutine[Any, Any, Task]]


def traced(op: str) -> Callable[[Change[S, P]], Change[S, P]]:
    """A span ``tidings task.<op>`` around each call, with the task's id, status and
    sequence after it; the publish of the change's event is its child."""

    def wrap(method: Change[S, P]) -> Change[S, P]:
        @functools.wraps(method)
        async def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> Task:
            tracer = self._engine.tracer
            if tracer is None:
                return await method(self, *args, **kwargs)
            with task_span(tracer, op) as span:
                task = await method(self, *args, **kwargs)
                span.set_attributes(
                    {
                        "tidings.task.id": task.task_id,
                        "tidings.task.status": task.status,
                        "tidings.task.sequence": task.sequence,
                    }
                )
                return task

        return call

    return wrap


def with_trace(engine: Engine, draft: Draft) -> Draft:
    """``draft`` carrying the current span's context when tracing is on (the engine's
    publish span replaces it when the event goes through the engine)."""
    if engine.tracer is None:
        return draft
    return dataclasses.replace(draft, trace=current_traceparent())
