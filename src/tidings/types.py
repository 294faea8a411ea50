"""Shared aliases and small records, so every module speaks one vocabulary."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

__all__ = ["JSON", "PRIORITIES", "Priority"]

#: A JSON value as it comes in from the outside world (``Any`` stops at this edge).
JSON: TypeAlias = Any

#: How an event is treated under load (SPEC §4): ``high`` events are never conflated or
#: dropped; ``normal`` and ``low`` ``task_progress`` events may be conflated.
Priority: TypeAlias = Literal["low", "normal", "high"]

PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high")
