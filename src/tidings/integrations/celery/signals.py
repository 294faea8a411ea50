"""Celery signal receivers that report an app's existing tasks: :func:`connect`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery, Task, current_task, signals

from tidings.client.publisher import Publisher
from tidings.client.tracker import Tracker
from tidings.errors import TidingsError
from tidings.integrations.celery.base import TidingsTask
from tidings.integrations.celery.publishers import PerProcess, publisher_for
from tidings.integrations.celery.reporter import Reporter, revoke_reason

__all__ = ["SignalReporter", "connect"]

logger = logging.getLogger("tidings.integrations.celery")


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
        self._reporter = Reporter(publisher, min_interval=min_interval)
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
            reason = revoke_reason(terminated=terminated, signum=signum, expired=expired)
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
        source = PerProcess(publisher_url, token)
    else:
        source = lambda: publisher_for(app)  # noqa: E731
    reporter = SignalReporter(app, source, tasks=tasks, min_interval=min_interval)
    reporter._connect()
    return reporter
