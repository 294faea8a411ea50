"""tidings: a Server-Sent Events hub for Python back ends."""

from __future__ import annotations

__version__ = "0.1.0"
