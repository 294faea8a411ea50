"""OpenTelemetry traces of a hub: publish, delivery and task changes (the ``otel`` extra).

Decisions worth knowing before changing this file:

- **Off unless asked for, and then free.** :func:`make_tracer` answers ``None`` when
  OpenTelemetry is not installed, or when no tracer provider was set (the API's default
  provider records nothing). The engine asks once, when the hub starts; with ``None`` it
  runs exactly the code it ran before tracing existed: the dispatcher's untraced ``deliver``
  callback is the one the backend gets, and a publish or a request costs one check of
  ``engine.tracer``. So a provider must be set before the hub starts
  (``trace.set_tracer_provider``, ``opentelemetry-instrument``), or given to
  ``Hub(tracer_provider=...)``.
- **Spans per event and per node, never per subscriber.** ``tidings publish`` (a producer
  span) covers a publish: the id, history, the idempotency key, the round trip to Redis.
  ``tidings deliver`` (a consumer span) covers one event's dispatch on one node: the index
  lookup and every write or queueing it makes, whatever the number of subscribers (their
  count is an attribute). A busy hub's batched flush, shared by many events, has no span.
- **The trace travels with the event.** The publish span's context is kept on the event
  (``Draft.trace``/``Event.trace``, a W3C ``traceparent`` string; through Redis, in the
  entry), and each node's ``tidings deliver`` span is its child: one trace from the
  publishing request to every node that delivered it.
- **The caller's context is the parent.** ``hub.publish`` and ``hub.tasks`` in application
  code: the current context. Over HTTP: the request's ``traceparent`` header, unless an
  ASGI instrumentation already made a server span current (then that span, itself a child
  of the header). ``tracestate`` and baggage are not carried.
- **Task changes** (``tidings task.progress``, ``task.complete``, ...) are spans around the
  change; the publish span of the event it makes is their child.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from tidings._version import __version__
from tidings.events import Draft, Event

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "SYSTEM",
    "current_traceparent",
    "deliver_span",
    "make_tracer",
    "note_appended",
    "parent_of",
    "publish_span",
    "request_context",
    "task_span",
    "traceparent_of",
]

#: ``messaging.system`` of every span.
SYSTEM: Final = "tidings"


def make_tracer(provider: Any = None) -> Tracer | None:
    """The tracer a hub traces with, or ``None``: tracing off.

    Args:
        provider: an OpenTelemetry ``TracerProvider``; by default the global one, if one was
            set (the API's own default records nothing, and counts as none).
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if provider is None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return None
    tracer: Tracer = provider.get_tracer("tidings", __version__)
    return tracer


def traceparent_of(span: Span) -> str | None:
    """``span``'s context as a W3C ``traceparent`` value; ``None`` for an invalid one."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parent_of(traceparent: str) -> Context:
    """The context to start a child span of ``traceparent`` in (an invalid value gives an
    empty context: a new trace)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


@contextlib.contextmanager
def request_context(headers: Mapping[str, str]) -> Iterator[None]:
    """Make a request's ``traceparent`` header the current context inside the block, unless
    a span is current already (an ASGI instrumentation's server span)."""
    from opentelemetry import context, trace

    header = headers.get("traceparent")
    if header is None or trace.get_current_span().get_span_context().is_valid:
        yield
        return
    token = context.attach(parent_of(header))
    try:
        yield
    finally:
        context.detach(token)


def current_traceparent() -> str | None:
    """The current span's ``traceparent`` (``None`` when no span is current)."""
    from opentelemetry import trace

    return traceparent_of(trace.get_current_span())


def _attributes(topic: str, type: str) -> dict[str, str]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": topic,
        "tidings.event.type": type,
    }


@contextlib.contextmanager
def publish_span(tracer: Tracer, draft: Draft) -> Iterator[tuple[Span, Draft]]:
    """``tidings publish``, a child of the current context, and ``draft`` carrying it.

    The caller appends the draft it is given, then reports the id with
    :func:`note_appended`. An exception (the backend is down) is recorded on the span.
    """
    from opentelemetry.trace import SpanKind

    attributes = _attributes(draft.topic, draft.type)
    attributes["tidings.priority"] = draft.priority
    with tracer.start_as_current_span(
        "tidings publish", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span, dataclasses.replace(draft, trace=traceparent_of(span))


def note_appended(span: Span, event_id: str, *, duplicate: bool) -> None:
    """What the backend answered a publish: its id, and whether it was a repeated key."""
    span.set_attribute("messaging.message.id", event_id)
    if duplicate:
        span.set_attribute("tidings.duplicate", True)


@contextlib.contextmanager
def deliver_span(tracer: Tracer, event: Event) -> Iterator[Span]:
    """``tidings deliver``: one event's dispatch on this node, a child of its publish span
    (of nothing when it carries none: a publisher that traced nothing)."""
    from opentelemetry.trace import SpanKind

    attributes = _attributes(event.topic, event.type)
    attributes["messaging.message.id"] = event.id
    parent = parent_of(event.trace) if event.trace is not None else None
    with tracer.start_as_current_span(
        "tidings deliver", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def task_span(tracer: Tracer, op: str) -> Iterator[Span]:
    """``tidings task.<op>`` around one change of a task (``create``, ``progress``, ...);
    the caller adds the task's id, status and sequence once it is known."""
    with tracer.start_as_current_span(
        f"tidings task.{op}", attributes={"messaging.system": SYSTEM}
    ) as span:
        yield span
