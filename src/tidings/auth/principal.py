"""Who is asking: the :class:`Principal`, and what it may subscribe to and publish on."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tidings.topics import pattern_matches

__all__ = ["ANONYMOUS", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller, or the anonymous one when auth is off.

    Attributes:
        user: the user id (JWT ``sub``); ``None`` for anonymous callers, who never receive
            ``users``-targeted events.
        subscribe: patterns the principal may subscribe to (besides ``users/<user>/**`` and
            its own tasks, which are always allowed).
        publish: patterns the principal may publish on.
        admin: may see every task and ``/stats``.
        expires_at: Unix time when the credentials expire (a stream ends then with
            ``auth_expired``); ``None`` when they don't.
        unrestricted: auth is off; every topic is allowed (loopback-only by default).
    """

    user: str | None = None
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    admin: bool = False
    expires_at: float | None = None
    unrestricted: bool = False

    def may_subscribe(self, pattern: str) -> bool:
        """Whether this principal may subscribe to ``pattern``.

        A pattern is allowed when one granted pattern covers every topic it can match; for
        the simple grants users write (``chat/**``, ``rooms/*``) this is checked by matching
        the requested pattern's wildcards as literal segments.
        """
        if self.unrestricted:
            return True
        if self.private_pattern is not None and _covers(self.private_pattern, pattern):
            return True
        return any(_covers(grant, pattern) for grant in self.subscribe)

    @property
    def private_pattern(self) -> str | None:
        """``users/<user>/**``, the private topics this principal may always subscribe to.

        ``None`` when there is no user id or it is not one topic segment: a ``sub`` of
        ``*`` or ``alice/x`` must not reach every user's topics, or ``alice``'s.
        """
        user = self.user
        if user is None or _SEGMENT.fullmatch(user) is None:
            return None
        return f"users/{user}/**"

    def may_publish(self, topic: str) -> bool:
        """Whether this principal may publish on ``topic``."""
        if self.unrestricted:
            return True
        return any(pattern_matches(grant, topic) for grant in self.publish)

    def may_receive(self, users: Iterable[str] | None) -> bool:
        """Whether an event targeted at ``users`` (``None``: everyone) reaches this principal."""
        return users is None or (self.user is not None and self.user in users)


_SEGMENT = re.compile(r"[A-Za-z0-9_.:@-]+")


def _covers(grant: str, pattern: str) -> bool:
    """Whether every topic matched by ``pattern`` is matched by ``grant``.

    Walks both segment lists: a grant ``*`` covers any single requested segment (``*``
    included), a final grant ``**`` covers the rest, and a requested ``*``/``**`` is covered
    only by a grant wildcard of at least the same reach.
    """
    g = grant.split("/")
    p = pattern.split("/")
    for i, seg in enumerate(g):
        if seg == "**":
            return True
        if i >= len(p):
            return False
        want = p[i]
        if want == "**":
            return False
        if seg != "*" and seg != want:
            return False
    return len(g) == len(p)


#: The caller when auth is off: no user id, every topic allowed.
ANONYMOUS = Principal(unrestricted=True)
