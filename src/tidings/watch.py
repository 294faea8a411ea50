"""``tidings watch TASK_ID``: one task's progress in a terminal, until it ends.

Three outputs from one watch (:func:`tidings.client.watch_task`):

- a terminal gets a live ``rich`` display that updates in place: the task's bar (percent,
  counts, rate, ETA, message) and one line per file (name, status, its own bar);
- anything else (a pipe, a file, CI logs) gets one plain line per event, so nothing is
  redrawn where redrawing would make a mess;
- ``--json`` prints the task's state after each event as one JSON object per line.

Exit codes: 0 when the task completed; 1 when it failed, was cancelled or was deleted (its
error or reason on stderr, one line); 2 when it cannot be watched (a bad argument, an
unreachable hub, an unknown task, a refused token), one line on stderr.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from tidings.client.watcher import TaskUpdate, watch_task
from tidings.tasks.model import FileState, Task

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = ["describe_end", "file_line", "progress_line", "run_watch"]

#: Style of each status in the live display.
_STYLES = {
    "pending": "dim",
    "running": "cyan",
    "processing": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, int) or value == int(value) else f"{value:.1f}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _counts(task: Task) -> str | None:
    if task.current is None:
        return None
    return _number(task.current) + (f"/{_number(task.total)}" if task.total is not None else "")


def _rate(task: Task) -> str | None:
    if task.rate is None:
        return None
    # Without counts the hub measures the rate in percent points (docs/tasks.md).
    unit = "/s" if task.current is not None else " %/s"
    return f"{task.rate:.3g}{unit}"


def _eta(task: Task) -> str | None:
    return None if task.eta is None else "ETA " + _duration(task.eta)


def progress_line(task: Task) -> str:
    """The plain line of a task's progress: ``running  42.0%  21/50  1.3/s  ETA 0:23  msg``."""
    parts = [f"{task.status:<9}", f"{task.progress:5.1f}%"]
    parts += [p for p in (_counts(task), _rate(task), _eta(task), task.message) if p]
    return "  ".join(parts)


def file_line(state: FileState) -> str:
    """The plain line of one file: ``file a.png  processing  40%  resizing``."""
    parts = [f"file {state.filename or state.file_id}", state.status, f"{state.progress:.0f}%"]
    if state.message:
        parts.append(state.message)
    return "  ".join(parts)


def describe_end(update: TaskUpdate) -> str:
    """One line on how the task ended, for the end of a watch."""
    task = update.task
    if update.event == "task_completed":
        took = update.data.get("processing_time")
        line = "completed" + (f" in {_number(float(took))}s" if took is not None else "")
        if task.result is not None:
            line += "  result: " + orjson.dumps(task.result).decode()
        return line
    if update.event == "task_failed":
        return f"task {task.task_id} failed: {task.error or 'no error given'}"
    if update.event == "task_cancelled":
        return f"task {task.task_id} cancelled: {task.error or 'no reason given'}"
    return f"task {task.task_id} was deleted ({update.data.get('reason') or 'no reason given'})"


def _one_line(text: str) -> str:
    """``text`` on one line: a message or an error may hold line breaks."""
    return " ".join(text.splitlines())


class _Plain:
    """One line per event, for pipes and logs."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = False

    def show(self, update: TaskUpdate) -> None:
        if not self.started and update.finished:
            # A task that is already over: show its files as they ended, then the end.
            for state in update.task.files.values():
                self._print(file_line(state))
        self.started = True
        if update.event == "task_progress":
            self._print(progress_line(update.task))
        elif update.file is not None:
            self._print(file_line(update.file))
        elif update.event == "task_completed":
            self._print(describe_end(update))

    def _print(self, line: str) -> None:
        print(_one_line(line), file=self.out, flush=True)

    def close(self) -> None:
        pass


class _Json:
    """The task's state after each event, one JSON object per line (``--json``)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, update: TaskUpdate) -> None:
        state: dict[str, Any] = {"event": update.event, "event_id": update.id}
        state.update(update.task.to_json())
        print(orjson.dumps(state).decode(), file=self.out, flush=True)

    def close(self) -> None:
        pass


class _Live:
    """A ``rich`` live display: the task's bar and its files, redrawn in place."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self.console = console
        # Started by the first update, so a watch refused at once draws nothing.
        self.live = Live(console=console, refresh_per_second=8, auto_refresh=True)

    def show(self, update: TaskUpdate) -> None:
        if not self.live.is_started:
            self.live.start()
        self.live.update(self._render(update.task), refresh=update.finished)
        if update.event == "task_completed":
            self.live.stop()
            self.console.print(_one_line(describe_end(update)), style="green", markup=False)

    def close(self) -> None:
        if self.live.is_started:
            self.live.stop()

    def _render(self, task: Task) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        head = Table.grid(padding=(0, 2))
        for _ in range(3):
            head.add_column(no_wrap=True)
        head.add_column(overflow="ellipsis", no_wrap=True)
        style = _STYLES.get(task.status, "")
        head.add_row(
            Text(task.title or task.task_id, style="bold"),
            Text(task.status, style=style),
            Text("  ".join(p for p in (_counts(task), _rate(task), _eta(task)) if p)),
            Text(task.message or "", style="dim"),
        )
        bar = Table.grid(padding=(0, 1))
        bar.add_column()
        bar.add_column(justify="right", no_wrap=True)
        bar.add_row(
            ProgressBar(total=100, completed=task.progress, width=max(10, self.console.width - 9)),
            f"{task.progress:5.1f}%",
        )
        if not task.files:
            return Group(head, bar)
        files = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
        files.add_column("file", overflow="ellipsis", no_wrap=True, ratio=2)
        files.add_column("status", no_wrap=True)
        files.add_column("progress", no_wrap=True, width=26)
        files.add_column("message", overflow="ellipsis", no_wrap=True, ratio=1, style="dim")
        states = list(task.files.values())
        room = max(3, self.console.height - 6)
        hidden = states[: max(0, len(states) - room)]  # the oldest files scroll away
        for state in states[len(hidden) :]:
            line = Table.grid(padding=(0, 1))
            line.add_column(width=20)
            line.add_column(justify="right", width=5)
            line.add_row(
                ProgressBar(total=100, completed=state.progress, width=20),
                f"{state.progress:.0f}%",
            )
            files.add_row(
                state.filename or state.file_id,
                Text(state.status, style=_STYLES.get(state.status, "")),
                line,
                state.message or "",
            )
        rows: list[RenderableType] = [head, bar, files]
        if hidden:
            done = sum(1 for s in hidden if s.status == "completed")
            rows.append(Text(f"… and {len(hidden)} more files ({done} completed)", style="dim"))
        return Group(*rows)


async def _watch(url: str, task_id: str, token: str | None, view: _Plain | _Json | _Live) -> int:
    last: TaskUpdate | None = None
    try:
        async for update in watch_task(url, task_id, token=token):
            view.show(update)
            last = update
    finally:
        view.close()
    if last is None:  # the watch was resumed after the task's end
        return 0
    if last.event == "task_completed":
        return 0
    print(f"tidings: {_one_line(describe_end(last))}", file=sys.stderr, flush=True)
    return 1


def run_watch(
    url: str,
    task_id: str,
    *,
    token: str | None = None,
    json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Watch a task and render it on ``out`` (stdout); returns the exit code (module doc).

    Raises:
        TidingsError: the task cannot be watched (the CLI prints it; exit code 2).
    """
    out = out if out is not None else sys.stdout
    view: _Plain | _Json | _Live
    if json:
        view = _Json(out)
    elif out.isatty():
        from rich.console import Console

        view = _Live(Console(file=out))
    else:
        view = _Plain(out)
    return asyncio.run(_watch(url, task_id, token, view))
