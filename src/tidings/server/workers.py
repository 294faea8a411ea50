"""``tidings serve --workers N``: N server processes on one listening socket.

The supervisor binds the socket, starts the workers (``spawn``: each builds its own
application from the settings) and waits until every one says it is ready. A worker that
cannot start says why in one line; the supervisor then stops the others and fails with
that line (exit code 1): it never starts a failing worker again and again. Once all are
up, a worker that dies (killed, out of memory) is replaced, and SIGTERM/SIGINT stop every
worker cleanly (each ends its streams, see :mod:`tidings.server.serve`) before the
supervisor exits with code 0.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from tidings.config import Settings
from tidings.errors import TidingsError
from tidings.server.process import AppFactory, serve_process

__all__ = ["Supervisor"]

logger = logging.getLogger("tidings.server")

#: Seconds a worker may take to start.
START_TIMEOUT = 60.0
#: The exit code of a worker that could not start.
STARTUP_FAILURE = 3


class _Worker:
    """One worker process and the pipe it reports on."""

    def __init__(self, process: BaseProcess, pipe: Pipe) -> None:
        self.process = process
        self.pipe = pipe


class Supervisor:
    """Runs ``settings.workers`` workers serving ``factory``'s app on ``sockets``."""

    def __init__(
        self, settings: Settings, factory: AppFactory, sockets: list[socket.socket]
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.sockets = sockets
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._stopping = False

    def run(self) -> int:
        """Start the workers, keep them running until SIGTERM/SIGINT, stop them; exit code.

        Raises:
            TidingsError: a worker could not start (the message says why, in one line).
        """
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for _ in range(self.settings.workers):
                self._workers.append(self._spawn())
            self._wait_ready(self._workers)
            logger.info("%d workers ready (pids %s)", len(self._workers), self._pids())
            self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, self.factory, self.sockets, child),
            name="tidings-worker",
            daemon=False,
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    def _wait_ready(self, workers: list[_Worker]) -> None:
        """Wait until every worker of ``workers`` is ready.

        Raises:
            TidingsError: one failed to start, or died, or took too long.
        """
        waiting = {worker.pipe: worker for worker in workers}
        while waiting and not self._stopping:
            ready = wait(list(waiting), timeout=START_TIMEOUT)
            if not ready:
                raise TidingsError(f"workers failed to start within {START_TIMEOUT:.0f} s")
            for pipe in ready:
                assert isinstance(pipe, Pipe)
                worker = waiting.pop(pipe)
                try:
                    message = pipe.recv()
                except EOFError:
                    message = ("failed", f"a worker exited with code {worker.process.exitcode}")
                if message[0] != "ready":
                    raise TidingsError(f"workers failed to start: {message[1]}")

    def _watch(self) -> None:
        """Replace workers that die, until asked to stop."""
        while not self._stopping:
            sentinels = {worker.process.sentinel: worker for worker in self._workers}
            for sentinel in wait(list(sentinels), timeout=0.5):
                if self._stopping:
                    break
                dead = sentinels[sentinel]  # type: ignore[index]  # sentinels are ints
                dead.process.join()
                logger.warning(
                    "worker %s exited with code %s; starting another",
                    dead.process.pid,
                    dead.process.exitcode,
                )
                self._workers.remove(dead)
                replacement = self._spawn()
                self._workers.append(replacement)
                self._wait_ready([replacement])

    def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after the grace."""
        for worker in self._workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        timeout = self.settings.shutdown_grace + 2.0
        for worker in self._workers:
            worker.process.join(timeout)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.pipe.close()

    def _pids(self) -> str:
        return ", ".join(str(worker.process.pid) for worker in self._workers)


def _worker_main(
    settings: Settings,
    factory: AppFactory,
    sockets: list[socket.socket],
    pipe: Pipe,
) -> None:
    """A worker process: serve until stopped; report ready, or why it could not start."""
    # The supervisor handles Ctrl-C for the group; a worker stops on the SIGINT it also
    # gets, through its server's own handler.
    reported = False

    def report(message: tuple[Any, ...]) -> None:
        nonlocal reported
        reported = True
        pipe.send(message)

    code = serve_process(
        settings,
        factory,
        sockets=sockets,
        ready=lambda: report(("ready",)),
        failed=lambda line: report(("failed", line)),
    )
    if not reported:
        report(("failed", f"a worker exited with code {code}"))
    pipe.close()
    if code:
        raise SystemExit(STARTUP_FAILURE)
