"""Integrations of tidings with other frameworks.

- :mod:`tidings.integrations.celery`: Celery tasks report their progress to a hub (a task
  base class, or signal handlers for existing tasks). Needs the ``celery`` extra:
  ``pip install 'tidings[celery]'``.
- :mod:`tidings.integrations.asgi`: :class:`~tidings.integrations.asgi.RequestEvents`, an
  ASGI middleware that publishes every request's start and end (``request_start``,
  ``request_complete``, ``request_error``) for live dashboards.

Each integration is its own module and imports its framework itself, so importing this
package needs nothing beyond tidings.
"""

from __future__ import annotations

__all__: list[str] = []
