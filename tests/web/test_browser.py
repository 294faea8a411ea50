"""tidings.js in a real Chromium, against a real ``tidings serve``.

Each test opens a page of the hub's origin (``/healthz``), imports ``/static/tidings.js``
into it as any page would, and drives it from Python: tasks and events come from the
Python publisher, and every wait is on a condition in the page (``wait_for_function``).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import ServerFactory, ServerProcess, get_stats, until
from tidings.auth.jwt import mint_token
from tidings.client import AsyncPublisher

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

SECRET = "browser-tests-secret-0123456789abcdef"

# Helpers installed in every test page: `watch(id, options)` opens a progress stream whose
# callbacks append to `logs[id]` as [kind, sequence, detail...].
HELPERS = """async (src) => {
  window.tidings = await import(src);
  window.logs = {};
  window.streams = {};
  window.watch = (id, options = {}) => {
    const log = (window.logs[id] ??= []);
    const stream = tidings.createProgressStream(id, {
      onProgress: (p) => log.push(["progress", p.sequence, p.progress]),
      onFileUpdate: (f) => log.push(["file", f.sequence, f.file_id, f.status]),
      onComplete: (d) => log.push(["completed", d.sequence, d.result]),
      onError: (e) => log.push(["error", e.code]),
    }, options);
    window.streams[id] = stream;
    return stream;
  };
}"""


pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def hub(server: ServerProcess) -> ServerProcess:
    """The shared hub, for the tests that need no flags of their own (each uses its own
    ids)."""
    return server


@pytest.fixture(scope="module")
def jwt_hub() -> Iterator[ServerProcess]:
    """One hub with JWT authentication that also reads a token from the query."""
    proc = ServerProcess(("--jwt-secret", SECRET, "--allow-query-token"))
    try:
        yield proc.start()
    finally:
        proc.close()


async def client_page(context: BrowserContext, url: str) -> Page:
    """A page of the hub's origin with tidings.js imported and the test helpers set."""
    page = await context.new_page()
    await install(page, url)
    return page


async def install(page: Page, url: str) -> None:
    await page.goto(url + "/healthz")
    await page.evaluate(HELPERS, url + "/static/tidings.js")


async def log_of(page: Page, task_id: str) -> list[list[Any]]:
    result: list[list[Any]] = await page.evaluate("id => window.logs[id] || []", task_id)
    return result


async def wait_log(page: Page, task_id: str, count: int) -> list[list[Any]]:
    """The log of ``task_id`` once it holds at least ``count`` entries."""
    await page.wait_for_function(
        "([id, n]) => (window.logs[id] || []).length >= n", arg=[task_id, count]
    )
    return await log_of(page, task_id)


async def stream_stats(page: Page, task_id: str) -> dict[str, int]:
    stats: dict[str, int] = await page.evaluate("id => window.streams[id].stats()", task_id)
    return stats


async def streams_of_task(url: str, task_id: str) -> int:
    return int((await get_stats(url))["connections"]["by_task"].get(task_id, 0))


async def streams_of_topic(url: str, topic: str) -> int:
    return int((await get_stats(url))["connections"]["by_topic"].get(topic, 0))


async def until_count(
    counter: Callable[[], Awaitable[int]], expected: int, timeout: float = 10.0, what: str = ""
) -> None:
    """Wait until ``counter()`` (a count the hub reports) is ``expected``."""

    async def reached() -> bool:
        return await counter() == expected

    await until(reached, timeout, f"{what} ({expected})")


def sequences(log: list[list[Any]]) -> list[int]:
    return [entry[1] for entry in log if entry[0] != "error"]


async def test_progress_stream_gets_state_then_each_change_then_closes_itself(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    async with AsyncPublisher(hub.url) as pub:
        task_id = (await pub.create_task(title="Resize", total=2)).task_id  # sequence 1
        await pub.file(task_id, "a.png", status="processing")  # 2
        await pub.progress(task_id, current=1)  # 3
        page = await client_page(browser_context, hub.url)
        await page.evaluate("id => watch(id)", task_id)
        # A late joiner first gets the state: the progress, then each file.
        assert await wait_log(page, task_id, 2) == [
            ["progress", 3, 50],
            ["file", 3, "a.png", "processing"],
        ]
        await pub.file(task_id, "a.png", status="completed")  # 4
        await pub.progress(task_id, current=2)  # 5
        await pub.complete(task_id, result={"resized": 2})  # 6
        log = await wait_log(page, task_id, 5)
    assert log[2:] == [
        ["file", 4, "a.png", "completed"],
        ["progress", 5, 100],
        ["completed", 6, {"resized": 2}],
    ]
    assert await page.evaluate("id => streams[id].readyState()", task_id) == 2  # CLOSED
    await until_count(
        lambda: streams_of_task(hub.url, task_id), 0, what="the stream to be released"
    )


async def test_a_second_call_for_a_task_shares_its_stream_and_closes_on_its_own(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    """Issue 20: a second ``createProgressStream`` for a task in the same page shares the
    first one's hub stream, with handlers and a ``close()`` of its own: closing one leaves
    the other open, and the stream ends with the last."""
    async with AsyncPublisher(hub.url) as pub:
        task_id = (await pub.create_task(total=4)).task_id
        page = await client_page(browser_context, hub.url)
        await page.evaluate("id => watch(id)", task_id)
        await wait_log(page, task_id, 1)
        same = await page.evaluate(
            """id => {
              window.second = [];
              window.secondStates = [];
              window.again = tidings.createProgressStream(id, {
                onProgress: (p) => second.push(p.sequence),
                onStateChange: (state) => secondStates.push(state),
              });
              return again === streams[id];
            }""",
            task_id,
        )
        assert not same
        # The handlers of the second call get the current state at once.
        await page.wait_for_function("() => second.length === 1")
        await pub.progress(task_id, current=1)
        await page.wait_for_function("() => second.length === 2")
        assert await page.evaluate("() => second") == [1, 2]
        assert sequences(await log_of(page, task_id)) == [1, 2]
        assert await streams_of_task(hub.url, task_id) == 1

        # The first caller closes: the second still hears every change, on the same stream.
        await page.evaluate("id => streams[id].close()", task_id)
        assert await page.evaluate("id => streams[id].readyState()", task_id) == 2  # CLOSED
        assert await page.evaluate("() => again.readyState()") == 1  # OPEN
        await pub.progress(task_id, current=2)
        await page.wait_for_function("() => second.length === 3")
        assert await page.evaluate("() => second") == [1, 2, 3]
        assert sequences(await log_of(page, task_id)) == [1, 2]
        assert await streams_of_task(hub.url, task_id) == 1

        # A third call joins the stream the second holds; the same handlers twice are two
        # callers.
        await page.evaluate(
            """id => {
              window.third = [];
              const handlers = {onProgress: (p) => third.push(p.sequence)};
              window.thirdA = tidings.createProgressStream(id, handlers);
              window.thirdB = tidings.createProgressStream(id, handlers);
            }""",
            task_id,
        )
        await page.wait_for_function("() => third.length === 2")
        await page.evaluate("() => thirdA.close()")
        await pub.progress(task_id, current=3)
        await page.wait_for_function("() => second.length === 4")
        await page.wait_for_function("() => third.length === 3")
        assert await page.evaluate("() => third") == [3, 3, 4]
        assert await streams_of_task(hub.url, task_id) == 1

        # The last callers close: the hub stream ends.
        await page.evaluate("() => { thirdB.close(); again.close(); }")
        assert await page.evaluate("() => secondStates.at(-1)") == 2
        await until_count(
            lambda: streams_of_task(hub.url, task_id), 0, what="the stream to be released"
        )


async def test_task_events_not_newer_than_the_last_sequence_are_dropped(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    """Resumed from an older id, the hub replays events the page already has: the client
    must not show a file going back to an older state, nor any event twice."""
    async with AsyncPublisher(hub.url) as pub:
        task_id = (await pub.create_task(total=10)).task_id  # sequence 1
        page = await client_page(browser_context, hub.url)
        await page.evaluate("id => watch(id)", task_id)
        await wait_log(page, task_id, 1)
        early = await page.evaluate("id => streams[id].lastEventId()", task_id)
        await pub.file(task_id, "a.png", status="processing")  # 2
        await pub.file(task_id, "a.png", status="completed")  # 3
        await wait_log(page, task_id, 3)
        await page.evaluate("id => { streams[id].close(); window.logs[id] = []; }", task_id)
        # File updates are never conflated: the hub replays both, and both are old.
        await page.evaluate("([id, early]) => watch(id, {lastEventId: early})", [task_id, early])
        await page.wait_for_function("id => streams[id].stats().received === 2", arg=task_id)
        assert (await stream_stats(page, task_id))["dropped"] == 2
        await pub.progress(task_id, current=1)  # 4
        log = await wait_log(page, task_id, 3)
    # The kept state is shown again once (progress, then the file), then only what is new.
    assert log == [
        ["progress", 1, 0],
        ["file", 3, "a.png", "completed"],
        ["progress", 4, 10],
    ]


async def test_a_page_reload_resumes_from_session_storage_without_duplicates(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    async with AsyncPublisher(hub.url) as pub:
        task_id = (await pub.create_task(total=10)).task_id  # sequence 1
        page = await client_page(browser_context, hub.url)
        await page.evaluate("id => watch(id)", task_id)
        await wait_log(page, task_id, 1)
        await pub.progress(task_id, current=1)  # 2
        await wait_log(page, task_id, 2)
        await page.reload()
        await until_count(
            lambda: streams_of_task(hub.url, task_id), 0, what="the old stream to end"
        )
        # While no page listens (two kinds, so the hub's replay conflates neither):
        await pub.file(task_id, "a.png", status="completed")  # 3
        await pub.progress(task_id, current=2)  # 4
        await install(page, hub.url)
        await page.evaluate("id => watch(id)", task_id)
        log = await wait_log(page, task_id, 3)
        # The bar is where it was at once (the kept state), then the missed events
        # arrive once each: the hub was asked for what follows the kept id, no more.
        assert log == [
            ["progress", 2, 10],
            ["file", 3, "a.png", "completed"],
            ["progress", 4, 20],
        ]
        stats = await stream_stats(page, task_id)
        assert (stats["received"], stats["dropped"]) == (2, 0)
        await pub.progress(task_id, current=3)  # 5
        assert sequences(await wait_log(page, task_id, 4)) == [2, 3, 4, 5]


async def test_the_stream_comes_back_after_the_hub_restarts(
    server_factory: ServerFactory, browser_context: BrowserContext, tmp_path: Path
) -> None:
    # Tasks in SQLite survive the restart; the memory backend's ids do not, so the client
    # resumes from an id the new process cannot place and gets the task's state instead.
    server = await server_factory.start(
        "--store", f"sqlite:///{tmp_path}/tasks.db", "--retry", "200", "--shutdown-grace", "2"
    )
    async with AsyncPublisher(server.url) as pub:
        task_id = (await pub.create_task(total=10)).task_id
        await pub.progress(task_id, current=1)  # 2
    page = await client_page(browser_context, server.url)
    await page.evaluate("id => watch(id)", task_id)
    await wait_log(page, task_id, 1)
    await asyncio.to_thread(server.restart)
    await until_count(
        lambda: streams_of_task(server.url, task_id), 1, timeout=20, what="the client to reconnect"
    )
    # The state it got restates sequence 2, which it has: dropped, not shown twice.
    await page.wait_for_function("id => streams[id].stats().dropped >= 1", arg=task_id)
    async with AsyncPublisher(server.url) as pub:
        await pub.progress(task_id, current=2)  # 3
    log = await wait_log(page, task_id, 2)
    assert log == [["progress", 2, 10], ["progress", 3, 20]]
    assert await page.evaluate("id => streams[id].readyState()", task_id) == 1  # OPEN
    assert (await stream_stats(page, task_id))["reconnects"] >= 1


async def test_a_subscription_read_with_fetch_comes_back_after_a_restart_with_a_gap(
    server_factory: ServerFactory, browser_context: BrowserContext
) -> None:
    # A catch-all reads the stream with fetch(): its reconnects are the client's own.
    server = await server_factory.start("--retry", "200", "--shutdown-grace", "2")
    page = await client_page(browser_context, server.url)
    await page.evaluate(
        """() => {
          window.got = [];
          window.sub = tidings.subscribe("news", {"*": (d, e) => got.push([e.type, d])});
        }"""
    )
    await page.wait_for_function("() => sub.readyState() === 1")
    async with AsyncPublisher(server.url) as pub:
        await pub.publish("news", {"n": 1}, type="note")
    await page.wait_for_function("() => got.length === 1")
    await asyncio.to_thread(server.restart)
    # The new process cannot place the old id (a memory hub's history is gone): the
    # client is told with a gap, never left to assume it missed nothing.
    await page.wait_for_function("() => got.length === 2")
    async with AsyncPublisher(server.url) as pub:
        await pub.publish("news", {"n": 2}, type="note")
    await page.wait_for_function("() => got.length === 3")
    got = await page.evaluate("() => got")
    assert got[0] == ["note", {"n": 1}]
    assert (got[1][0], got[1][1]["reason"]) == ("gap", "unknown")
    assert got[2] == ["note", {"n": 2}]
    assert await page.evaluate("() => sub.readyState()") == 1


async def test_a_token_function_is_asked_again_when_the_token_expires(
    jwt_hub: ServerProcess, browser_context: BrowserContext, uid: str
) -> None:
    server, topic = jwt_hub, f"chat/{uid}"
    short = mint_token(SECRET, sub="ada", subscribe=["chat/**"], ttl=2)
    fresh = mint_token(SECRET, sub="ada", subscribe=["chat/**"])
    writer = mint_token(SECRET, sub="bot", publish=["chat/**"])
    page = await client_page(browser_context, server.url)
    await page.evaluate(
        """([short, fresh, topic]) => {
          window.got = [];
          window.asked = 0;
          const token = () => { asked += 1; return asked === 1 ? short : fresh; };
          window.sub = tidings.subscribe(topic, {note: (d) => got.push(d.n)}, {token});
        }""",
        [short, fresh, topic],
    )
    await page.wait_for_function("() => sub.readyState() === 1")
    async with AsyncPublisher(server.url, token=writer) as pub:
        await pub.publish(topic, {"n": 1}, type="note")
        await page.wait_for_function("() => got.length === 1")
        # At the short token's expiry the hub sends auth_expired and ends the stream; the
        # client asks for a token again and resumes from its last id.
        await page.wait_for_function("() => asked === 2 && sub.readyState() === 1")
        await pub.publish(topic, {"n": 2}, type="note")
        await page.wait_for_function("() => got.length === 2")
    assert await page.evaluate("() => got") == [1, 2]


async def test_a_refused_connection_is_retried_with_backoff(
    server_factory: ServerFactory, browser_context: BrowserContext
) -> None:
    """A 429 makes the browser's EventSource give up for good; the client must not."""
    server = await server_factory.start("--connect-rate-limit", "1")
    async with AsyncPublisher(server.url) as pub:
        first = (await pub.create_task()).task_id
        second = (await pub.create_task()).task_id
    page = await client_page(browser_context, server.url)
    await page.evaluate("([a, b]) => { watch(a); watch(b); }", [first, second])
    log = await wait_log(page, second, 1)
    assert log == [["progress", 1, 0]]
    assert (await stream_stats(page, second))["reconnects"] >= 1
    assert await page.evaluate("id => streams[id].readyState()", second) == 1


async def test_a_stream_the_hub_refuses_reports_the_error_and_closes(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    page = await client_page(browser_context, hub.url)
    await page.evaluate("() => watch('no-such-task')")
    assert await wait_log(page, "no-such-task", 1) == [["error", "task_not_found"]]
    assert await page.evaluate("() => streams['no-such-task'].readyState()") == 2


async def test_a_refused_stream_reports_closed_once(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    page = await client_page(browser_context, hub.url)
    await page.evaluate(
        """() => {
          window.states = { task: [], topic: [] };
          tidings.createProgressStream("no-such-task-2", {
            onStateChange: (s) => states.task.push(s), onError: () => {},
          });
          tidings.subscribe(["bad topic"], {}, {
            onStateChange: (s) => states.topic.push(s), onError: () => {},
          });
        }"""
    )
    await page.wait_for_function("() => states.task.includes(2) && states.topic.includes(2)")
    # Both CLOSED calls came in the same turn of the page's loop: both would be here.
    states = await page.evaluate("() => states")
    assert states["task"].count(2) == 1, states
    assert states["topic"].count(2) == 1, states


async def test_subscribe_delivers_events_by_type_and_to_the_catch_all(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    topic = f"chat/{uuid.uuid4().hex[:8]}"
    page = await client_page(browser_context, hub.url)
    await page.evaluate(
        """topic => {
          window.typed = [];
          window.every = [];
          window.subs = [
            tidings.subscribe([topic], {chat_message: (d, e) => typed.push([e.type, d.text])}),
            tidings.subscribe(topic, {"*": (d, e) => every.push([e.type, d])}),
          ];
        }""",
        topic,
    )
    await page.wait_for_function("() => subs.every((s) => s.readyState() === 1)")
    async with AsyncPublisher(hub.url) as pub:
        await pub.publish(topic, {"text": "hi"}, type="chat_message")
        await pub.publish(topic, {"user": "ada"}, type="presence")
        await pub.publish(topic, "plain text")
    await page.wait_for_function("() => every.length === 3")
    assert await page.evaluate("() => typed") == [["chat_message", "hi"]]
    # The catch-all sees every type, even ones nobody named (read with fetch, not
    # EventSource, which only delivers the types it listens for).
    assert await page.evaluate("() => every") == [
        ["chat_message", {"text": "hi"}],
        ["presence", {"user": "ada"}],
        ["message", "plain text"],
    ]


async def test_subscribe_sends_a_given_token_and_reports_a_refusal(
    jwt_hub: ServerProcess, browser_context: BrowserContext, uid: str
) -> None:
    server, topic = jwt_hub, f"chat/{uid}"
    reader = mint_token(SECRET, sub="ada", subscribe=["chat/**"])
    writer = mint_token(SECRET, sub="bot", publish=["chat/**"])
    page = await client_page(browser_context, server.url)
    await page.evaluate(
        """([token, topic]) => {
          window.got = [];
          window.errors = [];
          window.allowed = tidings.subscribe(topic, {note: (d) => got.push(d)}, {token});
          window.refused = tidings.subscribe(topic, {note: (d) => got.push(d)}, {
            onError: (e) => errors.push([e.code, e.status]),
          });
        }""",
        [reader, topic],
    )
    await page.wait_for_function("() => allowed.readyState() === 1 && errors.length === 1")
    assert await page.evaluate("() => errors") == [["unauthenticated", 401]]
    assert await page.evaluate("() => refused.readyState()") == 2
    async with AsyncPublisher(server.url, token=writer) as pub:
        await pub.publish(topic, {"n": 1}, type="note")
    await page.wait_for_function("() => got.length === 1")
    assert await page.evaluate("() => got") == [{"n": 1}]


async def test_tabs_of_one_origin_share_one_connection(
    hub: ServerProcess, browser_context: BrowserContext
) -> None:
    topic = f"news/{uuid.uuid4().hex[:8]}"
    subscribe = """topic => {
      window.got = [];
      window.sub = tidings.subscribe(topic, {note: (d) => got.push(d.n)});
    }"""
    async with AsyncPublisher(hub.url) as pub:
        task_id = (await pub.create_task(total=10)).task_id
        tabs = [await client_page(browser_context, hub.url) for _ in range(3)]
        for tab in tabs:
            await tab.evaluate(subscribe, topic)
            await tab.evaluate("id => watch(id)", task_id)
        for tab in tabs:
            await tab.wait_for_function("() => sub.readyState() === 1")
            await wait_log(tab, task_id, 1)
        assert await streams_of_topic(hub.url, topic) == 1
        assert await streams_of_task(hub.url, task_id) == 1
        await pub.publish(topic, {"n": 1}, type="note")
        await pub.progress(task_id, current=1)
        for tab in tabs:
            await tab.wait_for_function("() => got.length === 1")
            assert sequences(await wait_log(tab, task_id, 2)) == [1, 2]

        # The leader (the first tab) goes: another tab takes over, resuming where it was.
        await tabs[0].close()
        await pub.publish(topic, {"n": 2}, type="note")
        for tab in tabs[1:]:
            await tab.wait_for_function("() => got.length === 2")
            assert await tab.evaluate("() => got") == [1, 2]
        await until_count(lambda: streams_of_topic(hub.url, topic), 1, what="one stream again")

        # Opting out: a tab of its own connection.
        alone = await client_page(browser_context, hub.url)
        await alone.evaluate(
            "topic => { window.sub = tidings.subscribe(topic, {note: () => {}}, {share: false}); }",
            topic,
        )
        await alone.wait_for_function("() => sub.readyState() === 1")
        assert await streams_of_topic(hub.url, topic) == 2
