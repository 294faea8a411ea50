"""Tests for topic and pattern validation and the subscription index (SPEC §2)."""

from __future__ import annotations

import doctest
import itertools
from collections import Counter
from collections.abc import Collection
from typing import Literal, assert_type

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import topics
from tidings.errors import InvalidTopic
from tidings.topics import (
    MAX_TOPIC_BYTES,
    TopicIndex,
    is_wildcard,
    pattern_matches,
    validate_pattern,
    validate_topic,
)

VALID_TOPICS = [
    "chat",
    "chat/general",
    "tasks/3f2a",
    "users/42/notifications",
    "dashboard:requests",
    "a.b/c-d/e_f/g:h/i@j",
    "A/Z/0/9",
    "-/./:/@/_",
    "x" * MAX_TOPIC_BYTES,
    "/".join(["ab"] * 85) + "/a",  # 256 bytes exactly, many segments
]

# (topic, a fragment the error message must contain)
INVALID_TOPICS = [
    ("", "empty"),
    ("/", "start with '/'"),
    ("/chat", "start with '/'"),
    ("chat/", "end with '/'"),
    ("chat//general", "empty segment"),
    ("chat general", "' '"),
    ("chat/gen#eral", "'#'"),
    ("chat\n", "'\\n'"),
    ("chat\x00", "'\\x00'"),
    ("café", "non-ASCII"),
    ("chat/ü", "non-ASCII"),
    ("日本", "non-ASCII"),
    ("chat/*", "wildcard '*'"),
    ("chat/**", "wildcard '**'"),
    ("*", "wildcard '*'"),
    ("a*", "'*'"),
    ("x" * (MAX_TOPIC_BYTES + 1), "257 bytes"),
    ("x" * 10_000, "10000 bytes"),
]

VALID_PATTERNS = [
    *VALID_TOPICS,
    "*",
    "**",
    "*/*",
    "*/**",
    "users/42/**",
    "rooms/*",
    "rooms/*/messages",
    "a/*/b/*/**",
    "x" * (MAX_TOPIC_BYTES - 3) + "/**",
]

INVALID_PATTERNS = [
    ("", "empty"),
    ("/rooms", "start with '/'"),
    ("rooms/", "end with '/'"),
    ("rooms//*", "empty segment"),
    ("**/a", "'**' may only be the last segment"),
    ("a/**/b", "'**' may only be the last segment"),
    ("**/**", "'**' may only be the last segment"),
    ("a*", "'*' must be a whole segment"),
    ("rooms/a*", "'*' must be a whole segment"),
    ("rooms/*a", "'*' must be a whole segment"),
    ("***", "'*' must be a whole segment"),
    ("rooms/ü/*", "non-ASCII"),
    ("x" * (MAX_TOPIC_BYTES - 2) + "/**", "257 bytes"),
]

# (pattern, topic, matches)
MATCHES = [
    ("chat/general", "chat/general", True),
    ("chat/general", "chat/random", False),
    ("chat/general", "chat", False),
    ("chat/general", "chat/general/x", False),
    ("a/*", "a/b", True),
    ("a/*", "a", False),
    ("a/*", "a/b/c", False),
    ("*", "a", True),
    ("*", "a/b", False),
    ("*/b", "a/b", True),
    ("*/b", "a/c", False),
    ("a/*/c", "a/b/c", True),
    ("a/*/c", "a/b/d", False),
    ("**", "a", True),
    ("**", "a/b/c/d", True),
    ("users/42/**", "users/42", True),
    ("users/42/**", "users/42/notifications", True),
    ("users/42/**", "users/42/a/b", True),
    ("users/42/**", "users/421", False),
    ("users/42/**", "users/43/a", False),
    ("users/42/**", "users", False),
    ("*/**", "a", True),
    ("*/**", "a/b/c", True),
    ("a/*/**", "a", False),
    ("a/*/**", "a/b", True),
    ("a/*/**", "a/b/c/d", True),
]


@pytest.mark.parametrize("topic", VALID_TOPICS)
def test_validate_topic_returns_a_valid_topic_unchanged(topic: str) -> None:
    assert validate_topic(topic) is topic


@pytest.mark.parametrize(("topic", "reason"), INVALID_TOPICS)
def test_validate_topic_rejects_a_malformed_topic_and_says_why(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_topic(topic)
    assert reason in caught.value.message
    assert caught.value.code == "invalid_topic"
    assert caught.value.status == 400


def test_topic_limit_counts_bytes_and_is_256() -> None:
    assert MAX_TOPIC_BYTES == 256
    assert validate_topic("a" * 256)
    with pytest.raises(InvalidTopic, match="257 bytes"):
        validate_topic("a" * 257)


def test_error_message_shortens_a_long_topic() -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_topic("x" * 10_000)
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("pattern", VALID_PATTERNS)
def test_validate_pattern_returns_a_valid_pattern_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(("pattern", "reason"), INVALID_PATTERNS)
def test_validate_pattern_rejects_a_malformed_pattern_and_says_why(
    pattern: str, reason: str
) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_pattern(pattern)
    assert reason in caught.value.message


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("chat/general", False),
        ("*", True),
        ("**", True),
        ("rooms/*/messages", True),
        ("users/42/**", True),
        ("a*", False),
    ],
)
def test_is_wildcard_is_true_for_a_star_or_double_star_segment(
    pattern: str, expected: bool
) -> None:
    assert is_wildcard(pattern) is expected


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCHES)
def test_pattern_matches_follows_spec_wildcards(pattern: str, topic: str, expected: bool) -> None:
    assert pattern_matches(pattern, topic) is expected


@pytest.mark.parametrize(("pattern", "topic", "expected"), MATCHES)
def test_index_matches_like_the_reference_matcher(pattern: str, topic: str, expected: bool) -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add(pattern, "s")
    assert (set(index.match(topic)) == {"s"}) is expected


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [("a/*", "a/*"), ("a/**", "a/b*"), ("a//b", "a/b"), ("a/b", "a//b")],
)
def test_pattern_matches_rejects_invalid_arguments(pattern: str, topic: str) -> None:
    with pytest.raises(InvalidTopic):
        pattern_matches(pattern, topic)


@pytest.mark.parametrize("pattern", ["", "a//b", "a/**/b", "a*", "/a"])
def test_index_add_rejects_an_invalid_pattern_and_adds_nothing(pattern: str) -> None:
    index: TopicIndex[str] = TopicIndex()
    with pytest.raises(InvalidTopic):
        index.add(pattern, "s")
    assert len(index) == 0
    assert index.patterns() == {}


@pytest.mark.parametrize("pattern", ["", "a//b", "a/**/b", "a*", "nothing", "nothing/*"])
def test_index_discard_of_an_absent_registration_does_nothing(pattern: str) -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a/*", "s")
    index.discard(pattern, "s")
    index.discard("a/*", "other")
    assert len(index) == 1
    assert set(index.match("a/b")) == {"s"}


def test_index_returns_each_subscriber_once_when_several_patterns_match() -> None:
    index: TopicIndex[str] = TopicIndex()
    for pattern in ["rooms/lobby", "rooms/*", "rooms/**", "**", "*/lobby"]:
        index.add(pattern, "alice")
    index.add("rooms/lobby", "bob")
    result = index.match("rooms/lobby")
    assert sorted(result) == ["alice", "bob"]
    assert len(index) == 6


def test_index_counts_a_repeated_registration_once() -> None:
    index: TopicIndex[str] = TopicIndex()
    for _ in range(3):
        index.add("a", "s")
        index.add("a/*", "s")
    assert len(index) == 2
    assert index.patterns() == {"a": 1, "a/*": 1}


def test_index_patterns_counts_subscribers_per_pattern() -> None:
    index: TopicIndex[str] = TopicIndex()
    registrations = [
        ("chat/general", "a"),
        ("chat/general", "b"),
        ("chat/*", "a"),
        ("**", "a"),
        ("**", "b"),
        ("**", "c"),
        ("users/42/**", "u"),
        ("users/*/notifications", "u"),
        ("*", "x"),
    ]
    for pattern, subscriber in registrations:
        index.add(pattern, subscriber)
    assert index.patterns() == {
        "chat/general": 2,
        "chat/*": 1,
        "**": 3,
        "users/42/**": 1,
        "users/*/notifications": 1,
        "*": 1,
    }
    assert len(index) == len(registrations)


def test_index_without_wildcards_returns_the_stored_set_without_copying() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("chat/general", "a")
    index.add("chat/general", "b")
    first = index.match("chat/general")
    assert first is index.match("chat/general")
    assert set(first) == {"a", "b"}
    assert len(index.match("chat/random")) == 0


def test_index_match_with_exact_and_wildcard_hits_does_not_change_the_index() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("chat/general", "a")
    index.add("chat/*", "b")
    assert set(index.match("chat/general")) == {"a", "b"}
    assert set(index.match("chat/general")) == {"a", "b"}
    assert set(index.match("chat/random")) == {"b"}
    assert index.patterns() == {"chat/general": 1, "chat/*": 1}


def test_index_match_is_typed_as_a_collection_of_subscribers() -> None:
    index: TopicIndex[int] = TopicIndex()
    index.add("a", 1)
    assert_type(index.match("a"), Collection[int])


def test_discarding_everything_leaves_the_trie_empty() -> None:
    index: TopicIndex[int] = TopicIndex()
    patterns = ["a/b/c/**", "a/*/c", "a/b", "*", "**", "a/b/*/d/**", "x/*/*/*"]
    for subscriber in range(5):
        for pattern in patterns:
            index.add(pattern, subscriber)
    assert index._node_count() > 0
    for subscriber in range(5):
        for pattern in reversed(patterns):
            index.discard(pattern, subscriber)
    assert len(index) == 0
    assert index.patterns() == {}
    assert index._node_count() == 0
    assert len(index.match("a/b/c")) == 0


def test_discarding_one_pattern_prunes_only_its_own_branch() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("a/b/*", "s")
    index.add("a/**", "s")
    nodes_with_both = index._node_count()
    index.add("a/b/c/d/*", "t")
    index.discard("a/b/c/d/*", "t")
    assert index._node_count() == nodes_with_both
    index.discard("a/b/*", "s")
    assert index._node_count() == 1  # Just "a", which still holds "a/**".
    assert set(index.match("a/b/c")) == {"s"}


def test_doc_examples_run() -> None:
    failures, _ = doctest.testmod(topics, raise_on_error=False)
    assert failures == 0


# Property test: the index agrees with the reference matcher.

_LITERALS = ["a", "b", "c"]
_ALL_TOPICS = [
    "/".join(segments)
    for length in range(1, 5)
    for segments in itertools.product([*_LITERALS, "d"], repeat=length)
]


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    segments = draw(st.lists(st.sampled_from([*_LITERALS, "*"]), max_size=4))
    if not segments or draw(st.booleans()):
        segments.append("**")
    return "/".join(segments)


_Op = tuple[Literal["add", "discard"], str, int]
_ops = st.lists(
    st.tuples(st.sampled_from(["add", "discard"]), _patterns(), st.integers(0, 4)),
    max_size=40,
)


@given(ops=_ops)
def test_index_match_equals_the_reference_matcher_after_adds_and_discards(
    ops: list[_Op],
) -> None:
    index: TopicIndex[int] = TopicIndex()
    registered: set[tuple[str, int]] = set()
    for op, pattern, subscriber in ops:
        if op == "add":
            index.add(pattern, subscriber)
            registered.add((pattern, subscriber))
        else:
            index.discard(pattern, subscriber)
            registered.discard((pattern, subscriber))

    assert len(index) == len(registered)
    assert index.patterns() == dict(Counter(pattern for pattern, _ in registered))
    for topic in _ALL_TOPICS:
        expected = {s for p, s in registered if pattern_matches(p, topic)}
        result = list(index.match(topic))
        assert len(result) == len(set(result)), topic
        assert set(result) == expected, topic

    for pattern, subscriber in registered:
        index.discard(pattern, subscriber)
    assert len(index) == 0
    assert index.patterns() == {}
    assert index._node_count() == 0


# Scaling: matching cost does not grow with subscriptions that cannot match.


def _index_with_rooms(count: int) -> TopicIndex[str]:
    index: TopicIndex[str] = TopicIndex()
    for i in range(count):
        index.add(f"rooms/{i}", f"exact-{i}")
        index.add(f"rooms/{i}/*", f"child-{i}")
        index.add(f"users/{i}/**", f"user-{i}")
    index.add("rooms/*", "watcher")
    index.add("**", "firehose")
    return index


def _visits(index: TopicIndex[str], topic: str) -> tuple[set[str], int]:
    before = index._visits
    result = set(index.match(topic))
    return result, index._visits - before


@pytest.fixture(scope="module")
def large_index() -> TopicIndex[str]:
    index = _index_with_rooms(34_000)
    assert len(index) >= 100_000
    return index


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("other/topic", {"firehose"}),
        ("rooms/5", {"exact-5", "watcher", "firehose"}),
        ("rooms/5/x", {"child-5", "firehose"}),
        ("users/5", {"user-5", "firehose"}),
        ("users/5/a/b", {"user-5", "firehose"}),
        ("rooms/nope/x", {"firehose"}),
    ],
)
def test_match_visits_do_not_grow_with_non_matching_subscriptions(
    large_index: TopicIndex[str], topic: str, expected: set[str]
) -> None:
    small_index = _index_with_rooms(10)

    large_result, large_visits = _visits(large_index, topic)
    small_result, small_visits = _visits(small_index, topic)

    assert large_result == expected
    assert small_result == expected
    assert large_visits == small_visits
    assert large_visits <= 2 * len(topic.split("/")) + 1


def test_match_visits_no_trie_nodes_without_wildcard_subscriptions() -> None:
    index: TopicIndex[str] = TopicIndex()
    for i in range(1_000):
        index.add(f"rooms/{i}", f"exact-{i}")
    result, visits = _visits(index, "rooms/5")
    assert result == {"exact-5"}
    assert visits == 0


_SEGMENTS = st.sampled_from(["a", "b", "*"])


@st.composite
def _small_patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_SEGMENTS, min_size=1, max_size=3))
    if draw(st.booleans()):
        parts.append("**")
    return "/".join(parts)


@given(
    outer=_small_patterns(),
    inner=_small_patterns(),
    topic=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5).map("/".join),
)
def test_a_covering_pattern_matches_every_topic_the_covered_one_matches(
    outer: str, inner: str, topic: str
) -> None:
    """``pattern_covers`` is sound: what ``/admin/disconnect`` ends by topic is never wider."""
    if topics.pattern_covers(outer, inner) and pattern_matches(inner, topic):
        assert pattern_matches(outer, topic)


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("chat/general", "chat/general", True),
        ("chat/*", "chat/general", True),
        ("chat/**", "chat/*", True),
        ("chat/**", "chat", True),
        ("**", "a/**", True),
        ("chat/*", "chat/**", False),
        ("chat/general", "chat/*", False),
        ("chat/*", "chat/a/b", False),
        ("chat/a", "chat", False),
    ],
)
def test_pattern_covers(outer: str, inner: str, expected: bool) -> None:
    assert topics.pattern_covers(outer, inner) is expected
