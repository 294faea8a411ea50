"""The embedded example (``examples/01_fastapi_embedded.py``) behind an ASGI middleware that
counts the response-body bytes of every request, as logging, metrics and compression
middleware would see them. ``GET /counted`` answers the counts, by path."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

_spec = importlib.util.spec_from_file_location(
    "fastapi_embedded", Path(__file__).parents[2] / "examples" / "01_fastapi_embedded.py"
)
assert _spec is not None
assert _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


class CountBodyBytes:
    """A pure ASGI middleware: the body bytes of each response, by request path."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/counted":
            body = orjson.dumps(dict(self.counts))
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return

        async def counting(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                self.counts[path] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting)


app = CountBodyBytes(example.app)
