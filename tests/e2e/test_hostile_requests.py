"""Requests an attacker would send: header values tornado's parser refuses (and would quote in its log),
duplicate credentials, framing that RFC 9112 calls faulty or allows, path and query tricks, CORS."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable

from tests.harness import Gateway, Simulator, raw_exchange, read_all, request, wait_for
from tests.secrets_used import API_KEY, CLIENT_KEY, INVALID_API_KEY, OPAQUE_TOKEN
from tornadoproxy.web.access import key_digest

MODELS = "GET /platform/v1/models HTTP/1.1\r\nHost: gw\r\n"
EMBEDDINGS = "/platform/v1/embeddings"
BEARER = f"Authorization: Bearer {API_KEY}\r\n"


def test_header_values_refused_by_the_parser_never_reach_the_log(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway(
        {"logging": {"level": "DEBUG"}, "access": {"client_keys": [key_digest(CLIENT_KEY)]}}, ready=False
    )
    hostile = [
        f"X-Gateway-Key: {CLIENT_KEY}\x01\r\n",  # a control character after a valid key
        f"Authorization: {OPAQUE_TOKEN}\x7f\r\n",
        f"Authorization: {OPAQUE_TOKEN}\rX\r\n",  # a bare CR
        f"Host: {OPAQUE_TOKEN}\r\n",  # a second Host header
        f"{OPAQUE_TOKEN}\x01: value\r\n",  # in a header name
        f"Content-Length: {OPAQUE_TOKEN}\r\n",
    ]
    for line in hostile:
        answer = raw_exchange(gw.port, (MODELS + line + "\r\n").encode("latin-1"))
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 401 ")), answer
    wait_for(
        lambda: gw.log_text().count("Malformed HTTP message from 127.0.0.1: ") >= len(hostile),
        what="tornado's line for each refused message",
    )
    text = gw.log_text()
    assert CLIENT_KEY not in text and OPAQUE_TOKEN not in text
    for reason in ("Invalid header value", "Multiple host headers not allowed", "Invalid header name"):
        assert f"Malformed HTTP message from 127.0.0.1: {reason}" in text


def test_only_one_bearer_credential_goes_upstream(gateway: Gateway, sim: Simulator) -> None:
    refused = {
        f"Authorization: Bearer {API_KEY}\r\nAuthorization: Bearer {INVALID_API_KEY}\r\n": 400,
        f"Authorization: Bearer {API_KEY}, Bearer {INVALID_API_KEY}\r\n": 400,
        "Authorization: Basic dXNlcjpwYXNz\r\n": 400,
        "Authorization: Bearer\r\n": 401,
    }
    for headers, status in refused.items():
        answer = raw_exchange(gateway.port, (MODELS + headers + "Connection: close\r\n\r\n").encode())
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (headers, answer)
        assert API_KEY.encode() not in answer
    assert sim.journal("platform") == []
    answer = raw_exchange(
        gateway.port, (MODELS + f"Authorization: {API_KEY}\r\nConnection: close\r\n\r\n").encode()
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    (entry,) = sim.journal("platform")
    sent = [value for name, value in entry["headers"] if name.lower() == "authorization"]
    assert sent == [f"Bearer {API_KEY}"]  # the bare key, with the one prefix


def _talk(port: int, data: bytes) -> bytes:
    """Send `data` on one connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return read_all(sock, timeout=10)


def test_http_1_0_with_transfer_encoding_is_faulty_framing(gateway: Gateway, sim: Simulator) -> None:
    answer = _talk(
        gateway.port,
        f"POST {EMBEDDINGS} HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n{BEARER}"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        "GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),  # pipelined behind it
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"Content-Length: ") == 1  # one answer
    assert b'"status": "ok"' not in answer  # the pipelined request was never read
    assert sim.journal() == []


def test_a_bare_lf_in_the_header_block_is_refused(gateway: Gateway, sim: Simulator) -> None:
    for block in (
        f"GET /platform/v1/models HTTP/1.1\r\nHost: gw\r\n{BEARER}OpenAI-Organization: a\nX-Injected: 1\r\n",
        "GET /platform/v1/models HTTP/1.1\nHost: gw\n" + BEARER.replace("\r\n", "\n"),
    ):
        answer = _talk(gateway.port, (block + "Connection: close\r\n\r\n").encode())
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"code":"bad_request"' in answer
    assert sim.journal() == []


def test_chunk_extensions_trailers_and_leading_empty_lines_are_accepted(
    gateway: Gateway, sim: Simulator
) -> None:
    body = b'{"model": "text-embedding-3-small", "input": "hello"}'
    chunked = b'%x;name=value;other\r\n%s\r\n%x ; q="a;b"\r\n%s\r\n0;last\r\nX-Checksum: 1\r\n\r\n' % (
        20,
        body[:20],
        len(body) - 20,
        body[20:],
    )
    head = f"POST {EMBEDDINGS} HTTP/1.1\r\nHost: gw\r\n{BEARER}Content-Type: application/json\r\n"
    answer = _talk(
        gateway.port, (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + chunked
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    (entry,) = sim.journal("platform")
    assert base64.b64decode(entry["body_b64"]) == body
    # Empty lines before a request line are ignored, after a body as on a fresh connection.
    first = "POST /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nab\r\n\r\n"
    second = "\r\n\n\r\nGET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    answer = _talk(gateway.port, (first + second).encode())
    assert answer.count(b"HTTP/1.1 405 ") == 1 and answer.count(b"HTTP/1.1 200 ") == 1


def test_paths_that_a_decoder_could_read_as_dot_segments_are_refused(
    gateway: Gateway, sim: Simulator
) -> None:
    tricks = [
        "/platform/v1/..;/v1/models",  # a Java server drops ";..." and sees ".."
        "/platform/v1/.../models",
        "/platform/v1/%c0%ae%c0%ae/models",  # overlong UTF-8 for ".."
        "/platform/v1/%ef%bc%8e%ef%bc%8e/models",  # fullwidth ".." (NFKC)
        "/platform/v1/models%ef%bc%8fx",  # fullwidth "/"
        "/platform/v1/models?a=%00",  # an encoded NUL in the query
    ]
    for path in tricks:
        answer = _talk(
            gateway.port, f"GET {path} HTTP/1.1\r\nHost: gw\r\n{BEARER}Connection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 400 ") and b'"code":"bad_request"' in answer, path
    assert sim.journal() == []
    ordinary = _talk(
        gateway.port,
        f"GET /platform/v1/models?q=a%0Ab HTTP/1.1\r\nHost: gw\r\n{BEARER}Connection: close\r\n\r\n".encode(),
    )
    assert ordinary.startswith(b"HTTP/1.1 200 ")  # other escapes in a query are the upstream's


def test_a_cors_preflight_needs_no_client_key_and_echoes_only_header_names(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway(
        {
            "access": {"client_keys": [key_digest(CLIENT_KEY)]},
            "server": {"cors_origins": ["https://app.example"]},
            "readiness": {"enabled": False},
        },
        ready=False,
    )
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, x-gateway-key, x-stainless-os, bad header, <b>",
    }
    answer = request("OPTIONS", gw.url + "/platform/v1/chat/completions", headers=preflight)
    assert answer.status == 204  # a browser's preflight never carries the key
    assert answer.header("Access-Control-Allow-Origin") == "https://app.example"
    assert answer.header("Access-Control-Allow-Headers") == "authorization, x-gateway-key, x-stainless-os"
    assert answer.header("Vary") == "Origin, Access-Control-Request-Headers"
    # The real request (and an OPTIONS that is no preflight) still needs the key.
    assert request("OPTIONS", gw.url + "/platform/v1/models").status == 401
    real = request(
        "POST", gw.url + "/platform/v1/chat/completions", headers={"Origin": "https://app.example"}
    )
    assert real.status == 401 and real.json()["error"]["code"] == "gateway_key_required"
    assert sim.journal() == []
