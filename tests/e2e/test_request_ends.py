"""Every request ends exactly once and frees what it held: bodies that are abandoned, malformed or too
slow, requests cut by a shutdown, and (with the garbage collector off) every outcome of a relay."""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.harness import Gateway, Simulator, free_port, open_stream, read_all, request, streaming, wait_for
from tests.secrets_used import API_KEY

MIB = 1024 * 1024
UPLOAD = "/platform/v1/embeddings"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _head(length: int | None = None, chunked: bool = False, extra: str = "") -> bytes:
    lines = [f"POST {UPLOAD} HTTP/1.1", "Host: gw", f"Authorization: Bearer {API_KEY}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _send(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """What the gateway sends until it closes the connection."""
    with sock:
        return read_all(sock)


def _abandon_uploads(gw: Gateway) -> Counter[int]:
    """Bodies that never complete, each of several MiB; the statuses their access lines must show."""
    body = b"x" * (16 * MIB)
    for _ in range(4):  # the client leaves one byte short
        _send(gw.port, _head(len(body) + 1) + body).close()
    chunk = b"%x\r\n%s\r\n" % (MIB, b"y" * MIB)
    for _ in range(2):  # a bad chunk size after 8 good chunks: the listener answers 400
        answer = _answer(_send(gw.port, _head(chunked=True) + chunk * 8 + b"zz\r\n"))
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"code":"bad_request"' in answer
    answer = _answer(_send(gw.port, _head(length=5, chunked=True) + b"0\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 400 ")  # Content-Length with Transfer-Encoding
    for _ in range(2):  # half the body, then silence until server.body_timeout
        answer = _answer(_send(gw.port, _head(len(body) * 2) + body))
        assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"body_timeout"' in answer
    return Counter({499: 4, 400: 3, 408: 2})


def test_abandoned_malformed_and_slow_bodies_end_once_and_free_their_memory(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"body_timeout": 1.0}, "readiness": {"enabled": False}})
    warm_up = request("POST", gw.url + UPLOAD, headers=AUTH, body=b"w" * (16 * MIB))
    assert warm_up.status == 400  # the simulator's answer to a body that is not JSON: it arrived
    baseline = gw.rss_mb()
    expected = _abandon_uploads(gw)
    lines = wait_for(
        lambda: (found := gw.access_lines(UPLOAD)[1:]) and len(found) >= sum(expected.values()) and found,
        timeout=20,
        what="an access line for every abandoned upload",
    )
    assert Counter(line["status"] for line in lines) == expected
    assert {line.get("error") for line in lines if line["status"] == 408} == {"body_timeout"}
    assert {line.get("error") for line in lines if line["status"] == 400} == {"bad_request"}
    # 16 MiB held per upload before; each one's memory is given back to the system when it ends.
    assert gw.rss_mb() - baseline < 8, (baseline, gw.rss_mb())
    assert gw.stop() == 0
    after = gw.access_lines(UPLOAD)
    assert len(after) == 1 + sum(expected.values())  # nothing ended a second time at shutdown
    assert not [line for line in after if line["status"] >= 500]


def test_a_body_cut_by_the_shutdown_ends_as_shutting_down(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"drain_timeout": 0}, "readiness": {"enabled": False}})
    sock = _send(gw.port, _head(10 * MIB, extra="Expect: 100-continue\r\n"))
    assert sock.recv(100).startswith(b"HTTP/1.1 100 ")  # the handler has the request
    sock.sendall(b"z" * MIB)
    assert gw.stop() == 0
    sock.close()
    (line,) = gw.access_lines(UPLOAD)
    assert line["status"] == 503 and line["error"] == "shutting_down"


# -- reference cycles: the gateway with its garbage collector off ---------------------------------


def _census(gw: Gateway, path: Path) -> dict[str, int]:
    """What the gateway holds right now (tests/without_gc.py)."""
    path.unlink(missing_ok=True)
    gw.process.send_signal(signal.SIGUSR1)
    wait_for(path.exists, what="the census")
    return dict(json.loads(path.read_text()))


def _every_outcome(gw: Gateway, sim: Simulator) -> None:
    big = b'{"input": "' + b"x" * (4 * MIB) + b'"}'
    json_auth = {**AUTH, "Content-Type": "application/json"}
    assert request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 200
    assert request("POST", gw.url + UPLOAD, headers=json_auth, body=big).status == 200
    # a dead upstream (connect refused, retried): 502 after the whole body was read
    chatgpt_auth = {**json_auth, "Authorization": "Bearer eyJdead"}
    answer = request("POST", gw.url + "/chatgpt/backend-api/files", headers=chatgpt_auth, body=big)
    assert answer.status == 502 and answer.json()["error"]["code"] == "upstream_unreachable"
    sim.script("platform", "/v1/models", {"status": 429, "json": {"error": {"message": "slow down"}}})
    assert request("GET", gw.url + "/platform/v1/models", headers=AUTH).status == 429
    sse = [["Content-Type", "text/event-stream"]]
    sim.script("platform", "/v1/chat/completions", {"status": 200, "headers": sse, "chunks": [
        {"data": "data: 1\n\n"}, {"gate": "cut"}, {"data": "data: [DONE]\n\n"}]})  # fmt: skip
    with streaming(gw.url + "/platform/v1/chat/completions", headers=json_auth, body="{}") as stream:
        assert stream.read1(100).startswith(b"data: 1")  # the client leaves mid-stream
    sim.release("cut")
    sim.script("platform", "/v1/chat/completions", {"status": 200, "headers": sse, "chunks": [
        {"data": "data: 1\n\n"}, {"reset": True}]})  # fmt: skip
    answer = request("POST", gw.url + "/platform/v1/chat/completions", headers=json_auth, body="{}")
    assert b"event: error" in answer.body
    sim.script("platform", "/v1/chat/completions", {"status": 200, "headers": sse, "chunks": [
        {"data": "data: " + "e" * 8000 + "\n\n", "repeat": 4000}]}, times=2)  # fmt: skip
    sock = open_stream(gw, rcvbuf=4096)
    sock.recv(1024)  # a client that resets its connection while the stream is being written
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    stalled = open_stream(gw, rcvbuf=4096)
    stalled.recv(1024)  # a client that stops reading: dropped after server.client_stall_timeout
    wait_for(lambda: "dropping a client" in gw.log_text(), what="the stalled client to be dropped")
    stalled.close()
    assert request("POST", gw.url + UPLOAD, body=big).status == 401  # no credential
    login = {"username": "nobody@example.com", "password": "wrong"}
    assert request("POST", gw.url + "/platform/login", body=login).status == 401
    _abandon_uploads(gw)


def test_no_request_is_kept_alive_by_a_reference_cycle(
    make_gateway: Callable[..., Gateway], sim: Simulator, tmp_path: Path
) -> None:
    """With the collector off, what each request created is freed by reference counting alone as
    soon as the request ends, whatever its outcome: the gateway's own collector thresholds make a
    full collection rare, and a cycle would hold its request's body until then."""
    census_file = tmp_path / "census.json"
    gw = make_gateway(
        {
            "server": {"body_timeout": 1.0, "client_stall_timeout": 1.0},
            "upstreams": {"chatgpt": f"http://127.0.0.1:{free_port()}"},
            "readiness": {"enabled": False},
        },
        wrapper=[sys.executable, "-m", "tests.without_gc", str(census_file)],
        ready=False,
    )
    _every_outcome(gw, sim)
    wait_for(
        lambda: len([line for line in gw.access_lines() if line["route"] != "/healthz"]) >= 10 + 9,
        timeout=20,
        what="every request to end",
    )
    censuses = []

    def nothing_held() -> bool:
        censuses.append(_census(gw, census_file))
        return not any(censuses[-1].values())

    try:
        wait_for(nothing_held, timeout=10, what="every request to be freed")
    except AssertionError as failure:
        raise AssertionError(f"{failure}; still held: {censuses[-1]}") from None
