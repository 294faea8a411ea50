"""A real HTTP server in a thread of the test process, for what the hub calls: an
application's auth endpoint (``--auth-proxy``), an identity provider's JWKS.

The test decides each answer (:attr:`LocalApp.handler`), sees every request the hub made
(:attr:`LocalApp.requests`), can hold answers back (:attr:`LocalApp.hold`) and stop the
server (:meth:`LocalApp.stop`, then connections are refused).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from tests.conftest import until


@dataclass(frozen=True)
class Seen:
    """A request the server received: method, path with query, and headers (names in
    lower case; a repeated header's values joined by ``, ``)."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    """An answer: status, headers and body (a ``json`` value is sent as JSON)."""

    status: int = 200
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> tuple[bytes, dict[str, str]]:
        if self.body is not None:
            return self.body, dict(self.headers)
        return orjson.dumps(self.json), {"Content-Type": "application/json", **self.headers}


Handler = Callable[[Seen], Reply]


class LocalApp:
    """An HTTP/1.0 server on a free loopback port (one connection per request, so a
    stopped server refuses the next one at once)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Seen] = []
        #: While cleared, requests wait for it before they are answered (a slow app).
        self.hold = threading.Event()
        self.hold.set()
        self._lock = threading.Lock()
        app = self

        class RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers: dict[str, str] = {}
                for name, value in self.headers.items():
                    key = name.lower()
                    headers[key] = f"{headers[key]}, {value}" if key in headers else value
                seen = Seen(self.command, self.path, headers)
                with app._lock:
                    app.requests.append(seen)
                app.hold.wait(30)
                reply = app.handler(seen)
                body, reply_headers = reply.encode()
                try:
                    self.send_response(reply.status)
                    for name, value in reply_headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the hub gave up waiting (its timeout)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._stopped = False

    def count(self, cookie: str | None = None) -> int:
        """Requests received so far (with exactly this ``Cookie`` header, when given)."""
        with self._lock:
            return sum(
                1 for r in self.requests if cookie is None or r.headers.get("cookie") == cookie
            )

    async def wait_requests(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` requests have arrived (answered or held)."""

        async def arrived() -> bool:
            return self.count() >= n

        await until(arrived, timeout, f"{n} requests to the local app")

    def stop(self) -> None:
        """Stop serving: connections are refused from now on."""
        if not self._stopped:
            self._stopped = True
            self.hold.set()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)

    def __enter__(self) -> LocalApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_app(handler: Handler) -> Iterator[LocalApp]:
    """A :class:`LocalApp` for a fixture: yielded, then stopped."""
    with LocalApp(handler) as app:
        yield app
