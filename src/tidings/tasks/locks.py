"""Per-task locks: the events of one task reach the backend in ``sequence`` order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["TaskLocks"]


class TaskLocks:
    """One ``asyncio.Lock`` per task id, created on demand and dropped when nobody holds or
    waits for it, so the map never grows with the number of tasks ever seen."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, task_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(task_id)
        if entry is None:
            entry = self._locks[task_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[task_id]

    def __len__(self) -> int:
        return len(self._locks)
