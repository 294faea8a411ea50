"""The engine: the topic index, connections and their queues, dispatch, keep-alive, drain.

It writes to a small sink (a transport) or is pulled by an ASGI response, and knows no HTTP
server and no task service: those sit above it.
"""

from __future__ import annotations

from tidings.engine.access import TaskAccess
from tidings.engine.connection import Connection
from tidings.engine.core import Engine, HubStatistics
from tidings.engine.dispatch import Dispatcher
from tidings.engine.history import History
from tidings.engine.types import HIGH_WATER, CloseReason, Counters, Sink

__all__ = [
    "HIGH_WATER",
    "CloseReason",
    "Connection",
    "Counters",
    "Dispatcher",
    "Engine",
    "History",
    "HubStatistics",
    "Sink",
    "TaskAccess",
]
