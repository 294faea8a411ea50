"""Topic and pattern validation, and the index that matches topics to subscribers (SPEC §2).

A topic is ``/``-separated segments of ``[A-Za-z0-9_.:@-]+``, at most 256 bytes. A pattern
is a topic in which a segment may be ``*`` (exactly one segment) and the last segment may be
``**`` (zero or more segments).

Decisions that may surprise, stated so nobody "fixes" them:

- ``validate_topic`` is one length check and one precompiled regex ``fullmatch``: it runs on
  every publish. Only when it fails do we spend time working out *why*, for the message.
- ``TopicIndex.match`` does not validate the topic. Publishers validate once, on the way in;
  an invalid topic simply matches nothing it shouldn't (no literal trie key is ``*``).
- ``TopicIndex.match`` may return one of the index's own sets rather than a copy, so the
  common case (no wildcard subscriptions, or a single matching set) allocates nothing. The
  caller must not mutate the result and must finish iterating it before the next ``add`` or
  ``discard``. The hub iterates it synchronously while dispatching one event, so this holds.
- ``TopicIndex.discard`` never raises, even for a malformed pattern: it is called on
  disconnect and cleanup paths, where a pattern that was never added is simply absent.
- ``TopicIndex`` is not thread-safe; it belongs to one event loop.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Hashable, Sequence
from typing import Generic, TypeVar

from tidings.errors import InvalidTopic, NotAuthorized

__all__ = [
    "MAX_TOPICS",
    "MAX_TOPIC_BYTES",
    "TASK_PREFIX",
    "TopicIndex",
    "check_patterns",
    "check_publishable",
    "is_wildcard",
    "pattern_covers",
    "pattern_matches",
    "task_of",
    "task_topic",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_BYTES = 256
"""The longest topic or pattern, in bytes of UTF-8 (SPEC §2)."""
MAX_TOPICS = 32
"""The most patterns in one subscription (SPEC §3)."""
TASK_PREFIX = "tasks/"
"""Topics under this prefix carry task events; only the task service writes them (SPEC §2)."""

_SEGMENT = r"[A-Za-z0-9_.:@-]+"
# The character class is ASCII only, so a string that matches has one byte per character
# and ``len()`` is its UTF-8 size. That is why the length check below can use ``len()``.
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
# ``*`` may be any segment; ``**`` only the last. Segments are split by ``/``, which is not
# in the class, so the regex cannot backtrack badly.
_PATTERN_RE = re.compile(rf"(?:(?:{_SEGMENT}|\*)/)*(?:{_SEGMENT}|\*|\*\*)")
_BAD_CHAR_RE = re.compile(r"[^A-Za-z0-9_.:@-]")
_ALLOWED = "A-Z a-z 0-9 _ . : @ -"
_SHOWN_CHARS = 80

T = TypeVar("T", bound=Hashable)


def validate_topic(topic: str) -> str:
    """Check that ``topic`` is a valid topic and return it unchanged.

    A topic is one or more ``/``-separated segments, each made of ``A-Z a-z 0-9 _ . : @ -``
    (ASCII only), with no empty segment and no leading or trailing ``/``, at most
    ``MAX_TOPIC_BYTES`` bytes. Wildcards are not allowed: you publish to a topic and
    subscribe to a pattern.

    Raises:
        InvalidTopic: the topic breaks one of these rules; the message names which.

    >>> validate_topic("users/42/notifications")
    'users/42/notifications'
    """
    if len(topic) <= MAX_TOPIC_BYTES and _TOPIC_RE.fullmatch(topic):
        return topic
    raise InvalidTopic(_explain(topic, kind="topic"))


def validate_pattern(pattern: str) -> str:
    """Check that ``pattern`` is a valid subscription pattern and return it unchanged.

    A pattern follows the topic rules (see ``validate_topic``) except that a segment may be
    ``*``, which matches exactly one segment, and the last segment may be ``**``, which
    matches zero or more segments. ``**`` anywhere but last is invalid, and so is a segment
    that mixes ``*`` with other characters (``a*``). A pattern without wildcards is a topic
    and matches only itself.

    Raises:
        InvalidTopic: the pattern breaks one of these rules; the message names which.

    >>> validate_pattern("users/42/**")
    'users/42/**'
    """
    if len(pattern) <= MAX_TOPIC_BYTES and _PATTERN_RE.fullmatch(pattern):
        return pattern
    raise InvalidTopic(_explain(pattern, kind="pattern"))


def is_wildcard(pattern: str) -> bool:
    """Return whether ``pattern`` has a ``*`` or ``**`` segment.

    Does not validate: ``a*`` is not a wildcard pattern (it is not a valid pattern at all).
    """
    if "*" not in pattern:
        return False
    return any(segment in ("*", "**") for segment in pattern.split("/"))


def pattern_matches(pattern: str, topic: str) -> bool:
    """Return whether ``pattern`` matches ``topic``, by comparing segments one by one.

    This is the reference matcher: ``TopicIndex`` must agree with it, and it is used to
    re-check authorization. It validates both arguments, so it is slower than the index.

    Raises:
        InvalidTopic: ``pattern`` is not a valid pattern or ``topic`` not a valid topic.

    >>> pattern_matches("users/42/**", "users/42")
    True
    >>> pattern_matches("a/*", "a/b/c")
    False
    """
    pattern_segments = validate_pattern(pattern).split("/")
    topic_segments = validate_topic(topic).split("/")
    for position, segment in enumerate(pattern_segments):
        if segment == "**":  # Always last, so it matches whatever is left, even nothing.
            return True
        if position >= len(topic_segments):
            return False
        if segment != "*" and segment != topic_segments[position]:
            return False
    return len(pattern_segments) == len(topic_segments)


def pattern_covers(outer: str, inner: str) -> bool:
    """Return whether every topic that ``inner`` matches is matched by ``outer``.

    Both are patterns (a topic is a pattern that matches itself). ``outer`` ``*`` covers any
    one segment of ``inner`` (``*`` included), a final ``**`` covers the rest, and a
    wildcard of ``inner`` is covered only by a wildcard of at least its reach. Does not
    validate.

    >>> pattern_covers("chat/**", "chat/*")
    True
    >>> pattern_covers("chat/general", "chat/**")
    False
    """
    outer_segments = outer.split("/")
    inner_segments = inner.split("/")
    for position, segment in enumerate(outer_segments):
        if segment == "**":
            return True
        if position >= len(inner_segments):
            return False
        wanted = inner_segments[position]
        if wanted == "**" or (segment != "*" and segment != wanted):
            return False
    return len(outer_segments) == len(inner_segments)


def task_topic(task_id: str) -> str:
    """The topic of a task's events: ``tasks/<task_id>``."""
    return TASK_PREFIX + task_id


def task_of(pattern: str) -> str | None:
    """The task id of an exact task topic ``tasks/<id>`` (no wildcard), else ``None``."""
    if not pattern.startswith(TASK_PREFIX):
        return None
    rest = pattern[len(TASK_PREFIX) :]
    if not rest or "/" in rest or rest in ("*", "**"):
        return None
    return rest


def check_publishable(topic: str) -> str:
    """Refuse a publish on a reserved topic; return ``topic`` unchanged otherwise.

    ``tasks/...`` topics carry task events, which only the task service writes, so they
    cannot be forged (SPEC §3). This is the one place that rule lives.

    Raises:
        NotAuthorized: (403 ``reserved_topic``) ``topic`` is under ``tasks/``.
    """
    if topic.startswith(TASK_PREFIX):
        raise NotAuthorized(
            "tasks/... topics are written by the task service only", code="reserved_topic"
        )
    return topic


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    """Validate a subscription's patterns (1 to :data:`MAX_TOPICS`, each valid), without
    duplicates, in their order.

    Raises:
        InvalidTopic: no pattern, more than 32, or a bad one.
    """
    key = tuple(patterns)
    if 0 < len(key) <= MAX_TOPICS:
        return _checked_patterns(key)
    return _check_patterns(key)


def _check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    if not patterns:
        raise InvalidTopic("at least one topic is required", code="missing_topic")
    if len(patterns) > MAX_TOPICS:
        raise InvalidTopic(f"at most {MAX_TOPICS} topics per subscription", code="too_many_topics")
    return tuple(dict.fromkeys(validate_pattern(p) for p in patterns))


#: Every stream's patterns are checked when it opens, and most streams share a few sets.
#: Errors are not remembered (``lru_cache`` keeps returns only).
_checked_patterns = functools.lru_cache(maxsize=256)(_check_patterns)


class TopicIndex(Generic[T]):
    """Which subscribers want which topics: the subscription index of SPEC §2.

    Each registration is a (pattern, subscriber) pair; a subscriber may register several
    patterns. Patterns without wildcards live in a ``dict`` from topic to subscribers.
    Wildcard patterns live in a trie keyed by segment, with a separate ``*`` child at each
    node. ``match`` walks the topic's segments down the trie, so its cost depends on the
    topic's length and on the patterns that can match it, not on how many other
    subscriptions exist.

    >>> index: TopicIndex[str] = TopicIndex()
    >>> index.add("rooms/*", "alice")
    >>> index.add("rooms/lobby", "alice")
    >>> index.add("**", "bob")
    >>> sorted(index.match("rooms/lobby"))
    ['alice', 'bob']
    """

    def __init__(self) -> None:
        self._exact: dict[str, set[T]] = {}
        self._root: _Node[T] = _Node()
        self._empty: frozenset[T] = frozenset()
        self._count = 0
        self._wildcard_count = 0
        # Trie nodes visited by ``match``, summed over calls. Tests read it to show that
        # matching does not look at unrelated subscriptions; nothing else should.
        self._visits = 0

    def __len__(self) -> int:
        """Return the number of (pattern, subscriber) registrations."""
        return self._count

    def add(self, pattern: str, subscriber: T) -> None:
        """Register ``subscriber`` for the topics ``pattern`` matches.

        Adding a registration that already exists does nothing.

        Raises:
            InvalidTopic: ``pattern`` is not a valid pattern; nothing was added.
        """
        validate_pattern(pattern)
        if not is_wildcard(pattern):
            subscribers = self._exact.setdefault(pattern, set())
            if subscriber not in subscribers:
                subscribers.add(subscriber)
                self._count += 1
            return
        segments = pattern.split("/")
        double_star = segments[-1] == "**"
        if double_star:
            segments.pop()
        node = self._root
        for segment in segments:
            node = node.child_or_create(segment)
        if double_star:
            if node.rest is None:
                node.rest = set()
            target = node.rest
        else:
            if node.here is None:
                node.here = set()
            target = node.here
        if subscriber not in target:
            target.add(subscriber)
            self._count += 1
            self._wildcard_count += 1

    def discard(self, pattern: str, subscriber: T) -> None:
        """Remove the registration of ``subscriber`` for ``pattern``, if there is one.

        Never raises: a registration that does not exist (including one with a malformed
        pattern) is simply absent. Trie nodes and sets left empty are dropped, so memory
        does not grow as subscribers come and go.
        """
        if not is_wildcard(pattern):
            subscribers = self._exact.get(pattern)
            if subscribers is not None and subscriber in subscribers:
                subscribers.remove(subscriber)
                self._count -= 1
                if not subscribers:
                    del self._exact[pattern]
            return
        segments = pattern.split("/")
        double_star = segments[-1] == "**"
        if double_star:
            segments.pop()
        path: list[_Node[T]] = [self._root]
        for segment in segments:
            child = path[-1].child(segment)
            if child is None:
                return
            path.append(child)
        target = path[-1].rest if double_star else path[-1].here
        if target is None or subscriber not in target:
            return
        target.remove(subscriber)
        self._count -= 1
        self._wildcard_count -= 1
        if not target:
            if double_star:
                path[-1].rest = None
            else:
                path[-1].here = None
        # Prune from the deepest node up; stop at the first node that still holds something.
        for depth in range(len(segments), 0, -1):
            if not path[depth].is_empty():
                break
            path[depth - 1].remove_child(segments[depth - 1])

    def match(self, topic: str) -> Collection[T]:
        """Return the subscribers with at least one pattern that matches ``topic``.

        Each subscriber appears once, however many of its patterns match. ``topic`` should
        already be valid (see ``validate_topic``); it is not checked again here.

        The result may be one of the index's own sets: do not mutate it, and finish
        iterating it before the next ``add`` or ``discard``. When there are no wildcard
        subscriptions this returns the stored set for ``topic`` directly, with no copy.
        """
        exact = self._exact.get(topic)
        if not self._wildcard_count:
            return self._empty if exact is None else exact
        hits: list[set[T]] = [] if exact is None else [exact]
        visits = 0
        nodes = [self._root]
        for segment in topic.split("/"):
            following: list[_Node[T]] = []
            for node in nodes:
                visits += 1
                if node.rest:
                    hits.append(node.rest)
                if node.children is not None:
                    child = node.children.get(segment)
                    if child is not None:
                        following.append(child)
                if node.star is not None:
                    following.append(node.star)
            nodes = following
            if not nodes:
                break
        else:
            # The topic is used up: patterns ending here match, and so does a trailing
            # ``**``, which also matches zero segments.
            for node in nodes:
                visits += 1
                if node.here:
                    hits.append(node.here)
                if node.rest:
                    hits.append(node.rest)
        self._visits += visits
        if not hits:
            return self._empty
        if len(hits) == 1:
            return hits[0]
        return set().union(*hits)

    def patterns(self) -> dict[str, int]:
        """Return how many subscribers each registered pattern has (for ``/stats``)."""
        counts = {pattern: len(subscribers) for pattern, subscribers in self._exact.items()}
        stack: list[tuple[list[str], _Node[T]]] = [([], self._root)]
        while stack:
            segments, node = stack.pop()
            if node.here:
                counts["/".join(segments)] = len(node.here)
            if node.rest:
                counts["/".join([*segments, "**"])] = len(node.rest)
            if node.star is not None:
                stack.append(([*segments, "*"], node.star))
            if node.children is not None:
                stack.extend(([*segments, key], child) for key, child in node.children.items())
        return counts

    def _node_count(self) -> int:
        """Return the number of trie nodes below the root (0 when no wildcards remain)."""
        count = -1  # The root is not counted.
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            if node.star is not None:
                stack.append(node.star)
            if node.children is not None:
                stack.extend(node.children.values())
        return count


class _Node(Generic[T]):
    """One trie node: the wildcard patterns whose first segments lead here.

    Every field starts as ``None`` and is created on first use: most nodes need only one or
    two of them, and an empty ``set`` costs 216 bytes.
    """

    __slots__ = ("children", "here", "rest", "star")

    def __init__(self) -> None:
        # Literal segments. No key is ``*`` or ``**``: the ``*`` child is ``star``.
        self.children: dict[str, _Node[T]] | None = None
        self.star: _Node[T] | None = None
        # Subscribers whose pattern ends at this node.
        self.here: set[T] | None = None
        # Subscribers whose pattern is this node's path followed by ``**``.
        self.rest: set[T] | None = None

    def child(self, segment: str) -> _Node[T] | None:
        if segment == "*":
            return self.star
        return None if self.children is None else self.children.get(segment)

    def child_or_create(self, segment: str) -> _Node[T]:
        if segment == "*":
            if self.star is None:
                self.star = _Node()
            return self.star
        if self.children is None:
            self.children = {}
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = _Node()
        return node

    def remove_child(self, segment: str) -> None:
        if segment == "*":
            self.star = None
        elif self.children is not None:
            self.children.pop(segment, None)
            if not self.children:
                self.children = None

    def is_empty(self) -> bool:
        return self.children is None and self.star is None and not self.here and not self.rest


def _explain(text: str, *, kind: str) -> str:
    """Say why ``text`` is not a valid topic or pattern (the slow path, for messages)."""
    shown = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    prefix = f"invalid {kind} {shown!r}: "
    if not text:
        return prefix + "it is empty"
    if text.startswith("/"):
        return prefix + "it must not start with '/'"
    if text.endswith("/"):
        return prefix + "it must not end with '/'"
    segments = text.split("/")
    for position, segment in enumerate(segments):
        if not segment:
            return prefix + "it has an empty segment ('//')"
        if segment in ("*", "**"):
            if kind == "topic":
                return prefix + f"a topic cannot contain the wildcard {segment!r}; use a pattern"
            if segment == "**" and position != len(segments) - 1:
                return prefix + "'**' may only be the last segment"
            continue
        bad = _BAD_CHAR_RE.search(segment)
        if bad is None:
            continue
        char = bad.group()
        if char == "*":
            return prefix + f"'*' must be a whole segment, not part of {segment!r}"
        if not char.isascii():
            return prefix + f"it contains the non-ASCII character {char!r}; use {_ALLOWED}"
        return prefix + f"it contains the character {char!r}; segments may use {_ALLOWED}"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_BYTES:
        return prefix + f"it is {size} bytes; the limit is {MAX_TOPIC_BYTES}"
    return prefix + "it does not follow SPEC section 2"
