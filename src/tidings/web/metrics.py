"""``/metrics``: the hub's counters in Prometheus text format, read at scrape time.

Nothing is counted twice: the collector reads the engine's statistics, the same numbers as
``/stats``, so the hot path pays for plain integer increments only.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tidings.auth.jwks import JWKSStatistics
from tidings.auth.proxy import AuthProxyStatistics
from tidings.engine import HubStatistics

__all__ = ["render_metrics"]


class _HubCollector(Collector):
    def __init__(
        self,
        stats: HubStatistics,
        active_tasks: int | None,
        auth_proxy: AuthProxyStatistics | None,
        jwks: JWKSStatistics | None,
    ) -> None:
        self.stats = stats
        self.active_tasks = active_tasks
        self.auth_proxy = auth_proxy
        self.jwks = jwks

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily("tidings_connections", "Open event streams.", value=s.connections)
        by_topic = GaugeMetricFamily(
            "tidings_connections_by_topic",
            "Open streams per subscribed pattern.",
            labels=["topic"],
        )
        for topic, count in sorted(s.by_topic.items()):
            by_topic.add_metric([topic], count)
        yield by_topic
        for name, value, text in (
            ("published", s.published, "Events published through this node."),
            ("delivered", s.delivered, "Event deliveries written to streams."),
            ("conflated", s.conflated, "Queued task_progress events replaced by newer ones."),
            ("dropped", s.dropped, "Queued events discarded when a slow client was cut."),
            ("slow_disconnects", s.slow_disconnects, "Streams cut for being over their bound."),
        ):
            yield CounterMetricFamily(f"tidings_events_{name}", text, value=value)
        yield GaugeMetricFamily(
            "tidings_queued_events", "Events waiting in stream queues.", value=s.queued_events
        )
        if self.active_tasks is not None:
            # Left out while the task store cannot be read: an absent sample is "unknown"
            # to Prometheus, where 0 would be a wrong value.
            yield GaugeMetricFamily(
                "tidings_tasks_active", "Tasks pending or running.", value=self.active_tasks
            )
        yield GaugeMetricFamily(
            "tidings_uptime_seconds", "Seconds since the hub started.", value=s.uptime_seconds
        )
        yield from self._auth()

    def _auth(self) -> Iterator[Metric]:
        """The auth proxy's and the JWKS's counters, when they are configured."""
        proxy = self.auth_proxy
        if proxy is not None:
            asked = CounterMetricFamily(
                "tidings_auth_proxy_requests",
                "Requests to the auth proxy, by outcome: granted (claims), refused (401/403), "
                "unavailable (no answer, too late, 5xx), invalid (not the documented answer).",
                labels=["outcome"],
            )
            for outcome in ("granted", "refused", "unavailable", "invalid"):
                asked.add_metric([outcome], getattr(proxy, outcome))
            yield asked
            yield CounterMetricFamily(
                "tidings_auth_proxy_reused",
                "Requests answered without asking the auth proxy (a cached answer, or one on "
                "its way for the same credentials).",
                value=proxy.reused,
            )
            yield GaugeMetricFamily(
                "tidings_auth_proxy_cached", "Auth proxy answers cached.", value=proxy.cached
            )
        jwks = self.jwks
        if jwks is not None:
            fetches = CounterMetricFamily(
                "tidings_jwks_fetches",
                "Fetches of the JWKS, by outcome (failed: unreachable, an HTTP error or a "
                "malformed key set; the last good keys stay in use).",
                labels=["outcome"],
            )
            fetches.add_metric(["ok"], jwks.fetched)
            fetches.add_metric(["failed"], jwks.failed)
            yield fetches
            yield GaugeMetricFamily("tidings_jwks_keys", "JWKS signing keys in use.", jwks.keys)
            yield GaugeMetricFamily(
                "tidings_jwks_age_seconds",
                "Seconds since the JWKS keys in use were fetched.",
                value=jwks.age_seconds,
            )


def render_metrics(
    stats: HubStatistics,
    active_tasks: int | None,
    *,
    auth_proxy: AuthProxyStatistics | None = None,
    jwks: JWKSStatistics | None = None,
) -> tuple[bytes, str]:
    """The Prometheus exposition of ``stats`` and its content type (``active_tasks`` is
    ``None`` when unknown: the gauge is left out). The auth proxy's and the JWKS's
    counters are included when given."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_HubCollector(stats, active_tasks, auth_proxy, jwks))
    return generate_latest(registry), CONTENT_TYPE_LATEST
