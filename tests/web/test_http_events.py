"""GET /events and POST /publish against a real server process over real sockets."""

from __future__ import annotations

import asyncio
import re
import signal
import socket

import httpx
import orjson
import pytest

from tests.conftest import ServerFactory, ServerProcess, get_stats, open_sse, until
from tidings.wire import EventParser


async def publish(client: httpx.AsyncClient, topic: str, data: object, **fields: object) -> str:
    response = await client.post("/publish", json={"topic": topic, "data": data, **fields})
    assert response.status_code == 202, response.text
    event_id = response.json()["id"]
    assert isinstance(event_id, str)
    return event_id


def params(*topics: str, **extra: str) -> httpx.QueryParams:
    pairs: list[tuple[str, str | int | float | bool | None]] = [("topic", t) for t in topics]
    return httpx.QueryParams(pairs + list(extra.items()))


async def test_stream_headers_and_opening_bytes(http: httpx.AsyncClient) -> None:
    async with http.stream("GET", "/events", params=params("chat/general")) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-length" not in response.headers
        first = await anext(response.aiter_raw())
        assert first.startswith(b"retry: 3000\n: ")
        parser = EventParser()
        assert parser.feed(first) == []
        assert parser.retry == 3000


async def test_resumed_stream_still_opens_with_retry_then_replays(
    http: httpx.AsyncClient, uid: str
) -> None:
    first = await publish(http, uid, 1)
    second = await publish(http, uid, 2)
    headers = {"Last-Event-ID": first}
    async with http.stream("GET", "/events", params=params(uid), headers=headers) as response:
        parser = EventParser()
        received = b""
        events = []
        async for chunk in response.aiter_raw():
            received += chunk
            events += parser.feed(chunk)
            if events:
                break
    assert received.startswith(b"retry: 3000\n: ")
    assert [e.id for e in events] == [second]


async def test_multiline_and_unicode_payloads_arrive_intact(http: httpx.AsyncClient) -> None:
    payloads: list[object] = [
        "line one\nline two\r\nline three\rend",
        {"text": "héllo 🌍 — ünïcödé", "nested": ["\n", "\r", "\u2028", "\x00"]},
        "",
        None,
        12.5,
    ]
    async with open_sse(http, params=params("chat/general")) as stream:
        ids = [await publish(http, "chat/general", p, type="chat_message") for p in payloads]
        events = await stream.take(len(payloads))
    assert [e.id for e in events] == ids
    assert [e.event for e in events] == ["chat_message"] * len(payloads)
    assert [orjson.loads(e.data) for e in events] == payloads


async def test_message_type_omits_event_line(http: httpx.AsyncClient) -> None:
    async with http.stream("GET", "/events", params=params("a")) as response:
        chunks = response.aiter_raw()
        await anext(chunks)
        event_id = await publish(http, "a", {"x": 1}, retry=5000)
        frame = await anext(chunks)
    # No event: line; exactly the fields of SPEC §1.
    assert frame == b"id: " + event_id.encode() + b'\nretry: 5000\ndata: {"x":1}\n\n'


async def test_resume_replays_each_missed_event_once_across_topics(
    http: httpx.AsyncClient, uid: str
) -> None:
    a, b, c = (f"{uid}/a", f"{uid}/b", f"{uid}/c")
    async with open_sse(http, params=params(a, b)) as stream:
        await publish(http, a, 1)
        await publish(http, b, 2)
        seen = await stream.take(2)
    last = seen[-1].id
    missed = [
        await publish(http, a, 3),
        await publish(http, c, "not subscribed"),
        await publish(http, b, 4),
        await publish(http, a, 5),
    ]
    expected = [missed[0], missed[2], missed[3]]
    async with open_sse(http, params=params(a, b), headers={"Last-Event-ID": last}) as stream:
        replayed = await stream.take(3)
        live_id = await publish(http, b, 6)
        live = await stream.next()
    assert [e.id for e in replayed] == expected
    assert [orjson.loads(e.data) for e in replayed] == [3, 4, 5]
    assert live.id == live_id
    assert not stream.pending


async def test_resume_from_query_parameter_after_reload(http: httpx.AsyncClient, uid: str) -> None:
    first = await publish(http, uid, "a")
    second = await publish(http, uid, "b")
    async with open_sse(http, params=params(uid, last_event_id=first)) as stream:
        event = await stream.next()
    assert event.id == second


async def test_wildcard_subscription_resumes_exactly(http: httpx.AsyncClient, uid: str) -> None:
    start = await publish(http, f"{uid}/7/inbox", 0)
    ids = [await publish(http, f"{uid}/7/{box}", i) for i, box in enumerate(["inbox", "alerts"])]
    await publish(http, f"{uid}/8/inbox", "other user")
    async with open_sse(
        http, params=params(f"{uid}/7/**"), headers={"Last-Event-ID": start}
    ) as stream:
        events = await stream.take(2)
    assert [e.id for e in events] == ids


async def test_old_id_yields_gap_then_live(server_factory: ServerFactory) -> None:
    server = await server_factory.start("--history-size", "2")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        old = await publish(http, "t", 1)
        for i in range(3):
            newest = await publish(http, "t", i)
        async with open_sse(http, params=params("t"), headers={"Last-Event-ID": old}) as stream:
            gap = await stream.next()
            live_id = await publish(http, "t", "live")
            live = await stream.next()
    assert gap.event == "gap"
    assert orjson.loads(gap.data) == {"last_event_id": old, "reason": "expired"}
    assert gap.id == newest
    assert live.id == live_id


@pytest.mark.parametrize("bad_id", ["nonsense", "abc-12", "deadbeef-99999999"])
async def test_unknown_id_yields_gap_unknown(
    http: httpx.AsyncClient, bad_id: str, uid: str
) -> None:
    newest = await publish(http, uid, 1)
    async with open_sse(http, params=params(uid), headers={"Last-Event-ID": bad_id}) as stream:
        gap = await stream.next()
    assert gap.event == "gap"
    assert orjson.loads(gap.data) == {"last_event_id": bad_id, "reason": "unknown"}
    assert gap.id == newest


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ([], {}, "missing_topic"),
        ([("topic", "bad topic")], {}, "invalid_topic"),
        ([("topic", "a/**/b")], {}, "invalid_topic"),
        ([("topic", f"t{i}") for i in range(33)], {}, "too_many_topics"),
        ([("topic", "a")], {"Last-Event-ID": "x" * 257}, "invalid_last_event_id"),
    ],
)
async def test_bad_subscriptions_get_400(
    http: httpx.AsyncClient, query: list[tuple[str, str]], headers: dict[str, str], code: str
) -> None:
    response = await http.get("/events", params=httpx.QueryParams(tuple(query)), headers=headers)
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": code, "message": response.json()["error"]["message"]}
    }


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[1, 2]", 400, "malformed_json"),
        (b'"a string"', 400, "malformed_json"),
        (b'{"topic": "a", "type": "x\\ny"}', 422, "invalid_event"),
        (b'{"topic": "a", "type": "x\\ry"}', 422, "invalid_event"),
        (b'{"topic": "a", "type": "x\\u0000y"}', 422, "invalid_event"),
        (b'{"topic": "a", "colour": "red"}', 422, "invalid_request"),
        (b'{"data": 1}', 422, "invalid_request"),
        (b'{"topic": "a b"}', 422, "invalid_topic"),
        (b'{"topic": "a", "priority": "urgent"}', 422, "invalid_request"),
        (b'{"topic": "a", "retry": -1}', 422, "invalid_request"),
        (b'{"topic": "tasks/abc", "data": 1}', 403, "reserved_topic"),
    ],
)
async def test_bad_publishes_are_refused(
    http: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await http.post(
        "/publish", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text


async def test_publish_fields_of_the_wrong_json_type_are_refused_not_coerced(
    http: httpx.AsyncClient,
) -> None:
    """Audit item 3: ``"retry": true`` (or ``"5"``, ``5.0``...) was accepted and sent as
    ``retry: 1``. Every publish field is strictly typed (SPEC §3: 422 for invalid fields)."""
    wrong: list[dict[str, object]] = [
        {"retry": True},
        {"retry": False},
        {"retry": "5"},
        {"retry": " 7 "},
        {"retry": 5.0},
        {"priority": 1},
        {"users": "bob"},
        {"users": [1]},
        {"idempotency_key": 5},
        {"type": 5},
        {"topic": 5},
    ]
    async with open_sse(http, params=params("strict")) as stream:
        for field in wrong:
            refused = await http.post("/publish", json={"topic": "strict", "data": 1, **field})
            assert refused.status_code == 422, (field, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "invalid_request", field
            assert error["message"].startswith(next(iter(field))), field
        marker = await publish(http, "strict", "marker", retry=5)
        event = await stream.next()
    assert (event.id, event.retry) == (marker, 5)  # nothing refused was published


def nested(depth: int, kind: str) -> bytes:
    """JSON of an array (or object) ``depth`` levels deep: ``[[]]`` is 2."""
    if kind == "arrays":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


async def test_data_nested_too_deep_gets_the_same_422_at_every_depth(
    http: httpx.AsyncClient,
) -> None:
    """Audit item 6: 255 to 1023 levels got ``422 invalid_event`` with orjson's message,
    and 1024 and more ``400 malformed_json``."""
    for kind in ("arrays", "objects"):
        for depth in (129, 254, 255, 1000, 1023, 1024, 1100, 5000):
            body = b'{"topic": "t", "data": ' + nested(depth, kind) + b"}"
            response = await http.post(
                "/publish", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, (kind, depth, response.text)
            assert response.json() == {
                "error": {"code": "invalid_request", "message": "data nests deeper than 128 levels"}
            }, (kind, depth)


async def test_data_nested_to_the_limit_is_published_intact(http: httpx.AsyncClient) -> None:
    async with open_sse(http, params=params("deep")) as stream:
        for kind in ("arrays", "objects"):
            body = b'{"topic": "deep", "data": ' + nested(128, kind) + b"}"
            sent = await http.post("/publish", content=body)
            assert sent.status_code == 202, sent.text
            event = await stream.next()
            assert (event.id, event.data.encode()) == (sent.json()["id"], nested(128, kind))


async def test_oversized_data_gets_413_and_publishes_nothing(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start("--max-event-bytes", "1000")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        ok = await publish(http, "t", "x" * 900)
        response = await http.post("/publish", json={"topic": "t", "data": "x" * 1000})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        huge = await http.post(
            "/publish", content=b'{"topic": "t", "data": "' + b"y" * 2_000_000 + b'"}'
        )
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "body_too_large"
        after = await publish(http, "t", "after")
        async with open_sse(http, params=params("t"), headers={"Last-Event-ID": ok}) as stream:
            event = await stream.next()
    assert event.id == after


async def test_idempotency_key_publishes_once(http: httpx.AsyncClient, uid: str) -> None:
    async with open_sse(http, params=params(uid)) as stream:
        first = await publish(http, uid, {"n": 1}, idempotency_key=f"order-{uid}")
        again = await publish(http, uid, {"n": 1}, idempotency_key=f"order-{uid}")
        marker = await publish(http, uid, "marker")
        events = await stream.take(2)
    assert again == first
    assert [e.id for e in events] == [first, marker]


async def test_user_targeted_events_reach_no_anonymous_connection(
    http: httpx.AsyncClient,
) -> None:
    async with open_sse(http, params=params("news")) as stream:
        await publish(http, "news", "private", users=["alice"])
        public = await publish(http, "news", "public")
        event = await stream.next()
    assert event.id == public


async def test_keepalive_comment_after_silence(http: httpx.AsyncClient) -> None:
    async with http.stream("GET", "/events", params=params("quiet")) as response:
        chunks = response.aiter_raw()
        await anext(chunks)
        ping = await asyncio.wait_for(anext(chunks), 10)
    assert ping == b": ping\n\n"


async def test_stats_metrics_health_and_openapi(own_http: httpx.AsyncClient) -> None:
    http = own_http  # the counters are checked from zero
    async with open_sse(http, params=params("chat/general", "users/1/**")) as stream:
        await publish(http, "chat/general", "hi")
        await stream.next()
        stats = (await http.get("/stats")).json()
        metrics = await http.get("/metrics")
    assert stats["connections"]["total"] == 1
    assert stats["connections"]["by_topic"] == {"chat/general": 1, "users/1/**": 1}
    assert stats["connections"]["by_user"] == {"anonymous": 1}
    assert stats["connections"]["by_task"] == {}
    assert stats["events"]["published"] == 1
    assert stats["events"]["delivered"] == 1
    assert set(stats["events"]) == {
        "published",
        "delivered",
        "conflated",
        "dropped",
        "slow_disconnects",
    }
    assert stats["tasks"] == {"active": 0}
    assert stats["uptime_seconds"] >= 0
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "tidings_connections 1.0" in metrics.text
    assert "tidings_events_published_total 1.0" in metrics.text
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).json() == {"status": "ready"}
    openapi = (await http.get("/openapi.json")).json()
    assert {"/events", "/publish", "/stats", "/healthz", "/readyz"} <= set(openapi["paths"])
    missing = await http.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_client_that_stops_reading_is_cut_and_others_keep_receiving(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start(
        "--queue-size", "50", "--queue-bytes", "65536", "--history-size", "10"
    )
    assert server.proc is not None
    # A raw socket that subscribes, then never reads: the kernel buffers fill, then the
    # transport's, then its queue.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", server.port))
    stuck.sendall(b"GET /events?topic=firehose HTTP/1.1\r\nHost: x\r\n\r\n")

    async def stuck_is_open() -> bool:
        return bool((await get_stats(server.url))["connections"]["total"] == 1)

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await until(stuck_is_open, what="the stuck stream to open")
        before = _rss_kib(server.proc.pid)
        payload = "x" * 8000
        async with open_sse(http, params=params("firehose")) as healthy:
            sent = 0
            stats = (await http.get("/stats")).json()
            # Until the stuck client is cut (bounded: 40 MB at most).
            while stats["events"]["slow_disconnects"] == 0 and sent < 5000:
                await publish(http, "firehose", {"i": sent, "pad": payload})
                event = await healthy.next()
                assert orjson.loads(event.data)["i"] == sent
                sent += 1
                if sent % 50 == 0:
                    stats = (await http.get("/stats")).json()
            after = _rss_kib(server.proc.pid)
            stats = (await http.get("/stats")).json()
    stuck.close()
    assert stats["events"]["slow_disconnects"] == 1
    assert stats["events"]["dropped"] > 0
    assert stats["connections"]["total"] == 1
    # Megabytes went by; the stuck client held at most its 64 KiB queue plus the
    # transport's buffer, so the server did not grow with what was sent.
    assert after - before < 4 * 1024, (sent, after - before)


async def test_sigterm_ends_streams_cleanly_and_exits_zero(own_server: ServerProcess) -> None:
    server = own_server
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        open_sse(http, params=params("t")) as stream,
    ):
        event_id = await publish(http, "t", "before shutdown")
        assert (await stream.next()).id == event_id
        server.signal(signal.SIGTERM)
        rest = await stream.until_end(timeout=15)
    assert rest == []
    assert await server.await_exit(15) == 0
    assert "Traceback" not in server.log()


async def test_sigterm_exits_within_grace_even_with_a_stuck_client(
    server_factory: ServerFactory,
) -> None:
    server = await server_factory.start("--shutdown-grace", "2", "--queue-bytes", "1048576")
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\n\r\n")

    async def stuck_is_open() -> bool:
        return bool((await get_stats(server.url))["connections"]["total"] == 1)

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        await until(stuck_is_open, what="the stuck stream to open")
        for i in range(40):
            await publish(http, "t", {"i": i, "pad": "x" * 8000})
    server.signal(signal.SIGTERM)
    assert await server.await_exit(15) == 0
    stuck.close()


async def test_a_stream_gets_the_publish_time_only_when_it_asks(
    http: httpx.AsyncClient, uid: str
) -> None:
    """Frames keep exactly the fields of SPEC §1; ``time=1`` adds the publish time (issue
    20), and replays carry it too. Any other value of the option is refused."""
    first = await publish(http, uid, 1)
    frames: dict[str, bytes] = {}
    for option in ("0", "1"):
        query = params(uid, time=option)
        headers = {"Last-Event-ID": f"{first.rsplit('-', 1)[0]}-0"}
        async with http.stream("GET", "/events", params=query, headers=headers) as response:
            received = b""
            async for chunk in response.aiter_raw():
                received += chunk
                if b"data: 1\n\n" in received:
                    break
        frames[option] = received.split(b"\n\n", 2)[1] + b"\n\n"  # after the opening bytes
    assert frames["0"] == f"id: {first}\ndata: 1\n\n".encode()
    assert re.fullmatch(rf"id: {first}\ntime: [0-9]{{13}}\ndata: 1\n\n".encode(), frames["1"])
    refused = await http.get("/events", params=params(uid, time="yes"))
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "invalid_time"
