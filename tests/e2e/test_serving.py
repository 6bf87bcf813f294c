"""The listener's request loop (web/serving.py): the idle timeout, pipelined requests, keep-alive and
HTTP/1.0, and clients that leave while their request is read or answered."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable

from tests.harness import Gateway, Simulator, read_all, wait_for
from tests.secrets_used import API_KEY

MODELS = f"GET /platform/v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {API_KEY}\r\n"
EMBEDDINGS = "/platform/v1/embeddings"


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def _answers(data: bytes) -> list[tuple[int, bytes]]:
    """The status and body of each answer in `data` (answers with a Content-Length, one after the
    other)."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(fields[b"content-length"])
        answers.append((int(lines[0].split(b" ")[1]), rest[:length]))
        data = rest[length:]
    return answers


def _receive_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, read from `sock`."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].lower()
    return int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])


def test_idle_connections_are_closed_after_the_idle_timeout(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"idle_connection_timeout": 1.0}, "readiness": {"enabled": False}})
    silent = _connect(gw.port)  # says nothing
    half = _connect(gw.port)
    half.sendall(MODELS.encode())  # a header block without its end
    kept = _connect(gw.port)
    kept.sendall((MODELS + "\r\n").encode())
    assert _receive_answer(kept).startswith(b"HTTP/1.1 200 ")
    kept.sendall((MODELS + "\r\n").encode())  # kept alive: a second request on the connection
    assert _receive_answer(kept).startswith(b"HTTP/1.1 200 ")
    for sock in (silent, half, kept):
        with sock:
            assert read_all(sock, timeout=10) == b""  # closed by the gateway, without an answer
    assert len(sim.journal("platform", "/v1/models")) == 2
    # A connection that keeps sending requests is not closed by the sweep meanwhile.
    with _connect(gw.port) as busy:
        for _ in range(3):
            busy.sendall((MODELS + "\r\n").encode())
            assert _receive_answer(busy).startswith(b"HTTP/1.1 200 ")


def test_the_idle_timeout_starts_when_an_answer_ends(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"server": {"idle_connection_timeout": 1.0}, "readiness": {"enabled": False}})
    sim.script("platform", "/v1/models", {"status": 200, "chunks": [{"gate": "slow"}, {"data": "{}"}]})
    with _connect(gw.port) as answered:
        answered.sendall((MODELS + "\r\n").encode())
        sim.wait_reached("slow")
        with _connect(gw.port) as idle:  # opened after the answer began, closed for its idleness
            assert read_all(idle, timeout=10) == b""
        sim.release("slow")  # an answer longer than the idle timeout, then a request after it
        answered.sendall((MODELS + "Connection: close\r\n\r\n").encode())
        assert read_all(answered).count(b"HTTP/1.1 200 ") == 2


def test_pipelined_requests_are_answered_in_order(gateway: Gateway, sim: Simulator) -> None:
    body = b'{"model": "m", "input": "pipelined"}'
    upload = (
        f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    requests = [
        (MODELS + "\r\n").encode(),
        b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n",
        upload,
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
        (MODELS + "Connection: close\r\n\r\n").encode(),
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",  # after the close: never read
    ]
    with _connect(gateway.port) as sock:
        sock.sendall(b"".join(requests))
        answers = _answers(read_all(sock))
    assert [status for status, _ in answers] == [200, 404, 200, 200, 200]
    assert b'"not_found"' in answers[1][1]
    journal = sim.journal("platform")
    assert [entry["path"] for entry in journal] == ["/v1/models", "/v1/embeddings", "/v1/models"]
    assert base64.b64decode(journal[1]["body_b64"]) == body


def test_http_1_0_closes_unless_kept_alive(gateway: Gateway, sim: Simulator) -> None:
    with _connect(gateway.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = _receive_answer(sock)
        assert first.startswith(b"HTTP/1.1 200 ") and b"Connection: Keep-Alive\r\n" in first
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert _answers(read_all(sock))[0][0] == 200  # then closed


def test_a_client_that_leaves_mid_request_or_mid_answer_ends_it_once(
    gateway: Gateway, sim: Simulator
) -> None:
    seen = len(gateway.access_lines(EMBEDDINGS))
    head = (
        f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with _connect(gateway.port) as sock:
        sock.sendall(head + b'{"input": ')  # leaves mid-body
    sim.script(
        "platform",
        EMBEDDINGS.removeprefix("/platform"),
        {"status": 200, "chunks": [{"gate": "answer-held"}, {"data": "{}"}]},
    )
    body = b'{"model": "m", "input": "x"}'
    with _connect(gateway.port) as sock:
        sock.sendall(head.replace(b"100", str(len(body)).encode()) + body)
        sim.wait_reached("answer-held")  # leaves while the answer is awaited
    wait_for(
        lambda: sim.journal("platform")[-1]["peer_closed_at"] is not None,
        what="the upstream request to be abandoned",
    )
    sim.release("answer-held")
    lines = wait_for(
        lambda: (found := gateway.access_lines(EMBEDDINGS)[seen:]) and len(found) >= 2 and found,
        what="both access lines",
    )
    # 499 for the body never completed; the answer's status for the one abandoned while it came
    assert [(line["status"], line["upstream_status"]) for line in lines] == [(499, None), (200, 200)]
    with _connect(gateway.port) as sock:  # and the listener serves on
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")
    assert len(gateway.access_lines(EMBEDDINGS)) == seen + 2
