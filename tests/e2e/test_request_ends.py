"""Every request ends exactly once and frees what it held: bodies that are abandoned, malformed or too
slow, and requests cut by a shutdown."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable

from tests.harness import Gateway, Simulator, read_all, request, wait_for
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
