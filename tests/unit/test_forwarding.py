"""Path checks and header allowlists."""

from __future__ import annotations

import pytest

from tornadoproxy.errors import BadRequest
from tornadoproxy.relay.forwarding import (
    check_raw_path,
    forwarded_request_headers,
    is_event_stream,
    relayed_response_headers,
    upstream_url,
)


@pytest.mark.parametrize(
    "path",
    [
        "/platform/v1/models",
        "/platform/v1/models/gpt-4o",
        "/platform/v1/files/file-abc/content",
        "/chatgpt/conversation/6f1b-22aa",
        "/platform/v1/models/ft%3Agpt-4o%3Aorg",
        "/a/b.c/d..e/.f",
    ],
)
def test_sane_paths_pass(path: str) -> None:
    check_raw_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "/a/../b",
        "/a/..",
        "/a/./b",
        "/a/.",
        "//a",
        "/a//b",
        "/a/%2e%2e/b",
        "/a/%2E/b",
        "/a%2fb",
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "/a/%252e",
        "/a/%00",
        "/a/%4",
        "/a/%g0",
        "http://x/a",
        "x/a",
        "*",
        "/a b",
        "/a\tb",
        "/caf\u00e9",
        "/a\x7f",
    ],
)
def test_dangerous_paths_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        check_raw_path(path)
    with pytest.raises(BadRequest):  # refused again: only paths that passed are remembered
        check_raw_path(path)


def test_a_remembered_path_still_passes_and_a_long_one_is_checked_each_time() -> None:
    check_raw_path("/platform/v1/chat/completions")
    check_raw_path("/platform/v1/chat/completions")
    long = "/platform/v1/files/" + "a" * 300
    check_raw_path(long)
    with pytest.raises(BadRequest):
        check_raw_path(long + "/../x")


def test_upstream_url() -> None:
    assert upstream_url("https://api.openai.com", "/v1/models", "") == "https://api.openai.com/v1/models"
    assert upstream_url("http://h:1/base", "/v1/x", "a=1&b=%20") == "http://h:1/base/v1/x?a=1&b=%20"


def test_request_header_allowlist_keeps_order() -> None:
    headers = [
        ("Host", "evil"),
        ("OpenAI-Beta", "b"),
        ("Content-Type", "j"),
        ("Cookie", "c"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("Authorization", "Bearer k"),
        ("OAI-Device-Id", "d"),
        ("Accept-Encoding", "gzip"),
        ("Connection", "keep-alive"),
        ("Idempotency-Key", "i"),
    ]
    assert forwarded_request_headers(headers) == [
        ("OpenAI-Beta", "b"),
        ("Content-Type", "j"),
        ("Authorization", "Bearer k"),
        ("OAI-Device-Id", "d"),
        ("Idempotency-Key", "i"),
    ]


def test_response_header_allowlist() -> None:
    headers = [
        ("Content-Type", "a"),
        ("Set-Cookie", "x"),
        ("Transfer-Encoding", "chunked"),
        ("x-request-id", "r"),
        ("openai-version", "v"),
        ("x-ratelimit-reset-tokens", "1s"),
        ("Retry-After", "3"),
        ("Content-Length", "9"),
        ("Content-Encoding", "gzip"),
        ("Connection", "close"),
        ("Alt-Svc", "h3"),
    ]
    assert relayed_response_headers(headers) == [
        ("Content-Type", "a"),
        ("x-request-id", "r"),
        ("openai-version", "v"),
        ("x-ratelimit-reset-tokens", "1s"),
        ("Retry-After", "3"),
    ]


def test_event_stream_detection() -> None:
    assert is_event_stream([("Content-Type", "text/event-stream; charset=utf-8")])
    assert is_event_stream([("content-type", "TEXT/EVENT-STREAM")])
    assert not is_event_stream([("Content-Type", "application/json")])
    assert not is_event_stream([])
