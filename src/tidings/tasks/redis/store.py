"""The Redis task store: :class:`RedisTaskStore`, and :func:`open_store` for ``--store redis``."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis.asyncio

from tidings.errors import BackendUnavailable, ConfigError
from tidings.events import Draft
from tidings.tasks.record import Task
from tidings.tasks.redis.drivers import client_options, register_scripts, run_async
from tidings.tasks.redis.plans import Plan, TaskPlans
from tidings.tasks.redis.scripts import ScriptName
from tidings.tasks.store import Mutation

if TYPE_CHECKING:
    from tidings.config import Settings

__all__ = ["RedisTaskStore", "open_store"]

T = TypeVar("T")


class RedisTaskStore:
    """A :class:`~tidings.tasks.store.TaskStore` in the backend's Redis, shared by every node.

    Besides the protocol it offers :meth:`insert_and_append` and :meth:`update_and_append`
    (a :class:`~tidings.tasks.store.PublishingTaskStore`): the task service uses them so a
    change and its event are one atomic step across nodes (see :mod:`tidings.tasks.redis`).

    Args:
        url: the backend's ``redis://`` URL; the store writes events into that hub's keys.
        prefix: the backend's key prefix.
        max_connections: connections to Redis; more concurrent calls wait for one (5 s).

    :meth:`start` does not connect: while Redis is down, calls raise
    :class:`BackendUnavailable` and the hub keeps serving streams.
    """

    def __init__(self, url: str, *, prefix: str = "tidings", max_connections: int = 50) -> None:
        self.url = url
        self.plans = TaskPlans(prefix)
        self.max_connections = max_connections
        self._redis: redis.asyncio.Redis | None = None
        self._scripts: dict[ScriptName, Any] = {}

    def __repr__(self) -> str:
        return f"<RedisTaskStore prefix={self.plans.keys.prefix!r}>"

    async def start(self) -> None:
        """Make the connection pool (connections are opened on first use)."""
        if self._redis is not None:
            return
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=5.0,
            **client_options(blocking=False),
        )
        self._redis = redis.asyncio.Redis(connection_pool=pool)
        self._scripts = register_scripts(self._redis)

    async def aclose(self) -> None:
        """Close the connection pool."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose(close_connection_pool=True)

    async def _run(self, plan: Plan[T]) -> T:
        if self._redis is None:
            plan.close()
            raise BackendUnavailable("the Redis task store is not open")
        return await run_async(plan, self._redis, self._scripts)

    # -- the TaskStore protocol --------------------------------------------------------

    async def insert(self, task: Task) -> Task:
        """Store a new task; :class:`TaskExists` if the id is taken."""
        return await self._run(self.plans.insert(task))

    async def get(self, task_id: str) -> Task:
        """The task; :class:`TaskNotFound` if there is none."""
        return await self._run(self.plans.get(task_id))

    async def update(self, task_id: str, mutate: Mutation) -> Task:
        """Apply ``mutate`` by compare-and-set (it may run more than once)."""
        return await self._run(self.plans.update(task_id, mutate))

    async def delete(self, task_id: str) -> Task:
        """Delete and return the task; :class:`TaskNotFound` if there is none."""
        return await self._run(self.plans.delete(task_id))

    async def list(
        self, *, owner: str | None = None, status: str | None = None, limit: int = 50
    ) -> builtins.list[Task]:
        """Newest first (creation order), filtered by owner and status."""
        return await self._run(self.plans.list(owner=owner, status=status, limit=limit))

    async def count_active(self) -> int:
        """Tasks ``pending`` or ``running`` (on every node)."""
        return await self._run(self.plans.count_active())

    async def purge(self, before: float) -> builtins.list[Task]:
        """Delete finished tasks older than ``before`` and abandoned unfinished ones; each
        deleted task is returned to exactly one caller, whichever node purges."""
        return await self._run(self.plans.purge(before))

    # -- PublishingTaskStore -----------------------------------------------------------

    async def insert_and_append(self, task: Task, event: Callable[[Task], Draft]) -> Task:
        """Store a new task and append ``event(task)`` in one atomic step.

        Returns the task with the event's id as ``last_event_id``.

        Raises:
            TaskExists: the id is taken (nothing appended).
        """
        return await self._run(self.plans.insert(task, event))

    async def update_and_append(
        self, task_id: str, mutate: Mutation, event: Callable[[Task], Draft]
    ) -> Task:
        """Replace the task with ``mutate(task)`` and append ``event(new)`` in one atomic
        step; returns the new task with the event's id as ``last_event_id``.

        Raises:
            TaskNotFound: no such task. Whatever ``mutate`` or ``event`` raised: nothing
            was written or appended.
        """
        return await self._run(self.plans.update(task_id, mutate, event))


def open_store(settings: Settings) -> RedisTaskStore:
    """The Redis task store of a hub whose backend is ``settings.backend`` (not started).

    Raises:
        ConfigError: the backend is not a Redis URL (the store lives in the backend's Redis).
    """
    url = settings.backend
    if not url.startswith(("redis://", "rediss://")):
        raise ConfigError(
            "invalid --store / TIDINGS_STORE: 'redis' keeps tasks in the backend's Redis; it "
            "needs --backend redis://..."
        )
    return RedisTaskStore(url)
