"""``python -m examples.celery_app.run``: broker, worker and web app in one command.

- the broker: ``$CELERY_BROKER_URL``, or a private ``redis-server`` on a free port;
- a Celery worker (``celery -A examples.celery_app.tasks worker``) reporting to the app;
- the web app (``web.py``) on http://127.0.0.1:8000 (``--port``), hub embedded.

Ctrl-C or SIGTERM stops all three.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import uvicorn

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    """A ``redis-server`` of our own (no persistence), once it answers; and its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: install it, or set $CELERY_BROKER_URL")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit("redis-server did not start")


def start_worker(broker: str, hub_url: str) -> subprocess.Popen[bytes]:
    """A Celery worker for ``examples.celery_app.tasks``, reporting to ``hub_url``."""
    env = {
        **os.environ,
        "CELERY_BROKER_URL": broker,
        "TIDINGS_URL": hub_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.celery_app.tasks",
            "worker",
            "--pool=solo",
            "--loglevel=info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env=env,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.celery_app.run")
    parser.add_argument("--port", type=int, default=8000, help="the web app (default 8000)")
    args = parser.parse_args()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # unwinds to the clean-up below, wherever we are

    signal.signal(signal.SIGTERM, stop)
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="celery-example-") as directory:
        try:
            broker = os.environ.get("CELERY_BROKER_URL")
            if not broker:
                redis, broker = start_redis(directory)
                children.append(redis)
            # tasks.py reads the broker from the environment when it is imported.
            os.environ["CELERY_BROKER_URL"] = broker
            hub_url = f"http://127.0.0.1:{args.port}"
            children.append(start_worker(broker, hub_url))
            print(f"broker {broker}; open {hub_url}/", flush=True)
            # uvicorn re-raises SIGTERM after its graceful shutdown: `stop` turns it into
            # SystemExit, so the worker and the broker are stopped below.
            uvicorn.run("examples.celery_app.web:app", host="127.0.0.1", port=args.port)
        finally:
            for child in reversed(children):  # the worker first: a warm shutdown
                child.terminate()
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


if __name__ == "__main__":
    main()
