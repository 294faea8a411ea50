"""Test your own SSE endpoints, publishers and workers against a real hub, without sleeps.

:class:`TestHub` serves an ASGI app (yours, with its embedded :class:`~tidings.Hub`, or a
standalone hub) on a real loopback uvicorn server in a background thread. Streams need a
real socket: in-process ASGI clients (Starlette's ``TestClient``, ``httpx.ASGITransport``)
run the app to completion and buffer the body, so a live stream never reaches the test.

::

    from tidings.testing import TestHub

    def test_chat_broadcasts() -> None:
        with TestHub(app, hub=hub, prefix="/sse") as live, live.client() as http:
            http.post("/chat", params={"text": "hi"})
            [event] = live.collect("chat/general", n=1)
            assert event.json() == {"text": "hi"}

What makes it sleep-free:

- :meth:`TestHub.collect` starts from the hub's history by default (everything published
  since the server started), so a test publishes first and collects after, with no race.
- :meth:`TestHub.stream` returns once the hub has registered the stream (its opening bytes
  arrived), so whatever the test publishes next reaches it.
- Every wait has a timeout and fails with what it saw so far.

It also simulates the clients that break naive SSE code: a **slow** one (a stream the test
does not read, with a small receive buffer: the hub cuts it when its bounded queue
overflows, :meth:`Stream.wait_cut`) and a **disconnected** one (:meth:`Stream.close`, then
:meth:`Stream.resume` with its ``Last-Event-ID``).

Pytest fixtures (``tidings_hub``, ``tidings_hub_factory``) are registered by the
``tidings`` pytest plugin (:mod:`tidings.testing.plugin`) when tidings is installed, and
can be imported from this package. They are sync fixtures, so they work in sync tests and
under any async test plugin; async tests use the ``a``-prefixed twins
(:meth:`TestHub.acollect`, :meth:`TestHub.astream`...).

Modules: :mod:`~tidings.testing.server` (``TestHub``), :mod:`~tidings.testing.streams`
(``Stream``, ``AsyncStream``), :mod:`~tidings.testing.plugin` (the fixtures).

Decisions that may surprise:

- The server runs in a thread with its own event loop. The hub's coroutines must run on
  that loop: call them through :meth:`TestHub.run` (``live.run(hub.tasks.create(...))``),
  never ``await hub.publish(...)`` from the test's own loop.
- Streams are read with plain sockets (blocking, with timeouts), not an HTTP client: a test
  needs the socket itself to make a client slow or to drop it.
"""

from __future__ import annotations

import importlib.util

from tidings.errors import StreamEnded
from tidings.testing.server import TestHub
from tidings.testing.streams import FROM_START, AsyncStream, Stream

__all__ = ["FROM_START", "AsyncStream", "Stream", "StreamEnded", "TestHub"]

# The fixtures need pytest; the rest of the kit works without it (unittest, scripts).
if importlib.util.find_spec("pytest") is not None:
    from tidings.testing.plugin import tidings_hub, tidings_hub_factory

    __all__ += ["tidings_hub", "tidings_hub_factory"]
