"""tidings: a Server-Sent Events hub for Python back ends.

The supported names are re-exported here; everything else is reached through its module.
"""

from __future__ import annotations

from tidings._version import __version__
from tidings.auth.principal import Principal
from tidings.backends.base import PresenceEntry, PresencePage, TopicCount, TopicPage
from tidings.client import AsyncPublisher, Publisher, subscribe, watch_task
from tidings.config import Settings
from tidings.engine.history import History
from tidings.errors import (
    BackendUnavailable,
    ConfigError,
    EventTooLarge,
    InvalidEvent,
    InvalidTopic,
    LimitExceeded,
    NotAuthorized,
    ShuttingDown,
    TaskError,
    TaskExists,
    TaskFinished,
    TaskNotFound,
    TidingsError,
)
from tidings.events import Event
from tidings.hub import Hub, HubStatistics
from tidings.tasks.model import Task

__all__ = [
    "AsyncPublisher",
    "BackendUnavailable",
    "ConfigError",
    "Event",
    "EventTooLarge",
    "History",
    "Hub",
    "HubStatistics",
    "InvalidEvent",
    "InvalidTopic",
    "LimitExceeded",
    "NotAuthorized",
    "PresenceEntry",
    "PresencePage",
    "Principal",
    "Publisher",
    "Settings",
    "ShuttingDown",
    "Task",
    "TaskError",
    "TaskExists",
    "TaskFinished",
    "TaskNotFound",
    "TidingsError",
    "TopicCount",
    "TopicPage",
    "__version__",
    "subscribe",
    "watch_task",
]
