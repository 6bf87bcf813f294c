"""Egress pools: ordered failover, cool-down, recovery, and the gauge that reports it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from tests.harness import metric_value
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.upstream.egress import DIRECT, parse_proxies
from tornadoproxy.upstream.egress_pool import EgressPools


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pools(*urls: str) -> tuple[EgressPools, Clock, CollectorRegistry]:
    clock, registry = Clock(), CollectorRegistry()
    metrics = Metrics(registry, ("chatgpt",))
    listed = {"chatgpt": parse_proxies(tuple(urls)), "platform": (DIRECT,)}
    return EgressPools(listed, 30.0, metrics, clock), clock, registry


def test_first_proxy_up_then_the_next_then_the_soonest_back() -> None:
    egress, clock, registry = pools("socks5h://127.0.0.1:1", "http://127.0.0.1:2", "socks5://127.0.0.1:3")
    a, b, c = egress.proxies("chatgpt")
    assert egress.choose("chatgpt") is a
    egress.mark_failed("chatgpt", a, "proxy_refused")
    assert egress.choose("chatgpt") is b
    assert egress.choose("chatgpt", tried=[a]) is b
    clock.now += 10
    egress.mark_failed("chatgpt", b, "proxy_timeout")
    egress.mark_failed("chatgpt", c, "challenge")
    assert egress.choose("chatgpt", tried=[b]) is None  # a retry never goes to a proxy known down
    assert egress.choose("chatgpt") is a  # a first attempt takes the one back soonest
    assert egress.cooling_report("chatgpt", skip=[c]) == [
        "socks5h://127.0.0.1:1 is cooling down after proxy_refused 10 s ago",
        "http://127.0.0.1:2 is cooling down after proxy_timeout 0 s ago",
    ]
    exposition = generate_latest(registry).decode()
    assert metric_value(exposition, "tornadoproxy_egress_proxy_up", proxy="http://127.0.0.1:2") == 0
    failures = "tornadoproxy_egress_proxy_failures_total"
    assert metric_value(exposition, failures, proxy="socks5://127.0.0.1:3", kind="challenge") == 1
    clock.now += 25  # a's cool-down is over
    assert egress.choose("chatgpt") is a and egress.is_up("chatgpt", a)
    egress.mark_ok("chatgpt", c)  # c carried a response: up again at once
    assert egress.is_up("chatgpt", c)
    exposition = generate_latest(registry).decode()
    assert metric_value(exposition, "tornadoproxy_egress_proxy_up", proxy="socks5://127.0.0.1:3") == 1


def test_the_direct_route_has_no_health() -> None:
    egress, _, registry = pools("http://127.0.0.1:2")
    egress.mark_failed("platform", DIRECT, "proxy_refused")
    assert egress.choose("platform") is DIRECT
    assert 'proxy="direct"' not in generate_latest(registry).decode()
