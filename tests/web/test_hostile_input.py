"""Hostile input (issue #4, point 9): fuzzing, injection, huge and malformed requests.

The SSE encoder and parser already have property tests in ``tests/test_wire.py``; here
hypothesis covers what they do not: topic and pattern validation on arbitrary text, the
HTTP path's event frames (``events.encode_frame``) under any publishable input, and the
soundness of subscribe authorization. schemathesis then drives the running server from its
own ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ServerProcess
from tests.web._security import expect_error, open_stream, running_server, stream_status, topics
from tidings.auth.principal import Principal
from tidings.errors import InvalidEvent, InvalidTopic
from tidings.events import Event, EventId, make_draft
from tidings.topics import MAX_TOPIC_BYTES, pattern_matches, validate_pattern, validate_topic
from tidings.wire import EventParser

SEGMENT_CHARS = "abcAZ09_.:@-"
segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=6)
valid_topics = st.lists(segments, min_size=1, max_size=5).map("/".join)
pattern_segments = segments | st.just("*")


@st.composite
def valid_patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(pattern_segments, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("**")
    return "/".join(parts)


# -- topic validation ---------------------------------------------------------------------


@given(text=st.text(max_size=300))
def test_validate_topic_accepts_only_clean_text_and_raises_only_invalid_topic(text: str) -> None:
    try:
        assert validate_topic(text) == text
    except InvalidTopic:
        return
    assert len(text.encode()) <= MAX_TOPIC_BYTES
    assert text.isascii()
    assert not set(text) & set("\r\n\x00 *?#%&=+\"'<>\\")
    assert "" not in text.split("/")


@given(text=st.text(max_size=300))
def test_validate_pattern_raises_only_invalid_topic(text: str) -> None:
    try:
        assert validate_pattern(text) == text
    except InvalidTopic:
        return
    assert not set(text) & set("\r\n\x00 ")
    assert "**" not in text.split("/")[:-1]


@given(topic=valid_topics)
def test_every_valid_topic_is_a_valid_pattern_that_matches_itself(topic: str) -> None:
    assert validate_topic(topic) == topic
    assert validate_pattern(topic) == topic
    assert pattern_matches(topic, topic)


# -- authorization is sound -----------------------------------------------------------------


@settings(max_examples=300)
@given(grants=st.lists(valid_patterns(), max_size=3), pattern=valid_patterns(), topic=valid_topics)
def test_a_granted_pattern_never_reaches_a_topic_outside_the_grants(
    grants: list[str], pattern: str, topic: str
) -> None:
    """If ``may_subscribe(pattern)``, every topic the pattern matches is matched by a grant."""
    principal = Principal(user="alice", subscribe=tuple(grants))
    if principal.may_subscribe(pattern) and pattern_matches(pattern, topic):
        assert any(pattern_matches(g, topic) for g in [*grants, "users/alice/**"])


@given(user=st.text(max_size=20), topic=valid_topics)
def test_a_user_id_never_opens_another_users_private_topics(user: str, topic: str) -> None:
    principal = Principal(user=user)
    for pattern in ("users/*/**", "users/**", "**", f"users/{topic}/**"):
        try:
            validate_pattern(pattern)
        except InvalidTopic:
            continue
        if principal.may_subscribe(pattern):
            assert pattern == f"users/{user}/**" or pattern.startswith(f"users/{user}/")


# -- frames of published events ---------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    topic=valid_topics,
    type_=st.text(max_size=40),
    data=json_values,
    retry=st.none() | st.integers(0, 10**6),
)
def test_any_publish_is_one_event_on_the_wire_or_invalid(
    topic: str, type_: str, data: Any, retry: int | None
) -> None:
    """Whatever a publisher sends, a subscriber parses exactly the event that was published."""
    try:
        draft = make_draft(topic, data, type=type_, retry=retry)
    except InvalidEvent:
        assert not type_ or set(type_) & {"\r", "\n", "\x00"} or not _encodable(type_)
        return
    event = Event.from_draft(draft, EventId("abcd1234", 7))
    parser = EventParser()
    parsed = parser.feed(event.frame)
    assert len(parsed) == 1
    (received,) = parsed
    assert received.id == "abcd1234-7"
    assert received.event == type_
    assert orjson.loads(received.data) == orjson.loads(orjson.dumps(data))
    assert parser.retry == retry


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- a running server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_server() -> Iterator[ServerProcess]:
    """A hub with auth off and rate limits off, so fuzzing reaches every code path."""
    with running_server(
        "--connect-rate-limit",
        "0",
        "--publish-rate-limit",
        "0",
        "--max-body-bytes",
        "65536",
        "--keepalive",
        "1",
    ) as server:
        yield server


#: What every generated request's answer is checked for.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# Several hundred generated requests, CPU-bound: about 20 s, several times that on a machine
# whose cores are all busy. pytest-timeout's 120 s, raised inside hypothesis, surfaced as
# "inconsistent data generation" there.
@pytest.mark.timeout(600)
def test_api_answers_every_generated_request_without_5xx_and_per_its_schema(
    hub_server: ServerProcess,
) -> None:
    """schemathesis, valid and invalid requests, every JSON operation of ``/openapi.json``.

    Streams are left out: they never end by themselves, so a request/response fuzzer would
    wait forever; this file and ``tests/web/test_http_events.py`` cover them over sockets.
    (The loop replaces ``schemathesis.pytest.from_fixture``, which does not run under
    pytest 9.)
    """
    schema = schemathesis.openapi.from_url(hub_server.url + "/openapi.json").exclude(
        path_regex=r"/events$|/stream$"
    )
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"the schema is invalid: {result.err()}")
            continue
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=30,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                case.call_and_validate(checks=CHECKS, timeout=10)

            try:
                check()
            except Unsatisfiable:
                # No invalid request exists (an operation without parameters or body).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collected, then reported together below
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    assert operations >= 5
    assert not failures, "\n\n".join(failures)


# -- huge and deeply nested JSON ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            b'{"topic": "t", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            413,
            "body_too_large",
        ),
        (b'{"topic": "t", "data": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 422, "invalid_request"),
        (b"[" * 30_000 + b"]" * 30_000, 400, "malformed_json"),
        (
            b'{"topic": "t", "data": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
            422,
            "invalid_request",
        ),
        (b'{"topic": "t", "data": ' + b"[" * 300 + b"]" * 300 + b"}", 422, "invalid_request"),
        (b'{"topic": "t", "data": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
        (b'{"topic": "t", "data": 1e999999}', 400, "malformed_json"),
        (b'{"topic": "t", "data": "\\ud800"}', 400, "malformed_json"),
        (b'{"topic": "t", "data": "\xff\xfe"}', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"null", 400, "malformed_json"),
        (b'{"topic": "t", "topic": "u"}', 202, ""),
    ],
    ids=[
        "deep-and-huge",
        "deep-arrays",
        "deep-top-level",
        "deep-objects",
        "nested-300",
        "huge-string",
        "huge-number",
        "lone-surrogate",
        "invalid-utf8",
        "empty",
        "null",
        "duplicate-keys",
    ],
)
async def test_hostile_json_bodies_get_4xx_never_5xx(
    hub_server: ServerProcess, body: bytes, status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=hub_server.url, timeout=20) as http:
        response = await http.post(
            "/publish", content=body, headers={"content-type": "application/json"}
        )
    if status == 202:
        assert response.status_code == 202
    else:
        expect_error(response, status, code)


async def test_wide_json_within_the_limit_is_handled(hub_server: ServerProcess) -> None:
    wide = {f"k{i}": i for i in range(5000)}
    async with httpx.AsyncClient(base_url=hub_server.url, timeout=20) as http:
        response = await http.post("/publish", json={"topic": "t", "data": wide})
    assert response.status_code in (202, 413)


# -- injection -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        {"type": "note\nevent: admin"},
        {"type": "note\r\ndata: forged"},
        {"type": "x\rid: 999"},
        {"type": "nul\x00"},
        {"topic": "t\nevent: forged"},
        {"topic": "t\r\n\r\nHTTP/1.1 200 OK"},
    ],
)
async def test_newlines_cannot_forge_events_or_responses(
    hub_server: ServerProcess, field: dict[str, str]
) -> None:
    async with (
        httpx.AsyncClient(base_url=hub_server.url, timeout=10) as http,
        open_stream(http, topics("t")) as stream,
    ):
        refused = await http.post("/publish", json={"topic": "t", "data": 1, **field})
        marker = await http.post("/publish", json={"topic": "t", "data": "marker"})
        received = await stream.next()
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] in ("invalid_event", "invalid_topic")
    assert received.id == marker.json()["id"]
    assert received.event == "message"


async def test_data_with_newlines_stays_one_data_line(hub_server: ServerProcess) -> None:
    payload = "a\nevent: forged\nid: 1\r\n\r\ndata: x\u2028\u0085"
    async with (
        httpx.AsyncClient(base_url=hub_server.url, timeout=10) as http,
        http.stream("GET", "/events", params=topics("t/inj")) as response,
    ):
        chunks = response.aiter_raw()
        await anext(chunks)
        sent = await http.post("/publish", json={"topic": "t/inj", "data": payload, "type": "note"})
        frame = await anext(chunks)
    event_id = sent.json()["id"]
    assert frame.count(b"\n") == 4  # id, event, data, blank line
    assert frame.startswith(f"id: {event_id}\nevent: note\ndata: ".encode())
    assert orjson.loads(frame.split(b"data: ", 1)[1]) == payload


def _raw_request(server: ServerProcess, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\nX-Injected: yes\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n",
        b"GET /healthz\r\nX: y HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /events?topic=a%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /events?topic=a&last_event_id=%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["bare-lf", "nul", "obs-fold", "space-in-target", "crlf-in-topic", "crlf-in-id", "cl-te"],
)
def test_malformed_request_heads_never_inject_response_headers(
    hub_server: ServerProcess, head: bytes
) -> None:
    raw = _raw_request(hub_server, head)
    if raw:
        status_line, _, rest = raw.partition(b"\r\n")
        assert not status_line.startswith(b"HTTP/1.1 5"), raw[:200]
        headers = rest.split(b"\r\n\r\n", 1)[0].lower()
        assert b"set-cookie" not in headers
        assert b"x-injected" not in headers
    assert httpx.get(hub_server.url + "/healthz", timeout=10).status_code == 200


# -- malformed Last-Event-ID ------------------------------------------------------------------


@pytest.mark.parametrize(
    "last_id",
    [
        "-",
        "abc-",
        "-5",
        "abcd-99999999999999999999999",
        "abcd-\uff11\uff12",  # full-width digits: isdigit() but not ASCII
        "abcd-\u0663",
        "a" * 256,
        "x\u2028y",
        "event: forged",
        "'; DROP TABLE events; --",
        "../../etc/passwd",
    ],
)
async def test_malformed_last_event_id_gets_a_gap_never_an_error(
    hub_server: ServerProcess, last_id: str
) -> None:
    async with httpx.AsyncClient(base_url=hub_server.url, timeout=10) as http:
        newest = (await http.post("/publish", json={"topic": "lei", "data": 0})).json()["id"]
        params = topics("lei", last_event_id=last_id)
        async with open_stream(http, params) as stream:
            gap = await stream.next()
            live = await http.post("/publish", json={"topic": "lei", "data": 1})
            after = await stream.next()
    assert gap.event == "gap"
    assert orjson.loads(gap.data) == {"last_event_id": last_id, "reason": "unknown"}
    assert gap.id >= newest
    assert after.id == live.json()["id"]


async def test_last_event_id_header_with_raw_bytes_is_handled(hub_server: ServerProcess) -> None:
    def read_gap() -> bytes:
        with socket.create_connection(("127.0.0.1", hub_server.port), timeout=10) as sock:
            sock.sendall(
                b"GET /events?topic=lei/raw HTTP/1.1\r\nHost: x\r\n"
                b"Last-Event-ID: \xff\xfe-1\r\n\r\n"
            )
            data = b""
            while b'"reason":"unknown"' not in data:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
        return data

    data = await asyncio.to_thread(read_gap)  # a blocking socket, off the event loop
    assert data.startswith(b"HTTP/1.1 200")
    body = data.split(b"\r\n\r\n", 1)[1]
    # Chunked framing aside, the gap's data names the id as the server decoded it.
    assert b'"reason":"unknown"' in body
    async with httpx.AsyncClient(base_url=hub_server.url, timeout=10) as http:
        too_long = await stream_status(http, topics("lei/raw"), {"Last-Event-ID": "9" * 257})
    expect_error(too_long, 400, "invalid_last_event_id")
