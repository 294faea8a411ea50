"""Control commands between the nodes of a hub: Redis pub/sub out, a reply list back.

``POST /admin/disconnect`` on any node must end streams on every node. The node that
receives it publishes the command on ``{p}:control``; every node (itself included) has
one subscription to that channel, runs the command on its own streams and pushes how many
it ended onto ``{p}:reply:<command id>``. ``PUBLISH`` answers with the number of nodes
that received the command, so the sender knows exactly how many replies to wait for; it
sums them. A node that does not answer within :data:`REPLY_TIMEOUT` seconds (stuck, or
killed after it received the command) is not counted, and a node whose subscription is
down at that moment (a Redis outage on its side) does not receive the command at all;
both are logged.

Pub/sub, not the hub log, on purpose: a command is for the streams open now. A node that
reads the log after an outage would replay old commands on streams opened since.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from tidings.backends.base import Control, Disconnect
from tidings.backends.redis.errors import unavailable
from tidings.backends.redis.keys import RedisKeys

__all__ = ["REPLY_TIMEOUT", "ControlChannel"]

logger = logging.getLogger("tidings.backends.redis")

#: Seconds the sender of a command waits for every node's reply.
REPLY_TIMEOUT: Final = 5.0
#: Seconds a reply list is kept (the sender reads it well before).
_REPLY_TTL_MS: Final = 30_000
#: How long one wait for a message lasts before the listener checks it should stop.
_LISTEN_SECONDS: Final = 5.0


class ControlChannel:
    """A node's end of the control channel: it listens for commands and sends them.

    Args:
        subscriber: the client whose pool gives the subscription its own connection.
        client: the client for commands (publish, replies).
        keys: the hub's keys.
    """

    def __init__(self, subscriber: Redis, client: Redis, keys: RedisKeys) -> None:
        self._subscriber = subscriber
        self._redis = client
        self._keys = keys
        self._pubsub: PubSub | None = None
        self.handler: Control | None = None
        #: Checked by the loop: redis-py can lose a cancellation (see ``RedisBackend.aclose``).
        self.closing = False

    async def subscribe(self) -> bool:
        """Subscribe now; whether it worked (if not, :meth:`listen_forever` keeps trying)."""
        pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys.control)
        except (RedisError, OSError):
            await pubsub.aclose()
            return False
        self._pubsub = pubsub
        return True

    async def listen_forever(self) -> None:
        """Run every command received on this node; resubscribe after a lost link."""
        attempt = 0
        while not self.closing:
            try:
                if self._pubsub is None and not await self.subscribe():
                    raise ConnectionError("cannot subscribe to the control channel")
                attempt = 0
                pubsub = self._pubsub
                while pubsub is not None and not self.closing:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTEN_SECONDS
                    )
                    if message is not None and message["type"] == "message":
                        await self._run(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.closing:
                    return
                if attempt == 0:
                    logger.warning("the control channel failed (%s); resubscribing", exc)
            except Exception:
                logger.exception("the control channel failed; resubscribing")
            await self._drop()
            attempt += 1
            delay = min(1.0, 0.05 * 2.0 ** min(attempt, 16))
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))

    async def aclose(self) -> None:
        """Drop the subscription (the listener task is cancelled by its owner)."""
        self.closing = True
        await self._drop()

    async def _drop(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError) as exc:
                logger.debug("closing the control subscription failed: %s", exc)

    async def _run(self, raw: bytes) -> None:
        """Run one command on this node's streams and reply with the count."""
        try:
            message: dict[str, Any] = orjson.loads(raw)
            command = Disconnect(message["user"], message["topic"], message["reason"])
            reply_to = self._keys.reply(str(message["id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.error("skipping a malformed control command %r", raw[:200])
            return
        handler = self.handler
        ended = 0
        if handler is not None:
            try:
                ended = handler(command)
            except Exception:
                logger.exception("running a control command failed")
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(reply_to, ended)
        pipe.pexpire(reply_to, _REPLY_TTL_MS)
        await pipe.execute()

    async def disconnect(self, command: Disconnect) -> int:
        """Send ``command`` to every node; the streams they ended, summed.

        Raises:
            BackendUnavailable: Redis cannot be reached (no node got the command).
        """
        ident = secrets.token_hex(8)
        body = orjson.dumps(
            {"id": ident, "user": command.user, "topic": command.topic, "reason": command.reason}
        )
        reply_to = self._keys.reply(ident)
        with unavailable("send a control command"):
            nodes = int(await self._redis.publish(self._keys.control, body))
        total = answered = 0
        deadline = time.monotonic() + REPLY_TIMEOUT
        with unavailable("read control replies"):
            while answered < nodes:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Below the pool's socket timeout (5 s), so the wait itself never times out.
                reply: Any = await self._redis.blpop([reply_to], timeout=min(left, 2.0))
                if reply is not None:
                    total += int(reply[1])
                    answered += 1
            await self._redis.delete(reply_to)
        if answered < nodes:
            logger.warning(
                "%d of %d nodes did not answer a disconnect within %.0f s; their streams are "
                "not counted",
                nodes - answered,
                nodes,
                REPLY_TIMEOUT,
            )
        return total
