"""Each way an egress proxy fails, against the real proxies: the right kind, a precise message naming
the masked proxy, 502 egress_proxy_error, and within the connect timeout (one proxy, no failover)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.egress_fixtures import TINY_CLOSED_PORT, Proxies, fetch_through
from tests.harness import Gateway, Simulator, metric_value, request
from tests.proxies import closed_port
from tests.secrets_used import API_KEY, PROXY_PASSWORD

CONNECT_TIMEOUT = 1.0
# (case, proxy URL from the fixtures, upstream URL or None for the simulator's, kind, words of the message)
Case = tuple[str, Callable[[Proxies], str], Callable[[Simulator], str] | None, str, str]


def _sim_port(sim: Simulator) -> str:
    return sim.urls["platform"].rsplit(":", 1)[1]


CASES: list[Case] = [
    (
        "socks proxy down",
        lambda p: f"socks5h://127.0.0.1:{closed_port()}",
        None,
        "proxy_refused",
        "could not connect to it (connection refused)",
    ),
    (
        "http proxy down",
        lambda p: f"http://127.0.0.1:{closed_port()}",
        None,
        "proxy_refused",
        "could not connect to it (connection refused)",
    ),
    (
        "socks wrong password",
        lambda p: p.socks_auth.url(password="wrong"),
        None,
        "proxy_auth",
        "it rejected the proxy credentials (SOCKS5: user name and password rejected)",
    ),
    (
        "socks credentials missing",
        lambda p: f"socks5h://127.0.0.1:{p.socks_auth.port}",
        None,
        "proxy_auth",
        "it requires credentials and none are configured (SOCKS5: no acceptable authentication method)",
    ),
    (
        "tinyproxy wrong password",
        lambda p: p.tiny.url(password="wrong"),
        None,
        "proxy_auth",
        "it rejected the proxy credentials (CONNECT answered 401)",
    ),
    (
        "tinyproxy credentials missing",
        lambda p: f"http://127.0.0.1:{p.tiny.port}",
        None,
        "proxy_auth",
        "it requires credentials and none are configured (CONNECT answered 407)",
    ),
    (
        "squid wrong password",
        lambda p: p.squid.url(password="wrong"),
        None,
        "proxy_auth",
        "it rejected the proxy credentials (CONNECT answered 407)",
    ),
    (
        "socks black hole",
        lambda p: p.black_hole.url("socks5h"),
        None,
        "proxy_timeout",
        "it did not complete the connection to the upstream within 1 s (fetch.connect_timeout)",
    ),
    (
        "http black hole",
        lambda p: p.black_hole.url("http"),
        None,
        "proxy_timeout",
        "it did not complete the connection to the upstream within 1 s (fetch.connect_timeout)",
    ),
    (
        "name unknown at the socks proxy",
        lambda p: p.socks.url("socks5h"),
        lambda s: f"http://nowhere.test:{_sim_port(s)}",
        "proxy_dns",
        "it could not resolve nowhere.test (SOCKS5 reply 1: general failure)",
    ),
    (
        "upstream refused behind socks",
        lambda p: p.socks.url(),
        lambda s: f"http://127.0.0.1:{closed_port()}",
        "proxy_error",
        "it could not connect to 127.0.0.1: connection refused (SOCKS5 reply 5)",
    ),
    (
        "port not allowed by tinyproxy",
        lambda p: p.tiny.url(),
        lambda s: "http://127.0.0.1:1",
        "proxy_error",
        "it refused to open a tunnel to 127.0.0.1 (CONNECT answered 403",
    ),
    (
        "upstream refused behind tinyproxy",
        lambda p: p.tiny.url(),
        lambda s: f"http://127.0.0.1:{TINY_CLOSED_PORT}",
        "proxy_error",
        "it could not open a tunnel to 127.0.0.1 (CONNECT answered 500)",
    ),
    (
        "upstream refused behind squid",
        lambda p: p.squid.url(),
        lambda s: f"http://127.0.0.1:{closed_port()}",
        "proxy_error",
        "it could not open a tunnel to 127.0.0.1 (CONNECT answered 503)",
    ),
    (
        "name unknown at tinyproxy",
        lambda p: p.tiny.url(),
        lambda s: f"http://nowhere.test:{_sim_port(s)}",
        "proxy_error",
        "it could not open a tunnel to nowhere.test (CONNECT answered 500)",
    ),
    (
        "http scheme for a socks proxy",
        lambda p: p.socks.url("http"),
        None,
        "proxy_error",
        "it closed the connection during CONNECT (is it an HTTP proxy?)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_each_failure_is_classified_within_the_connect_timeout(
    sim: Simulator, proxies: Proxies, tmp_path: Path, case: Case
) -> None:
    _, proxy_url, upstream_url, kind, words = case
    extra = {
        "egress": {"platform": proxy_url(proxies)},
        "fetch": {"connect_timeout": CONNECT_TIMEOUT},
        "upstreams": {"platform": upstream_url(sim)} if upstream_url else {},
    }
    (outcome,), exposition = fetch_through(sim, tmp_path, extra, [("platform", "/v1/models")])
    error = outcome.error
    assert error is not None, outcome
    assert (error.status, error.code, error.kind) == (502, "egress_proxy_error", kind), error.message
    assert words in error.message
    assert error.message.startswith("the egress proxy ") and "for the platform upstream" in error.message
    assert "wrong" not in error.message and PROXY_PASSWORD not in error.message
    assert metric_value(exposition, "tornadoproxy_upstream_errors_total", upstream="platform", kind=kind) == 1
    # Classified at the first attempt (libcurl bounds it by the connect timeout), never retried.
    failures = "tornadoproxy_egress_proxy_failures_total"
    assert metric_value(exposition, failures, upstream="platform", kind=kind) == 1


def test_the_client_gets_the_error_as_gateway_json(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(
        {"egress": {"platform": proxies.black_hole.url("socks5h")}, "fetch": {"connect_timeout": 1}}
    )
    answer = request("GET", gateway.url + "/platform/v1/models", headers={"Authorization": API_KEY})
    assert answer.status == 502
    body = answer.json()
    assert body["error"]["code"] == "egress_proxy_error"
    assert body["errorMessage"] == body["error"]["message"]
    assert body["error"]["message"].startswith(f"the egress proxy {proxies.black_hole.url('socks5h')} failed")
    assert not sim.journal(family="platform")
