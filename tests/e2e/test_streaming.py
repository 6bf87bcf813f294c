"""SSE relays end to end, synchronised with the simulator's gates instead of sleeps."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.harness import Gateway, Simulator, metric_value, request, streaming, wait_for
from tests.secrets_used import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
SSE = [["Content-Type", "text/event-stream; charset=utf-8"], ["x-request-id", "req_stream"]]
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True})


def event(n: int) -> str:
    return f'data: {{"id":"c","choices":[{{"index":0,"delta":{{"content":"{n}"}}}}]}}\n\n'


def read_until(
    response: http.client.HTTPResponse, marker: bytes, seen: bytearray, timeout: float = 10
) -> bytes:
    """Read from the stream until `marker` has arrived; return everything read so far."""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline, f"{marker!r} did not arrive; got {bytes(seen)!r}"
        chunk = response.read1(65536)
        if not chunk:
            raise AssertionError(f"stream ended before {marker!r}; got {bytes(seen)!r}")
        seen += chunk
    return bytes(seen)


def idle_metrics(gateway: Gateway) -> str | None:
    """The exposition once no stream is active, else None."""
    exposition = gateway.metrics()
    return exposition if metric_value(exposition, "tornadoproxy_streams_active") == 0 else None


def test_lockstep_no_buffering(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [
                {"data": event(1)},
                {"gate": "g1"},
                {"data": event(2)},
                {"gate": "g2"},
                {"data": event(3) + "data: [DONE]\n\n"},
            ],
        },
    )
    seen = bytearray()
    with streaming(gateway.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY) as response:
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
        assert response.getheader("Cache-Control") == "no-cache"
        assert response.getheader("X-Accel-Buffering") == "no"
        assert response.getheader("x-request-id") == "req_stream"
        read_until(response, event(1).encode(), seen)
        sim.wait_reached("g1")  # event 1 arrived while the simulator still holds event 2
        assert event(2).encode() not in seen
        sim.release("g1")
        read_until(response, event(2).encode(), seen)
        assert event(3).encode() not in seen
        sim.release("g2")
        seen += response.read()
    assert bytes(seen) == (event(1) + event(2) + event(3) + "data: [DONE]\n\n").encode()


def test_awkward_splits_and_mixed_framing_kept_byte_for_byte(gateway: Gateway, sim: Simulator) -> None:
    stream = (
        ': comment line\r\n\r\nevent: delta\r\ndata: {"v":"He"}\r\n\r\ndata: line one\ndata: line two\n\n'
        'id: 7\rdata: cr only\r\rdata: {"multi":\r\n "x"}\n\ndata: [DONE]\n\n'
    )
    cuts = [1, 5, 16, 17, 30, 31, 47, 60, 61, 80, 97, 98, len(stream) - 3]
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    steps: list[dict] = []
    for index, piece in enumerate(pieces):
        steps += [{"data": piece}, {"gate": f"s{index}"}]
    sim.script("platform", "/v1/chat/completions", {"status": 200, "headers": SSE, "chunks": steps[:-1]})
    with streaming(gateway.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY) as response:
        for index in range(len(pieces) - 1):
            sim.wait_reached(f"s{index}")
            sim.release(f"s{index}")
        assert response.read() == stream.encode()


def test_error_before_stream_is_json_with_its_status(gateway: Gateway, sim: Simulator) -> None:
    error = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 429,
            "headers": [["Content-Type", "application/json"], ["Retry-After", "2"]],
            "json": error,
        },
    )
    answer = request("POST", gateway.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY)
    assert answer.status == 429
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Retry-After") == "2"
    assert answer.json() == error


def test_stream_is_decided_by_upstream_content_type(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": [["Content-Type", "application/json"]], "json": {"ok": True}},
    )
    answer = request(
        "POST",
        gateway.url + "/platform/v1/chat/completions",
        headers={**AUTH, "Accept": "text/event-stream"},
        body=BODY,
    )
    assert answer.json() == {"ok": True}
    assert answer.header("Content-Length") == str(len(answer.body))


def test_upstream_cut_midway_ends_with_error_event(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [
                {"data": event(1)},
                {"gate": "cut"},
                {"data": 'data: {"partial'},
                {"reset": True},
            ],
        },
    )
    before = metric_value(gateway.metrics(), "tornadoproxy_streams_ended_total", reason="upstream_error")
    seen = bytearray()
    with streaming(gateway.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY) as response:
        read_until(response, event(1).encode(), seen)
        sim.release("cut")
        seen += response.read()
    text = bytes(seen).decode()
    assert text.startswith(event(1))
    assert "partial" not in text  # an event the upstream never finished is not relayed
    tail = text[len(event(1)) :]
    assert tail.startswith("event: error\ndata: ") and tail.endswith("\n\n")
    error = json.loads(tail.split("data: ", 1)[1])
    assert error["error"]["code"] == "upstream_unreachable"
    assert (
        metric_value(gateway.metrics(), "tornadoproxy_streams_ended_total", reason="upstream_error")
        == before + 1
    )


def test_client_disconnect_closes_silent_upstream(gateway: Gateway, sim: Simulator) -> None:
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": event(1)}, {"stall": True}]},
    )
    before = metric_value(gateway.metrics(), "tornadoproxy_streams_ended_total", reason="client_gone")
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        (
            "POST /platform/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n{BODY}"
        ).encode()
    )
    received = b""
    while event(1).encode() not in received:
        received += sock.recv(65536)
    sock.close()
    closed_at = time.time()
    entry = wait_for(
        lambda: [e for e in sim.journal("platform") if e["peer_closed_at"]],
        timeout=5,
        what="the gateway to close its upstream connection",
    )[0]
    assert entry["peer_closed_at"] - closed_at < 2.5
    exposition = wait_for(lambda: idle_metrics(gateway), what="streams_active to return to 0")
    assert metric_value(exposition, "tornadoproxy_streams_ended_total", reason="client_gone") == before + 1


def test_keepalive_comments_while_upstream_is_idle(make_gateway, sim: Simulator) -> None:
    gw = make_gateway({"streams": {"keepalive_interval": 0.2}})
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [
                {"data": event(1)},
                {"gate": "idle"},
                {"data": event(2) + "data: [DONE]\n\n"},
            ],
        },
    )
    seen = bytearray()
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY) as response:
        read_until(response, event(1).encode(), seen)
        read_until(response, b": keep-alive\n\n", seen)
        sim.release("idle")
        seen += response.read()
    text = bytes(seen).decode()
    assert text.startswith(event(1) + ": keep-alive\n\n")
    assert text.endswith(event(2) + "data: [DONE]\n\n")


def test_idle_upstream_ends_stream_with_timeout_error(make_gateway, sim: Simulator) -> None:
    gw = make_gateway({"fetch": {"idle_timeout": 2}, "streams": {"keepalive_interval": 0}})
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": event(1)}, {"stall": True}]},
    )
    seen = bytearray()
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY) as response:
        read_until(response, event(1).encode(), seen)
        seen += response.read()
    tail = bytes(seen).decode()[len(event(1)) :]
    assert tail.startswith("event: error\n")
    assert json.loads(tail.split("data: ", 1)[1])["error"]["code"] == "upstream_timeout"
    assert metric_value(gw.metrics(), "tornadoproxy_streams_ended_total", reason="idle_timeout") == 1


def test_full_gate_answers_503_with_retry_after(make_gateway, sim: Simulator) -> None:
    gw = make_gateway({"fetch": {"max_clients": 1, "queue_timeout": 0}})
    rejected = metric_value(gw.metrics(), "tornadoproxy_gate_rejected_total")
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [
                {"data": event(1)},
                {"gate": "hold"},
                {"data": "data: [DONE]\n\n"},
            ],
        },
    )
    seen = bytearray()
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY) as response:
        read_until(response, event(1).encode(), seen)
        busy = request("GET", gw.url + "/platform/v1/models", headers=AUTH)
        assert busy.status == 503
        assert busy.header("Retry-After") == "1"
        assert busy.json()["error"]["code"] == "gateway_busy"
        # Refused after fetch.queue_timeout, as the gateway itself timed it: within its 1 s bucket.
        exposition = gw.metrics()
        durations = "tornadoproxy_http_request_duration_seconds"
        route = "/platform/v1/models"
        within = metric_value(exposition, durations + "_bucket", route=route, le="1.0")
        assert within == metric_value(exposition, durations + "_count", route=route) >= 1
        sim.release("hold")
        response.read()
    assert metric_value(gw.metrics(), "tornadoproxy_gate_rejected_total") == rejected + 1
    assert wait_for(lambda: request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 200)


@pytest.mark.parametrize("framing", ["\n", "\r\n"])
def test_done_marker_and_framing_via_sdk_style_stream(gateway: Gateway, sim: Simulator, framing: str) -> None:
    body = (
        "".join(f'data: {{"n":{i}}}{framing}{framing}' for i in range(20)) + f"data: [DONE]{framing}{framing}"
    )
    sim.script(
        "platform", "/v1/chat/completions", {"status": 200, "headers": SSE, "chunks": [{"data": body}]}
    )
    answer = request("POST", gateway.url + "/platform/v1/chat/completions", headers=AUTH, body=BODY)
    assert answer.body == body.encode()
