"""Faults between the gateway and its egress proxy (the fault proxy in front of microsocks), and
retries of connections that never reached the upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.egress_fixtures import Proxies, last_remote_ip
from tests.faults import Fault, FaultProxy
from tests.harness import Gateway, Simulator, free_port, metric_value, request, streaming
from tests.secrets_used import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODELS = "/platform/v1/models"


@pytest.fixture
def faulty_socks(proxies: Proxies) -> Iterator[FaultProxy]:
    fault = FaultProxy(("127.0.0.1", proxies.socks.port))
    yield fault
    fault.stop()


def gateway_with(make_gateway: Callable[..., Gateway], platform: list[str]) -> Gateway:
    return make_gateway(
        {
            "egress": {"platform": platform},
            "fetch": {"connect_timeout": 1},
            "readiness": {"enabled": False},  # the test's requests are the first through the proxies
        }
    )


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault("reset", after_bytes=1), "proxy_error"),  # the SOCKS greeting answer is cut short
        (Fault("close", after_bytes=0), "proxy_error"),
        (Fault("black_hole"), "proxy_timeout"),
    ],
)
def test_a_failing_path_to_the_proxy_fails_over_unnoticed(
    sim: Simulator,
    proxies: Proxies,
    faulty_socks: FaultProxy,
    make_gateway: Callable[..., Gateway],
    fault: Fault,
    kind: str,
) -> None:
    faulty_socks.set(fault)
    faulty = f"socks5h://127.0.0.1:{faulty_socks.port}"
    gw = gateway_with(make_gateway, [faulty, proxies.tiny.url()])
    answer = request("GET", gw.url + MODELS, headers=AUTH)
    assert answer.status == 200, answer.body
    assert last_remote_ip(sim, "platform") == proxies.tiny.bind  # went out through the second proxy
    failures = metric_value(
        gw.metrics(), "tornadoproxy_egress_proxy_failures_total", upstream="platform", proxy=faulty, kind=kind
    )
    assert failures == 1  # one attempt on the failing path (at most one connect timeout), then the next


def test_a_stream_cut_after_its_first_bytes_is_not_retried(
    sim: Simulator,
    proxies: Proxies,
    faulty_socks: FaultProxy,
    make_gateway: Callable[..., Gateway],
) -> None:
    faulty = f"socks5h://127.0.0.1:{faulty_socks.port}"
    gw = gateway_with(make_gateway, [faulty, proxies.tiny.url()])
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": [["Content-Type", "text/event-stream"]],
            "chunks": [{"data": "data: 1\n\n"}, {"gate": "cut"}, {"data": "data: 2\n\n" * 50}],
        },
    )
    body = json.dumps({"model": "m", "stream": True, "messages": []})
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=body) as answer:
        seen = answer.read1(65536)
        while b"data: 1" not in seen:
            seen += answer.read1(65536)
        faulty_socks.set(Fault("reset", after_bytes=10))  # the open tunnel breaks mid-stream
        sim.release("cut")
        seen += answer.read()
    assert b"event: error" in seen and b"upstream_unreachable" in seen
    assert len(sim.journal("platform", "/v1/chat/completions")) == 1  # never sent twice


def test_a_refused_direct_connection_is_retried_twice_with_jitter(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway(
        {"upstreams": {"platform": f"http://127.0.0.1:{free_port()}"}, "readiness": {"enabled": False}}
    )
    started = time.monotonic()
    answer = request("GET", gw.url + MODELS, headers=AUTH)
    elapsed = time.monotonic() - started
    assert answer.status == 502 and answer.json()["error"]["code"] == "upstream_unreachable"
    retries = [line for line in gw.log_lines() if line["message"].startswith("retrying a platform request")]
    assert len(retries) == 2
    delays = [float(line["message"].rsplit(" in ", 1)[1].split(" ms")[0]) for line in retries]
    assert 20 <= delays[0] <= 100 and 40 <= delays[1] <= 200  # jittered, growing with the attempt
    print(f"\nrefused direct connection: 3 attempts, delays {delays} ms, answered in {elapsed * 1000:.0f} ms")
