"""The Django example (``examples/django_app``), run as its README says, in Chromium.

One ``python -m examples.django_app`` process: Django and the hub it mounts at ``/sse``
under uvicorn. A logged-in user's page watches their job's progress live over the hub; the
session of another user (or none) gets nothing of it. Every wait is on a condition.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import free_port
from tests.test_examples_seeds import Example

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.asyncio(loop_scope="session")  # the browser's loop

PASSWORD = "tidings-demo"


@pytest.fixture
def django_app(tmp_path: Path) -> Iterator[str]:
    """The example on a free port, with its own database; its URL."""
    port = free_port()
    example = Example(
        "examples.django_app",
        ["--port", str(port), "--db", str(tmp_path / "db.sqlite3"), "--step-delay", "0.05"],
        {},
        tmp_path / "django_app.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        example.wait_up(url + "/login/")
        yield url
    finally:
        example.close()


async def log_in(context: BrowserContext, url: str, user: str) -> Page:
    """``user``'s page, logged in through Django's login form."""
    page = await context.new_page()
    await page.goto(url + "/")  # redirected to /login/?next=/
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("#login button[type=submit]")
    await page.wait_for_selector("body[data-ready=true]")
    return page


async def start_job(page: Page, steps: int) -> str:
    """Start a job from the page's form; the id of its task."""
    await page.fill("input[name=steps]", str(steps))
    async with page.expect_response("**/tasks/") as answer:
        await page.click("#start button[type=submit]")
    task_id: str = (await (await answer.value).json())["task_id"]
    return task_id


def task(task_id: str) -> str:
    """The selector of a task's row in the page."""
    return f".task[data-task='{task_id}']"


async def test_a_user_watches_their_jobs_live_and_nobody_else_can(
    django_app: str, browser: Browser, browser_context: BrowserContext
) -> None:
    alice = await log_in(browser_context, django_app, "alice")

    # A long job: its bar moves while it runs, pushed by the hub.
    long_job = await start_job(alice, 400)
    await alice.wait_for_function(
        "id => (window.shown[id] || []).some((value) => value > 0 && value < 100)", arg=long_job
    )
    row = task(long_job)
    assert await alice.locator(f"{row} .status").text_content() == "running"
    assert 0 < await alice.locator(f"{row} progress").evaluate("bar => bar.value") < 100

    # Another user's session may not watch it, nor cancel it; no session is 401.
    other = await browser.new_context()  # a profile of its own: bob's session
    try:
        bob = await log_in(other, django_app, "bob")
        assert await bob.locator(".task").count() == 0  # the hub lists bob's tasks only
        refused = await bob.evaluate(
            """id => new Promise((resolve) => {
              import("/sse/static/tidings.js").then(({createProgressStream}) =>
                createProgressStream(id, {onError: (e) => resolve([e.code, e.status])}));
            })""",
            long_job,
        )
        assert refused == ["task_not_found", 404]
        assert (
            await bob.evaluate("id => fetch(`/sse/tasks/${id}`).then((r) => r.status)", long_job)
            == 404
        )
        cancel = """id => fetch(`/tasks/${id}/cancel/`, {
          method: "POST",
          headers: {"X-CSRFToken": document.querySelector("[name=csrfmiddlewaretoken]").value},
        }).then((r) => r.status)"""
        assert await bob.evaluate(cancel, long_job) == 404
    finally:
        await other.close()
    async with httpx.AsyncClient(base_url=django_app, timeout=10) as anonymous:
        assert (await anonymous.get(f"/sse/tasks/{long_job}/stream")).status_code == 401

    # The session cookie is for reading: a POST to the hub with it alone is refused (the
    # project's own views write, with their signed tokens).
    cookies = {c["name"]: c["value"] for c in await browser_context.cookies(django_app)}
    async with httpx.AsyncClient(base_url=django_app, timeout=10, cookies=cookies) as session:
        assert (await session.get(f"/sse/tasks/{long_job}")).status_code == 200
        published = await session.post("/sse/publish", json={"topic": "news", "data": 1})
        assert published.status_code == 401

    # Alice cancels it from her page: the bar stops there, and a notification says so.
    await alice.click(f"{row} .cancel")
    await alice.wait_for_selector(f"{row} .status.cancelled")
    await alice.wait_for_function(
        "id => [...document.querySelectorAll('#notes li')]"
        ".some((li) => li.textContent === `Job ${id.slice(0, 8)} cancelled.`)",
        arg=long_job,
    )

    # A short job runs to its end: the bar is full, the stream closed itself.
    short_job = await start_job(alice, 5)
    await alice.wait_for_selector(f"{task(short_job)} .status.completed")
    assert await alice.locator(f"{task(short_job)} progress").evaluate("b => b.value") == 100
    await alice.wait_for_function(
        "id => [...document.querySelectorAll('#notes li')]"
        ".some((li) => li.textContent === `Job ${id.slice(0, 8)} completed.`)",
        arg=short_job,
    )
