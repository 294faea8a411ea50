"""Task streams: a task's state first, then its events, to the end (``GET /tasks/{id}/stream``).

:class:`TaskStreams` opens the stream through the engine with an *opening* step that reads
the task under its lock and queues its state (or replays what a reconnect missed), so a
late joiner never shows an empty bar and nothing is sent twice.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from tidings.auth.principal import Principal
from tidings.backends.base import Replay
from tidings.engine import Connection, Engine
from tidings.errors import BackendUnavailable, InvalidEvent, InvalidTopic, TaskNotFound
from tidings.events import MAX_ID_BYTES, Draft, Event, EventId
from tidings.tasks.model import STREAM_END_TYPES, Task, TaskEvent, snapshot_events, validate_task_id
from tidings.tasks.rules import check_lookup_id, ended_at, may_read
from tidings.tasks.store import TaskStore
from tidings.topics import task_topic
from tidings.wire import encode_event

__all__ = ["TaskSource", "TaskStreams"]


class TaskSource(Protocol):
    """What the streams read of the task service."""

    @property
    def store(self) -> TaskStore:
        """The open store."""
        ...

    def hold(self, task_id: str) -> AbstractAsyncContextManager[None]:
        """The task's lock: nothing of it is published while held."""
        ...

    def current(self, task: Task) -> Task:
        """``task`` (read from the store) with its latest event id."""
        ...

    def draft(self, task: Task, item: TaskEvent) -> Draft:
        """The draft of one of ``task``'s events."""
        ...


class TaskStreams:
    """Opens task streams on ``engine`` for the tasks of ``tasks``."""

    def __init__(self, engine: Engine, tasks: TaskSource) -> None:
        self._engine = engine
        self._tasks = tasks

    async def open_stream(
        self,
        task_id: str,
        *,
        principal: Principal,
        last_event_id: str | None = None,
        ip: str | None = None,
        timed: bool = False,
    ) -> Connection | None:
        """Open the SSE stream of a task (``GET /tasks/{id}/stream``; ``timed``: with each
        event's publish time, see :meth:`Engine.open_stream
        <tidings.engine.Engine.open_stream>`).

        The first event is the task's state: ``task_progress`` (then one ``file_update``
        per file) carrying the task's current ``sequence`` and its latest event id, or the
        terminal event if the task is finished (the stream then ends). With
        ``last_event_id`` the missed events are replayed once instead; if history no longer
        holds them, the state is sent. Live events follow, de-duplicated against the
        snapshot; the stream ends after the terminal event (or ``task_deleted``).

        While the store cannot be read (Redis down) the stream is accepted all the same
        (SPEC §3: a 5xx would stop a browser's EventSource for good) and held: it sends
        keep-alive comments only, and starts as above once the store answers. If the task
        then turns out not to exist or not to be visible to ``principal`` (or
        ``last_event_id`` is its terminal event's id), nothing about the task was sent: the
        stream ends cleanly, and the client's reconnect gets the 404 (or 204).

        Returns:
            The connection, or ``None`` when ``last_event_id`` is the id of the task's
            terminal event: the client has everything (answer ``204``).

        Raises:
            TaskNotFound: no such task, or ``principal`` may not see it (404).
            InvalidTopic: ``last_event_id`` is over 256 bytes (400).
            ShuttingDown: the hub is stopping (503).
        """
        check_lookup_id(task_id)
        if last_event_id is not None and len(last_event_id.encode()) > MAX_ID_BYTES:
            raise InvalidTopic(
                f"Last-Event-ID is over {MAX_ID_BYTES} bytes", code="invalid_last_event_id"
            )
        try:
            task: Task | None = self._tasks.current(await self._tasks.store.get(task_id))
        except BackendUnavailable:
            task = None  # decided once the store answers (see _open)
        if task is not None:
            if not may_read(principal, task):
                raise TaskNotFound(f"no task {task_id}")
            if ended_at(task, last_event_id):
                return None
        return await self._engine.open_stream(
            [task_topic(task_id)],
            principal=principal,
            end_types=STREAM_END_TYPES,
            task_id=task_id,
            ip=ip,
            opening=functools.partial(self._open, task_id, principal, last_event_id),
            timed=timed,
        )

    async def may_watch(self, task_id: str, principal: Principal) -> bool:
        """Whether the task ``task_id`` exists and ``principal`` may read it (:func:`may_read`:
        its owner, an admin, a worker allowed to publish on it).

        A user may always subscribe to its own tasks' topics (SPEC §5), and whoever may
        read a task's stream may follow its topic on ``GET /events`` too; the hub asks this
        for a ``tasks/<id>`` topic that no subscribe grant allows.

        Raises:
            BackendUnavailable: the store cannot be read.
        """
        try:
            task = await self._tasks.store.get(validate_task_id(task_id))
        except (InvalidEvent, TaskNotFound):
            return False
        return may_read(principal, task)

    async def _open(
        self,
        task_id: str,
        principal: Principal,
        last_event_id: str | None,
        conn: Connection,
    ) -> None:
        """Queue a task stream's first events (the stream's ``opening``, see
        :meth:`Engine.open_stream <tidings.engine.Engine.open_stream>`).

        The hub calls this once the stream is registered, and again from its ticker while
        it raises :class:`BackendUnavailable` (the store does not answer). It runs under
        the task's lock, so nothing of this task is published between the read and live
        delivery. Events the stream queued before (live, while it waited) were published
        before the read, so what is read covers them: they are dropped, and each event
        reaches the client once, in order.
        """
        async with self._tasks.hold(task_id):
            conn.drop_events()
            try:
                task: Task | None = self._tasks.current(await self._tasks.store.get(task_id))
            except TaskNotFound:
                task = None
            if task is None or not may_read(principal, task) or ended_at(task, last_event_id):
                # Only possible when the stream was accepted before the store could say (or
                # the task was deleted meanwhile): nothing about the task was sent, so end
                # the stream; the reconnect gets the 404 (or the 204) it would have got.
                conn.close("end")
                return
            await self._fill(conn, task, last_event_id)

    async def _fill(self, conn: Connection, task: Task, last_event_id: str | None) -> None:
        """Queue a new stream's first events: the replay after ``last_event_id``, or state."""
        if last_event_id:
            replay: Replay | None
            try:
                replay = await self._engine.backend.replay(
                    [task_topic(task.task_id)], last_event_id
                )
            except BackendUnavailable:
                replay = None  # state, never silence
            if replay is not None and replay.gap is None:
                # In front of the live events queued while history was read, without those
                # it covers: nothing up to the client's id or the last replayed one again,
                # even if the node's reader delivers it late (it lags after a Redis outage).
                resumed = EventId.parse(last_event_id)
                conn.put_front(list(replay.events), min_seq=resumed.seq if resumed else 0)
                if task.terminal and conn.close_reason is None:
                    # The client is past the terminal event's recorded id (another node's
                    # record lagged): end the stream with the state rather than hang.
                    await self._push_state(conn, task, first=False)
                return
        await self._push_state(conn, task)

    def _state_draft(self, task: Task, item: TaskEvent) -> Draft:
        """A state event's draft, timed at the task's last change (its ``time:`` field): the
        state is as of then, not as of the moment it was read."""
        draft = self._tasks.draft(task, item)
        return dataclasses.replace(draft, time=task.updated_at) if task.updated_at else draft

    async def _push_state(self, conn: Connection, task: Task, *, first: bool = True) -> None:
        """Queue ``task``'s state (:func:`snapshot_events`), de-duplicated against live events.

        As the stream's ``first`` events, the live events queued while the state was read
        that it covers (up to the task's latest event) are dropped, and the state goes in
        front of newer ones, so each reaches the client once, in order; otherwise it is
        queued after them.

        The events carry the task's latest event id. If that id is from an earlier history
        (a restarted memory backend: the store kept the task, the backend did not keep its
        ids), an unfinished task's state carries the hub's newest id instead: it marks the
        same point (everything of this task up to now is in the state), and a resume from
        it replays exactly what follows. A finished task keeps its terminal event's id, so
        a reconnect with it still gets 204.
        """
        ident = EventId.parse(task.last_event_id) if task.last_event_id else None
        try:
            latest = EventId.parse(await self._engine.backend.latest_id())
        except BackendUnavailable:
            latest = None
        current = latest is None or (ident is not None and ident.epoch == latest.epoch)
        if not current and not task.terminal:
            ident, current = latest, True
        if ident is not None and ident.seq > 0 and first and current:
            conn.drop_events(through=ident.seq)
            if conn.queued:  # newer events came meanwhile (from another node): after it
                items = snapshot_events(task)
                conn.put_front([Event.from_draft(self._state_draft(task, i), ident) for i in items])
                return
        for item in snapshot_events(task):
            draft = self._state_draft(task, item)
            if ident is not None and ident.seq > 0:
                conn.push(Event.from_draft(draft, ident))
                continue
            if ident is not None:
                # ``<epoch>-0`` (a hub with no event yet) is a valid resume point, but
                # ``push`` treats seq 0 as already delivered: queue the frame as is.
                event = Event.from_draft(draft, ident)
                frame = event.timed()[0] if conn.timed else event.frame
            else:
                # No id to give (nothing of this task was published and the backend is
                # down): send the state without one, so the resume position does not move.
                frame = encode_event(draft.payload.decode(), event=item.type)
            conn.push_raw(frame)
            if item.type in conn.end_types:
                conn.close("end")
        if ident is not None and current:
            conn.min_seq = max(conn.min_seq, ident.seq)
