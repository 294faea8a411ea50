"""The task base class: ``@app.task(base=TidingsTask, bind=True)``, and the signal
receivers it connects for what its own handlers never see.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TypeVar

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import Celery, Task, signals, states
from celery.exceptions import Ignore, Reject

from tidings.client.publisher import Publisher
from tidings.client.tracker import Tracker
from tidings.errors import InvalidEvent, TaskFinished
from tidings.integrations.celery.publishers import publisher_for
from tidings.integrations.celery.reporter import Reporter, revoke_reason
from tidings.tasks.record import Number

__all__ = ["TidingsTask"]

logger = logging.getLogger("tidings.integrations.celery")

T = TypeVar("T")


_reporters_lock = threading.Lock()


class TidingsTask(Task[Any, Any]):
    """A Celery task base class that reports the task to a tidings hub.

    Use it as ``@app.task(base=TidingsTask, bind=True)``; the tidings task id is the
    Celery task id (``self.request.id``). When the worker starts the task, the tidings
    task is created (or adopted, when :func:`enqueue` created it) and moves to
    ``running``; a return value completes it (``result``), an exception fails it
    (``error``, ``details.type``), a retry keeps it running, a revoke cancels it. See the
    package docstring (:mod:`tidings.integrations.celery`) for the state table and for what
    is never raised into the task.

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

    _tidings_reporter: Reporter | None = None

    @classmethod
    def on_bound(cls, app: Celery) -> None:
        """Connect the signal receivers a base class cannot do without (see the package doc)."""
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
    def _reporter(self) -> Reporter:
        # Celery makes one instance of a task class per app; the reporter is made on first
        # use, so that nothing happens at import or registration.
        reporter = self._tidings_reporter
        if reporter is None:
            with _reporters_lock:
                reporter = self._tidings_reporter
                if reporter is None:
                    reporter = Reporter(
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
        not raised (see :mod:`tidings.integrations.celery`).

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
        reason = revoke_reason(terminated=terminated, signum=signum, expired=expired)
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
        Reporter(lambda: publisher_for(app), min_interval=0).unknown(id, name)


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
