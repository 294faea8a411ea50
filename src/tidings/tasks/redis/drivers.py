"""Drivers: run a task plan on a redis-py client, asyncio (:func:`run_async`) or blocking
(:func:`run_sync`), translating redis-py errors into :class:`BackendUnavailable`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from tidings.backends.redis.client import CLIENT_OPTIONS
from tidings.errors import BackendUnavailable
from tidings.tasks.redis.plans import Plan, Script
from tidings.tasks.redis.scripts import SCRIPTS, ScriptName

__all__ = ["client_options", "register_scripts", "run_async", "run_sync"]

logger = logging.getLogger("tidings.tasks.redis")

T = TypeVar("T")


def client_options(*, blocking: bool) -> dict[str, Any]:
    """Options of every Redis client of tasks and workers (as the backend's: no retries):
    a ``blocking`` client's (``redis.Redis``) or an asyncio one's (``redis.asyncio.Redis``).
    """
    return {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "socket_keepalive": True,
        # A script retried after Redis ran it would apply a change (and its event) twice.
        # redis-py's asyncio and blocking clients each take their own kind of Retry.
        "retry": Retry(NoBackoff(), 0) if blocking else AsyncRetry(NoBackoff(), 0),
        "decode_responses": False,
        **CLIENT_OPTIONS,
    }


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Translate redis-py and socket errors into :class:`BackendUnavailable`."""
    try:
        yield
    except RedisError as exc:
        if isinstance(exc, ResponseError):
            # Not a lost link: a script error, an OOM, a read-only replica. Say what.
            logger.error("redis refused a task operation: %s", exc)
        raise BackendUnavailable("the task store is unavailable (redis)") from exc
    except OSError as exc:
        raise BackendUnavailable("the task store is unavailable (redis)") from exc


def register_scripts(client: Any) -> dict[ScriptName, Any]:
    """Register :data:`SCRIPTS` on a redis-py client (sync or asyncio)."""
    return {name: client.register_script(lua) for name, lua in SCRIPTS.items()}


async def run_async(
    plan: Plan[T], client: redis.asyncio.Redis, scripts: Mapping[ScriptName, Any]
) -> T:
    """Run ``plan`` on an asyncio client (scripts from :func:`register_scripts`)."""
    reply: Any = None
    try:
        while True:
            try:
                op = plan.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            with _unavailable():
                if isinstance(op, Script):
                    reply = await scripts[op.name](keys=op.keys, args=op.args)
                else:
                    pipe = client.pipeline(transaction=True)
                    for name, args in op.calls:
                        getattr(pipe, name)(*args)
                    reply = await pipe.execute()
    finally:
        plan.close()


def run_sync(plan: Plan[T], client: redis.Redis, scripts: Mapping[ScriptName, Any]) -> T:
    """Run ``plan`` on a blocking client (scripts from :func:`register_scripts`)."""
    reply: Any = None
    try:
        while True:
            try:
                op = plan.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            with _unavailable():
                if isinstance(op, Script):
                    reply = scripts[op.name](keys=op.keys, args=op.args)
                else:
                    pipe = client.pipeline(transaction=True)
                    for name, args in op.calls:
                        getattr(pipe, name)(*args)
                    reply = pipe.execute()
    finally:
        plan.close()
