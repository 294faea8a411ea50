"""The system's headless Chromium, as the tests and the screenshot script launch it.

One place for the browser's path and flags: ``tests/conftest.py`` (the ``browser``
fixture) and ``scripts/dashboard.py`` both launch Chromium through playwright with these.
Never a browser that playwright downloads: tests and scripts run offline, on Debian's
``chromium`` (``make system-deps`` installs it).
"""

from __future__ import annotations

import os

__all__ = ["CHROMIUM", "CHROMIUM_ARGS"]

#: Debian's Chromium; ``TIDINGS_CHROMIUM`` names another build.
CHROMIUM = os.environ.get("TIDINGS_CHROMIUM", "/usr/bin/chromium")

#: Headless, no sandbox (containers and CI run as root), and nothing that reaches out to
#: the network on its own (updates, sync, QUIC probes): a run sees only its own servers.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
