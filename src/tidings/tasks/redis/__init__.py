"""The Redis task store (``--store redis``, the default with a Redis backend): tasks live in
the backend's Redis, so every node and every worker sees one set of tasks (SPEC §6).

Decisions worth knowing before changing this package:

- **One script per change, event included.** A change of a task and its event are one Lua
  script: :data:`PUBLISH_SCRIPT` checks the record's version, runs the backend's
  :data:`~tidings.backends.redis.APPEND_SCRIPT` (embedded as a function, not copied), and
  writes the new record with the event's id. The task service's per-task lock is per node;
  two nodes (or a node and a worker) changing one task would otherwise each commit a
  ``sequence`` and then append their events in either order. In one script, the event of
  ``sequence`` N+1 can only be appended on top of the record of N, atomically, so on the
  wire (the hub log and the ``tasks/<id>`` history) a task's ``sequence`` rises by exactly
  one per event, whichever node or worker made it. It also means a change is never
  committed without its event, nor published without being committed; a refused script
  (Redis down) changed nothing.
- **Compare-and-set by version.** Writers read the record and its version (``v``), apply
  the pure transition in Python, and send the result with the version they read; the
  script refuses it if the version moved and the writer retries on the newer record. So
  ``mutate`` may run more than once (the :class:`~tidings.tasks.store.TaskStore` contract),
  the loser of two racing terminal requests sees the winner's record and raises
  :class:`~tidings.errors.TaskFinished`, and nothing of the loser is written or
  published. This is the ``WATCH``/``MULTI`` loop done in a script, so the append can run
  in the same atomic step.
- **Order of writes inside the script.** Checks first (reads only), then the append (whose
  first write is its ``XADD``), then the record. Redis refuses a script for lack of memory
  only at its first write, so a script that started writing finishes: a change is never
  half applied.
- **Sans-I/O plans.** Every operation is a generator (:class:`TaskPlans`) that yields the
  Redis round trips it needs and receives their replies. :func:`run_async` drives it on
  ``redis.asyncio`` (this store, ``AsyncPublisher``), :func:`run_sync` on the blocking client
  (``Publisher("redis://...")`` in a Celery worker), so the hub and a worker run the same
  code and publish the same events.
- The event id of the latest event is kept beside the record (field ``e``), not in its
  JSON: the script learns it only when the append returns.
- ``redis-py``'s automatic retries are off, as in the backend: a script whose reply was
  lost may have run, and running a change twice would publish two events.

Where things are: the scripts in :mod:`~tidings.tasks.redis.scripts`, the plans (and the
key layout) in :mod:`~tidings.tasks.redis.plans`, the drivers in
:mod:`~tidings.tasks.redis.drivers`, the store in :mod:`~tidings.tasks.redis.store`.
"""

from __future__ import annotations

from tidings.tasks.redis.drivers import client_options, register_scripts, run_async, run_sync
from tidings.tasks.redis.plans import Commands, Plan, Script, TaskKeys, TaskPlans
from tidings.tasks.redis.scripts import PUBLISH_SCRIPT, SCRIPTS, ScriptName
from tidings.tasks.redis.store import RedisTaskStore, open_store

__all__ = [
    "PUBLISH_SCRIPT",
    "SCRIPTS",
    "Commands",
    "Plan",
    "RedisTaskStore",
    "Script",
    "ScriptName",
    "TaskKeys",
    "TaskPlans",
    "client_options",
    "open_store",
    "register_scripts",
    "run_async",
    "run_sync",
]
