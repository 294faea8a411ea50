"""``python -m examples.flask_tasks``: the hub and the Flask app, in one command.

Starts ``tidings serve`` (JWT auth with a fresh secret, query tokens for EventSource, CORS
for the app's origin, a cap of streams per user) as a child process, waits until it
answers, then serves the Flask app. Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from types import FrameType

import httpx
from examples.flask_tasks.app import Config, create_app


def start_hub(
    port: int, *, secret: str, app_port: int, max_per_user: int
) -> subprocess.Popen[bytes]:
    """``tidings serve`` on ``port``, with what the app needs; returns once it answers."""
    env = {**os.environ, "TIDINGS_JWT_SECRET": secret}  # not on the command line: ps shows it
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "serve",
            "--port",
            str(port),
            "--store",
            "memory",
            "--allow-query-token",
            "--cors-origin",
            f"http://127.0.0.1:{app_port}",
            "--cors-origin",
            f"http://localhost:{app_port}",
            "--max-connections-per-user",
            str(max_per_user),
        ],
        env=env,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            raise SystemExit(f"the hub exited (code {hub.returncode})")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return hub
        except httpx.HTTPError:
            time.sleep(0.1)
    hub.terminate()
    raise SystemExit("the hub did not start within 20 s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.flask_tasks")
    parser.add_argument("--port", type=int, default=5000, help="the Flask app (default 5000)")
    parser.add_argument("--hub-port", type=int, default=8000, help="the hub (default 8000)")
    parser.add_argument("--db", default="flask_tasks.db", help="the app's SQLite file")
    parser.add_argument(
        "--max-connections-per-user", type=int, default=3, help="streams per user on the hub"
    )
    parser.add_argument("--step-delay", type=float, default=0.2, help="seconds per job step")
    args = parser.parse_args()

    secret = os.environ.get("TIDINGS_JWT_SECRET") or secrets.token_urlsafe(32)
    hub = start_hub(
        args.hub_port,
        secret=secret,
        app_port=args.port,
        max_per_user=args.max_connections_per_user,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)  # unwinds the server loop, so the hub is stopped below

    signal.signal(signal.SIGTERM, stop)
    try:
        config = Config(
            hub_url=f"http://127.0.0.1:{args.hub_port}",
            jwt_secret=secret,
            db_path=args.db,
            step_delay=args.step_delay,
        )
        print(f"app: http://127.0.0.1:{args.port}/   hub: {config.hub_url}/", flush=True)
        create_app(config).run(host="127.0.0.1", port=args.port, threaded=True)
    finally:
        hub.terminate()
        hub.wait(15)


if __name__ == "__main__":
    main()
