"""The SQLite task store (the default, ``--store sqlite:///./tidings.db``): tasks survive a
restart.

Decisions worth knowing before changing this file:

- One connection, used by one dedicated thread (a single-thread executor): SQLite calls
  block, so they never run on the event loop, and one thread means one connection and no
  locking of our own. Calls are queued in order.
- WAL journal with ``synchronous=NORMAL``: readers never block the writer, and a commit
  survives a process crash (it may be lost only on a power cut, which is SQLite's usual
  WAL trade-off).
- Every read-modify-write runs in ``BEGIN IMMEDIATE``: the write lock is taken before the
  read, so two processes sharing the file cannot both read the same record and both
  commit a change to it (two racing terminal transitions: one wins, the other sees the
  terminal state and raises ``TaskFinished``). ``busy_timeout`` makes the other wait.
- The whole record is one JSON column; the columns beside it exist only to filter and
  purge without decoding every row. ``rowid`` order is creation order (newest first is
  ``rowid DESC``).
- ``sqlite3`` errors become :class:`~tidings.errors.BackendUnavailable` here, at the seam.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tidings.errors import BackendUnavailable, ConfigError, TaskExists, TaskNotFound
from tidings.tasks.model import Task
from tidings.tasks.store import Mutation

__all__ = ["SQLiteTaskStore"]

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tidings_tasks (
    task_id     TEXT PRIMARY KEY,
    owner       TEXT,
    status      TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tidings_tasks_owner ON tidings_tasks (owner);
CREATE INDEX IF NOT EXISTS tidings_tasks_status ON tidings_tasks (status);
CREATE INDEX IF NOT EXISTS tidings_tasks_finished ON tidings_tasks (finished_at);
"""
_EXPIRED = (
    "(finished_at IS NOT NULL AND finished_at < :before)"
    " OR (finished_at IS NULL AND updated_at < :before)"
)


class SQLiteTaskStore:
    """A :class:`~tidings.tasks.store.TaskStore` in an SQLite file.

    Args:
        path: the database file (created with its directory if missing), or ``:memory:``.

    Example::

        store = SQLiteTaskStore.from_url("sqlite:///./tidings.db")
        await store.start()
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteTaskStore:
        """The store for ``sqlite:///relative/path`` or ``sqlite:////absolute/path``.

        Raises:
            ConfigError: ``url`` is not an ``sqlite:///`` URL with a path.
        """
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ConfigError(
                f"invalid --store / TIDINGS_STORE: expected sqlite:///path (got {url!r})"
            )
        return cls(url[len(prefix) :])

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (WAL mode) and create the schema."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidings-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        executor = self._executor
        if executor is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._executor = None
            executor.shutdown(wait=True)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the TaskStore protocol --------------------------------------------------------

    async def insert(self, task: Task) -> Task:
        """Store a new task; :class:`TaskExists` if the id is taken."""
        return await self._run(self._insert, task)

    async def get(self, task_id: str) -> Task:
        """The task; :class:`TaskNotFound` if there is none."""
        return await self._run(self._get, task_id)

    async def update(self, task_id: str, mutate: Mutation) -> Task:
        """Apply ``mutate`` in a ``BEGIN IMMEDIATE`` transaction."""
        return await self._run(self._update, task_id, mutate)

    async def delete(self, task_id: str) -> Task:
        """Delete and return the task; :class:`TaskNotFound` if there is none."""
        return await self._run(self._delete, task_id)

    async def list(
        self, *, owner: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[Task]:
        """Newest first (reverse creation order), filtered by owner and status."""
        return await self._run(self._list, owner, status, limit)

    async def count_active(self) -> int:
        """Tasks ``pending`` or ``running``."""
        return await self._run(self._count_active)

    async def purge(self, before: float) -> builtins.list[Task]:
        """Delete finished tasks older than ``before`` and abandoned unfinished ones."""
        return await self._run(self._purge, before)

    # -- in the store's thread -----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise BackendUnavailable("the SQLite task store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise BackendUnavailable("the SQLite task store failed") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendUnavailable("the SQLite task store is not open")
        return self._db

    def _insert(self, task: Task) -> Task:
        try:
            self._conn.execute(
                "INSERT INTO tidings_tasks (task_id, owner, status, updated_at, finished_at,"
                " record) VALUES (?, ?, ?, ?, ?, ?)",
                (task.task_id, *_columns(task)),
            )
        except sqlite3.IntegrityError:
            raise TaskExists(f"task {task.task_id} exists") from None
        return task

    def _get(self, task_id: str) -> Task:
        row = self._conn.execute(
            "SELECT record FROM tidings_tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None:
            raise TaskNotFound(f"no task {task_id}")
        return _decode(row[0])

    def _update(self, task_id: str, mutate: Mutation) -> Task:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT record FROM tidings_tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
            if row is None:
                raise TaskNotFound(f"no task {task_id}")
            new = mutate(_decode(row[0]))
            owner, status, updated_at, finished_at, record = _columns(new)
            db.execute(
                "UPDATE tidings_tasks SET owner = ?, status = ?, updated_at = ?,"
                " finished_at = ?, record = ? WHERE task_id = ?",
                (owner, status, updated_at, finished_at, record, task_id),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return new

    def _delete(self, task_id: str) -> Task:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT record FROM tidings_tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
            if row is None:
                raise TaskNotFound(f"no task {task_id}")
            db.execute("DELETE FROM tidings_tasks WHERE task_id = ?", (task_id,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return _decode(row[0])

    def _list(self, owner: str | None, status: str | None, limit: int) -> builtins.list[Task]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = "SELECT record FROM tidings_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid DESC LIMIT ?"
        params.append(max(0, limit))
        return [_decode(row[0]) for row in self._conn.execute(sql, params)]

    def _count_active(self) -> int:
        row = self._conn.execute(
            "SELECT COUNT(*) FROM tidings_tasks WHERE status IN ('pending', 'running')"
        ).fetchone()
        return int(row[0])

    def _purge(self, before: float) -> builtins.list[Task]:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                f"SELECT record FROM tidings_tasks WHERE {_EXPIRED}", {"before": before}
            ).fetchall()
            db.execute(f"DELETE FROM tidings_tasks WHERE {_EXPIRED}", {"before": before})
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [_decode(row[0]) for row in rows]


def _columns(task: Task) -> tuple[str | None, str, float, float | None, str]:
    record = orjson.dumps(task.to_record()).decode()
    return task.owner, task.status, task.updated_at, task.finished_at, record


def _decode(record: str) -> Task:
    return Task.from_record(orjson.loads(record))
