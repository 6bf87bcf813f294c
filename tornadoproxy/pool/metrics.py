"""Prometheus figures of the account pool, on the gateway's registry.

Labelled by account *name* (configured, so bounded) and fixed sets (states, outcomes, login kinds),
never by an e-mail or a model asked for. Figures that depend on the time (state, seconds to token
expiry) are computed at scrape time through `watch` (Metrics.watch: written to the shared files
every second when there are several workers); each gauge says how the workers' values combine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tornadoproxy.pool.account import STATES
from tornadoproxy.pool.outcome import OUTCOMES

Watch = Callable[[Gauge, Callable[[], float]], None]
LOGIN_KINDS = ("login", "refresh")
# ok; refused: the credentials (wrong password, MFA, deactivated: the account is then invalid);
# challenge: a challenge or block page; limited: a 429 of the upstream or of the gateway's own limits;
# error: anything else (the upstream flow, the network).
LOGIN_OUTCOMES = ("ok", "refused", "challenge", "limited", "error")
REJECT_REASONS = ("full", "timeout")
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class PoolMetrics:
    def __init__(
        self, registry: CollectorRegistry, watch: Watch, accounts: Sequence[str], shared: bool
    ) -> None:
        self._watch = watch
        self._state = Gauge(
            "tornadoproxy_pool_account_state",
            "1 for the state each account is in (ready, busy, cooling, logging_in, invalid), 0 for the "
            "others (with several workers: 1 if any worker sees it).",
            ("account", "state"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._in_flight = Gauge(
            "tornadoproxy_pool_account_in_flight",
            "Answers each account is serving for this gateway now (summed over workers).",
            ("account",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._token_left = Gauge(
            "tornadoproxy_pool_account_token_expiry_seconds",
            "Seconds until each account's accessToken expires; 0 when it has none (the lowest worker's).",
            ("account",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self._login_failures = Gauge(
            "tornadoproxy_pool_account_login_failures",
            "Background logins of each account that failed in a row (0 once one succeeds).",
            ("account",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._requests = Counter(
            "tornadoproxy_pool_requests",
            "Answers served by pool accounts, by account and outcome (ok, rate_limited, challenge, "
            "blocked, unauthorized, transport, aborted).",
            ("account", "outcome"),
            registry=registry,
        )
        self._logins = Counter(
            "tornadoproxy_pool_logins",
            "Background logins of pool accounts by account, kind (login: no usable token; refresh: "
            "ahead of expiry) and outcome.",
            ("account", "kind", "outcome"),
            registry=registry,
        )
        self._define_queue(registry)
        self.shared_up: Gauge | None = None
        if shared:
            self.shared_up = Gauge(
                "tornadoproxy_pool_shared_state_up",
                "1 while the pool shares its slots, queue and cool-downs through Redis; 0 while this "
                "process serves with its own slots because Redis is unreachable (lowest worker's).",
                registry=registry,
                multiprocess_mode="livemin",
            )
            self.shared_up.set(0)
        for name in accounts:
            for outcome in OUTCOMES:
                self._requests.labels(name, outcome)
            for kind in LOGIN_KINDS:
                for login_outcome in LOGIN_OUTCOMES:
                    self._logins.labels(name, kind, login_outcome)

    def _define_queue(self, registry: CollectorRegistry) -> None:
        self.queue_length = Gauge(
            "tornadoproxy_pool_queue_length",
            "Requests waiting for a free account in this gateway (summed over workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._queue_wait = Histogram(
            "tornadoproxy_pool_queue_wait_seconds",
            "Time a request waited for an account (0 when one was free), served or not.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self._rejected = Counter(
            "tornadoproxy_pool_queue_rejected",
            "Requests answered 429 accounts_busy: the queue was full, or the wait timed out.",
            ("reason",),
            registry=registry,
        )
        for reason in REJECT_REASONS:
            self._rejected.labels(reason)

    def watch_account(
        self,
        name: str,
        state: Callable[[], str],
        in_flight: Callable[[], float],
        token_left: Callable[[], float],
        login_failures: Callable[[], float],
    ) -> None:
        for candidate in STATES:
            self._watch(self._state.labels(name, candidate), _is(state, candidate))
        self._watch(self._in_flight.labels(name), in_flight)
        self._watch(self._token_left.labels(name), token_left)
        self._watch(self._login_failures.labels(name), login_failures)

    def count_request(self, account: str, outcome: str) -> None:
        self._requests.labels(account, outcome).inc()

    def count_login(self, account: str, kind: str, outcome: str) -> None:
        self._logins.labels(account, kind, outcome).inc()

    def observe_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def count_rejected(self, reason: str) -> None:
        self._rejected.labels(reason).inc()


def _is(state: Callable[[], str], candidate: str) -> Callable[[], float]:
    return lambda: 1.0 if state() == candidate else 0.0
