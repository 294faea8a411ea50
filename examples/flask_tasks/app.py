"""A Flask app whose database-backed tasks report to a tidings hub (see README.md).

- The app keeps its own record of every task in SQLite (:class:`Database`): who started
  it, its title, its status. That is the app's business; tidings never reads it.
- ``POST /api/tasks`` creates the task on the hub *with the user's own token*, so the user
  owns it there too, then runs the job in a thread. The job reports with the sync
  :class:`~tidings.client.Publisher` (``track()``) under the app's worker token.
- The page watches ``<hub>/tasks/<id>/stream`` with ``tidings.js``, authenticated by a
  short-lived token for the logged-in user (``GET /api/token``): only the owner can
  watch, the hub caps each user's open streams, and the stream ends with the task.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from flask import Flask, Response, abort, jsonify, request, session

from tidings.auth.jwt import mint_token
from tidings.client import Publisher
from tidings.errors import TaskFinished, TaskNotFound

PAGE = Path(__file__).with_name("page.html")

#: Lifetime of the tokens the page gets: a stream outliving its token ends with
#: ``auth_expired``, and tidings.js reconnects with a fresh one (it asks ``/api/token``).
BROWSER_TOKEN_TTL = 300.0


@dataclass(frozen=True)
class Config:
    """Where the hub is and how to sign its tokens.

    Attributes:
        hub_url: the hub, as this app and the browsers reach it.
        jwt_secret: the hub's ``--jwt-secret`` (HS256, 32 bytes or more).
        db_path: the app's SQLite file.
        step_delay: default seconds per step of a job (the "work").
    """

    hub_url: str
    jwt_secret: str
    db_path: str
    step_delay: float = 0.2
    session_key: str = field(default_factory=lambda: secrets.token_hex(32))


class Database:
    """The app's own task records (one row per task), in SQLite."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                "title TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL)"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per operation: views and job threads never share one.
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def add(self, task_id: str, *, owner: str, title: str) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO tasks VALUES (?, ?, ?, 'pending', ?)",
                (task_id, owner, title, time.time()),
            )

    def set_status(self, task_id: str, status: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE tasks SET status = ? WHERE id = ?", (status, task_id))

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return dict(row) if row is not None else None

    def of_user(self, owner: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM tasks WHERE owner = ? ORDER BY created_at DESC LIMIT 50", (owner,)
            ).fetchall()
        return [dict(row) for row in rows]


def create_app(config: Config) -> Flask:
    """The Flask app, reporting to the hub at ``config.hub_url``."""
    app = Flask(__name__)
    app.secret_key = config.session_key
    db = Database(config.db_path)
    hub = config.hub_url.rstrip("/")

    def token_for(user: str, *, ttl: float = BROWSER_TOKEN_TTL) -> str:
        # A user may always read their own tasks and users/<user>/**: no grant needed.
        return mint_token(config.jwt_secret, sub=user, ttl=ttl)

    # The job runner's token: may report on any task (publish on tasks/*), owns none.
    worker_token = mint_token(config.jwt_secret, sub="flask-worker", publish=["tasks/*"], ttl=None)
    # The app's service token, to read the hub's connection counts (/stats is admin only).
    admin_token = mint_token(config.jwt_secret, sub="flask-app", admin=True, ttl=None)

    def current_user() -> str:
        user = session.get("user")
        if not isinstance(user, str):
            abort(401)
        return user

    def run_job(task_id: str, steps: int, delay: float, fail_at: int | None) -> None:
        """The background job: ``steps`` units of "work", reported to the hub as it goes."""
        db.set_status(task_id, "running")
        try:
            with (
                Publisher(hub, token=worker_token) as pub,
                pub.track(task_id, total=steps) as tracker,
            ):
                for step in tracker.iter(range(1, steps + 1)):
                    time.sleep(delay)  # the work itself
                    if step == fail_at:
                        raise RuntimeError(f"step {step} failed")
                tracker.result = {"steps": steps}
        except TaskFinished:
            # Cancelled elsewhere (the user's cancel button): the next report said so.
            db.set_status(task_id, "cancelled")
        except Exception:
            db.set_status(task_id, "failed")  # track() failed the hub task with the message
        else:
            db.set_status(task_id, "completed")

    @app.get("/")
    def page() -> Response:
        return Response(PAGE.read_text(), mimetype="text/html")

    @app.post("/login")
    def login() -> Response:
        """A stand-in for the app's real login: any name of letters and digits."""
        user = str((request.get_json(silent=True) or request.form).get("user", ""))
        if not (user.isascii() and user.isalnum() and len(user) <= 32):
            abort(400)
        session["user"] = user
        return jsonify(user=user)

    @app.get("/api/token")
    def browser_token() -> Response:
        """What the page needs to open streams: the hub's URL and a token for this user."""
        return jsonify(hub=hub, token=token_for(current_user()))

    @app.post("/api/tasks")
    def start_task() -> tuple[Response, int]:
        user = current_user()
        body = request.get_json(silent=True) or {}
        steps = int(body.get("steps", 20))
        delay = float(body.get("delay", config.step_delay))
        fail_at = body.get("fail_at")
        if not 1 <= steps <= 10_000 or not 0 <= delay <= 10:
            abort(400)
        title = str(body.get("title") or f"Job of {steps} steps")[:200]
        task_id = uuid.uuid4().hex
        db.add(task_id, owner=user, title=title)
        # Created with the user's token: the user owns the hub task, so only they (and
        # admins, and the worker token) can read or watch it.
        with Publisher(hub, token=token_for(user, ttl=60)) as pub:
            pub.create_task(task_id=task_id, title=title, total=steps)
        threading.Thread(
            target=run_job,
            args=(task_id, steps, delay, int(fail_at) if fail_at is not None else None),
            name=f"job-{task_id}",
            daemon=True,
        ).start()
        return jsonify(task_id=task_id, stream=f"{hub}/tasks/{task_id}/stream"), 202

    @app.get("/api/tasks")
    def list_tasks() -> Response:
        return jsonify(tasks=db.of_user(current_user()))

    @app.get("/api/tasks/<task_id>")
    def get_task(task_id: str) -> Response:
        """The app's record, with how many streams watch the task right now."""
        record = db.get(task_id)
        if record is None or record["owner"] != current_user():
            abort(404)
        stats = httpx.get(
            f"{hub}/stats", headers={"Authorization": f"Bearer {admin_token}"}, timeout=5
        ).json()
        connections = stats["connections"]
        record["watchers"] = connections["by_task"].get(task_id, 0)
        record["hub_connections"] = connections["total"]
        return jsonify(record)

    @app.post("/api/tasks/<task_id>/cancel")
    def cancel_task(task_id: str) -> Response:
        user = current_user()
        record = db.get(task_id)
        if record is None or record["owner"] != user:
            abort(404)
        try:
            with Publisher(hub, token=token_for(user, ttl=60)) as pub:
                pub.cancel(task_id, reason=f"cancelled by {user}")
        except TaskFinished:
            abort(409)
        except TaskNotFound:
            abort(404)
        # The job learns it at its next report and stops; the record says so at once.
        db.set_status(task_id, "cancelled")
        return jsonify(task_id=task_id, status="cancelled")

    return app
