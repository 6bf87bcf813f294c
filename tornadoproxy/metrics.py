"""Prometheus figures on an injected registry: requests, latency, upstream errors, streams, the gate.

Every label takes a value from a bounded set (route templates, status classes, upstream names from
the config, error kinds and end reasons from the fixed tuples below), never from a client-supplied
string. Label children are cached because `labels()` costs more than the increment on the hot path.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

import pycurl
import tornado
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from tornadoproxy import __version__

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
STREAM_END_REASONS = ("done", "client_gone", "upstream_error", "idle_timeout", "shutdown")
UPSTREAM_ERROR_KINDS = (
    "timeout",
    "unreachable",
    "reset",
    "tls",
    "dns",
    "proxy_refused",
    "proxy_auth",
    "proxy_timeout",
    "proxy_dns",
    "proxy_error",
    "challenge",
    "blocked",
    "protocol",
)
UPSTREAM_STATES = ("pending", "reachable", "challenged", "blocked", "unreachable", "disabled")
LOGIN_FAMILIES = ("chatgpt", "platform")
# ok: an upstream login succeeded; cached: served from the token cache; joined: waited for the same
# login in flight; failed: wrong credentials (upstream, or the cached entry's sealed password);
# remembered: a failure answered again from memory; limited: the gateway's own attempt limits.
LOGIN_OUTCOMES = (
    "ok",
    "cached",
    "joined",
    "failed",
    "remembered",
    "mfa",
    "blocked",
    "rate_limited",
    "limited",
    "challenge",
    "error",
)
TOKEN_LOOKUP_RESULTS = ("hit", "miss", "mismatch")
TOKEN_EVICTION_REASONS = ("expired", "unauthorized", "capacity")
# Why an egress proxy was taken out of rotation (egress_pool.py).
EGRESS_FAILURE_KINDS = (
    "proxy_refused",
    "proxy_auth",
    "proxy_timeout",
    "proxy_dns",
    "proxy_error",
    "challenge",
    "blocked",
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def status_class(status: int) -> str:
    return STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]


class Metrics:
    """The gateway's metrics. Construct one per process (tests: one per registry)."""

    def __init__(self, registry: CollectorRegistry, upstreams: tuple[str, ...]) -> None:
        self.registry = registry
        self._requests = Counter(
            "tornadoproxy_http_requests",
            "HTTP requests answered, by route template, method and status class.",
            ("route", "method", "status"),
            registry=registry,
        )
        self._duration = Histogram(
            "tornadoproxy_http_request_duration_seconds",
            "Time from request received to response finished (whole stream for SSE).",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._first_byte = Histogram(
            "tornadoproxy_upstream_first_byte_seconds",
            "Time from sending the upstream request to its response headers.",
            ("upstream",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._upstream_errors = Counter(
            "tornadoproxy_upstream_errors",
            "Upstream failures by upstream and kind (transport, egress proxy, challenge, block).",
            ("upstream", "kind"),
            registry=registry,
        )
        self.streams_active = Gauge(
            "tornadoproxy_streams_active",
            "SSE streams being relayed now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._streams_ended = Counter(
            "tornadoproxy_streams_ended",
            "SSE streams ended, by reason.",
            ("reason",),
            registry=registry,
        )
        self.gate_in_flight = Gauge(
            "tornadoproxy_gate_in_flight",
            "Upstream requests holding a slot of the gate.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.gate_rejected = Counter(
            "tornadoproxy_gate_rejected",
            "Requests answered 503 because every upstream slot stayed busy.",
            registry=registry,
        )
        self._upstream_state = Gauge(
            "tornadoproxy_upstream_state",
            "Last readiness probe result per upstream: 1 for the current state, 0 for the others.",
            ("upstream", "state"),
            registry=registry,
            multiprocess_mode="liveall",
        )
        self._logins = Counter(
            "tornadoproxy_logins",
            "Login requests (/chatgpt/login, /platform/login) by family and outcome.",
            ("family", "outcome"),
            registry=registry,
        )
        self._login_duration = Histogram(
            "tornadoproxy_login_duration_seconds",
            "Time an upstream login flow took, all steps (cache hits excluded).",
            ("family",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._token_lookups = Counter(
            "tornadoproxy_token_cache_lookups",
            "Token cache lookups by family and result (hit, miss, mismatch: wrong password).",
            ("family", "result"),
            registry=registry,
        )
        self._token_evictions = Counter(
            "tornadoproxy_token_cache_evictions",
            "Cached logins dropped by this process, by reason (expired, unauthorized: upstream 401, "
            "capacity).",
            ("reason",),
            registry=registry,
        )
        self.token_cache_entries = Gauge(
            "tornadoproxy_token_cache_entries",
            "Cached logins held by this process (with Redis: those it has stored or opened).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._egress_up = Gauge(
            "tornadoproxy_egress_proxy_up",
            "1 while an egress proxy is in rotation for an upstream, 0 while it cools down after a failure.",
            ("upstream", "proxy"),
            registry=registry,
            multiprocess_mode="liveall",
        )
        self._egress_failures = Counter(
            "tornadoproxy_egress_proxy_failures",
            "Egress proxy failures (each failed attempt, retried or not), by upstream, proxy and kind.",
            ("upstream", "proxy", "kind"),
            registry=registry,
        )
        build = Info("tornadoproxy_build", "Versions of the gateway and its stack.", registry=registry)
        build.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "tornado": tornado.version,
                "libcurl": pycurl.version_info()[1],
            }
        )
        self._request_children: dict[
            tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]
        ] = {}
        for upstream in upstreams:
            self._first_byte.labels(upstream)
            self.set_upstream_state(upstream, "pending")
            for kind in UPSTREAM_ERROR_KINDS:
                self._upstream_errors.labels(upstream, kind)
        for reason in STREAM_END_REASONS:
            self._streams_ended.labels(reason)
        for family in LOGIN_FAMILIES:
            self._login_duration.labels(family)
            for outcome in LOGIN_OUTCOMES:
                self._logins.labels(family, outcome)
            for result in TOKEN_LOOKUP_RESULTS:
                self._token_lookups.labels(family, result)
        for reason in TOKEN_EVICTION_REASONS:
            self._token_evictions.labels(reason)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._requests.labels(route, method, status_class(status)).inc,
                self._duration.labels(route).observe,
            )
            self._request_children[key] = children
        children[0]()
        children[1](seconds)

    def observe_first_byte(self, upstream: str, seconds: float) -> None:
        self._first_byte.labels(upstream).observe(seconds)

    def count_upstream_error(self, upstream: str, kind: str) -> None:
        self._upstream_errors.labels(upstream, kind).inc()

    def watch_egress_proxy(self, upstream: str, proxy: str, up: Callable[[], float]) -> None:
        """Report `up()` as the health of `proxy` (its masked label) for `upstream` at each scrape."""
        self._egress_up.labels(upstream, proxy).set_function(up)
        for kind in EGRESS_FAILURE_KINDS:
            self._egress_failures.labels(upstream, proxy, kind)

    def count_egress_failure(self, upstream: str, proxy: str, kind: str) -> None:
        self._egress_failures.labels(upstream, proxy, kind).inc()

    def count_stream_end(self, reason: str) -> None:
        self._streams_ended.labels(reason).inc()

    def set_upstream_state(self, upstream: str, state: str) -> None:
        for candidate in UPSTREAM_STATES:
            self._upstream_state.labels(upstream, candidate).set(1 if candidate == state else 0)

    def count_login(self, family: str, outcome: str) -> None:
        self._logins.labels(family, outcome).inc()

    def observe_login(self, family: str, seconds: float) -> None:
        self._login_duration.labels(family).observe(seconds)

    def count_token_lookup(self, family: str, result: str) -> None:
        self._token_lookups.labels(family, result).inc()

    def count_token_eviction(self, reason: str, count: int = 1) -> None:
        self._token_evictions.labels(reason).inc(count)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
