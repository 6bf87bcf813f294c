"""Which egress proxy a request uses: ordered failover lists per upstream, with health and cool-down.

Each upstream has its proxies in the configured order. A request uses the first one that is up, so
traffic keeps one exit address while it works (round-robin would spread one account's requests over
several addresses, which is what draws Cloudflare challenges). A proxy that fails is cooling down
for `egress.cooldown` seconds: it is skipped while another proxy of the list is up, and tried last
(soonest back first) when none is, so that a single proxy that comes back is used at once. Health is
kept per upstream and proxy: a challenge on one host says nothing about another.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.upstream.egress import EgressProxy


@dataclass(slots=True)
class _Health:
    down_until: float = 0.0
    kind: str = ""
    failed_at: float = 0.0


class EgressPools:
    """The egress proxies of every upstream, with their health. Used on the IOLoop only."""

    def __init__(
        self,
        proxies: Mapping[str, tuple[EgressProxy, ...]],
        cooldown: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._proxies = {upstream: tuple(listed) for upstream, listed in proxies.items()}
        self._cooldown = cooldown
        self._metrics = metrics
        self._clock = clock
        self._health: dict[tuple[str, EgressProxy], _Health] = {}
        for upstream, listed in self._proxies.items():
            for proxy in listed:
                if proxy.is_direct:
                    continue
                self._health[(upstream, proxy)] = _Health()
                metrics.watch_egress_proxy(upstream, proxy.label, self._up_probe(upstream, proxy))

    def track(self, upstream: str, proxy: EgressProxy) -> None:
        """Keep the health of a proxy outside `upstream`'s rotation (an account's own proxy): its
        failures are counted and shown like the others', and it is never chosen for other requests."""
        if proxy.is_direct or (upstream, proxy) in self._health:
            return
        self._health[(upstream, proxy)] = _Health()
        self._metrics.watch_egress_proxy(upstream, proxy.label, self._up_probe(upstream, proxy))

    def proxies(self, upstream: str) -> tuple[EgressProxy, ...]:
        return self._proxies[upstream]

    def choose(self, upstream: str, tried: Iterable[EgressProxy] = ()) -> EgressProxy | None:
        """The proxy for the next attempt: the first one up that was not tried yet; for a first
        attempt with every proxy cooling down, the one that comes back soonest. None: give up."""
        done = set(tried)
        listed = self._proxies[upstream]
        for proxy in listed:
            if proxy not in done and self.is_up(upstream, proxy):
                return proxy
        if done:
            return None  # a retry never goes to a proxy that is known to be down
        return min(listed, key=lambda proxy: self._state(upstream, proxy).down_until)

    def is_up(self, upstream: str, proxy: EgressProxy) -> bool:
        health = self._health.get((upstream, proxy))
        return health is None or health.down_until <= self._clock()

    def mark_failed(self, upstream: str, proxy: EgressProxy, kind: str) -> None:
        """Take `proxy` out of `upstream`'s rotation for the cool-down, e.g. after a connection
        failure (kind proxy_*) or a challenge or block page (kind challenge / blocked)."""
        health = self._health.get((upstream, proxy))
        if health is None:
            return  # the direct route has no health to track
        now = self._clock()
        health.down_until = now + self._cooldown
        health.kind = kind
        health.failed_at = now
        self._metrics.count_egress_failure(upstream, proxy.label, kind)

    def mark_ok(self, upstream: str, proxy: EgressProxy) -> None:
        """`proxy` carried a response: it is up again, whatever its cool-down said."""
        health = self._health.get((upstream, proxy))
        if health is not None and health.down_until:
            health.down_until = 0.0

    def cooling_report(self, upstream: str, skip: Iterable[EgressProxy] = ()) -> list[str]:
        """One phrase per proxy of `upstream` cooling down (except `skip`), for error messages."""
        skipped = set(skip)
        now = self._clock()
        report = []
        for proxy in self._proxies[upstream]:
            health = self._health.get((upstream, proxy))
            if proxy in skipped or health is None or health.down_until <= now:
                continue
            report.append(
                f"{proxy.label} is cooling down after {health.kind} {now - health.failed_at:.0f} s ago"
            )
        return report

    def _state(self, upstream: str, proxy: EgressProxy) -> _Health:
        return self._health.get((upstream, proxy)) or _Health()

    def _up_probe(self, upstream: str, proxy: EgressProxy) -> Callable[[], float]:
        return lambda: 1.0 if self.is_up(upstream, proxy) else 0.0
