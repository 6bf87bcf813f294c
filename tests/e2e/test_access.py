"""Access control for the gateway itself: client keys, allowed networks, the ops listener."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.harness import ROOT, Gateway, Simulator, free_port, metric_value, request, wait_for
from tests.secrets_used import API_KEY, CLIENT_KEY
from tornadoproxy.web.access import key_digest

UPSTREAM = {"Authorization": f"Bearer {API_KEY}"}


def test_hash_key_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tornadoproxy", "--hash-key"],
        cwd=ROOT,
        input=CLIENT_KEY + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == key_digest(CLIENT_KEY)
    assert CLIENT_KEY not in result.stdout


def test_client_keys(make_gateway: Callable[..., Gateway], sim: Simulator) -> None:
    gw = make_gateway(
        {"access": {"client_keys": [key_digest("some-other-key"), key_digest(CLIENT_KEY)]}}, ready=False
    )
    gw.wait_ready(headers={"X-Gateway-Key": CLIENT_KEY})
    sim.clear_journal()
    missing = request("GET", gw.url + "/platform/v1/models", headers=UPSTREAM)
    assert missing.status == 401 and missing.json()["error"]["code"] == "gateway_key_required"
    wrong = request("GET", gw.url + "/platform/v1/models", headers={**UPSTREAM, "X-Gateway-Key": "guess"})
    assert wrong.status == 401 and wrong.json()["error"]["code"] == "gateway_key_invalid"
    for path in ("/metrics", "/readyz", "/nowhere"):
        assert request("GET", gw.url + path).status == 401, path
    big = request("POST", gw.url + "/platform/v1/chat/completions", headers=UPSTREAM, body=b"x" * 200_000)
    assert big.status == 401  # refused before the body is read
    assert sim.journal() == []
    ok = request("GET", gw.url + "/platform/v1/models", headers={**UPSTREAM, "X-Gateway-Key": CLIENT_KEY})
    assert ok.status == 200
    (entry,) = sim.journal("platform")
    assert "x-gateway-key" not in {name.lower() for name, _ in entry["headers"]}  # never forwarded
    assert request("GET", gw.url + "/healthz").status == 200  # liveness stays open


def test_allowed_networks(make_gateway: Callable[..., Gateway], sim: Simulator) -> None:
    denied = make_gateway({"access": {"allowed_networks": ["10.0.0.0/8", "192.168.0.0/16"]}}, ready=False)
    answer = request("GET", denied.url + "/platform/v1/models", headers=UPSTREAM)
    assert answer.status == 403 and answer.json()["error"]["code"] == "client_not_allowed"
    allowed = make_gateway({"access": {"allowed_networks": ["127.0.0.0/8"]}})
    assert request("GET", allowed.url + "/platform/v1/models", headers=UPSTREAM).status == 200
    behind_lb = make_gateway(
        {"access": {"allowed_networks": ["10.0.0.0/8"]}, "server": {"trusted_proxies": ["127.0.0.1/32"]}},
        ready=False,
    )
    forwarded = request(
        "GET",
        behind_lb.url + "/platform/v1/models",
        headers={**UPSTREAM, "X-Forwarded-For": "203.0.113.9, 10.1.2.3"},
    )
    assert forwarded.status == 200  # the load balancer vouches for 10.1.2.3
    spoofed = request(
        "GET",
        behind_lb.url + "/platform/v1/models",
        headers={**UPSTREAM, "X-Forwarded-For": "10.1.2.3, 203.0.113.9"},
    )
    assert spoofed.status == 403  # the hop next to the trusted proxy is the client


def test_ops_listener_serves_only_ops_without_checks(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    ops_port = free_port()
    gw = make_gateway(
        {"access": {"client_keys": [key_digest(CLIENT_KEY)]}, "server": {"ops_port": ops_port}}, ready=False
    )
    ops = f"http://127.0.0.1:{ops_port}"
    wait_for(lambda: request("GET", ops + "/readyz").status == 200, what="the ops listener to report ready")
    exposition = request("GET", ops + "/metrics")
    assert exposition.status == 200 and "tornadoproxy_http_requests_total" in exposition.body.decode()
    assert request("GET", ops + "/platform/v1/models", headers=UPSTREAM).status == 404
    assert request("GET", gw.url + "/metrics").status == 401
    assert metric_value(exposition.body.decode(), "tornadoproxy_build_info") == 1
