"""The Platform relay over raw HTTP: what passes through unchanged, what never does, what is refused."""

from __future__ import annotations

import base64
import json

import pytest

from tests.harness import Gateway, Simulator, raw_exchange, request
from tests.secrets_used import API_KEY, SESSION_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def headers_of(entry: dict) -> dict[str, str]:
    return {name.lower(): value for name, value in entry["headers"]}


@pytest.mark.parametrize(
    ("status", "body", "extra"),
    [
        (
            401,
            {
                "error": {
                    "message": "Incorrect API key provided",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            {},
        ),
        (
            404,
            {
                "error": {
                    "message": "The model 'x' does not exist",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
            {},
        ),
        (
            429,
            {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            {"Retry-After": "7", "x-ratelimit-remaining-requests": "0"},
        ),
        (
            500,
            {
                "error": {
                    "message": "The server had an error",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            {},
        ),
    ],
)
def test_upstream_errors_pass_through_unchanged(
    gateway: Gateway, sim: Simulator, status: int, body: dict, extra: dict[str, str]
) -> None:
    raw = json.dumps(body, indent=1).encode() + b"\n"
    headers = [["Content-Type", "application/json"], ["x-request-id", "req_err"], *map(list, extra.items())]
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": status, "headers": headers, "body_b64": base64.b64encode(raw).decode()},
    )
    answer = request(
        "POST",
        gateway.url + "/platform/v1/chat/completions",
        headers=AUTH,
        body={"model": "m", "messages": []},
    )
    assert answer.status == status
    assert answer.body == raw  # byte for byte, not re-encoded
    assert answer.header("x-request-id") == "req_err"
    for name, value in extra.items():
        assert answer.header(name) == value


def test_useful_headers_relayed_and_others_not(gateway: Gateway, sim: Simulator) -> None:
    answer = request("GET", gateway.url + "/platform/v1/models", headers=AUTH)
    assert answer.status == 200
    names = {name.lower() for name, _ in answer.headers}
    for wanted in (
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "content-type",
    ):
        assert wanted in names
    assert "set-cookie" not in names
    assert "server" not in names
    assert answer.header("connection") is None  # the upstream's hop-by-hop header stays behind
    assert answer.header("content-length") == str(len(answer.body))


def test_request_reaches_upstream_as_sent(gateway: Gateway, sim: Simulator) -> None:
    body = (
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],'
        b'"temperature":0.70,"extra":[1,2.50]}'
    )
    answer = request(
        "POST",
        gateway.url + "/platform/v1/chat/completions?api-version=2&x=%20y",
        headers={
            **AUTH,
            "Content-Type": "application/json",
            "OpenAI-Organization": "org-1",
            "OpenAI-Beta": "assistants=v2",
            "Idempotency-Key": "idem-1",
            "X-Forwarded-For": "10.9.8.7",
            "Forwarded": "for=10.9.8.7",
            "Cookie": "session=client-cookie",
            "Host": "evil.example",
        },
        body=body,
    )
    assert answer.status == 200
    (entry,) = sim.journal("platform", "/v1/chat/completions")
    assert base64.b64decode(entry["body_b64"]) == body
    assert entry["query"] == "api-version=2&x=%20y"
    seen = headers_of(entry)
    assert seen["openai-organization"] == "org-1"
    assert seen["openai-beta"] == "assistants=v2"
    assert seen["idempotency-key"] == "idem-1"
    assert seen["content-type"] == "application/json"
    assert seen["host"] == sim.urls["platform"].split("//")[1]
    for never in ("x-forwarded-for", "forwarded", "cookie"):
        assert never not in seen


def test_bearer_added_and_x_authorization_accepted(gateway: Gateway, sim: Simulator) -> None:
    assert (
        request("GET", gateway.url + "/platform/v1/models", headers={"Authorization": API_KEY}).status == 200
    )
    assert (
        request("GET", gateway.url + "/platform/v1/models", headers={"X-Authorization": API_KEY}).status
        == 200
    )
    for entry in sim.journal("platform", "/v1/models"):
        assert headers_of(entry)["authorization"] == f"Bearer {API_KEY}"


def test_missing_authorization_is_401_without_upstream_call(gateway: Gateway, sim: Simulator) -> None:
    answer = request("POST", gateway.url + "/platform/v1/chat/completions", body={"model": "m"})
    assert answer.status == 401
    error = answer.json()
    assert error["error"]["code"] == "missing_authorization"
    assert error["errorMessage"] == error["error"]["message"]
    assert error["error"]["param"] is None
    assert sim.journal("platform") == []


@pytest.mark.parametrize(
    "path",
    [
        "/platform/dashboard/billing/credit_grants",
        "/platform/dashboard/billing/subscription",
        "/platform/dashboard/user/api_keys",
    ],
)
def test_dashboard_routes_with_session_key(gateway: Gateway, sim: Simulator, path: str) -> None:
    answer = request("GET", gateway.url + path, headers={"Authorization": f"Bearer {SESSION_KEY}"})
    assert answer.status == 200, answer.body
    assert answer.json()["object"] in ("credit_summary", "billing_subscription", "list")
    refused = request("GET", gateway.url + path, headers=AUTH)
    assert refused.status == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_any_other_v1_path_and_method_is_relayed(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "platform",
        "/v1/fine_tuning/jobs/ftjob-1/cancel",
        {"status": 200, "json": {"status": "cancelled"}},
        method="POST",
    )
    answer = request(
        "POST", gateway.url + "/platform/v1/fine_tuning/jobs/ftjob-1/cancel", headers=AUTH, body=b""
    )
    assert answer.json() == {"status": "cancelled"}
    deleted = request("DELETE", gateway.url + "/platform/v1/files/file-nope", headers=AUTH)
    assert deleted.status == 404 and deleted.json()["deleted"] is False
    unknown = request("GET", gateway.url + "/platform/v1/unknown/thing?limit=3", headers=AUTH)
    assert unknown.status == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (GET /v1/unknown/thing)"
    assert sim.journal("platform", "/v1/unknown/thing")[0]["query"] == "limit=3"


@pytest.mark.parametrize(
    "target",
    [
        "/platform/v1/../../etc/passwd",
        "/platform/v1/models/..",
        "/platform/v1/%2e%2e/%2e%2e/x",
        "/platform/v1/%2E%2E/admin",
        "/platform/v1/models%2F..%2F..%2Fx",
        "/platform/v1/models/..%5c..%5cx",
        "/platform/v1/models\\..\\x",
        "/platform/v1//models",
        "/platform/v1/./models",
        "/platform/v1/models/%252e%252e",
        "/platform/v1/models/%00",
        "/platform/v1/models/%zz",
        "http://evil.example/platform/v1/models",
        "//evil.example/platform/v1/models",
    ],
)
def test_traversal_and_absolute_targets_refused(gateway: Gateway, sim: Simulator, target: str) -> None:
    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    answer = raw_exchange(gateway.port, raw.encode())
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "bad_request"
    assert sim.journal() == []


def test_body_over_limit_is_413_before_reading(make_gateway, sim: Simulator) -> None:
    gw = make_gateway({"server": {"max_body_size": 1000}})
    head = (
        "POST /platform/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        "Content-Type: application/json\r\nContent-Length: 2000000000\r\n\r\n"
    )
    answer = raw_exchange(gw.port, head.encode())  # no body is ever sent
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "payload_too_large"
    small = request(
        "POST",
        gw.url + "/platform/v1/chat/completions",
        headers=AUTH,
        body={"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]},
    )
    assert small.status == 413
    assert sim.journal() == []


def test_chunked_body_over_limit_is_413(make_gateway, sim: Simulator) -> None:
    gw = make_gateway({"server": {"max_body_size": 1000}})
    chunk = b"x" * 600
    raw = (
        b"POST /platform/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2 + b"0\r\n\r\n"
    )
    answer = raw_exchange(gw.port, raw)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert sim.journal() == []


def test_unknown_path_is_json_404(gateway: Gateway) -> None:
    answer = request("GET", gateway.url + "/nothing/here")
    assert answer.status == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_cors_preflight_answered_by_gateway(gateway: Gateway, sim: Simulator) -> None:
    answer = request(
        "OPTIONS",
        gateway.url + "/platform/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert answer.status == 204
    assert answer.header("Access-Control-Allow-Origin") == "*"
    assert "POST" in (answer.header("Access-Control-Allow-Methods") or "")
    assert answer.header("Access-Control-Allow-Headers") == "authorization, content-type"
    assert sim.journal() == []


def test_health(gateway: Gateway) -> None:
    answer = request("GET", gateway.url + "/healthz")
    assert answer.status == 200 and answer.json() == {"status": "ok"}
