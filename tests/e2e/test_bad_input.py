"""Ten thousand malformed requests of thirty-odd kinds: 0 crashes, 0 500s, 0 upstream calls, 0 secrets.

Every request carries a valid upstream credential, so whatever slipped through would reach the
simulator's journal. Each kind has variants drawn from a seeded random generator (deterministic).
"""

from __future__ import annotations

import json
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import Gateway, Simulator, read_all
from tests.secrets_used import ACCESS_TOKEN, API_KEY

TOTAL = 10_000
AUTH = f"Authorization: Bearer {API_KEY}\r\n".encode()
CHAT_AUTH = f"Authorization: Bearer {ACCESS_TOKEN}\r\n".encode()
# Answers a refusal may have; "closed" means the gateway hung up without one (tornado's own limits).
ACCEPTABLE = {400, 401, 404, 405, 413, 431}

Kind = Callable[[random.Random], bytes]


def _get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\n".encode() + AUTH + extra + b"Connection: close\r\n\r\n"


def _post(path: str, headers: bytes, body: bytes, auth: bytes = AUTH) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\n".encode()
        + auth
        + headers
        + b"Connection: close\r\n\r\n"
        + body
    )


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(rng.randint(1, 12)))


def _conversation(rng: random.Random, body: bytes) -> bytes:
    return _post(
        "/chatgpt/conversation",
        b"Content-Type: application/json\r\n" + f"Content-Length: {len(body)}\r\n".encode(),
        body,
        CHAT_AUTH,
    )


KINDS: dict[str, Kind] = {
    # request smuggling forms
    "cl_and_te": lambda r: _post(
        "/platform/v1/chat/completions",
        f"Content-Length: {r.randint(0, 9)}\r\nTransfer-Encoding: chunked\r\n".encode(),
        b"0\r\n\r\n",
    ),
    "te_obfuscated": lambda r: _post(
        "/platform/v1/embeddings",
        r.choice(
            [
                b"Transfer-Encoding: xchunked\r\n",
                b"Transfer-Encoding: chunked, identity\r\n",
                b"Transfer-Encoding: identity\r\n",
                b"Transfer-Encoding: chunk\r\n",
                b"Transfer-Encoding: \tchunked;q=1\r\n",
            ]
        ),
        b"0\r\n\r\n",
    ),
    "te_space_before_colon": lambda r: _post(
        "/platform/v1/embeddings",
        b"Transfer-Encoding" + b" " * r.randint(1, 3) + b": chunked\r\n",
        b"0\r\n\r\n",
    ),
    "te_twice": lambda r: _post(
        "/platform/v1/embeddings",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
    ),
    "content_length_twice": lambda r: _post(
        "/platform/v1/embeddings",
        f"Content-Length: {r.randint(1, 5)}\r\nContent-Length: 9\r\n".encode(),
        b"x" * 9,
    ),
    "content_length_not_a_number": lambda r: _post(
        "/platform/v1/embeddings",
        r.choice(
            [
                b"Content-Length: -1\r\n",
                b"Content-Length: +5\r\n",
                b"Content-Length: 5 5\r\n",
                b"Content-Length: 0x10\r\n",
                b"Content-Length: abc\r\n",
                b"Content-Length: 1e3\r\n",
            ]
        ),
        b"hello",
    ),
    "chunk_size_invalid": lambda r: _post(
        "/platform/v1/embeddings",
        b"Transfer-Encoding: chunked\r\n",
        r.choice(
            [
                b"zz\r\nab\r\n0\r\n\r\n",
                b"-1\r\nab\r\n0\r\n\r\n",
                b"ffffffffffffffffffff\r\nab\r\n",
                b"2\r\nabc\r\n0\r\n\r\n",
            ]
        ),
    ),
    "header_folding": lambda r: _get(
        "/platform/v1/models", b"OpenAI-Beta: a\r\n" + b" " * r.randint(1, 4) + b"b\r\n"
    ),
    "header_without_colon": lambda r: _get("/platform/v1/models", _word(r).encode() + b"\r\n"),
    "header_empty_name": lambda r: _get("/platform/v1/models", b": " + _word(r).encode() + b"\r\n"),
    "header_name_with_space": lambda r: _get(
        "/platform/v1/models", b"Open AI-" + _word(r).encode() + b": v\r\n"
    ),
    # CRLF and control characters
    "crlf_in_path": lambda r: _get(
        "/platform/v1/models" + r.choice(["%0d%0a", "%0D%0A", "%0a", "%0d"]) + "Set-Cookie:%20x=" + _word(r)
    ),
    "control_in_header": lambda r: _get(
        "/platform/v1/models",
        b"OpenAI-Beta: a" + bytes([r.choice([0, 1, 8, 11, 12, 13, 27, 127])]) + b"Injected: 1\r\n",
    ),
    "non_ascii_in_credential": lambda r: (
        f"GET /platform/v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-{_word(r)}".encode()
        + bytes([r.randint(0x80, 0xFF)])
        + b"\r\nConnection: close\r\n\r\n"
    ),
    # request line
    "bad_version": lambda r: (
        f"GET /platform/v1/models {r.choice(['HTTP/2.0', 'HTTP/3', 'HTTP/0.9', 'HTTPS/1.1', 'HTTP/1'])}"
        "\r\nHost: gw\r\n\r\n".encode()
    ),
    "missing_version": lambda r: b"GET /platform/v1/models\r\nHost: gw\r\n" + AUTH + b"\r\n",
    "bad_method_token": lambda r: _get("/x").replace(
        b"GET", r.choice([b"G@T", b"GE(T", b"G\x01T", b"GE T"]), 1
    ),
    "unknown_method": lambda r: _get("/platform/v1/models").replace(
        b"GET", r.choice([b"PROPFIND", b"TRACE", b"FOO", b"CONNECT"]), 1
    ),
    "absolute_uri": lambda r: _get(f"http://{_word(r)}.example/platform/v1/models"),
    "authority_form": lambda r: f"CONNECT {_word(r)}.example:443 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "asterisk_target": lambda r: b"OPTIONS * HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Connection: close\r\n\r\n",
    # traversal and encodings
    "dot_segments": lambda r: _get(
        "/platform/v1/" + "/".join(r.choice(["..", ".", _word(r)]) for _ in range(5)) + "/.."
    ),
    "encoded_dots": lambda r: _get(
        "/platform/v1/" + r.choice(["%2e%2e", "%2E%2E", ".%2e", "%2e."]) + "/" + _word(r)
    ),
    "encoded_slash_or_backslash": lambda r: _get(
        "/platform/v1/models" + r.choice(["%2f", "%2F", "%5c", "%5C", "\\"]) + _word(r)
    ),
    "double_encoding": lambda r: _get("/platform/v1/models/" + r.choice(["%252e%252e", "%252f", "%25"])),
    "nul_and_bad_escape": lambda r: _get(
        "/platform/v1/" + r.choice(["%00", "%0g", "%g1", "%%", "%z"]) + _word(r)
    ),
    "empty_segment": lambda r: _get("/platform/v1//" + _word(r)),
    "non_ascii_path": lambda r: (
        b"GET /platform/v1/" + bytes(r.randint(0x80, 0xFF) for _ in range(3)) + b" HTTP/1.1\r\n"
        b"Host: gw\r\n" + AUTH + b"Connection: close\r\n\r\n"
    ),
    "control_in_query": lambda r: (
        b"GET /platform/v1/models?a=" + bytes([r.randint(0x80, 0xFF)]) + b" HTTP/1.1\r\n"
        b"Host: gw\r\n" + AUTH + b"Connection: close\r\n\r\n"
    ),
    # sizes
    "oversized_header": lambda r: _get(
        "/platform/v1/models", b"OpenAI-Beta: " + b"a" * r.randint(70_000, 90_000) + b"\r\n"
    ),
    "too_many_headers": lambda r: _get(
        "/platform/v1/models", b"".join(b"X-H%d: v\r\n" % i for i in range(r.randint(7000, 9000)))
    ),
    "oversized_body": lambda r: _post(
        "/platform/v1/chat/completions", f"Content-Length: {r.randint(2_000_001, 2**40)}\r\n".encode(), b"{}"
    ),
    # bodies the gateway has to read (conversation create)
    "json_deep_nesting": lambda r: _conversation(r, b"[" * r.randint(65, 5000) + b"]" * 10),
    "json_huge_number": lambda r: _conversation(
        r, b'{"messages": [], "n": ' + b"9" * r.randint(101, 20000) + b"}"
    ),
    "json_nan_infinity": lambda r: _conversation(
        r, b'{"messages": [], "t": ' + r.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]) + b"}"
    ),
    "json_duplicate_keys": lambda r: _conversation(
        r, b'{"messages": [], "' + _word(r).encode() + b'": 1, "' + b'messages": []}'
    ),
    "json_not_utf8": lambda r: _conversation(r, b'{"messages": ["' + bytes([r.randint(0x80, 0xBF)]) + b'"]}'),
    "json_truncated": lambda r: _conversation(
        r, b'{"messages": [{"author": {"role": "us'[: r.randint(1, 30)]
    ),
}


def requests() -> Iterator[tuple[str, bytes]]:
    rng = random.Random(20261125)
    kinds = sorted(KINDS)
    for index in range(TOTAL):
        kind = kinds[index % len(kinds)]
        yield kind, KINDS[kind](rng)


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before everything was sent; read what the gateway said
        return read_all(sock, timeout=10)


def verdict(answer: bytes) -> str:
    """'<status>' for a JSON error in the gateway's shape, 'closed' for no answer, else what went wrong."""
    if not answer:
        return "closed"
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status not in ACCEPTABLE:
        return f"unexpected status {status}"
    if status == 405 or status == 404 and not body:
        return str(status)
    error = json.loads(body)["error"]
    return str(status) if {"message", "type", "code", "param"} <= set(error) else "bad error shape"


@pytest.mark.timeout(600)
def test_ten_thousand_malformed_requests(make_gateway: Callable[..., Gateway], sim: Simulator) -> None:
    assert len(KINDS) >= 25
    gw = make_gateway({"server": {"max_body_size": 2_000_000}})
    outcomes: Counter[tuple[str, str]] = Counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = pool.map(lambda item: (item[0], exchange(gw.port, item[1])), requests())
        for kind, answer in answers:
            outcomes[(kind, verdict(answer))] += 1
            assert API_KEY.encode() not in answer and ACCESS_TOKEN.encode() not in answer
    by_verdict = Counter(v for (_, v), n in outcomes.items() for _ in range(n))
    print(f"\n{TOTAL} malformed requests of {len(KINDS)} kinds: {dict(by_verdict)}")
    bad = {key: n for key, n in outcomes.items() if not (key[1].isdigit() or key[1] == "closed")}
    assert not bad, bad
    closed_kinds = {kind for (kind, v) in outcomes if v == "closed"}
    assert closed_kinds <= {"too_many_headers", "oversized_header", "oversized_body"}, closed_kinds
    assert sim.journal() == []  # nothing reached the upstream
    assert gw.process.poll() is None and gw.metrics()
    log = gw.log_text()
    assert "Traceback" not in log and '"level":"error"' not in log
