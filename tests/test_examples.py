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
