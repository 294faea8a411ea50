"""The Redis backend: any number of processes and hosts act as one hub (SPEC §6).

Decisions worth knowing before changing this package:

- **One script per publish, pipelined.** :data:`APPEND_SCRIPT` does everything atomically:
  the idempotency check, the epoch, the next value of the hub-wide counter, ``XADD`` to the
  topic's history (trimmed by size, with the highest evicted seq recorded), the topic
  registry, ``XADD`` to the hub-wide log, and, last, the idempotency key. Two nodes
  receiving the same key at the same instant publish once; a script that fails before its
  last write leaves the key unused (SPEC §3). One sender task per node sends the publishes
  made meanwhile as one pipeline: one round trip per publish when idle, one for many under
  load (about ten times the throughput of a round trip each, measured on a 2-core box).
- **Fan-out reads a stream, not pub/sub.** Each node runs one reader that follows the
  hub-wide log with ``XREAD BLOCK``. A stream keeps what was published while a node was
  cut off, so a reader that reconnects resumes from its last position and delivers the
  missed events in order (SPEC §6); pub/sub would drop them, and Redis cuts slow pub/sub
  readers. A node's own publishes come back through the same reader, so every node
  delivers in one order: the id order.
- **Two id spaces.** Topic histories use stream ids ``<seq>-0``, so a resume is one
  ``XRANGE`` per topic. The log uses Redis's own time-based ids, so it can be trimmed by age
  (``XTRIM MINID``) and a log recreated after data loss still sorts after a reader's old
  position.
- **Epochs.** The epoch lives in Redis (created with ``SET NX``). When it vanished (Redis
  flushed, or restarted without persistence) the next writer creates a new one and wipes
  what is left of the old history, so old ids become "unknown". The counter does not restart
  below the highest seq the writer has seen (``floor``): seqs keep rising across epochs, so
  de-duplication by seq (``Connection.min_seq``) stays valid on every node.
- **The age window uses each event's own time** (``Draft.time``), like the memory backend.
  Events older than ``history_ttl`` in a busy topic stay in Redis until trimmed by size but
  are never replayed (a resume that needs them gets ``gap`` "expired"); topics idle for
  longer than ``history_ttl`` are pruned by a sweeper, and their highest seq folds into one
  hub-wide watermark, as in the memory backend.

Where things are:

- :mod:`~tidings.backends.redis.backend`: :class:`RedisBackend`, the backend itself
  (publish, replay, start and close, the sweeper);
- :mod:`~tidings.backends.redis.outbox`: a node's publishes, sent as pipelines;
- :mod:`~tidings.backends.redis.reader`: the log reader that delivers every event;
- :mod:`~tidings.backends.redis.scripts`: the Lua scripts (:data:`APPEND_SCRIPT`, ...);
- :mod:`~tidings.backends.redis.keys`: the key layout (:class:`RedisKeys`);
- :mod:`~tidings.backends.redis.encoding`: events in Redis (:func:`append_arguments`,
  :func:`parse_appended`, entries read back);
- :mod:`~tidings.backends.redis.client`: the redis-py clients.
"""

from __future__ import annotations

from tidings.backends.redis.backend import RedisBackend
from tidings.backends.redis.encoding import append_arguments, parse_appended
from tidings.backends.redis.keys import RedisKeys
from tidings.backends.redis.scripts import APPEND_SCRIPT

__all__ = ["APPEND_SCRIPT", "RedisBackend", "RedisKeys", "append_arguments", "parse_appended"]
