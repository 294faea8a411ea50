"""The dashboard (``GET /``) in a real Chromium, and how it and tidings.js are served."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import ServerFactory, ServerProcess
from tidings import Hub
from tidings.auth.jwt import mint_token
from tidings.client import AsyncPublisher

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

SECRET = "dashboard-tests-secret-0123456789abcdef"

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIVE = "() => document.querySelector('#status').dataset.state === 'open'"


async def open_dashboard(context: BrowserContext, url: str, *, live: bool = True) -> Page:
    page = await context.new_page()
    await page.goto(url + "/")
    if live:
        await page.wait_for_function(LIVE)
    return page


async def feed_has(page: Page, text: str) -> None:
    await page.wait_for_function(
        "text => [...document.querySelectorAll('#feed .event')]"
        ".some((row) => row.textContent.includes(text))",
        arg=text,
    )


async def detail_percent_is(page: Page, value: int) -> None:
    await page.wait_for_function(
        "value => document.querySelector('#detail-bar').getAttribute('aria-valuenow') === value",
        arg=str(value),
    )


async def test_dashboard_shows_a_running_task_its_files_and_live_events(
    server: ServerProcess, browser_context: BrowserContext, uid: str
) -> None:
    title = f"Resize photos {uid}"
    async with AsyncPublisher(server.url) as pub:
        task_id = (await pub.create_task(title=title, total=4)).task_id
        for name, status in [
            ("a.jpg", "completed"),
            ("b.jpg", "completed"),
            ("c.jpg", "processing"),
            ("d.jpg", "pending"),
        ]:
            await pub.file(task_id, name, status=status)
        await pub.progress(task_id, current=2, message="b.jpg done")
        page = await open_dashboard(browser_context, server.url)

        # The task list, and the task selected with its bar and file grid.
        await page.locator(".task", has_text=title).click()
        await detail_percent_is(page, 50)
        assert await page.locator("#detail-message").text_content() == "b.jpg done"
        cells = await page.evaluate(
            "() => [...document.querySelectorAll('#files .file')]"
            ".map((cell) => [cell.querySelector('.name').textContent, cell.dataset.status])"
        )
        assert sorted(cells) == [
            ["a.jpg", "completed"],
            ["b.jpg", "completed"],
            ["c.jpg", "processing"],
            ["d.jpg", "pending"],
        ]
        assert await page.locator("#files-summary").text_content() == "2 of 4 done"

        # Live: progress and file states move without a reload.
        await pub.file(task_id, "c.jpg", status="completed")
        await pub.progress(task_id, current=3, message="c.jpg done")
        await detail_percent_is(page, 75)
        await page.wait_for_function(
            "() => document.querySelector('#files [data-id=\"c.jpg\"]').dataset.status"
            " === 'completed'"
        )
        row_bar = page.locator(".task", has_text=title).locator("[role=progressbar]")
        assert await row_bar.get_attribute("aria-valuenow") == "75"

        # The feed shows what is published, of any type.
        await pub.publish(
            "chat/general", {"user": "ada", "text": "hello dashboard"}, type="chat_message"
        )
        await feed_has(page, "hello dashboard")

        await pub.complete(task_id, result={"resized": 4})
        await page.wait_for_function(
            "() => document.querySelector('#detail-status').textContent === 'completed'"
        )
        assert "resized" in (await page.locator("#detail-outcome").text_content() or "")

    # The counters come from /stats: at least the dashboard's own feed is connected.
    await page.wait_for_function(
        "() => Number(document.querySelector('#stat-connections').textContent) >= 1"
    )
    await page.wait_for_function(
        "() => document.querySelector('#chart').getAttribute('aria-label').includes('now')"
    )


async def test_the_feed_filters_by_topic_and_pauses(
    server: ServerProcess, browser_context: BrowserContext
) -> None:
    page = await open_dashboard(browser_context, server.url)
    await page.fill("#feed-topics", "alerts/**")
    await page.click("#feed-form button[type=submit]")
    await page.wait_for_function(
        "() => document.querySelector('#feed-status').textContent === 'Streaming alerts/**'"
    )
    async with AsyncPublisher(server.url) as pub:
        await pub.publish("chat/general", {"text": "not shown"}, type="chat_message")
        await pub.publish("alerts/disk", {"text": "disk at 91%"}, type="alert")
        await feed_has(page, "disk at 91%")
        assert "not shown" not in (await page.locator("#feed").text_content() or "")

        await page.click("#pause")
        assert await page.get_attribute("#pause", "aria-pressed") == "true"
        await pub.publish("alerts/disk", {"text": "disk at 95%"}, type="alert")
        await page.wait_for_function(
            "() => document.querySelector('#pause').textContent === 'Resume (1 new)'"
        )
        assert "95%" not in (await page.locator("#feed").text_content() or "")
        await page.click("#pause")
        await pub.publish("alerts/disk", {"text": "disk at 99%"}, type="alert")
        await feed_has(page, "disk at 99%")


class PublishTimes:
    """Reads a raw stream for the ``time:`` field of each event (which parsers ignore)."""

    def __init__(self, response: httpx.Response) -> None:
        self.chunks = response.aiter_raw()
        self.seen = b""

    async def of(self, event_id: str) -> str:
        """The publish time of ``event_id``, as JavaScript's ``toISOString()`` writes it."""
        pattern = rb"id: " + re.escape(event_id.encode()) + rb"\n(?:.+\n)*?time: (\d+)\n"
        while (found := re.search(pattern, self.seen)) is None:
            self.seen += await anext(self.chunks)
        at = datetime.fromtimestamp(int(found[1]) / 1000, UTC)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_the_feed_shows_when_each_event_was_published_not_when_it_arrived(
    server: ServerProcess, browser_context: BrowserContext, uid: str
) -> None:
    """Issue 20: the feed showed each row's arrival time. It shows the time the hub took
    the publish (the frame's ``time:`` field), so an event replayed to a feed that comes
    back says when it happened. The page's own clock is stuck in 2001 here: any time taken
    from it would show."""
    topic = f"feed/{uid}"
    page = await browser_context.new_page()
    await page.clock.set_fixed_time(datetime(2001, 1, 1, tzinfo=UTC))
    await page.goto(server.url + "/")
    await page.wait_for_function(LIVE)
    row_time = """id => {
      const row = [...document.querySelectorAll('#feed .event')]
        .find((row) => row.querySelector('.data').title.startsWith(`id ${id}\n`));
      const time = row && row.querySelector('time');
      return time ? [time.dateTime, time.title] : null;
    }"""
    async with (
        AsyncPublisher(server.url) as pub,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("GET", "/events", params={"topic": topic, "time": "1"}) as response,
    ):
        raw = PublishTimes(response)
        live_id = await pub.publish(topic, {"text": "live"}, type="note")
        live_at = await raw.of(live_id)
        await page.wait_for_function(f"() => ({row_time})({live_id!r}) !== null")
        assert await page.evaluate(row_time, live_id) == [live_at, f"published {live_at}"]

        # The page goes away; an event is published meanwhile; the feed comes back, resumes
        # from its last id, and the missed event is shown with its publish time.
        await page.goto("about:blank")
        missed_id = await pub.publish(topic, {"text": "while away"}, type="note")
        missed_at = await raw.of(missed_id)
        await page.goto(server.url + "/")
        await page.wait_for_function(f"() => ({row_time})({missed_id!r}) !== null")
        assert await page.evaluate(row_time, missed_id) == [missed_at, f"published {missed_at}"]
        assert not missed_at.startswith("2001")


async def test_with_auth_the_dashboard_takes_a_token_and_shows_what_it_may_see(
    server_factory: ServerFactory, browser_context: BrowserContext
) -> None:
    server = await server_factory.start("--jwt-secret", SECRET)
    alice = mint_token(SECRET, sub="alice", subscribe=["chat/**"])
    bob = mint_token(SECRET, sub="bob")
    writer = mint_token(SECRET, sub="bot", publish=["chat/**"])
    async with AsyncPublisher(server.url, token=alice) as pub:
        await pub.create_task(title="Alice's export")
    async with AsyncPublisher(server.url, token=bob) as pub:
        await pub.create_task(title="Bob's backup")

    page = await open_dashboard(browser_context, server.url, live=False)
    await page.wait_for_function("() => !document.querySelector('#auth').hidden")
    assert "requires a token" in (await page.locator("#auth-note").text_content() or "")
    await page.fill("#token", alice)
    await page.click("#auth button[type=submit]")
    await page.wait_for_function(LIVE)
    await page.locator(".task", has_text="Alice's export").wait_for()
    assert "Bob's backup" not in (await page.locator("#task-list").text_content() or "")
    assert await page.locator("#auth-note").text_content() == "Signed in as alice."
    # /stats is for admins; the feed listens where the token may.
    await page.wait_for_function("() => !document.querySelector('#stats-note').hidden")
    assert await page.input_value("#feed-topics") == "users/alice/** chat/**"
    async with AsyncPublisher(server.url, token=writer) as pub:
        await pub.publish("chat/general", {"text": "for alice"}, type="chat_message")
    await feed_has(page, "for alice")

    # The token is kept for the tab: a reload stays signed in.
    await page.reload()
    await page.locator(".task", has_text="Alice's export").wait_for()
    assert await page.locator("#auth-note").text_content() == "Signed in as alice."

    # Signing out leaves nothing of alice's on the screen (a shared screen).
    await page.wait_for_function(LIVE)
    async with AsyncPublisher(server.url, token=writer) as pub:
        await pub.publish("chat/general", {"text": "again for alice"}, type="chat_message")
    await feed_has(page, "again for alice")
    await page.click("#forget")
    await page.wait_for_function("() => !document.querySelector('#auth').hidden")
    await page.wait_for_function("() => document.querySelectorAll('#feed li').length === 0")
    await page.wait_for_function("() => document.querySelectorAll('.task').length === 0")
    assert "requires a token" in (await page.locator("#auth-note").text_content() or "")
    assert await page.locator("#tasks-note").text_content() == "Signed out: sign in to see tasks."


async def test_the_dashboard_fits_a_phone_screen(
    server: ServerProcess, browser_context: BrowserContext, uid: str
) -> None:
    title = "A rather long title for a task " * 3 + uid
    async with AsyncPublisher(server.url) as pub:
        task_id = (await pub.create_task(title=title, total=3)).task_id
        await pub.file(
            task_id, "a-very-long-file-name-without-any-break-in-it.tar.gz", status="processing"
        )
    page = await browser_context.new_page()
    await page.set_viewport_size({"width": 360, "height": 740})
    await page.goto(server.url + "/")
    await page.wait_for_function(LIVE)
    await page.locator(".task", has_text=title).click()
    await page.wait_for_function("() => document.querySelectorAll('#files .file').length === 1")
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 360


async def test_every_control_has_a_label_and_progress_is_announced(
    server: ServerProcess, browser_context: BrowserContext
) -> None:
    page = await open_dashboard(browser_context, server.url)
    unlabeled = await page.evaluate(
        """() => [...document.querySelectorAll('input, button, canvas')].filter((el) => {
          const label = el.labels && el.labels.length ? el.labels[0].textContent : '';
          return !(label || el.getAttribute('aria-label') || el.textContent.trim());
        }).map((el) => el.outerHTML)"""
    )
    assert unlabeled == []
    assert await page.get_attribute("#announcer", "aria-live") == "polite"
    assert await page.get_attribute("#detail-bar", "role") == "progressbar"


# -- how the files are served ----------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="function")  # the `http` fixture's loop
async def test_the_client_is_served_as_a_cacheable_module_any_origin_may_import(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/static/tidings.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "export function createProgressStream" in response.text
    etag = response.headers["etag"]
    again = await http.get("/static/tidings.js", headers={"If-None-Match": etag})
    assert (again.status_code, again.content) == (304, b"")
    head = await http.head("/static/tidings.js")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(response.content))


@pytest.mark.asyncio(loop_scope="function")  # the `http` fixture's loop
async def test_the_dashboard_page_is_served_with_a_strict_policy(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert 'src="static/dashboard.js"' in page.text
    css = await http.get("/static/dashboard.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    missing = await http.get("/static/missing.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/static")]


@pytest.fixture
async def embedded() -> AsyncIterator[httpx.AsyncClient]:
    hub = Hub(store="memory", keepalive=60, shutdown_grace=0)
    app = FastAPI()
    app.include_router(hub.router, prefix="/sse")
    app.include_router(hub.dashboard_router, prefix="/sse")
    await hub.start()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client
    finally:
        await hub.aclose()


@pytest.mark.asyncio(loop_scope="function")
async def test_an_embedded_app_serves_the_client_and_the_dashboard_under_its_prefix(
    embedded: httpx.AsyncClient,
) -> None:
    client = await embedded.get("/sse/static/tidings.js")
    assert client.status_code == 200
    assert client.headers["content-type"] == "text/javascript; charset=utf-8"
    page = await embedded.get("/sse/")
    assert page.status_code == 200
    assert "<title>tidings" in page.text
    assert (await embedded.get("/sse/static/dashboard.js")).status_code == 200
