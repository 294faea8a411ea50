"""The examples run as users run them, over a real socket."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson

from tests.conftest import free_port, open_sse, until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_fastapi_embedded_example_publishes_from_app_code(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop is busy
            [sys.executable, str(EXAMPLES / "01_fastapi_embedded.py")],
            env={**os.environ, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    return (await client.get(url + "/sse/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(up, 20, "the example app")
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            open_sse(
                http, "/sse/events", params=httpx.QueryParams({"topic": "chat/general"})
            ) as stream,
        ):
            response = await http.post("/chat", params={"text": "hello"})
            assert response.status_code == 200
            event = await stream.next()
            assert event.event == "chat_message"
            assert orjson.loads(event.data) == {"text": "hello"}
            assert event.id == response.json()["id"]
            # Ctrl-C / SIGTERM ends the open stream cleanly and the app exits promptly.
            proc.send_signal(signal.SIGTERM)
            assert await stream.until_end(timeout=15) == []
        # uvicorn.run re-raises SIGTERM after its graceful shutdown.
        assert await asyncio.to_thread(proc.wait, 15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_auth_proxy_example_authenticates_streams_with_the_flask_session(
    tmp_path: Path,
) -> None:
    app_port, hub_port = free_port(), free_port()
    app_url, hub_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{hub_port}"
    log = tmp_path / "example.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the loop is busy
            [sys.executable, str(EXAMPLES / "03_auth_proxy.py")],
            env={**os.environ, "PORT": str(app_port), "HUB_PORT": str(hub_port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        async def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                async with httpx.AsyncClient(timeout=1) as client:
                    hub = await client.get(hub_url + "/healthz")
                    app = await client.get(app_url + "/tidings/auth")
                    return hub.status_code == 200 and app.status_code == 401
            except httpx.HTTPError:
                return False

        try:
            await until(up, 30, "the example app and its hub")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its output:\n{log.read_text()}") from None
        topics = httpx.QueryParams([("topic", "users/alice/**"), ("topic", "lobby")])
        async with httpx.AsyncClient(base_url=hub_url, timeout=10) as anonymous:
            response = await anonymous.get("/events", params=topics)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthenticated"
        async with httpx.AsyncClient(timeout=10) as alice:
            login = await alice.post(app_url + "/login", params={"user": "alice"})
            assert login.status_code == 200
            cookie = {"Cookie": f"session={alice.cookies['session']}"}
            async with httpx.AsyncClient(base_url=hub_url, timeout=10) as browser:
                other = await browser.get(
                    "/events", params={"topic": "users/bob/**"}, headers=cookie
                )
                assert other.status_code == 403
                async with open_sse(browser, params=topics, headers=cookie) as stream:
                    assert stream.response.status_code == 200
                    note = await alice.post(app_url + "/notes", json={"text": "milk"})
                    assert note.status_code == 200, note.text
                    event = await stream.next()
        assert (event.event, orjson.loads(event.data)) == ("note", {"text": "milk"})
        assert event.id == note.json()["id"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
