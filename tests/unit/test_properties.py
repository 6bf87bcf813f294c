"""Property-based tests (hypothesis) for the SSE framing, raw path checks and config loading."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tornadoproxy.config.options import describe
from tornadoproxy.config.schema import Config, ConfigError, load_config
from tornadoproxy.errors import BadRequest
from tornadoproxy.formats.sse import EventSplitter, EventTooLarge, SSEParser
from tornadoproxy.relay.forwarding import check_raw_path

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
