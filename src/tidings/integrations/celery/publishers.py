"""Where the hub is, and the publishers that Celery tasks report through."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Final

from celery import Celery

from tidings.client.publisher import Publisher

__all__ = ["DEFAULT_URL", "PerProcess", "hub_settings", "publisher_for"]

#: The hub used when neither the Celery config nor the environment names one.
DEFAULT_URL: Final = "http://127.0.0.1:8000"


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


class PerProcess:
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
