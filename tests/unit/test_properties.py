"""Property-based tests (hypothesis) for the SSE framing, raw path checks and config loading."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPHeaders, HTTPInputError

from tornadoproxy.config.options import describe
from tornadoproxy.config.schema import Config, ConfigError, load_config
from tornadoproxy.errors import BadRequest
from tornadoproxy.formats.sse import EventSplitter, EventTooLarge, SSEParser
from tornadoproxy.relay.forwarding import check_raw_path
from tornadoproxy.web.framing import StrictHTTP1Connection
from tornadoproxy.web.listener import _HEADER_END

SSE_ALPHABET = st.sampled_from(
    [
        b"data:",
        b"data: x",
        b"event: e",
        b"id: 1",
        b": c",
        b"\n",
        b"\r",
        b"\r\n",
        b" ",
        b"[DONE]",
        b"\xff",
        b"\0",
        b"x",
    ]
)
sse_bytes = st.lists(SSE_ALPHABET, max_size=40).map(b"".join)


@given(sse_bytes, st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_splitter_loses_nothing_and_releases_whole_events(data: bytes, cuts: list[int]) -> None:
    splitter = EventSplitter(1 << 20)
    points = sorted({min(c, len(data)) for c in cuts})
    released = b""
    parser = SSEParser()
    chunked_events = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        out = splitter.feed(data[start:end])
        released += out
        chunked_events += parser.feed(out)
    assert released + splitter.pending == data
    # whatever was released so far ends on an event boundary: the parser holds no partial event
    assert parser.feed(b"") == []
    whole = SSEParser().feed(data)
    assert chunked_events == whole[: len(chunked_events)]


@given(st.binary(min_size=0, max_size=200))
def test_splitter_bounds_events(data: bytes) -> None:
    splitter = EventSplitter(32)
    try:
        splitter.feed(data)
    except EventTooLarge:
        return
    assert len(splitter.pending) <= 32


path_text = st.lists(
    st.sampled_from(
        [
            "/",
            "a",
            "v1",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "\\",
            "%25",
            "%00",
            "%0a",
            "%41",
            "%",
            "%zz",
            "models",
            "-",
            "_",
            "~",
            ":",
            "é",
            " ",
            "\t",
            "?",
            "#",
        ]
    ),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


@given(path_text)
def test_a_path_that_passes_cannot_escape_its_prefix(path: str) -> None:
    try:
        check_raw_path(path)
    except BadRequest:
        return
    decoded = unquote(path)
    assert decoded.startswith("/")
    segments = decoded.split("/")[1:]
    assert ".." not in segments and "." not in segments and "" not in segments[:-1]
    assert "\\" not in decoded and not re.search(r"[\x00-\x1f\x7f]", decoded)
    assert unquote(decoded) == decoded or "%" in decoded  # no second decoding turns it into something else


KEYS = sorted({path.split(".")[0] for path, _, _ in describe(Config)} | {"bogus"})
LEAVES = sorted({path.split(".")[1] for path, _, _ in describe(Config) if "." in path} | {"unknown_leaf"})
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
documents = st.dictionaries(
    st.sampled_from(KEYS), st.dictionaries(st.sampled_from(LEAVES), values, max_size=4) | values, max_size=4
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(documents)
def test_config_loading_either_validates_or_names_the_key(tmp_path: Path, document: dict) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_config(str(path), {})
    except ConfigError as error:
        segment = r"([A-Za-z0-9_-]+|'[^']*'|\"[^\"]*\")"
        key_path = rf"{segment}(\.{segment}|\[\d+\])*"
        assert re.match(rf"^(\(top level\)|{key_path}): ", str(error)), str(error)
    # any other exception fails the test


@pytest.mark.parametrize("text", ["server: [", "- a\n- b", "server:\n  port: 1e3"])
def test_config_odd_documents(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(str(path), {})


def _header_block_end(data: bytes) -> int | None:
    """Where a header block ends, by its definition: the first line end after the first byte that
    is not CR or LF (leading empty lines are skipped) followed by an empty line (CRLF or LF)."""
    start = len(data) - len(data.lstrip(b"\r\n"))
    for i in range(start + 1, len(data)):
        if data[i : i + 1] == b"\n":
            if data[i + 1 : i + 2] == b"\n":
                return i + 2
            if data[i + 1 : i + 3] == b"\r\n":
                return i + 3
    return None


HEADER_ALPHABET = st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b":", b" ", b"Host: x", b"\xff"])


@given(st.lists(HEADER_ALPHABET, max_size=30).map(b"".join))
def test_the_listener_finds_a_header_block_end_where_it_is(data: bytes) -> None:
    found = re.compile(_HEADER_END).search(bytearray(data))
    assert (found.end() if found else None) == _header_block_end(data)


FIELD_LINES = st.lists(
    st.builds(
        lambda name, colon, value: name + colon + value,
        st.sampled_from([b"Host", b"x-a", b"X-A", b"", b" Host", b"\tx", b"Ho st", b"\x01"]),
        st.sampled_from([b":", b": ", b":\t", b" :", b""]),
        st.lists(st.sampled_from([b"v", b" ", b"\t", b":", b"\xff", b"\x01", b"\r"]), max_size=5).map(
            b"".join
        ),
    ),
    max_size=5,
).map(b"\r\n".join)
HEADER_BLOCKS = st.builds(
    lambda start, fields: start + b"\r\n" + fields + b"\r\n\r\n",
    st.sampled_from([b"GET / HTTP/1.1", b"GET / HTTP/1.1\r", b"\r\nPOST /x HTTP/1.0", b""]),
    FIELD_LINES,
)


def _parsed(parse: Callable[[bytes], tuple[str, HTTPHeaders]], data: bytes) -> object:
    try:
        start_line, headers = parse(data)
    except HTTPInputError:
        return "refused"
    return start_line, list(headers.get_all())


@given(HEADER_BLOCKS)
def test_the_header_block_parses_as_tornado_parses_it(data: bytes) -> None:
    connection = StrictHTTP1Connection.__new__(StrictHTTP1Connection)  # parsing needs no stream
    assert _parsed(connection._parse_headers, data) == _parsed(
        lambda block: HTTP1Connection._parse_headers(connection, block), data
    )
