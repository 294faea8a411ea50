"""Fixtures of the web tests: a hub of a test's own beside the shared one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import SHARED_FLAGS, ServerFactory, ServerProcess


@pytest.fixture
def own_server(server_factory: ServerFactory) -> ServerProcess:
    """A hub of this test's own, with the shared hub's flags: for a test that reads its
    counters from zero, lists everything, or stops or signals the hub."""
    return server_factory(*SHARED_FLAGS)


@pytest.fixture
async def own_http(own_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An async HTTP client for ``own_server``."""
    async with httpx.AsyncClient(base_url=own_server.url, timeout=10) as client:
        yield client
