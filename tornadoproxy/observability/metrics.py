"""Prometheus figures on an injected registry: requests, latency, upstream errors, streams, the gate,
logins and the token cache, egress proxies, configuration reloads, the process.

Every label takes a value from a bounded set (route templates, status classes, upstream names from
the config, error kinds, codes and end reasons from the fixed tuples below), never from a
client-supplied string. Label children are cached because `labels()` costs more than the increment
on the hot path. With several worker processes the figures are shared through files
(sharedmetrics.py); each gauge below says how the workers' values combine (`multiprocess_mode`).
"""

from __future__ import annotations

import platform
from collections.abc import Callable

import tornado
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import InfoMetricFamily
from prometheus_client.process_collector import ProcessCollector

from tornadoproxy import __version__
from tornadoproxy.errors import Code
from tornadoproxy.observability.sharedmetrics import Sampler, StaticCollector, shared_registry

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
    # the web answers of /imitate: sentinel, proof of work, account limits, the answer stream
    "verification_required",
    "proof_of_work",
    "rate_limited",
    "unauthorized",
    "in_stream_error",
    "empty_answer",
    "cut",
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
# refreshed: the account pool replaced a token that was about to expire (pool.refresh_margin).
TOKEN_EVICTION_REASONS = ("expired", "unauthorized", "capacity", "refreshed")
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
# The `code` of every error answer the gateway writes itself: the catalogue (errors.Code); anything
# else is counted as "other", so the label stays bounded whatever a future error is called.
GATEWAY_ERROR_CODES = tuple(code.value for code in Code) + ("other",)
RELOAD_OUTCOMES = ("ok", "failed")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def status_class(status: int) -> str:
    return STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]


class Metrics:
    """The gateway's metrics. Construct one per process (tests: one per registry).

    With `shared_dir` (a worker of several; sharedmetrics.prepare_process was called before), the
    figures go to the shared files, /metrics adds up every worker's, and `sample()` must run every
    SAMPLE_INTERVAL seconds to write the figures a single process computes at scrape time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        upstreams: tuple[str, ...],
        shared_dir: str | None = None,
        libcurl: str = "",
    ) -> None:
        self.registry = registry
        build = StaticCollector([_build_info(libcurl)])
        if shared_dir is None:
            self._exposed = registry
            self._sampler: Sampler | None = None
            registry.register(build)
            ProcessCollector(registry=registry)
        else:
            self._exposed = shared_registry(shared_dir, build)
            self._sampler = Sampler(registry)
        self._define_traffic(registry)
        self._define_upstreams(registry)
        self._define_logins(registry)
        self._define_process(registry)
        self._first_byte_children: dict[str, Callable[[float], None]] = {}
        self._request_children: dict[
            tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]
        ] = {}
        self._precreate(upstreams)

    # -- definitions ------------------------------------------------------------------------------
    def _define_traffic(self, registry: CollectorRegistry) -> None:
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
        self._gateway_errors = Counter(
            "tornadoproxy_gateway_errors",
            "Error answers the gateway wrote itself (JSON errors and final stream error events), by code.",
            ("code",),
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
        self.gate_capacity = Gauge(
            "tornadoproxy_gate_capacity",
            "Slots of the gate (fetch.max_clients, summed over the worker processes).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.gate_rejected = Counter(
            "tornadoproxy_gate_rejected",
            "Requests answered 503 because every upstream slot stayed busy.",
            registry=registry,
        )

    def _define_upstreams(self, registry: CollectorRegistry) -> None:
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
        self._upstream_state = Gauge(
            "tornadoproxy_upstream_state",
            "Last readiness probe result per upstream: 1 for the current state, 0 for the others "
            "(with several workers: 1 if any worker's last probe saw that state).",
            ("upstream", "state"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._egress_up = Gauge(
            "tornadoproxy_egress_proxy_up",
            "1 while an egress proxy is in rotation for an upstream, 0 while it cools down after a failure "
            "(with several workers: 0 if any worker has it cooling down).",
            ("upstream", "proxy"),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._egress_failures = Counter(
            "tornadoproxy_egress_proxy_failures",
            "Egress proxy failures (each failed attempt, retried or not), by upstream, proxy and kind.",
            ("upstream", "proxy", "kind"),
            registry=registry,
        )

    def _define_logins(self, registry: CollectorRegistry) -> None:
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
            "Cached logins held (with Redis: those this process stored or opened; summed over workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.token_store_errors = Counter(
            "tornadoproxy_token_store_errors",
            "Token store operations that failed (Redis unreachable); logins then go upstream.",
            registry=registry,
        )

    def _define_process(self, registry: CollectorRegistry) -> None:
        self.workers = Gauge(
            "tornadoproxy_workers",
            "Worker processes serving (1 without server.workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._reloads = Counter(
            "tornadoproxy_config_reloads",
            "Configuration reloads (SIGHUP) by outcome (ok, failed: the running configuration was kept).",
            ("outcome",),
            registry=registry,
        )
        self._reload_ok = Gauge(
            "tornadoproxy_config_last_reload_successful",
            "1 unless the last configuration reload failed (with several workers: 0 if any worker's did).",
            registry=registry,
            multiprocess_mode="livemin",
        )

    def _precreate(self, upstreams: tuple[str, ...]) -> None:
        """Every series of a bounded label set exists from the start, so rates and alerts see zeros."""
        self.workers.set(1)
        self._reload_ok.set(1)
        for outcome in RELOAD_OUTCOMES:
            self._reloads.labels(outcome)
        for code in GATEWAY_ERROR_CODES:
            self._gateway_errors.labels(code)
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

    # -- recording --------------------------------------------------------------------------------
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

    def count_gateway_error(self, code: str) -> None:
        self._gateway_errors.labels(code if code in GATEWAY_ERROR_CODES else "other").inc()

    def observe_first_byte(self, upstream: str, seconds: float) -> None:
        observe = self._first_byte_children.get(upstream)
        if observe is None:
            observe = self._first_byte_children[upstream] = self._first_byte.labels(upstream).observe
        observe(seconds)

    def count_upstream_error(self, upstream: str, kind: str) -> None:
        self._upstream_errors.labels(upstream, kind).inc()

    def watch_egress_proxy(self, upstream: str, proxy: str, up: Callable[[], float]) -> None:
        """Report `up()` as the health of `proxy` (its masked label) for `upstream` at each scrape."""
        self.watch(self._egress_up.labels(upstream, proxy), up)
        for kind in EGRESS_FAILURE_KINDS:
            self._egress_failures.labels(upstream, proxy, kind)

    def watch_token_entries(self, entries: Callable[[], float]) -> None:
        """Report `entries()` as the number of cached logins at each scrape."""
        self.watch(self.token_cache_entries, entries)

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

    def count_reload(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "failed").inc()
        self._reload_ok.set(1 if ok else 0)

    # -- exposition -------------------------------------------------------------------------------
    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Report `read()` as `gauge` at each scrape (with workers: written to the shared files)."""
        if self._sampler is None:
            gauge.set_function(read)  # computed at each scrape
        else:
            self._sampler.watch(gauge, read)  # written to the shared files by sample()

    def sample(self) -> None:
        """Write the scrape-time figures to the shared files (multiprocess mode; else nothing to do)."""
        if self._sampler is not None:
            self._sampler.sample()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format `accept` asks for (text or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._exposed), content_type


def _build_info(libcurl: str) -> InfoMetricFamily:
    return InfoMetricFamily(
        "tornadoproxy_build",
        "Versions of the gateway and its stack.",
        value={
            "version": __version__,
            "python": platform.python_version(),
            "tornado": tornado.version,
            "libcurl": libcurl,
        },
    )
