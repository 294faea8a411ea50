"""The bench's own hub: a ``tidings serve`` on a free loopback port, for ``tidings bench``
without ``--url``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from tidings.errors import TidingsError

__all__ = ["own_hub"]


@contextlib.contextmanager
def own_hub(timeout: float = 20.0) -> Iterator[str]:
    """A ``tidings serve`` of the bench's own on a free loopback port; its URL."""
    import httpx

    # Only the flags below: the user's TIDINGS_* settings (a secret, Redis) stay out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    with tempfile.TemporaryFile() as log:
        for _attempt in range(3):
            port = _free_port()
            argv = [
                sys.executable,
                "-m",
                "tidings",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend",
                "memory",
                "--store",
                "memory",
                "--log-level",
                "warning",
                "--connect-rate-limit",
                "0",
                "--max-connections-per-ip",
                "0",
                "--max-connections-per-user",
                "0",
                "--publish-rate-limit",
                "0",
            ]
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                started = time.monotonic()
                while proc.poll() is None and time.monotonic() - started < timeout:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                            break
                    time.sleep(0.05)  # polling the new process until it answers
                else:
                    log.seek(0)
                    text = log.read().decode(errors="replace")
                    if "address already in use" in text:
                        continue  # the free port was taken meanwhile: another one
                    last = text.strip().splitlines()[-1:] or ["no output"]
                    raise TidingsError(f"the bench's own hub did not start: {last[0]}")
                yield url
                return
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        raise TidingsError("the bench's own hub did not start: no free port")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
