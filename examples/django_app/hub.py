"""The hub this project mounts at ``/sse``, and who may do what on it.

Django's session decides who watches: ``authenticate`` reads the request's session cookie
with Django's own session store and auth backend, so a stream belongs to whoever is logged
in, with no token in the page. The hub then lets each user read their own tasks (and
``users/<id>/**``) and nothing else: another user's task stream is ``404``.

Writes come from the server side only. The project's views and job threads call the hub
with the sync ``Publisher``, authenticated by short tokens signed with Django's
``SECRET_KEY`` (:mod:`django.core.signing`): a user's token (to create a task the user
owns) and a worker's (to report on tasks and notify users). The session cookie is taken
for ``GET`` only, so no page of another site can make a logged-in browser publish or
cancel anything (CSRF), whatever its cookie policy.
"""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.contrib.auth import aget_user
from django.core import signing
from django.http import HttpRequest
from starlette.requests import HTTPConnection

from tidings import Hub, Principal

__all__ = ["WORKER", "authenticate", "hub", "token_for", "worker_token"]

#: The salts of this project's hub tokens, one per kind: a token signed for anything else
#: (or of the other kind) never passes.
USER_SALT = "examples.django_app.hub.user"
WORKER_SALT = "examples.django_app.hub.worker"
#: A user's token lives a minute: it is made for one call of a view.
USER_TOKEN_TTL = 60
#: A worker's token lives as long as a job may run.
WORKER_TOKEN_TTL = 24 * 3600
#: The principal of the project's job threads: may report on any task and notify any user.
WORKER = Principal(user="django-worker", publish=("tasks/*", "users/*/notifications"))


def token_for(user_id: str) -> str:
    """A token for one server-side call made as ``user_id`` (creating their task)."""
    return signing.dumps(user_id, salt=USER_SALT)


def worker_token() -> str:
    """A token for a job thread: :data:`WORKER`."""
    return signing.dumps("worker", salt=WORKER_SALT)


def _from_token(token: str) -> Principal | None:
    """The principal of a token of :func:`token_for` or :func:`worker_token`, within its
    lifetime; ``None`` for any other."""
    try:
        user = signing.loads(token, salt=USER_SALT, max_age=USER_TOKEN_TTL)
    except signing.BadSignature:  # SignatureExpired is one
        pass
    else:
        return Principal(user=str(user))
    try:
        signing.loads(token, salt=WORKER_SALT, max_age=WORKER_TOKEN_TTL)
    except signing.BadSignature:
        return None
    return WORKER


async def _session_user(session_key: str) -> str | None:
    """The id of the active user logged in with ``session_key``, or ``None``.

    Django's own check, as its ``AuthenticationMiddleware`` does it: the session store, the
    auth backend, and the session's hash of the password (a password change logs out).
    """
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = await aget_user(request)
    if not user.is_authenticated or not user.is_active:
        return None
    return str(user.pk)


async def authenticate(conn: HTTPConnection) -> Principal | None:
    """The hub's ``authenticate``: a signed token (server-side calls), else, for ``GET``,
    Django's session; ``None`` (401) otherwise."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header:
        return _from_token(token.strip()) if scheme.lower() == "bearer" else None
    if conn.scope.get("method", "GET") != "GET":
        return None
    session_key = conn.cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    user = await _session_user(session_key)
    return Principal(user=user) if user is not None else None


#: Memory backend and task store: one process. With ``backend="redis://..."`` the same
#: project runs as several processes, and job threads may publish straight into Redis.
hub = Hub(authenticate=authenticate, backend="memory", store="memory")
