"""Celery tasks that report their progress to a tidings hub.

Two ways in, and one way out of the enqueue race:

- **A task base class** for tasks you write: ``@app.task(base=TidingsTask, bind=True)``.
  The task body gets ``self.progress()``, ``self.track(items)``, ``self.file()`` and
  ``self.tracker``; the base class creates the tidings task when the worker starts the
  task, completes it with the return value, fails it with the exception, and cancels it
  when the task is revoked::

      @app.task(base=TidingsTask, bind=True)
      def convert_images(self: TidingsTask, paths: list[str]) -> dict[str, int]:
          for path in self.track(paths):           # progress: 1 of n, 2 of n, ...
              self.file(path, status="processing")
              convert(path)
              self.file(path, status="completed")
          return {"converted": len(paths)}         # task_completed's result

- **Signal handlers** for tasks you do not want to touch: ``connect(app)`` reports every
  task of ``app`` (start, success, failure, retry, revoke) from Celery's ``task_prerun``,
  ``task_success``, ``task_failure``, ``task_retry`` and ``task_revoked`` signals.

- **enqueue(task, args)** creates the tidings task (``pending``) *before*
  ``apply_async``, with the same id, so a web view can hand the browser
  ``/tasks/<id>/stream`` at once: no 404 while the task waits in the queue.

The tidings task id is the Celery task id. Celery states map to tidings statuses so:

============  ==========  ==================================================================
Celery state  tidings     reported by
============  ==========  ==================================================================
PENDING       pending     ``enqueue()`` (a plain ``delay()`` reports nothing until STARTED)
RECEIVED      pending     nothing: the worker holds the task but has not started it
STARTED       running     ``before_start`` / ``task_prerun``: created (or adopted), running
PROGRESS      running     ``self.progress()``, ``self.track()``, ``self.file()``, or
                          ``self.update_state(state="PROGRESS", meta={"current", "total"})``
RETRY         running     ``on_retry`` / ``task_retry``: message ``retrying: <exception>``;
                          the next attempt adopts the same task
SUCCESS       completed   ``on_success`` / ``task_success``: ``result`` = the return value
FAILURE       failed      ``on_failure`` / ``task_failure``: ``error`` = the exception's
                          message, ``details`` = ``{"type": "<exception class>"}``; also hard
                          time limits and a worker process that died
REJECTED      failed      ``task_failure`` (``Reject`` without requeue)
REVOKED       cancelled   ``task_revoked``: reason ``revoked``, ``expired`` or ``terminated``
IGNORED       (unchanged) nothing: a task that raises ``Ignore`` (or calls ``replace()``:
                          the replacement keeps the id) owns its outcome
============  ==========  ==================================================================

A task that a worker receives but does not define (``task_unknown``: Celery drops the
message, its state stays PENDING) is failed on the hub (``unknown task <name>``), so a
stream made by ``enqueue()`` does not wait forever.

Decisions worth knowing before changing this package:

- **Reporting never breaks the work.** A hub that cannot take a report (unreachable,
  shutting down, rate-limiting, refusing the token) is logged (a warning once per task,
  then debug) and the task runs on; completion and failure reports are never raised into
  Celery. What does reach the task: cancellation (below), a report the hub rejects as
  invalid (``InvalidEvent``: ``current`` over ``total``, an unknown file status: a bug in
  the body), and a bad ``tidings_url`` (``ConfigError`` when the task starts: a deployment
  mistake should be loud).
- **Cancel on the hub, stop in Celery.** A task cancelled (or finished) on the hub before
  the worker starts it is skipped: ``before_start`` raises ``celery.exceptions.Ignore``.
  While it runs, the next report that ``self.progress()``, ``self.track()`` or
  ``self.file()`` sends raises :class:`~tidings.errors.TaskFinished`; catch it to stop
  early, or let it propagate (Celery records FAILURE; the hub keeps ``cancelled``).
- **Results are JSON.** The return value is sent as JSON; what JSON cannot hold is sent as
  its ``str()`` (``orjson``'s ``default=str``). A result over the hub's
  ``--max-event-bytes`` completes the task with ``result: null`` and a logged warning.
- **One Publisher per app and process.** A prefork pool's child makes its own on first use
  (an HTTP client's connections must not cross a ``fork``).
- **Where the hub is:** ``app.conf.tidings_url`` / ``app.conf.tidings_token``, else the
  ``TIDINGS_URL`` / ``TIDINGS_TOKEN`` environment variables, else
  ``http://127.0.0.1:8000`` (as ``tidings tail``). With auth on, give workers a token
  allowed to publish on ``tasks/*``.
- Handlers that must see tasks the base class never runs (revoked before starting, a worker
  process lost) are Celery signal receivers, connected when a ``TidingsTask`` is bound to
  an app, never at import.

Where things are: :mod:`~tidings.integrations.celery.base` (:class:`TidingsTask`),
:mod:`~tidings.integrations.celery.signals` (:func:`connect`),
:mod:`~tidings.integrations.celery.enqueueing` (:func:`enqueue`),
:mod:`~tidings.integrations.celery.reporter` (what they share),
:mod:`~tidings.integrations.celery.publishers` (where the hub is) and
:mod:`~tidings.integrations.celery.states` (the table above).
"""

from __future__ import annotations

from tidings.integrations.celery.base import TidingsTask
from tidings.integrations.celery.enqueueing import enqueue
from tidings.integrations.celery.publishers import DEFAULT_URL, hub_settings, publisher_for
from tidings.integrations.celery.signals import SignalReporter, connect
from tidings.integrations.celery.states import CELERY_STATES, tidings_status

__all__ = [
    "CELERY_STATES",
    "DEFAULT_URL",
    "SignalReporter",
    "TidingsTask",
    "connect",
    "enqueue",
    "hub_settings",
    "publisher_for",
    "tidings_status",
]
