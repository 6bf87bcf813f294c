"""Requests an attacker would send: header values tornado's parser refuses (and would quote in its log),
duplicate credentials, framing that RFC 9112 calls faulty or allows, path and query tricks, CORS."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import Gateway, Simulator, raw_exchange, wait_for
from tests.secrets_used import API_KEY, CLIENT_KEY, INVALID_API_KEY, OPAQUE_TOKEN
from tornadoproxy.access import key_digest

MODELS = "GET /platform/v1/models HTTP/1.1\r\nHost: gw\r\n"


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
