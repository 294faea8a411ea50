"""The ``tidings`` pytest plugin: the test kit's fixtures.

Registered as a ``pytest11`` entry point, so installing tidings makes ``tidings_hub`` and
``tidings_hub_factory`` available to every test (``-p no:tidings`` turns it off). Both are
sync fixtures: they work in sync tests and under any async test plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tidings.testing.server import TestHub

if TYPE_CHECKING:
    from starlette.types import ASGIApp

__all__ = ["tidings_hub", "tidings_hub_factory"]


@pytest.fixture
def tidings_hub() -> Iterator[TestHub]:
    """A started :class:`TestHub` serving a standalone hub (memory backend and store)."""
    with TestHub() as live:
        yield live


@pytest.fixture
def tidings_hub_factory() -> Iterator[Callable[..., TestHub]]:
    """``tidings_hub_factory(app=None, *, hub=None, prefix="", **settings)``: a started
    :class:`TestHub` (your app, or a hub with these settings), closed after the test."""
    started: list[TestHub] = []

    def make(app: ASGIApp | None = None, **kwargs: Any) -> TestHub:
        live = TestHub(app, **kwargs)
        started.append(live)
        return live.start()

    yield make
    for live in reversed(started):
        live.close()
