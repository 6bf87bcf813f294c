"""Challenges, blocks and HTML pages become JSON errors on every route family; /readyz reports them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Gateway, Simulator, metric_value, request, wait_for
from tests.secrets_used import ACCESS_TOKEN, API_KEY
from tests.simulator import pages

CHAT = {"Authorization": f"Bearer {ACCESS_TOKEN}", "Content-Type": "application/json"}
PLATFORM = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
CONVERSATION = json.dumps(
    {
        "action": "next",
        "model": "gpt-4o",
        "messages": [
            {"id": "m1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": ["hi"]}}
        ],
    }
)
CHAT_STREAM = json.dumps(
    {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}
)

# (family, upstream path, method, gateway path, headers, body): one JSON and one streaming route per family
ROUTES = [
    ("chatgpt", "/backend-api/conversations", "GET", "/chatgpt/conversations", CHAT, None),
    (
        "chatgpt",
        "/backend-api/conversation",
        "POST",
        "/chatgpt/conversation",
        {**CHAT, "Accept": "text/event-stream"},
        CONVERSATION,
    ),
    (
        "chatgpt",
        "/backend-api/some/new/endpoint",
        "GET",
        "/chatgpt/backend-api/some/new/endpoint",
        CHAT,
        None,
    ),
    ("platform", "/v1/models", "GET", "/platform/v1/models", PLATFORM, None),
    (
        "platform",
        "/v1/chat/completions",
        "POST",
        "/platform/v1/chat/completions",
        {**PLATFORM, "Accept": "text/event-stream"},
        CHAT_STREAM,
    ),
    (
        "platform",
        "/dashboard/billing/credit_grants",
        "GET",
        "/platform/dashboard/billing/credit_grants",
        PLATFORM,
        None,
    ),
]

VARIANTS: list[tuple[str, Callable[[], dict[str, Any]], str, str]] = [
    ("challenge header", lambda: pages.challenge(403), "upstream_challenge", "challenge"),
    ("challenge 503", lambda: pages.challenge(503), "upstream_challenge", "challenge"),
    ("challenge page only", lambda: pages.challenge(403, header=False), "upstream_challenge", "challenge"),
    ("access denied 1020", pages.block, "upstream_blocked", "blocked"),
    ("attention required", pages.attention, "upstream_blocked", "blocked"),
    ("region page", pages.region_html, "upstream_blocked", "blocked"),
    ("chatgpt region json", pages.chatgpt_region_json, "upstream_blocked", "blocked"),
    ("platform region json", pages.platform_region_json, "upstream_blocked", "blocked"),
    ("outage page", pages.outage, "upstream_error_page", "protocol"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
@pytest.mark.parametrize("route", ROUTES, ids=[r[3] for r in ROUTES])
def test_never_html_to_an_api_client(gateway: Gateway, sim: Simulator, route: tuple, variant: tuple) -> None:
    family, upstream_path, method, path, headers, body = route
    _, make_page, code, kind = variant
    sim.script(family, upstream_path, make_page())
    before = metric_value(gateway.metrics(), "tornadoproxy_upstream_errors_total", upstream=family, kind=kind)
    answer = request(method, gateway.url + path, headers=headers, body=body)
    assert answer.header("Content-Type") == "application/json"
    assert b"<html" not in answer.body.lower() and b"<!doctype" not in answer.body.lower()
    error = answer.json()["error"]
    assert error["code"] == code
    assert answer.status == (502 if code == "upstream_error_page" else 403)
    if code != "upstream_error_page":
        assert "egress proxy" in error["message"]  # says what the operator can try
    assert (
        metric_value(gateway.metrics(), "tornadoproxy_upstream_errors_total", upstream=family, kind=kind)
        == before + 1
    )


def test_ordinary_json_errors_are_not_diagnosed(gateway: Gateway, sim: Simulator) -> None:
    forbidden = {"detail": "You do not have access to this workspace."}
    sim.script(
        "chatgpt",
        "/backend-api/conversations",
        {"status": 403, "headers": [["Content-Type", "application/json"]], "json": forbidden},
    )
    answer = request("GET", gateway.url + "/chatgpt/conversations", headers=CHAT)
    assert (answer.status, answer.json()) == (403, forbidden)


def test_html_document_on_success_is_relayed(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "platform",
        "/v1/files/file-1/content",
        {"status": 200, "headers": [["Content-Type", "text/html"]], "body": "<html><p>my upload</p></html>"},
    )
    answer = request("GET", gateway.url + "/platform/v1/files/file-1/content", headers=PLATFORM)
    assert answer.status == 200 and answer.body == b"<html><p>my upload</p></html>"


def readiness(gateway: Gateway) -> dict[str, Any]:
    return request("GET", gateway.url + "/readyz").json()


def probed(gateway: Gateway, upstream: str) -> dict[str, Any] | None:
    """The /readyz report once `upstream` has been probed, else None."""
    report = readiness(gateway)
    return report if report[upstream]["state"] != "pending" else None


def test_readyz_reports_each_upstream(make_gateway: Callable[..., Gateway], sim: Simulator) -> None:
    gw = make_gateway({"readiness": {"interval": 0.2}}, ready=False)
    report = wait_for(lambda: probed(gw, "chatgpt"), what="the first probe round")
    assert set(report) == {"chatgpt", "auth", "platform", "platform_web"}
    assert request("GET", gw.url + "/readyz").status == 200
    assert report["chatgpt"]["state"] == "reachable" and report["chatgpt"]["status"] == 401
    assert report["platform"]["state"] == "reachable" and report["platform"]["status"] == 401
    probe = sim.journal("chatgpt", "/backend-api/accounts/check")[0]
    assert "authorization" not in {name.lower() for name, _ in probe["headers"]}

    sim.script("chatgpt", "/backend-api/accounts/check", pages.challenge(), times=-1)
    wait_for(lambda: readiness(gw)["chatgpt"]["state"] == "challenged", what="chatgpt to be challenged")
    assert (
        metric_value(gw.metrics(), "tornadoproxy_upstream_state", upstream="chatgpt", state="challenged") == 1
    )
    sim.reset()
    sim.script("platform", "/v1/models", pages.platform_region_json(), times=-1)
    wait_for(lambda: readiness(gw)["platform"]["state"] == "blocked", what="platform to be blocked")
    assert "region" in readiness(gw)["platform"]["detail"]
    sim.reset()
    wait_for(lambda: readiness(gw)["platform"]["state"] == "reachable", what="platform to recover")


def test_serves_while_upstreams_are_unreachable(make_gateway: Callable[..., Gateway], sim: Simulator) -> None:
    from tests.harness import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    gw = make_gateway(
        {"upstreams": {"chatgpt": dead, "platform": dead}, "readiness": {"interval": 0}}, ready=False
    )
    report = wait_for(lambda: probed(gw, "platform"), what="the first probe round")
    assert report["chatgpt"]["state"] == "unreachable" and report["platform"]["state"] == "unreachable"
    assert "refused" in report["platform"]["detail"]
    assert request("GET", gw.url + "/healthz").status == 200
    answer = request("GET", gw.url + "/platform/v1/models", headers=PLATFORM)
    assert answer.status == 502 and answer.json()["error"]["code"] == "upstream_unreachable"


def test_readyz_is_503_until_the_first_round_completes(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    import socket

    with socket.socket() as black_hole:  # accepts connections (kernel backlog) and never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        silent = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        gw = make_gateway(
            {"upstreams": {"platform": silent}, "readiness": {"interval": 0, "timeout": 3}}, ready=False
        )
        starting = request("GET", gw.url + "/readyz")
        assert starting.status == 503 and starting.json()["platform"]["state"] == "pending"
        report = wait_for(lambda: probed(gw, "platform"), what="the probe to time out")
        assert report["platform"] == {**report["platform"], "state": "unreachable", "status": None}
        assert "no answer within 3 s" in report["platform"]["detail"]
        assert request("GET", gw.url + "/readyz").status == 200


def test_probes_can_be_switched_off(make_gateway: Callable[..., Gateway], sim: Simulator) -> None:
    gw = make_gateway({"readiness": {"enabled": False}}, ready=False)
    answer = request("GET", gw.url + "/readyz")
    assert answer.status == 200
    assert {name: result["state"] for name, result in answer.json().items()} == dict.fromkeys(
        ("chatgpt", "auth", "platform", "platform_web"), "disabled"
    )
    assert sim.journal() == []  # nothing went upstream on the gateway's own initiative
