"""Egress proxies end to end: each call leaves through the proxy the config names, as the simulator's
journal (`remote_ip`: every proxy binds its outgoing side to its own loopback address) and the
proxies' own logs show; socks5 vs socks5h name resolution; failover no client notices; credentials
with @ : % / that work and never show."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.egress_fixtures import (
    SOCKS_USER,
    SQUID_USER,
    Proxies,
    fetch_through,
    last_remote_ip,
)
from tests.harness import Gateway, Simulator, metric_value, request, streaming, wait_for
from tests.proxies import gateway_dns_wrapper, start_microsocks
from tests.secrets_used import API_KEY, PROXY_PASSWORD

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODELS = "/platform/v1/models"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_every_upstream_leaves_through_the_proxy_its_config_names(
    sim: Simulator, proxies: Proxies, tmp_path: Path
) -> None:
    extra = {
        "egress": {
            "proxy": proxies.socks.url(),  # default: microsocks, out via 127.0.0.2
            "platform": proxies.tiny.url(),  # tinyproxy, out via 127.0.0.3
            "chatgpt": "direct",
            "auth": proxies.socks_auth.url(),  # microsocks with credentials, out via 127.0.0.4
        }
    }
    calls = [("chatgpt", "/backend-api/me"), ("auth", "/authorize"), ("platform", "/v1/models")]
    outcomes, _ = fetch_through(sim, tmp_path, extra, calls + [("platform_web", "/api/x")])
    assert [o.error for o in outcomes] == [None] * 4
    assert last_remote_ip(sim, "chatgpt") == "127.0.0.1"
    assert last_remote_ip(sim, "auth") == "127.0.0.4"
    assert last_remote_ip(sim, "platform_web") == "127.0.0.4"  # follows egress.auth
    assert last_remote_ip(sim, "platform") == "127.0.0.3"
    platform_port = port_of(sim.urls["platform"])
    assert f"CONNECT 127.0.0.1:{platform_port} HTTP/1.1" in proxies.tiny.log_text()
    assert f"connected to 127.0.0.1:{port_of(sim.urls['auth'])}" in proxies.socks_auth.log_text()

    # Without overrides egress.proxy applies to every upstream.
    outcomes, _ = fetch_through(sim, tmp_path, {"egress": {"proxy": proxies.socks.url()}}, calls)
    assert [o.error for o in outcomes] == [None] * 3
    for family in ("chatgpt", "auth", "platform"):
        assert last_remote_ip(sim, family) == "127.0.0.2"
        assert f"connected to 127.0.0.1:{port_of(sim.urls[family])}" in proxies.socks.log_text()


def test_relayed_requests_use_the_platform_proxy(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway({"egress": {"proxy": proxies.socks.url(), "platform": proxies.tiny.url()}})
    answer = request("GET", gateway.url + MODELS, headers=AUTH)
    assert answer.status == 200, answer.body
    assert last_remote_ip(sim, "platform") == "127.0.0.3"


def test_environment_sets_the_default_proxy(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    # GO_CHATGPT_API_PROXY wins over PROXY, and both over the file's egress.proxy.
    gateway = make_gateway(
        {"egress": {"proxy": proxies.tiny.url()}},
        env={"GO_CHATGPT_API_PROXY": proxies.socks_auth.url(), "PROXY": proxies.socks.url()},
    )
    assert request("GET", gateway.url + MODELS, headers=AUTH).status == 200
    assert last_remote_ip(sim, "platform") == "127.0.0.4"
    gateway = make_gateway({}, env={"PROXY": proxies.socks.url()})
    assert request("GET", gateway.url + MODELS, headers=AUTH).status == 200
    assert last_remote_ip(sim, "platform") == "127.0.0.2"
    # A per-upstream override in the file still applies under the environment's default.
    outcomes, _ = fetch_through(
        sim,
        tmp_path,
        {"egress": {"platform": proxies.tiny.url()}},
        [("platform", "/v1/models"), ("chatgpt", "/backend-api/me")],
        environ={"PROXY": proxies.socks.url()},
    )
    assert [o.error for o in outcomes] == [None, None]
    assert last_remote_ip(sim, "platform") == "127.0.0.3"
    assert last_remote_ip(sim, "chatgpt") == "127.0.0.2"


def test_socks5_resolves_names_here_and_socks5h_at_the_proxy(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    """The gateway runs where `upstream.test` resolves but `proxy-only.test` does not; microsocks
    logs each target as it received it: an address (resolved here) or a name (resolved there)."""
    port = port_of(sim.urls["platform"])
    wrapper = gateway_dns_wrapper(tmp_path / "gateway-ns")

    def gateway(scheme: str, host: str) -> Gateway:
        return make_gateway(
            {
                "upstreams": {"platform": f"http://{host}:{port}"},
                "egress": {"platform": proxies.socks.url(scheme)},
            },
            wrapper=wrapper,
        )

    assert request("GET", gateway("socks5", "upstream.test").url + MODELS, headers=AUTH).status == 200
    assert f"connected to 127.0.0.1:{port}" in proxies.socks.log_text()
    assert f"connected to upstream.test:{port}" not in proxies.socks.log_text()

    assert request("GET", gateway("socks5h", "proxy-only.test").url + MODELS, headers=AUTH).status == 200
    assert f"connected to proxy-only.test:{port}" in proxies.socks.log_text()
    assert last_remote_ip(sim, "platform") == "127.0.0.2"

    answer = request("GET", gateway("socks5", "proxy-only.test").url + MODELS, headers=AUTH)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "egress_proxy_error"
    assert "proxy-only.test could not be resolved here" in error["message"]
    assert "socks5h://" in error["message"]


def test_failover_to_the_next_proxy_is_invisible(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    dead = start_microsocks(Path(proxies.socks.directory).parent / "dead", "127.0.0.6")
    dead_url, dead_label = dead.url(), dead.label()
    dead.stop()  # its port is now closed
    gateway = make_gateway(
        {"egress": {"platform": [dead_url, proxies.socks.url()]}, "fetch": {"connect_timeout": 2}}
    )
    answer = request("GET", gateway.url + MODELS, headers=AUTH)
    assert answer.status == 200, answer.body
    assert last_remote_ip(sim, "platform") == "127.0.0.2"
    exposition = gateway.metrics()
    up = "tornadoproxy_egress_proxy_up"
    failures = "tornadoproxy_egress_proxy_failures_total"
    assert metric_value(exposition, up, upstream="platform", proxy=dead_label) == 0
    assert metric_value(exposition, up, upstream="platform", proxy=proxies.socks.label()) == 1
    assert (
        metric_value(exposition, failures, upstream="platform", proxy=dead_label, kind="proxy_refused") == 1
    )
    # Refused, not timed out: the failover cost no connect timeout.
    assert (
        metric_value(exposition, failures, upstream="platform", proxy=dead_label, kind="proxy_timeout") == 0
    )
    assert (
        metric_value(
            exposition, "tornadoproxy_upstream_errors_total", upstream="platform", kind="proxy_refused"
        )
        == 0
    )
    # While it cools down the dead proxy is not tried again.
    assert request("GET", gateway.url + MODELS, headers=AUTH).status == 200
    assert (
        metric_value(gateway.metrics(), failures, upstream="platform", proxy=dead_label, kind="proxy_refused")
        == 1
    )


def test_a_stream_fails_over_from_a_black_hole_unnoticed(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    gateway = make_gateway(
        {
            "egress": {"platform": [proxies.black_hole.url("http"), proxies.tiny.url()]},
            "fetch": {"connect_timeout": 1},
            "readiness": {"enabled": False},  # the stream below is the first request through the proxies
        }
    )
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": [["Content-Type", "text/event-stream"]],
            "chunks": [{"data": "data: one\n\n"}, {"gate": "after-one"}, {"data": "data: [DONE]\n\n"}],
        },
    )
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []})
    headers = {**AUTH, "Content-Type": "application/json"}
    with streaming(gateway.url + "/platform/v1/chat/completions", headers=headers, body=body) as response:
        assert response.status == 200
        seen = bytearray()
        while b"data: one" not in seen:
            chunk = response.read1(65536)
            assert chunk, bytes(seen)
            seen += chunk
        sim.release("after-one")  # the first event came while the simulator still held the rest
        seen += response.read()
    assert seen.endswith(b"data: [DONE]\n\n")
    assert b"error" not in seen
    assert last_remote_ip(sim, "platform") == "127.0.0.3"
    label = proxies.black_hole.url("http")
    exposition = gateway.metrics()
    failures = "tornadoproxy_egress_proxy_failures_total"
    # One connect timeout spent on the black hole (one failed attempt), then through the next proxy.
    assert metric_value(exposition, failures, upstream="platform", proxy=label, kind="proxy_timeout") == 1


def test_every_proxy_down_names_each_failure(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    refused = proxies.black_hole.url("socks5h").rsplit(":", 1)[0] + ":1"  # port 1: refused
    wrong = proxies.socks_auth.url(password="not-the-password")
    gateway = make_gateway({"egress": {"platform": [refused, wrong]}, "readiness": {"enabled": False}})
    answer = request("GET", gateway.url + MODELS, headers=AUTH)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "egress_proxy_error"
    message = error["message"]
    assert "every egress proxy for the platform upstream failed" in message
    assert "socks5h://127.0.0.1:1: could not connect to it (connection refused) (proxy_refused)" in message
    assert f"{proxies.socks_auth.label()}: it rejected the proxy credentials" in message
    assert "(proxy_auth)" in message
    assert not sim.journal(family="platform")
    exposition = gateway.metrics()
    assert (
        metric_value(exposition, "tornadoproxy_upstream_errors_total", upstream="platform", kind="proxy_auth")
        == 1
    )
    assert PROXY_PASSWORD not in exposition and "not-the-password" not in answer.body.decode()
    # Both cool down now; the next request still tries the one back soonest, and says so.
    answer = request("GET", gateway.url + MODELS, headers=AUTH)
    assert answer.status == 502 and "is cooling down after proxy_auth" in answer.json()["error"]["message"]


def test_a_lone_proxy_is_used_again_as_soon_as_it_is_back(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    directory = Path(proxies.socks.directory).parent / "flaky"
    flaky = start_microsocks(directory, "127.0.0.7")
    gateway = make_gateway({"egress": {"platform": flaky.url(), "cooldown": 600}})
    flaky.stop()
    answer = request("GET", gateway.url + MODELS, headers=AUTH)
    assert answer.status == 502 and answer.json()["error"]["code"] == "egress_proxy_error"
    flaky = start_microsocks(directory, "127.0.0.7", port=flaky.port)
    try:
        assert request("GET", gateway.url + MODELS, headers=AUTH).status == 200
        assert last_remote_ip(sim, "platform") == "127.0.0.7"
        exposition = gateway.metrics()
        assert (
            metric_value(exposition, "tornadoproxy_egress_proxy_up", upstream="platform", proxy=flaky.label())
            == 1
        )
    finally:
        flaky.stop()


def test_credentials_with_special_characters_work_and_never_show(
    sim: Simulator, proxies: Proxies, make_gateway: Callable[..., Gateway]
) -> None:
    """The password has @ : % / in it, the user names @ (and : for SOCKS5)."""
    assert set("@:%/") <= set(PROXY_PASSWORD)
    for proxy, bind in ((proxies.socks_auth, "127.0.0.4"), (proxies.squid, "127.0.0.5")):
        gateway = make_gateway({"egress": {"platform": proxy.url()}})
        answer = request("GET", gateway.url + MODELS, headers=AUTH)
        assert answer.status == 200, answer.body
        assert last_remote_ip(sim, "platform") == bind
        assert PROXY_PASSWORD not in gateway.metrics() + gateway.log_text()
        gateway.stop()  # squid logs a tunnel when it closes
    wait_for(
        lambda: (
            f"CONNECT 127.0.0.1:{port_of(sim.urls['platform'])} {SQUID_USER} HIER_DIRECT"
            in proxies.squid.log_text()
        ),
        what="squid's access log line",
    )
    assert SOCKS_USER not in proxies.socks_auth.log_text()  # microsocks logs no user names
    # A wrong password is named as such, without echoing either password.
    gateway = make_gateway({"egress": {"platform": proxies.squid.url(password=PROXY_PASSWORD + "x")}})
    answer = request("GET", gateway.url + MODELS, headers=AUTH)
    assert answer.status == 502
    message = answer.json()["error"]["message"]
    assert f"the egress proxy {proxies.squid.label()} failed for the platform upstream" in message
    assert "rejected the proxy credentials (CONNECT answered 407)" in message
    assert PROXY_PASSWORD not in answer.body.decode() + gateway.metrics() + gateway.log_text()
