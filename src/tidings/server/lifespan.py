"""The ASGI lifespan protocol, from the server's side: start the application, stop it.

The application runs in one task for the server's whole life: it receives
``lifespan.startup``, answers, then waits for ``lifespan.shutdown``. An application that
does not speak the protocol (it raises at once) is started and stopped without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from tidings.errors import TidingsError, error_line

__all__ = ["Lifespan", "StartupFailed"]

logger = logging.getLogger("tidings.server")


class StartupFailed(TidingsError):
    """The application could not start; ``message`` says why, in one line."""

    code = "startup_failed"


class Lifespan:
    """Runs ``app``'s lifespan; ``state`` is the lifespan state requests get a copy of."""

    def __init__(self, app: Callable[..., Any], state: dict[str, Any]) -> None:
        self._app = app
        self._state = state
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._started: asyncio.Future[str | None] | None = None
        self._stopped: asyncio.Future[str | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._supported = True

    async def startup(self) -> None:
        """Start the application.

        Raises:
            StartupFailed: the application reported a failed start, or failed.
        """
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        self._stopped = loop.create_future()
        self._task = loop.create_task(self._run(), name="tidings-lifespan")
        await self._inbox.put({"type": "lifespan.startup"})
        failure = await self._started
        if failure is not None:
            await self._finish()
            raise StartupFailed(failure)

    async def shutdown(self) -> None:
        """Stop the application (a failure is logged: the server is stopping anyway)."""
        if self._task is None or self._stopped is None:
            return
        if self._supported and not self._task.done():
            await self._inbox.put({"type": "lifespan.shutdown"})
            failure = await self._stopped
            if failure is not None:
                logger.error("the application failed to stop: %s", failure)
        await self._finish()

    async def _finish(self) -> None:
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5)
            except TimeoutError:
                task.cancel()

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        try:
            await self._app(scope, self._inbox.get, self._send)
        except Exception as exc:
            if self._started is not None and not self._started.done():
                if isinstance(exc, TidingsError):
                    self._started.set_result(error_line(exc))
                    return
                # An application without lifespan support: start without it.
                logger.debug("the application does not speak the lifespan protocol: %s", exc)
                self._supported = False
                self._started.set_result(None)
                return
            logger.error("the application's lifespan failed: %s", error_line(exc))
        finally:
            for waiter in (self._started, self._stopped):
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        started, stopped = self._started, self._stopped
        assert started is not None
        assert stopped is not None
        if kind == "lifespan.startup.complete":
            started.set_result(None)
        elif kind == "lifespan.startup.failed":
            started.set_result(message.get("message") or "the application failed to start")
        elif kind == "lifespan.shutdown.complete":
            stopped.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            stopped.set_result(message.get("message") or "the application failed to stop")
