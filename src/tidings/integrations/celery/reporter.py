"""Reporting Celery task runs to a hub: :class:`Reporter`, shared by the task base class
and the signal receivers, and what a report carries (a result as JSON, a failure).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

import orjson
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
from tidings.types import JSON

__all__ = ["Reporter", "failure", "revoke_reason"]

logger = logging.getLogger("tidings.integrations.celery")


def _as_json(value: object) -> JSON:
    """``value`` as JSON; what JSON cannot hold becomes its ``str()``."""
    try:
        return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:
        return str(value)


def failure(exc: BaseException) -> tuple[str, dict[str, JSON]]:
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


def revoke_reason(*, terminated: bool, signum: object, expired: bool) -> str:
    if expired:
        return "expired"
    if terminated:
        return f"terminated (signal {signum})" if signum else "terminated"
    return "revoked"


class Reporter:
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
        error, details = failure(exc)
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
