"""The ASGI app uvicorn runs: the hub at ``/sse``, Django for everything else.

Django's ASGI handler serves HTTP only (it refuses the lifespan protocol), so the lifespan
goes to the hub, which starts with the server and ends its streams cleanly on shutdown.
"""

from __future__ import annotations

import os
from typing import cast

from django.core.asgi import get_asgi_application
from starlette.types import ASGIApp, Receive, Scope, Send

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
# Sets Django up: import what uses it after this. (Its stubs type an ASGI scope as a dict,
# Starlette's as a mutable mapping: the same protocol.)
django_app = cast(ASGIApp, get_asgi_application())

from examples.django_app.hub import hub  # noqa: E402

#: The hub's path prefix: its API, streams, dashboard and ``/sse/static/tidings.js``.
PREFIX = "/sse"


class HubAndDjango:
    """Requests under :data:`PREFIX` to the hub (mounted there, as Starlette's ``Mount``
    does: ``root_path`` gets the prefix), the rest to Django; the lifespan to the hub."""

    def __init__(self, hub_app: ASGIApp, django: ASGIApp) -> None:
        self.hub_app = hub_app
        self.django = django

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.hub_app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            root = scope.get("root_path", "") + PREFIX
            await self.hub_app({**scope, "root_path": root}, receive, send)
            return
        await self.django(scope, receive, send)


application = HubAndDjango(hub.asgi_app(), django_app)
