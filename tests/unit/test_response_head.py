"""The relayed response head (web/response_head.py) against tornado's own `add_header` and
`set_status`, on many fields (hypothesis): the same headers in the same order, the same refusals."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado import httputil
from tornado.web import RequestHandler

from tornadoproxy.web import response_head
from tornadoproxy.web.response_head import add_relayed_headers, relayed_reason


def _tornado_add(headers: httputil.HTTPHeaders) -> Any:
    """RequestHandler.add_header on `headers` (the handler's `_headers`)."""

    def add_header(name: str, value: str) -> None:
        headers.add(name, RequestHandler._convert_header_value(cast(Any, None), value))

    return add_header


def _outcome(fields: list[tuple[str, str]], relayed: bool) -> tuple[list[tuple[str, str]], str]:
    headers = httputil.HTTPHeaders({"Content-Type": "text/html"})
    headers["Server"] = "x"
    add = _tornado_add(headers)
    try:
        if relayed:
            add_relayed_headers(headers, fields, add)
        else:
            for name, value in fields:
                add(name, value)
    except Exception as error:  # the refusal is part of the outcome
        return list(headers.get_all()), type(error).__name__
    return list(headers.get_all()), ""


NAMES = st.one_of(
    st.sampled_from(
        ["Content-Type", "content-type", "x-request-id", "X-Request-Id", "openai-model", "Set-Cookie"]
    ),
    st.text(alphabet="!#$%&'*+-.^_`|~09AZaz :()\t\x00\xe9", min_size=0, max_size=8),
)
VALUES = st.one_of(
    st.sampled_from(["application/json", "", "req_1", " padded", "padded ", "a\tb", "\tx", "caf\xe9", "a b"]),
    st.text(alphabet=" \t!~azAZ09:;\x00\x1f\x7f\x80\x85\xa0\xe9\xff\u0100\r\n", max_size=10),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=12))
def test_relayed_headers_are_added_as_tornado_adds_them(fields: list[tuple[str, str]]) -> None:
    assert _outcome(fields, relayed=True) == _outcome(fields, relayed=False)


def test_the_name_cache_is_bounded_and_keeps_no_refused_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response_head, "_names", {})
    monkeypatch.setattr(response_head, "MAX_NAMES", 2)
    fields = [("a", "1"), ("b c", "2"), ("D", "3"), ("e", "4")]
    assert _outcome(fields[:1] + fields[2:], relayed=True) == _outcome(fields[:1] + fields[2:], relayed=False)
    assert response_head._names == {"a": "A", "D": "D"}
    assert _outcome(fields, relayed=True)[1] == "HTTPInputError"
    assert "b c" not in response_head._names


@given(
    st.integers(min_value=100, max_value=599),
    st.sampled_from(["", "OK", "Not Found", "Weird <b>", "Client Closed Request"]),
)
def test_the_relayed_reason_gives_tornado_the_same_reason_phrase(status: int, reason: str) -> None:
    def set_status(reason_given: str | None) -> str:
        handler = cast(Any, type("H", (), {})())
        RequestHandler.set_status(handler, status, reason_given)
        return str(handler._reason)

    assert set_status(relayed_reason(status, reason)) == set_status(reason or None)
