"""Secrets are masked in log records; gateway errors have one JSON shape."""

from __future__ import annotations

import json
import logging

from tests.secrets_used import API_KEY, OPAQUE_TOKEN, PROXY_PASSWORD, SESSION_KEY
from tornadoproxy.errors import BadRequest, GatewayBusy, MissingAuthorization, upstream_timeout
from tornadoproxy.redact import RedactingFilter, Secret, scrub


def test_scrub_patterns() -> None:
    text = (
        f"Authorization: Bearer {API_KEY} key={SESSION_KEY} jwt=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig "
        'body {"password": "a&b\\"c"} url socks5://u:p@127.0.0.1:1 form password=x%26y&user=z'
    )
    clean = scrub(text)
    for secret in (API_KEY, SESSION_KEY, "eyJhbGciOiJIUzI1NiJ9", "a&b", "x%26y", "u:p@"):
        assert secret not in clean
    assert "user=z" in clean


def test_filter_scrubs_message_args_and_traceback() -> None:
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "token %s and %s", (API_KEY, PROXY_PASSWORD), None
    )
    try:
        raise ValueError(f"boom Bearer {API_KEY}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter(frozenset({PROXY_PASSWORD})).filter(record)
    assert API_KEY not in record.getMessage() and PROXY_PASSWORD not in record.getMessage()
    assert record.exc_text is not None and API_KEY not in record.exc_text


def test_secret_repr_is_masked() -> None:
    secret = Secret(PROXY_PASSWORD)
    assert PROXY_PASSWORD not in repr(secret) and PROXY_PASSWORD not in str(secret)
    assert secret.reveal() == PROXY_PASSWORD


def test_error_shape() -> None:
    body = json.loads(MissingAuthorization("need a key").to_json())
    assert body == {
        "error": {
            "message": "need a key",
            "type": "invalid_request_error",
            "code": "missing_authorization",
            "param": None,
        },
        "errorMessage": "need a key",
    }
    busy = GatewayBusy("full", retry_after=2)
    assert busy.status == 503 and busy.headers() == [("Retry-After", "2")]
    timeout = upstream_timeout("slow")
    assert timeout.status == 504 and timeout.code == "upstream_timeout" and timeout.kind == "timeout"


def _tornado_record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("tornado.general", logging.INFO, __file__, 1, msg, args, None)


def test_tornado_messages_keep_their_wording_and_lose_every_value() -> None:
    reasons = {
        f"Invalid header value '{OPAQUE_TOKEN}\\x01'": "Invalid header value",
        f"Invalid header name '{OPAQUE_TOKEN}\\x01'": "Invalid header name",
        f"Multiple host headers not allowed: 'x,{OPAQUE_TOKEN}'": "Multiple host headers not allowed",
        f"Only integer Content-Length is allowed: {OPAQUE_TOKEN}": "Only integer Content-Length is allowed",
        "invalid chunk size": "invalid chunk size",
    }
    for reason, kept in reasons.items():
        record = _tornado_record("Malformed HTTP message from %s: %s", "127.0.0.1", ValueError(reason))
        RedactingFilter().filter(record)
        assert record.getMessage() == f"Malformed HTTP message from 127.0.0.1: {kept}"
    record = _tornado_record("Uncaught exception\n%s", f"HTTPServerRequest(host='{OPAQUE_TOKEN}')")
    RedactingFilter().filter(record)
    assert OPAQUE_TOKEN not in record.getMessage() and "host=" in record.getMessage()


def test_other_loggers_keep_quoted_text() -> None:
    record = logging.LogRecord("tornadoproxy.x", logging.INFO, __file__, 1, "the 'plain' step", None, None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "the 'plain' step"


def test_error_names_the_field_at_fault() -> None:
    error = BadRequest("messages[0].role must be a string", param="messages[0].role")
    assert json.loads(error.to_json())["error"]["param"] == "messages[0].role"
    assert BadRequest("other").param is None  # the class default is not shared state
