"""Drain on SIGTERM, reload on SIGHUP, and clients that stop reading."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import yaml

from tests.harness import (
    STREAM_BODY,
    Gateway,
    Simulator,
    metric_value,
    open_stream,
    read_all,
    request,
    streaming,
    wait_for,
)
from tests.secrets_used import API_KEY, CLIENT_KEY
from tornadoproxy.web.access import key_digest

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
SSE = [["Content-Type", "text/event-stream"]]


def test_sigterm_drains_open_streams_then_exits_zero(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"drain_timeout": 1.0}})
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": "data: 1\n\n"}, {"gate": "never"}]},
        times=20,
    )
    sockets = [open_stream(gw) for _ in range(20)]
    wait_for(lambda: metric_value(gw.metrics(), "tornadoproxy_streams_active") == 20, what="20 open streams")
    gw.process.send_signal(signal.SIGTERM)
    for sock in sockets:
        text = read_all(sock).decode()
        assert "data: 1\n\n" in text
        final = text.split("data: 1\n\n", 1)[1]
        assert "event: error\r\n" not in final
        assert '"code":"shutting_down"' in final and final.rstrip().endswith(
            "0"
        )  # error event, then chunk end
        sock.close()
    assert gw.process.wait(15) == 0
    log = gw.log_text()
    assert "draining 20 upstream requests" in log
    # Ended at the drain deadline (server.drain_timeout), not waited for.
    assert "ending 20 requests still open at the drain deadline" in log


def test_draining_refuses_new_requests_and_lets_short_ones_finish(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"drain_timeout": 10}})
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": SSE,
            "chunks": [{"data": "data: 1\n\n"}, {"gate": "finish"}, {"data": "data: [DONE]\n\n"}],
        },
    )
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=STREAM_BODY) as answer:
        answer.read1(100)
        gw.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining 1 upstream requests" in gw.log_text(), what="the drain to start")
        sim.release("finish")
        rest = answer.read()
    assert rest.endswith(b"data: [DONE]\n\n")  # finished normally inside the deadline
    assert gw.process.wait(15) == 0


def test_sighup_reloads_and_keeps_the_old_config_when_invalid(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway()
    assert request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 200
    config = yaml.safe_load(gw.config_path.read_text())
    config["access"] = {"client_keys": [key_digest(CLIENT_KEY)]}
    gw.config_path.write_text(yaml.safe_dump(config))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: (
            request("GET", gw.url + "/healthz").status == 200 and "configuration reloaded" in gw.log_text()
        ),
        what="the reload",
    )
    wait_for(
        lambda: request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 401,
        what="the reloaded access policy",
    )
    keyed = {**AUTH, "X-Gateway-Key": CLIENT_KEY}
    assert request("GET", gw.url + "/platform/v1/models", headers=keyed).status == 200
    gw.config_path.write_text("server:\n  port: not-a-port\n")
    gw.process.send_signal(signal.SIGHUP)
    wait_for(
        lambda: (
            "configuration reload failed, keeping the running configuration: server.port" in gw.log_text()
        ),
        what="the failed reload to be logged",
    )
    assert request("GET", gw.url + "/platform/v1/models", headers=keyed).status == 200
    assert gw.process.poll() is None


def test_stalled_client_is_dropped_and_its_upstream_aborted(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"client_stall_timeout": 1.0}})
    event = "data: " + "x" * 8000 + "\n\n"
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": event * 64, "repeat": 400}]},
    )  # ~200 MB offered
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(
        (
            f"POST /platform/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(STREAM_BODY)}\r\n\r\n{STREAM_BODY}"
        ).encode()
    )
    sock.recv(1024)  # the stream started; now this client reads nothing more
    entry = wait_for(
        lambda: [e for e in sim.journal("platform") if e["peer_closed_at"]],
        timeout=15,
        what="the gateway to drop the stalled client and close its upstream",
    )[0]
    assert not entry["completed"]
    assert "dropping a client that accepted nothing" in gw.log_text()
    sock.close()
