"""The key names of one hub in Redis.

Keys (``prefix`` defaults to ``tidings``; every node and publisher must use the same)::

    {p}:epoch       string  the epoch of the current history
    {p}:seq         string  the hub-wide counter
    {p}:config      hash    history_size, log_size (for publishers that write straight here)
    {p}:log         stream  every event, fields e s t m p; MAXLEN ~ log_size, MINID by age
    {p}:t:<topic>   stream  one topic's history, ids <seq>-0, fields m p; MAXLEN history_size
    {p}:topics      zset    topic names, all scored 0 (ZRANGEBYLEX by a pattern's prefix)
    {p}:active      zset    topic -> time of its newest event (for pruning)
    {p}:evicted     hash    topic -> highest seq trimmed from its history
    {p}:forgotten   string  highest seq of the topics pruned altogether
    {p}:idem:<key>  string  the first id published with an idempotency key (PX 300 s)

Presence (:mod:`tidings.backends.redis.presence`) and control::

    {p}:p:t:<topic> zset    the topic's streams: members <connection id>\0<JSON [user,
                            node, since]>, all scored 0 (ZRANGEBYLEX pages by connection
                            id; ZCARD is the count, O(1))
    {p}:p:topics    zset    topics with at least one stream, all scored 0 (pages by name)
    {p}:p:nodes     zset    node -> its last update (ms, Redis's clock): the heartbeat
    {p}:p:n:<node>  set     <topic>\0<member> of every entry the node wrote (what to
                            remove when it dies)
    {p}:p:d:<node>  set     the same, of a dead node, while its entries are being removed
    {p}:p:reaping   set     dead nodes whose entries are being removed
    {p}:control     channel control commands (pub/sub): ``POST /admin/disconnect``
    {p}:reply:<id>  list    each node's answer to one command (PX 30 s)

Scripts touch keys they compute from the prefix, so this layout wants one Redis (or one
hash slot: put the prefix in braces, ``{tidings}``, on Redis Cluster). Needs Redis 6.2+.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RedisKeys"]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key names of one hub in Redis (see the module docstring for the layout)."""

    prefix: str = "tidings"

    @property
    def common(self) -> list[str]:
        """The keys every script takes first, in order."""
        p = self.prefix
        return [
            f"{p}:epoch",
            f"{p}:seq",
            f"{p}:log",
            f"{p}:topics",
            f"{p}:active",
            f"{p}:evicted",
            f"{p}:forgotten",
            f"{p}:config",
        ]

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def log(self) -> str:
        return f"{self.prefix}:log"

    @property
    def topics(self) -> str:
        return f"{self.prefix}:topics"

    @property
    def evicted(self) -> str:
        return f"{self.prefix}:evicted"

    @property
    def forgotten(self) -> str:
        return f"{self.prefix}:forgotten"

    @property
    def topic_prefix(self) -> str:
        return f"{self.prefix}:t:"

    def history(self, topic: str) -> str:
        """The stream holding ``topic``'s history."""
        return f"{self.prefix}:t:{topic}"

    def idempotency(self, key: str) -> str:
        """The key remembering a publish's idempotency key."""
        return f"{self.prefix}:idem:{key}"

    @property
    def presence_prefix(self) -> str:
        """What every presence key starts with (the scripts add the rest)."""
        return f"{self.prefix}:p:"

    @property
    def presence_common(self) -> list[str]:
        """The keys the presence script takes: the topic list, the nodes, the reaping set."""
        p = self.presence_prefix
        return [f"{p}topics", f"{p}nodes", f"{p}reaping"]

    def presence(self, topic: str) -> str:
        """The sorted set of ``topic``'s streams."""
        return f"{self.prefix}:p:t:{topic}"

    @property
    def control(self) -> str:
        """The pub/sub channel of control commands."""
        return f"{self.prefix}:control"

    def reply(self, command_id: str) -> str:
        """The list where nodes answer the control command ``command_id``."""
        return f"{self.prefix}:reply:{command_id}"
