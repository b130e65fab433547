"""Prometheus metrics on a registry of their own (no global registry: one per app).

Labels are profile names, kinds, routes, statuses and outcomes: never a token, a bearer hash or
anything a caller chose freely (unknown paths are counted under the route "other").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EntryCollector(Collector):
    """Per-entry gauges, read from the cache's snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], Iterable[Any]]) -> None:
        self._snapshot = snapshot

    def collect(self):
        expiry = GaugeMetricFamily(
            "broker_token_expires_in_seconds",
            "Seconds until the cached token expires (absent when none is cached)",
            labels=["profile", "kind"],
        )
        failures = GaugeMetricFamily(
            "broker_refresh_failures_in_row",
            "Consecutive failed refresh attempts",
            labels=["profile", "kind"],
        )
        waiters = GaugeMetricFamily(
            "broker_singleflight_waiters",
            "Callers waiting on an in-flight refresh",
            labels=["profile", "kind"],
        )
        state = GaugeMetricFamily(
            "broker_entry_state",
            "1 for the entry's current state",
            labels=["profile", "kind", "state"],
        )
        for s in self._snapshot():
            labels = [s.profile, s.kind]
            if s.expires_in is not None:
                expiry.add_metric(labels, s.expires_in)
            failures.add_metric(labels, s.failures)
            waiters.add_metric(labels, s.waiters)
            state.add_metric([*labels, s.state], 1)
        yield from (expiry, failures, waiters, state)


class _ProfileCollector(Collector):
    """Per-profile gauges: MFA of the profile's own token, customer tenants by state. Labels
    are profile names and fixed state names, never a tenant id (the count stays bounded)."""

    def __init__(self, snapshot: Callable[[], Iterable[dict]]) -> None:
        self._snapshot = snapshot

    def collect(self):
        mfa = GaugeMetricFamily(
            "broker_aad_token_mfa",
            "1 when the profile's app+user Azure AD token shows MFA (amr), 0 when it does not "
            "(Partner Center will refuse it), absent when unknown",
            labels=["profile"],
        )
        age = GaugeMetricFamily(
            "broker_refresh_token_age_seconds",
            "Seconds since the profile's refresh token was last redeemed (or placed); Azure AD "
            "lets it die after 90 days without one",
            labels=["profile"],
        )
        tokens = GaugeMetricFamily(
            "broker_customer_tokens",
            "Customer-tenant (tenant, scope) entries held (at most max_customer_tokens)",
            labels=["profile"],
        )
        tenants = GaugeMetricFamily(
            "broker_customer_tenants",
            "Customer tenants seen, by state",
            labels=["profile", "state"],
        )
        in_flight = GaugeMetricFamily(
            "broker_customer_upstream_in_flight",
            "Azure AD calls in flight for customer tenants",
            labels=["profile"],
        )
        queued = GaugeMetricFamily(
            "broker_customer_upstream_queued",
            "Customer-tenant fetches waiting for an upstream slot",
            labels=["profile"],
        )
        evicted = CounterMetricFamily(
            "broker_customer_tokens_evicted",
            "Customer-tenant entries dropped to stay within max_customer_tokens",
            labels=["profile"],
        )
        for row in self._snapshot():
            name = row["profile"]
            if row.get("mfa") is not None:
                mfa.add_metric([name], 1 if row["mfa"] else 0)
            if row.get("refresh_token_age") is not None:
                age.add_metric([name], row["refresh_token_age"])
            if "tokens" in row:
                tokens.add_metric([name], row["tokens"])
                for state, n in sorted(row["states"].items()):
                    tenants.add_metric([name, state], n)
                in_flight.add_metric([name], row["in_flight"])
                queued.add_metric([name], row["queued"])
                evicted.add_metric([name], row["evicted"])
        yield from (mfa, age, tokens, tenants, in_flight, queued, evicted)


class _HotCounters(Collector):
    def __init__(self, requests: dict, cache: dict) -> None:
        self._requests, self._cache = requests, cache

    def collect(self):
        requests = CounterMetricFamily(
            "broker_http_requests", "HTTP requests by route and status", labels=["route", "status"]
        )
        for route, statuses in list(self._requests.items()):
            for status, n in list(statuses.items()):
                requests.add_metric([route, str(status)], n)
        cache = CounterMetricFamily(
            "broker_cache_requests",
            "Token requests by profile, kind and result (hit|miss)",
            labels=["profile", "kind", "result"],
        )
        for labels, n in list(self._cache.items()):
            cache.add_metric(list(labels), n)
        yield from (requests, cache)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The two counters on the cache-hit path are plain ints (the event loop is the only
        # writer), exported at scrape time: a labelled prometheus Counter costs a lock and a
        # label lookup per increment, a measurable share of a cache hit. Requests are counted
        # in one table per route, which its handler holds (`requests_of`).
        self._requests: dict[str, defaultdict[int, int]] = {}
        self._cache: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        r.register(_HotCounters(self._requests, self._cache))
        self.upstream = Counter(
            "broker_upstream_requests",
            "Upstream calls by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "broker_upstream_latency_seconds",
            "Upstream call latency",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.refreshes = Counter(
            "broker_refreshes",
            "Refresh attempts by profile, kind and outcome",
            ["profile", "kind", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "broker_rejected_requests",
            "Requests refused by a guard, by reason",
            ["reason"],
            registry=r,
        )
        self.mirror = Counter(
            "broker_mirror_requests",
            "Mirror requests by result (hit|miss|rejected|error)",
            ["result"],
            registry=r,
        )
        self.credential_refused = Counter(
            "broker_credential_refused",
            "Azure AD refusals (400/401/403/404) of a profile's own credential",
            ["profile", "credential"],
            registry=r,
        )
        self.restart_pending = Gauge(
            "broker_restart_pending",
            "1 for a setting a reload changed that takes effect only at the next restart",
            ["setting"],
            registry=r,
        )
        self.mirror_entries = Gauge(
            "broker_mirror_cache_entries", "Tokens held by the mirror cache", registry=r
        )

        self.customer_fetch_refused = Counter(
            "broker_customer_fetches_refused",
            "New customer-tenant entries refused (429) over customer_fetch_rate, by profile",
            ["profile"],
            registry=r,
        )
        self.shared = Counter(
            "broker_shared_cache",
            "Shared (Redis) cache events: hit, miss, lease_wait, error, undecryptable",
            ["result"],
            registry=r,
        )
        self.shared_state = Gauge(
            "broker_shared_cache_connected",
            "1 while the shared cache's Redis answers, 0 while degraded (fetching alone) or off",
            registry=r,
        )

    def requests_of(self, route: str) -> defaultdict[int, int]:
        """The request counts of `route` by status, for its handler to add to."""
        return self._requests.setdefault(route, defaultdict(int))

    def count_request(self, route: str, status: int) -> None:
        self.requests_of(route)[status] += 1

    def count_cache(self, profile: str, kind: str, hit: bool) -> None:
        self._cache[(profile, kind, "hit" if hit else "miss")] += 1

    def watch_entries(self, snapshot: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(_EntryCollector(snapshot))

    def watch_profiles(self, snapshot: Callable[[], Iterable[dict]]) -> None:
        self.registry.register(_ProfileCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
