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

Decisions worth knowing before changing this file:

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
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from types import MappingProxyType
from typing import Any, Final, TypeAlias, TypeVar

import orjson
from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import Celery, Task, current_task, signals, states
from celery.exceptions import Ignore, Reject
from celery.result import AsyncResult
from celery.utils.serialization import UnpickleableExceptionWrapper

from tidings.client.publisher import Publisher
from tidings.client.tracker import Tracker
from tidings.errors import (
    EventTooLarge,
    InvalidEvent,
    TaskExists,
    TaskFinished,
    TaskNotFound,
    TidingsError,
)
from tidings.tasks.model import TaskStatus
from tidings.types import JSON

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

logger = logging.getLogger(__name__)

T = TypeVar("T")
Number: TypeAlias = int | float

#: The hub used when neither the Celery config nor the environment names one.
DEFAULT_URL: Final = "http://127.0.0.1:8000"

#: Celery state -> tidings status (the table in the module docstring). ``IGNORED`` has no
#: counterpart; custom states (``PROGRESS``, ``DOWNLOADING``...) are ``running``.
CELERY_STATES: Final[Mapping[str, TaskStatus]] = MappingProxyType(
    {
        states.PENDING: "pending",
        states.RECEIVED: "pending",
        states.STARTED: "running",
        "PROGRESS": "running",
        states.RETRY: "running",
        states.SUCCESS: "completed",
        states.FAILURE: "failed",
        states.REJECTED: "failed",
        states.REVOKED: "cancelled",
    }
)


def tidings_status(state: str) -> TaskStatus | None:
    """The tidings status of a Celery state; ``None`` for ``IGNORED``.

    States Celery does not define (custom ones such as ``PROGRESS``) are in progress, as
    Celery itself treats them: ``running``.

    Example::

        tidings_status(AsyncResult(task_id).state)   # "running"
    """
    if state == states.IGNORED:
        return None
    return CELERY_STATES.get(state, "running")


# -- where the hub is ------------------------------------------------------------------


def hub_settings(app: Celery) -> tuple[str, str | None]:
    """The hub URL and token for ``app``'s tasks: the Celery config (``tidings_url``,
    ``tidings_token``), else ``TIDINGS_URL`` / ``TIDINGS_TOKEN``, else :data:`DEFAULT_URL`
    and no token."""
    url = app.conf.get("tidings_url") or os.environ.get("TIDINGS_URL") or DEFAULT_URL
    token = app.conf.get("tidings_token") or os.environ.get("TIDINGS_TOKEN") or None
    return str(url), str(token) if token is not None else None


_publishers: weakref.WeakKeyDictionary[Celery, tuple[int, Publisher]] = weakref.WeakKeyDictionary()
_publishers_lock = threading.Lock()


def publisher_for(app: Celery) -> Publisher:
    """The :class:`Publisher` that ``app``'s tasks report through (see :func:`hub_settings`).

    Made on first use, once per app and per process (a forked pool child makes its own),
    then shared by every task and thread of that process; it is closed when the app is
    garbage-collected or the process exits. To report through a publisher of your own,
    override :attr:`TidingsTask.publisher` or pass ``publisher=`` to :func:`connect` and
    :func:`enqueue`.

    Raises:
        ConfigError: the configured URL is not ``http(s)://`` (or ``redis://`` when that
            transport is installed).
    """
    pid = os.getpid()
    with _publishers_lock:
        entry = _publishers.get(app)
        if entry is None or entry[0] != pid:
            url, token = hub_settings(app)
            publisher = Publisher(url, token=token)
            # Close its connections when the app goes away (or the process exits).
            weakref.finalize(app, publisher.close)
            entry = (pid, publisher)
            _publishers[app] = entry
        return entry[1]


class _PerProcess:
    """A publisher made on first use in each process, for :func:`connect`'s ``publisher_url``."""

    def __init__(self, url: str, token: str | None) -> None:
        self._url = url
        self._token = token
        self._lock = threading.Lock()
        self._entry: tuple[int, Publisher] | None = None

    def __call__(self) -> Publisher:
        pid = os.getpid()
        with self._lock:
            if self._entry is None or self._entry[0] != pid:
                self._entry = (pid, Publisher(self._url, token=self._token))
            return self._entry[1]


# -- reporting -------------------------------------------------------------------------


def _as_json(value: object) -> JSON:
    """``value`` as JSON; what JSON cannot hold becomes its ``str()``."""
    try:
        return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:
        return str(value)


def _failure(exc: BaseException) -> tuple[str, dict[str, JSON]]:
    """The ``error`` and ``details`` of a failure: the message and the class name; never
    the traceback, which may hold secrets."""
    if isinstance(exc, UnpickleableExceptionWrapper):
        # Celery wraps exceptions it cannot pickle; the wrapper knows the real class.
        kind = exc.exc_cls_name or type(exc).__qualname__
        message = str(exc.exc_args[0]) if exc.exc_args else ""
    else:
        kind = type(exc).__qualname__
        message = str(exc)
    return message or kind, {"type": kind}


def _retry_message(exc: object) -> str:
    return f"retrying: {exc}" if exc is not None and str(exc) else "retrying"


def _revoke_reason(*, terminated: bool, signum: object, expired: bool) -> str:
    if expired:
        return "expired"
    if terminated:
        return f"terminated (signal {signum})" if signum else "terminated"
    return "revoked"


class _Reporter:
    """Reports Celery task runs to a hub: what :class:`TidingsTask` and :func:`connect`
    share. Every method takes the Celery task id, which is the tidings task id.

    It keeps one :class:`Tracker` per running task (keyed by id: with a threads pool one
    task object runs several tasks at once). Only :meth:`start` and the body's reports
    raise; the others log what they could not report.
    """

    def __init__(self, publisher: Callable[[], Publisher], *, min_interval: float) -> None:
        self._publisher = publisher
        self._min_interval = min_interval
        self._trackers: dict[str, Tracker] = {}
        self._warned: set[str] = set()

    def start(self, task_id: str, *, title: str, metadata: Mapping[str, JSON]) -> Tracker:
        """Create the task (or adopt it: ``enqueue()`` made it, or this is a retry) and
        move it to running; the tracker of this run.

        Raises:
            ConfigError: the hub URL is unusable.
            TaskFinished: the task was finished on the hub (cancelled while queued).
        """
        publisher = self._publisher()
        tracker = Tracker(publisher, task_id, min_interval=self._min_interval)
        self._trackers[task_id] = tracker
        try:
            with contextlib.suppress(TaskExists):
                publisher.create_task(task_id=task_id, title=title, metadata=dict(metadata))
            # The tracker spans several Celery hooks (before_start ... on_success), so it
            # is entered here and finished by succeed()/fail(), not by a `with` block.
            tracker.__enter__()
        except TaskFinished:
            self.forget(task_id)
            raise
        except TidingsError as exc:
            self._warn(task_id, "the start", exc)
        return tracker

    def tracker(self, task_id: str) -> Tracker:
        """The tracker of a running task.

        Raises:
            RuntimeError: the task is not running in this process.
        """
        try:
            return self._trackers[task_id]
        except KeyError:
            raise RuntimeError(
                f"task {task_id} is not running here: progress is reported from inside "
                "the task while it runs"
            ) from None

    def is_running(self, task_id: str) -> bool:
        """Whether the task is running here (started and not finished)."""
        return task_id in self._trackers

    def soft(self, task_id: str, report: Callable[[], object]) -> None:
        """Make a report from the task body. Raised: ``TaskFinished`` (cancelled on the
        hub: the body should stop) and ``InvalidEvent`` (a bad report: a bug in the body).
        Any other failure (the hub is down, refuses the token, never got the task because
        the start could not be reported) is logged and the work goes on."""
        try:
            report()
        except (TaskFinished, InvalidEvent):
            raise
        except TidingsError as exc:
            self._warn(task_id, "progress", exc)

    def succeed(self, task_id: str, result: object) -> None:
        """Send the last progress, then complete the task with ``result`` as JSON."""
        tracker = self._trackers.pop(task_id, None)
        payload = _as_json(result)

        def complete(publisher: Publisher) -> None:
            if tracker is not None:
                tracker.flush()
            try:
                publisher.complete(task_id, result=payload)
            except EventTooLarge as exc:
                logger.warning(
                    "task %s: the result is too large for the hub (%s); completed without it",
                    task_id,
                    exc,
                )
                publisher.complete(task_id, result=None)

        self._report(task_id, "the success", complete)

    def fail(self, task_id: str, exc: BaseException) -> None:
        """Fail the task with the exception's message and type."""
        self._trackers.pop(task_id, None)
        if isinstance(exc, TaskFinished):
            self.forget(task_id)  # finished on the hub (cancelled): the body learnt it
            return
        error, details = _failure(exc)
        self.fail_with(task_id, error, details)

    def fail_with(
        self, task_id: str, error: str, details: JSON, *, missing_ok: bool = False
    ) -> None:
        """Fail the task with ``error`` and ``details`` (a task the hub never had is left
        alone when ``missing_ok``)."""
        self._trackers.pop(task_id, None)
        self._report(
            task_id,
            "the failure",
            lambda pub: pub.fail(task_id, error=error, details=details),
            missing_ok=missing_ok,
        )

    def unknown(self, task_id: str, name: object) -> None:
        """Fail a task that a worker received but does not know (its message is dropped)."""
        error = f"unknown task {name}: the worker that received it does not define it"
        self.fail_with(task_id, error, {"type": "NotRegistered"}, missing_ok=True)

    def retry(self, task_id: str, exc: object) -> None:
        """Say the task will run again; it stays running."""
        self._trackers.pop(task_id, None)
        message = _retry_message(exc)
        self._report(task_id, "the retry", lambda pub: pub.progress(task_id, message=message))

    def cancel(self, task_id: str, reason: str) -> None:
        """Cancel the task (revoked); a task the hub never had is left alone."""
        self._trackers.pop(task_id, None)
        self._report(
            task_id,
            "the revoke",
            lambda pub: pub.cancel(task_id, reason=reason),
            missing_ok=True,
        )

    def forget(self, task_id: str) -> None:
        """Drop what is kept for the task (after its run)."""
        self._trackers.pop(task_id, None)
        self._warned.discard(task_id)

    def _report(
        self,
        task_id: str,
        what: str,
        report: Callable[[Publisher], object],
        *,
        missing_ok: bool = False,
    ) -> None:
        try:
            report(self._publisher())
        except TaskFinished:
            logger.debug("task %s: already finished on the hub; %s not reported", task_id, what)
        except TaskNotFound as exc:
            if missing_ok:
                logger.debug("task %s: not on the hub; %s not reported", task_id, what)
            else:
                self._warn(task_id, what, exc)
        except TidingsError as exc:
            self._warn(task_id, what, exc)
        finally:
            self._warned.discard(task_id)

    def _warn(self, task_id: str, what: str, exc: TidingsError) -> None:
        # Once per task as a warning: a hub that is down must not flood the worker's log.
        level = logging.DEBUG if task_id in self._warned else logging.WARNING
        self._warned.add(task_id)
        logger.log(level, "task %s: could not report %s to the hub: %s", task_id, what, exc)


# -- the base class ----------------------------------------------------------------------


_reporters_lock = threading.Lock()


class TidingsTask(Task[Any, Any]):
    """A Celery task base class that reports the task to a tidings hub.

    Use it as ``@app.task(base=TidingsTask, bind=True)``; the tidings task id is the
    Celery task id (``self.request.id``). When the worker starts the task, the tidings
    task is created (or adopted, when :func:`enqueue` created it) and moves to
    ``running``; a return value completes it (``result``), an exception fails it
    (``error``, ``details.type``), a retry keeps it running, a revoke cancels it. See the
    module docstring for the state table and for what is never raised into the task.

    Inside the body:

    - :meth:`track` wraps an iterable and reports ``n of total`` as it goes;
    - :meth:`progress` reports counts and a message; :meth:`file` one file's state;
    - :attr:`tracker` is the run's :class:`~tidings.client.tracker.Tracker`, for anything
      else (its calls raise tidings errors as they come).

    Progress reports are throttled like tqdm (at most one per ``tidings_min_interval``
    seconds, and only on a visible change); file reports are sent at once.

    Class attributes (set them on a subclass, or pass them to ``@app.task``):

    - ``tidings_title``: the task's title on the hub (default: the Celery task name);
    - ``tidings_min_interval``: seconds between progress reports (default 0.1).

    Example::

        @app.task(base=TidingsTask, bind=True)
        def import_rows(self: TidingsTask, rows: list[dict[str, str]]) -> int:
            for row in self.track(rows):
                save(row)
            return len(rows)
    """

    tidings_title: str | None = None
    tidings_min_interval: float = 0.1

    _tidings_reporter: _Reporter | None = None

    @classmethod
    def on_bound(cls, app: Celery) -> None:
        """Connect the signal receivers a base class cannot do without (see module doc)."""
        super().on_bound(app)
        _connect_base_signals()

    @property
    def publisher(self) -> Publisher:
        """The publisher this task reports through: :func:`publisher_for` its app.

        Override it in a subclass to report elsewhere (a publisher of your own, another
        hub); it is read on every report.
        """
        return publisher_for(self.app)

    @property
    def _reporter(self) -> _Reporter:
        # Celery makes one instance of a task class per app; the reporter is made on first
        # use, so that nothing happens at import or registration.
        reporter = self._tidings_reporter
        if reporter is None:
            with _reporters_lock:
                reporter = self._tidings_reporter
                if reporter is None:
                    reporter = _Reporter(
                        lambda: self.publisher, min_interval=self.tidings_min_interval
                    )
                    self._tidings_reporter = reporter
        return reporter

    # Celery's handlers ----------------------------------------------------------------

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Create (or adopt) the tidings task and move it to running.

        Raises:
            celery.exceptions.Ignore: the task was cancelled (or finished) on the hub before
                the worker started it: the work is skipped.
            ConfigError: the hub URL is unusable.
        """
        super().before_start(task_id, args, kwargs)
        try:
            self._reporter.start(
                task_id,
                title=self.tidings_title or self.name,
                metadata={"celery_task": self.name},
            )
        except TaskFinished as exc:
            logger.info("task %s was finished on the hub before it started: skipped", task_id)
            raise Ignore(str(exc)) from exc

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Complete the tidings task with the return value."""
        super().on_success(retval, task_id, args, kwargs)
        self._reporter.succeed(task_id, retval)

    def on_failure(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Fail the tidings task with the exception's message (its type in ``details``)."""
        super().on_failure(exc, task_id, args, kwargs, einfo)
        self._reporter.fail(task_id, exc)

    def on_retry(
        self,
        exc: Exception,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: ExceptionInfo,
    ) -> None:
        """Keep the tidings task running with the message ``retrying: <exception>``."""
        super().on_retry(exc, task_id, args, kwargs, einfo)
        self._reporter.retry(task_id, exc)

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Celery's ``update_state``, also reported to the hub for the running task.

        A ``meta`` with ``current`` / ``total`` (numbers) and ``message`` (or ``status``,
        a common spelling) becomes a progress report, so tasks written for Celery's
        ``PROGRESS`` convention report without changes.
        """
        super().update_state(task_id, state, meta, **kwargs)
        running = self.request.id
        if (
            running is None
            or task_id not in (None, running)
            or not meta
            or state in states.READY_STATES
            or not self._reporter.is_running(running)
        ):
            return
        current, total = meta.get("current"), meta.get("total")
        message = meta.get("message", meta.get("status"))
        try:
            self.progress(
                current if isinstance(current, int | float) else None,
                total if isinstance(total, int | float) else None,
                message=message if isinstance(message, str) else None,
            )
        except InvalidEvent as exc:
            # update_state() never raised for odd meta before: it must not start now.
            logger.warning("task %s: progress from update_state refused: %s", running, exc)

    # The body's reports ----------------------------------------------------------------

    @property
    def tracker(self) -> Tracker:
        """The :class:`~tidings.client.tracker.Tracker` of the running task.

        Raises:
            RuntimeError: outside a running task.
        """
        return self._reporter.tracker(self._running_id())

    def progress(
        self,
        current: Number | None = None,
        total: Number | None = None,
        *,
        message: str | None = None,
    ) -> None:
        """Report ``current`` units done of ``total`` (and a message); throttled.

        Fields left out keep their value. A hub that cannot take the report is logged,
        not raised (see the module docstring).

        Raises:
            TaskFinished: the task was cancelled on the hub: stop the work.
            InvalidEvent: ``current`` > ``total``.
            RuntimeError: outside a running task.
        """
        task_id = self._running_id()
        tracker = self._reporter.tracker(task_id)
        self._reporter.soft(
            task_id,
            lambda: tracker.set(
                tracker.current if current is None else current, total=total, message=message
            ),
        )

    def track(
        self, iterable: Iterable[T], *, total: Number | None = None, message: str | None = None
    ) -> Iterator[T]:
        """Yield the items of ``iterable``, reporting ``i of total`` after each one.

        Counting starts at 0 for each call (a task may track several phases). ``total``
        defaults to ``len(iterable)`` when it has one.

        Raises:
            TaskFinished: the task was cancelled on the hub: stop the work.
        """
        task_id = self._running_id()
        tracker = self._reporter.tracker(task_id)
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self._reporter.soft(task_id, lambda: tracker.set(0, total=total, message=message))
        for item in iterable:
            yield item
            self._reporter.soft(task_id, tracker.update)

    def file(
        self,
        file_id: str,
        *,
        status: str,
        filename: str | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> None:
        """Report one file's state (``pending``, ``processing``, ``completed``,
        ``failed``), at once.

        Raises:
            TaskFinished: the task was cancelled on the hub: stop the work.
            InvalidEvent: an unknown status.
        """
        task_id = self._running_id()
        tracker = self._reporter.tracker(task_id)
        self._reporter.soft(
            task_id,
            lambda: tracker.file(
                file_id, status=status, filename=filename, progress=progress, message=message
            ),
        )

    def _running_id(self) -> str:
        task_id = self.request.id
        if task_id is None:
            raise RuntimeError("progress is reported from inside a running task")
        return task_id


# Receivers for what TidingsTask's own handlers never see. Celery keeps one receiver per
# dispatch_uid, so connecting again (one call per task bound) changes nothing.


def _on_base_revoked(
    sender: object = None,
    request: Any = None,
    terminated: bool = False,
    signum: object = None,
    expired: bool = False,
    **_: Any,
) -> None:
    # Revoked before it ran (or terminated): handled by the worker's main process, where
    # no TidingsTask handler runs.
    task_id = getattr(request, "id", None)
    if isinstance(sender, TidingsTask) and task_id:
        reason = _revoke_reason(terminated=terminated, signum=signum, expired=expired)
        sender._reporter.cancel(task_id, reason)


def _on_base_failure(
    sender: object = None, task_id: str | None = None, exception: object = None, **_: Any
) -> None:
    # on_failure() sees what the body raised and hard time limits; a pool process that
    # died, or a Reject without requeue, reach only this signal.
    if (
        isinstance(sender, TidingsTask)
        and task_id
        and isinstance(exception, WorkerLostError | Reject)
    ):
        sender._reporter.fail(task_id, exception)


def _on_base_postrun(sender: object = None, task_id: str | None = None, **_: Any) -> None:
    # After every run, whatever its end (IGNORED runs no other handler).
    if isinstance(sender, TidingsTask) and task_id:
        sender._reporter.forget(task_id)


def _on_base_unknown(
    sender: object = None, name: object = None, id: str | None = None, **_: Any
) -> None:
    # A worker that does not define the task drops its message: without this, a task that
    # enqueue() made would stay pending (its browser waiting) until it is purged.
    app = getattr(sender, "app", None)
    if isinstance(app, Celery) and id:
        _Reporter(lambda: publisher_for(app), min_interval=0).unknown(id, name)


def _connect_base_signals() -> None:
    signals.task_unknown.connect(
        _on_base_unknown, weak=False, dispatch_uid="tidings.celery.base.unknown"
    )
    signals.task_revoked.connect(
        _on_base_revoked, weak=False, dispatch_uid="tidings.celery.base.revoked"
    )
    signals.task_failure.connect(
        _on_base_failure, weak=False, dispatch_uid="tidings.celery.base.failure"
    )
    signals.task_postrun.connect(
        _on_base_postrun, weak=False, dispatch_uid="tidings.celery.base.postrun"
    )


# -- signal handlers for existing tasks -----------------------------------------------


class SignalReporter:
    """Celery signal receivers that report the tasks of one app; made by :func:`connect`.

    Tasks based on :class:`TidingsTask` are left to the base class. :meth:`disconnect`
    removes the receivers.
    """

    def __init__(
        self,
        app: Celery,
        publisher: Callable[[], Publisher],
        *,
        tasks: Iterable[str] | None = None,
        min_interval: float = 0.1,
    ) -> None:
        self.app = app
        self.tasks = frozenset(tasks) if tasks is not None else None
        self._reporter = _Reporter(publisher, min_interval=min_interval)
        self._uid = f"tidings.celery.signals.{id(self)}"
        self._receivers: list[tuple[Any, Callable[..., None]]] = [
            (signals.task_prerun, self._on_prerun),
            (signals.task_success, self._on_success),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (signals.task_revoked, self._on_revoked),
            (signals.task_postrun, self._on_postrun),
            (signals.task_unknown, self._on_unknown),
        ]

    def _connect(self) -> None:
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False, dispatch_uid=f"{self._uid}.{signal.name}")

    def disconnect(self) -> None:
        """Stop reporting."""
        for signal, receiver in self._receivers:
            signal.disconnect(receiver, dispatch_uid=f"{self._uid}.{signal.name}")

    def tracker(self, task_id: str | None = None) -> Tracker:
        """The :class:`~tidings.client.tracker.Tracker` of a running task (default: the
        current one), for progress from inside an existing task::

            reporter = connect(app)

            @app.task
            def export(rows):
                t = reporter.tracker()
                for row in t.iter(rows):
                    write(row)

        Raises:
            RuntimeError: the task is not running in this process.
        """
        if task_id is None:
            task_id = getattr(getattr(current_task, "request", None), "id", None)
            if task_id is None:
                raise RuntimeError("no Celery task is running")
        return self._reporter.tracker(task_id)

    def _wants(self, sender: object) -> bool:
        return (
            isinstance(sender, Task)
            and not isinstance(sender, TidingsTask)
            and sender.app is self.app
            and (self.tasks is None or sender.name in self.tasks)
        )

    def _on_prerun(self, sender: object = None, task_id: str | None = None, **_: Any) -> None:
        if not (self._wants(sender) and task_id and isinstance(sender, Task)):
            return
        try:
            self._reporter.start(task_id, title=sender.name, metadata={"celery_task": sender.name})
        except TidingsError as exc:
            # A receiver cannot stop the task: it runs, unreported.
            logger.warning("task %s: not reported to the hub: %s", task_id, exc)

    def _on_success(self, sender: object = None, result: object = None, **_: Any) -> None:
        if self._wants(sender) and isinstance(sender, Task) and sender.request.id:
            self._reporter.succeed(sender.request.id, result)

    def _on_failure(
        self,
        sender: object = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        if self._wants(sender) and task_id and exception is not None:
            self._reporter.fail(task_id, exception)

    def _on_retry(
        self, sender: object = None, request: Any = None, reason: object = None, **_: Any
    ) -> None:
        task_id = getattr(request, "id", None)
        if self._wants(sender) and task_id:
            self._reporter.retry(task_id, getattr(reason, "exc", None) or reason)

    def _on_revoked(
        self,
        sender: object = None,
        request: Any = None,
        terminated: bool = False,
        signum: object = None,
        expired: bool = False,
        **_: Any,
    ) -> None:
        task_id = getattr(request, "id", None)
        if self._wants(sender) and task_id:
            reason = _revoke_reason(terminated=terminated, signum=signum, expired=expired)
            self._reporter.cancel(task_id, reason)

    def _on_postrun(self, sender: object = None, task_id: str | None = None, **_: Any) -> None:
        if self._wants(sender) and task_id:
            self._reporter.forget(task_id)

    def _on_unknown(
        self, sender: object = None, name: object = None, id: str | None = None, **_: Any
    ) -> None:
        # The sender is the worker's consumer, not a task: it has no task to filter on.
        if getattr(sender, "app", None) is self.app and id:
            self._reporter.unknown(id, name)


def connect(
    app: Celery,
    *,
    publisher_url: str | None = None,
    token: str | None = None,
    publisher: Publisher | None = None,
    tasks: Iterable[str] | None = None,
    min_interval: float = 0.1,
) -> SignalReporter:
    """Report ``app``'s existing tasks to a hub through Celery signals.

    Every task of ``app`` (or only those named in ``tasks``) is created (or adopted) on the
    hub when it starts, completed with its return value, failed with its exception, kept
    running on retry and cancelled on revoke; tasks based on :class:`TidingsTask` report
    themselves and are skipped. Call it where the worker imports the app (the module that
    defines it).

    Args:
        app: the Celery app.
        publisher_url: the hub (default: :func:`hub_settings`); ``token`` goes with it.
        publisher: a :class:`Publisher` to use as is (not fork-safe: prefer the URL with a
            prefork pool).
        tasks: names of the tasks to report (default: all).
        min_interval: seconds between progress reports of :meth:`SignalReporter.tracker`.

    Example::

        app = Celery("shop", broker="redis://localhost:6379/0")
        reporter = connect(app)   # every task of app now shows up on the hub
    """
    source: Callable[[], Publisher]
    if publisher is not None:
        given = publisher
        source = lambda: given  # noqa: E731
    elif publisher_url is not None:
        source = _PerProcess(publisher_url, token)
    else:
        source = lambda: publisher_for(app)  # noqa: E731
    reporter = SignalReporter(app, source, tasks=tasks, min_interval=min_interval)
    reporter._connect()
    return reporter


# -- enqueueing ------------------------------------------------------------------------


def enqueue(
    task: Task[Any, Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    publisher: Publisher | None = None,
    title: str | None = None,
    total: Number | None = None,
    metadata: Mapping[str, JSON] | None = None,
    **options: Any,
) -> AsyncResult[Any]:
    """Create the tidings task (``pending``), then ``task.apply_async`` with the same id.

    The stream ``/tasks/<result.id>/stream`` exists as soon as this returns, so a web view
    can hand it to the browser before a worker picks the task up (no 404 race); the
    worker adopts the task, keeping ``title``, ``total`` and ``metadata``.

    Args:
        task: a Celery task (a :class:`TidingsTask`, or one reported by :func:`connect`).
        args, kwargs: the task's arguments.
        publisher: the hub to create the task on (default: :func:`publisher_for` the
            task's app). The task belongs to this publisher's token user.
        title: the title on the hub (default: the task name); ``total``, ``metadata`` as
            for :meth:`Publisher.create_task` (``celery_task`` is added to ``metadata``).
        options: passed to ``apply_async`` (``countdown``, ``queue``, ``task_id``...).

    Raises:
        TaskExists: the ``task_id`` given is taken on the hub.
        BackendUnavailable: the hub cannot be reached; nothing was enqueued. (To enqueue
            anyway, catch it and call ``apply_async``: the stream 404s until a worker
            starts the task.)
        Whatever ``apply_async`` raises (the broker is down): the hub task is then
            failed, so no stream waits for a task that was never queued.

    Example::

        result = enqueue(convert_images, (paths,), total=len(paths))
        return {"task_id": result.id, "stream": f"/tasks/{result.id}/stream"}
    """
    task_id = str(options.pop("task_id", None) or uuid.uuid4())
    pub = publisher if publisher is not None else publisher_for(task.app)
    info: dict[str, JSON] = {"celery_task": task.name}
    info.update(metadata or {})
    title = title or getattr(task, "tidings_title", None) or task.name
    pub.create_task(task_id=task_id, title=title, total=total, metadata=info)
    try:
        return task.apply_async(tuple(args), dict(kwargs or {}), task_id=task_id, **options)
    except BaseException as exc:
        error, details = _failure(exc)
        try:
            pub.fail(task_id, error=f"could not enqueue: {error}", details=details)
        except TidingsError as report_error:
            exc.add_note(f"tidings: the task {task_id} could not be failed: {report_error}")
        raise
