"""OpenTelemetry traces (issue 20): spans recorded by the SDK's in-memory exporter, from a
hub on a real server (:class:`~tidings.testing.TestHub`), checked by name, kind, parent
and attributes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import wait_for
from tidings import Hub
from tidings.testing import TestHub
from tidings.tracing import make_tracer

TRACE_ID = 0xABABABABABABABABABABABABABABABAB
CALLER_SPAN = 0xCDCDCDCDCDCDCDCD
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN:016x}-01"


class Traced:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def one(self, name: str, **attributes: object) -> ReadableSpan:
        """The one finished span ``name`` with these attributes (waits for it)."""

        def found() -> list[ReadableSpan]:
            return [
                span
                for span in self.spans(name)
                if all(
                    (span.attributes or {}).get(key.replace("__", ".")) == value
                    for key, value in attributes.items()
                )
            ]

        wait_for(lambda: len(found()) >= 1, what=f"a span {name} {attributes}")
        (span,) = found()
        return span


def parent_of(span: ReadableSpan) -> tuple[int, int] | None:
    return (span.parent.trace_id, span.parent.span_id) if span.parent is not None else None


def ids_of(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


@pytest.fixture
def traced() -> Traced:
    return Traced()


@pytest.fixture
def live(traced: Traced) -> Iterator[TestHub]:
    hub = Hub(tracer_provider=traced.provider, store="memory", shutdown_grace=1.0)
    with TestHub(hub=hub) as live:
        yield live


def test_an_http_publish_is_traced_under_its_traceparent_and_delivered_once_per_node(
    live: TestHub, traced: Traced
) -> None:
    streams = [live.stream("chat/general") for _ in range(3)]
    answer = httpx.post(
        live.url + "/publish",
        json={"topic": "chat/general", "type": "chat_message", "data": {"text": "hi"}},
        headers={"traceparent": TRACEPARENT},
    )
    assert answer.status_code == 202
    event_id = answer.json()["id"]
    for stream in streams:
        assert stream.next().id == event_id

    publish = traced.one("tidings publish", messaging__message__id=event_id)
    assert publish.kind is SpanKind.PRODUCER
    assert parent_of(publish) == (TRACE_ID, CALLER_SPAN)
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "tidings"
    assert publish.attributes["messaging.destination.name"] == "chat/general"
    assert publish.attributes["tidings.event.type"] == "chat_message"

    # One delivery span for the event on this node, whatever the number of subscribers:
    # a child of the publish span, whose context the event carried.
    (deliver,) = [
        span
        for span in traced.spans("tidings deliver")
        if (span.attributes or {}).get("messaging.message.id") == event_id
    ]
    assert deliver.kind is SpanKind.CONSUMER
    assert parent_of(deliver) == ids_of(publish)
    assert deliver.attributes is not None
    assert deliver.attributes["tidings.subscribers"] == 3


def test_hub_publish_in_application_code_is_a_child_of_the_current_span(
    live: TestHub, traced: Traced
) -> None:
    app = traced.provider.get_tracer("app")

    async def handle_request() -> tuple[str, tuple[int, int]]:
        with app.start_as_current_span("POST /chat") as span:
            event_id = await live.hub.publish("chat/general", {"text": "hi"})
            context = span.get_span_context()
            return event_id, (context.trace_id, context.span_id)

    event_id, request = live.run(handle_request())
    publish = traced.one("tidings publish", messaging__message__id=event_id)
    assert parent_of(publish) == request
    deliver = traced.one("tidings deliver", messaging__message__id=event_id)
    assert parent_of(deliver) == ids_of(publish)
    assert deliver.attributes is not None
    assert deliver.attributes["tidings.subscribers"] == 0


def test_task_changes_are_spans_with_their_event_published_under_them(
    live: TestHub, traced: Traced
) -> None:
    hub = live.hub
    task = live.run(hub.tasks.create(total=2, title="Convert"))
    answer = httpx.post(
        f"{live.url}/tasks/{task.task_id}/progress",
        json={"current": 1},
        headers={"traceparent": TRACEPARENT},
    )
    assert answer.status_code == 200
    live.run(hub.tasks.complete(task.task_id, result={"ok": True}))

    for op, status, sequence in [
        ("create", "pending", 1),
        ("progress", "running", 2),
        ("complete", "completed", 3),
    ]:
        change = traced.one(
            f"tidings task.{op}",
            tidings__task__id=task.task_id,
            tidings__task__status=status,
            tidings__task__sequence=sequence,
        )
        (publish,) = [
            span for span in traced.spans("tidings publish") if parent_of(span) == ids_of(change)
        ]
        assert publish.attributes is not None
        assert publish.attributes["messaging.destination.name"] == f"tasks/{task.task_id}"
        deliver = traced.one(
            "tidings deliver", messaging__message__id=publish.attributes["messaging.message.id"]
        )
        assert parent_of(deliver) == ids_of(publish)
        if op == "progress":  # over HTTP, under the request's traceparent
            assert parent_of(change) == (TRACE_ID, CALLER_SPAN)


def test_a_trace_crosses_nodes_with_the_event_through_redis(traced: Traced, redis_url: str) -> None:
    def node() -> Hub:
        return Hub(
            backend=redis_url, tracer_provider=traced.provider, store="memory", shutdown_grace=1
        )

    with TestHub(hub=node()) as one, TestHub(hub=node()) as two:
        stream = two.stream("chat/general")
        answer = httpx.post(
            one.url + "/publish",
            json={"topic": "chat/general", "data": {"text": "hi"}},
            headers={"traceparent": TRACEPARENT},
        )
        event_id = answer.json()["id"]
        assert stream.next().id == event_id
        publish = traced.one("tidings publish", messaging__message__id=event_id)
        # Each node that delivers it has its own span, a child of the publish on node one.
        wait_for(
            lambda: (
                len(
                    [
                        span
                        for span in traced.spans("tidings deliver")
                        if (span.attributes or {}).get("messaging.message.id") == event_id
                    ]
                )
                == 2
            ),
            what="a delivery span on each node",
        )
        delivers = [
            span
            for span in traced.spans("tidings deliver")
            if (span.attributes or {}).get("messaging.message.id") == event_id
        ]
        assert [parent_of(span) for span in delivers] == [ids_of(publish)] * 2
        subscribers = [(span.attributes or {}).get("tidings.subscribers") for span in delivers]
        assert sorted(subscribers, key=str) == [0, 1]  # node one has none, node two one


def test_without_a_tracer_provider_nothing_is_traced_and_delivery_is_untouched() -> None:
    """Zero cost when off: no tracer, and the backend delivers through the dispatcher's
    own ``dispatch`` (no wrapper, no span, no check per event)."""
    assert make_tracer() is None  # the API's default provider records nothing
    hub = Hub(store="memory", shutdown_grace=1.0)
    with TestHub(hub=hub) as live:
        assert hub.engine.tracer is None
        backend_deliver = live.run(_deliver_of(hub))
        assert backend_deliver == hub.engine.dispatcher.dispatch
        stream = live.stream("chat/general")
        event_id = live.publish("chat/general", {"text": "hi"})
        event = stream.next()
        assert event.id == event_id


async def _deliver_of(hub: Hub) -> object:
    return hub.backend._deliver  # type: ignore[attr-defined]  # the memory backend's own
