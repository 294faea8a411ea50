"""Progress reporting like tqdm: :class:`Tracker` and :class:`AsyncTracker`.

Made by :meth:`Publisher.track() <tidings.client.publisher.Publisher.track>`. Decisions
worth knowing:

- Updates are throttled twice: at most one per ``min_interval`` seconds, and only when
  something visible changed (the integer percent, the count when there is no total, the
  message). The final state is always sent on exit, then ``complete``. So 100,000
  iterations cost about a hundred requests and the bar still ends at 100%.
- An exception inside the block fails the task with the exception's message (its type in
  ``details``; never a traceback, which may hold secrets) and is re-raised. An interrupt
  (``KeyboardInterrupt``, task cancellation) cancels the task instead.
- A task cancelled from elsewhere makes the worker's next update raise
  :class:`~tidings.errors.TaskFinished`: that is how a loop learns to stop. The tracker
  then reports nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sized,
)
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

from tidings.client.reporting import AsyncTaskReporter, TaskReporter, given
from tidings.errors import TaskFinished, TidingsError
from tidings.tasks.model import Task
from tidings.types import JSON

__all__ = ["AsyncTracker", "Tracker"]

logger = logging.getLogger("tidings.client")

T = TypeVar("T")
Number: TypeAlias = int | float


def _fail_fields(exc: BaseException) -> tuple[str, dict[str, JSON]]:
    kind = type(exc).__qualname__
    return str(exc) or kind, {"type": kind}


class _Throttle:
    """What to send, and when: the shared logic of :class:`Tracker` and
    :class:`AsyncTracker` (a visible change, at most once per ``min_interval``)."""

    def __init__(
        self, total: Number | None, min_interval: float, clock: Callable[[], float]
    ) -> None:
        self.current: Number = 0
        self.total = total
        self.message: str | None = None
        self.min_interval = min_interval
        self.clock = clock
        self._sent: tuple[Any, ...] | None = None
        self._sent_at: float | None = None

    def visible(self) -> tuple[Any, ...]:
        total = self.total
        if total:
            shown: Number = int(100 * min(self.current, total) / total)
        else:
            shown = self.current
        return shown, total, self.message

    def due(self) -> bool:
        """Whether an update should be sent now (and if so, mark it sent)."""
        state = self.visible()
        if state == self._sent:
            return False
        now = self.clock()
        if self._sent_at is not None and now - self._sent_at < self.min_interval:
            return False
        self._mark(state, now)
        return True

    def pending(self) -> bool:
        """Whether the last visible state was not sent (and if so, mark it sent)."""
        state = self.visible()
        if state == self._sent:
            return False
        self._mark(state, self.clock())
        return True

    def _mark(self, state: tuple[Any, ...], now: float) -> None:
        self._sent = state
        self._sent_at = now

    def adopt(self, task: Task) -> None:
        if self.total is None and task.total is not None:
            self.total = task.total
        if task.current is not None:
            self.current = task.current
        self._mark(self.visible(), self.clock())

    def fields(self) -> dict[str, JSON]:
        return given(current=self.current, total=self.total, message=self.message)


class Tracker:
    """Reports a block's progress to a hub; made by :meth:`Publisher.track`.

    Attributes:
        task_id: the task being reported (known once the block is entered).
        task: the task as the hub last returned it.
        result: sent with ``complete`` on a clean exit; set it inside the block.
        current, total, message: the progress as the tracker knows it.

    Args:
        clock: the time source for throttling (``time.monotonic``); tests may replace it.
    """

    def __init__(
        self,
        publisher: TaskReporter,
        task_id: str | None = None,
        *,
        total: Number | None = None,
        title: str | None = None,
        metadata: Mapping[str, JSON] | None = None,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.task_id = task_id
        self.task: Task | None = None
        self.result: JSON = None
        self._title = title
        self._metadata = metadata
        self._state = _Throttle(total, min_interval, clock)

    @property
    def current(self) -> Number:
        """Units done so far."""
        return self._state.current

    @property
    def total(self) -> Number | None:
        """Units to do, if known."""
        return self._state.total

    @property
    def message(self) -> str | None:
        """The last message given."""
        return self._state.message

    def __enter__(self) -> Tracker:
        pub = self.publisher
        if self.task_id is None:
            task = pub.create_task(
                title=self._title, total=self._state.total, metadata=self._metadata
            )
            self.task_id = task.task_id
        task = pub.progress(self._id, total=self._state.total)
        self.task = task
        self._state.adopt(task)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.flush()
            self.task = self.publisher.complete(self._id, result=self.result)
            return
        if isinstance(exc, TaskFinished):
            return  # cancelled or finished elsewhere: nothing to report
        try:
            if isinstance(exc, Exception):
                with contextlib.suppress(TidingsError):
                    self.flush()  # the work done before the error stays on record
                error, details = _fail_fields(exc)
                self.task = self.publisher.fail(self._id, error=error, details=details)
            else:
                reason = f"interrupted ({type(exc).__qualname__})"
                self.task = self.publisher.cancel(self._id, reason=reason)
        except TidingsError as report_error:
            logger.warning("task %s: could not report the failure: %s", self.task_id, report_error)
            exc.add_note(f"tidings: the task could not be failed: {report_error}")

    @property
    def _id(self) -> str:
        if self.task_id is None:
            raise RuntimeError("use the tracker as a context manager: `with pub.track() as t:`")
        return self.task_id

    def update(self, n: Number = 1, message: str | None = None) -> None:
        """Add ``n`` units done (and set the message); sent if due (see module doc)."""
        self._state.current += n
        if message is not None:
            self._state.message = message
        self._maybe_send()

    def set(
        self, current: Number, *, total: Number | None = None, message: str | None = None
    ) -> None:
        """Set the units done (and the total, the message); sent if due."""
        self._state.current = current
        if total is not None:
            self._state.total = total
        if message is not None:
            self._state.message = message
        self._maybe_send()

    def file(
        self,
        file_id: str,
        *,
        status: str,
        filename: str | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> None:
        """Report a file's state, at once (file events are never throttled)."""
        self.task = self.publisher.file(
            self._id,
            file_id,
            status=status,
            filename=filename,
            progress=progress,
            message=message,
        )

    def iter(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield the items of ``iterable``, counting one unit after each is processed.

        Sets ``total`` from ``len(iterable)`` when it was not given.
        """
        if self._state.total is None and isinstance(iterable, Sized):
            self._state.total = len(iterable)
        for item in iterable:
            yield item
            self.update(1)

    def flush(self) -> None:
        """Send the current state now if the hub has not seen it."""
        if self._state.pending():
            self._send()

    def _maybe_send(self) -> None:
        if self._state.due():
            self._send()

    def _send(self) -> None:
        self.task = self.publisher.progress(self._id, **self._state.fields())


class AsyncTracker:
    """The async twin of :class:`Tracker`: ``async with pub.track(...) as t``.

    :meth:`iter` accepts sync and async iterables and is used with ``async for``.
    """

    def __init__(
        self,
        publisher: AsyncTaskReporter,
        task_id: str | None = None,
        *,
        total: Number | None = None,
        title: str | None = None,
        metadata: Mapping[str, JSON] | None = None,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.task_id = task_id
        self.task: Task | None = None
        self.result: JSON = None
        self._title = title
        self._metadata = metadata
        self._state = _Throttle(total, min_interval, clock)

    @property
    def current(self) -> Number:
        """Units done so far."""
        return self._state.current

    @property
    def total(self) -> Number | None:
        """Units to do, if known."""
        return self._state.total

    @property
    def message(self) -> str | None:
        """The last message given."""
        return self._state.message

    async def __aenter__(self) -> AsyncTracker:
        pub = self.publisher
        if self.task_id is None:
            task = await pub.create_task(
                title=self._title, total=self._state.total, metadata=self._metadata
            )
            self.task_id = task.task_id
        task = await pub.progress(self._id, total=self._state.total)
        self.task = task
        self._state.adopt(task)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.flush()
            self.task = await self.publisher.complete(self._id, result=self.result)
            return
        if isinstance(exc, TaskFinished):
            return
        try:
            if isinstance(exc, Exception):
                with contextlib.suppress(TidingsError):
                    await self.flush()  # the work done before the error stays on record
                error, details = _fail_fields(exc)
                self.task = await self.publisher.fail(self._id, error=error, details=details)
            else:
                reason = f"interrupted ({type(exc).__qualname__})"
                self.task = await self.publisher.cancel(self._id, reason=reason)
        except TidingsError as report_error:
            logger.warning("task %s: could not report the failure: %s", self.task_id, report_error)
            exc.add_note(f"tidings: the task could not be failed: {report_error}")

    @property
    def _id(self) -> str:
        if self.task_id is None:
            raise RuntimeError("use the tracker as a context manager: `async with pub.track()`")
        return self.task_id

    async def update(self, n: Number = 1, message: str | None = None) -> None:
        """See :meth:`Tracker.update`."""
        self._state.current += n
        if message is not None:
            self._state.message = message
        if self._state.due():
            await self._send()

    async def set(
        self, current: Number, *, total: Number | None = None, message: str | None = None
    ) -> None:
        """See :meth:`Tracker.set`."""
        self._state.current = current
        if total is not None:
            self._state.total = total
        if message is not None:
            self._state.message = message
        if self._state.due():
            await self._send()

    async def file(
        self,
        file_id: str,
        *,
        status: str,
        filename: str | None = None,
        progress: Number | None = None,
        message: str | None = None,
    ) -> None:
        """See :meth:`Tracker.file`."""
        self.task = await self.publisher.file(
            self._id,
            file_id,
            status=status,
            filename=filename,
            progress=progress,
            message=message,
        )

    async def iter(self, iterable: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
        """See :meth:`Tracker.iter`; for sync or async iterables."""
        if self._state.total is None and isinstance(iterable, Sized):
            self._state.total = len(iterable)
        if isinstance(iterable, AsyncIterable):
            async for item in iterable:
                yield item
                await self.update(1)
        else:
            for item in iterable:
                yield item
                await self.update(1)

    async def flush(self) -> None:
        """See :meth:`Tracker.flush`."""
        if self._state.pending():
            await self._send()

    async def _send(self) -> None:
        self.task = await self.publisher.progress(self._id, **self._state.fields())
