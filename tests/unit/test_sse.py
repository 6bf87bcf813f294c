"""SSE: event boundaries at every split point, and WHATWG parsing of every framing."""

from __future__ import annotations

import pytest

from tornadoproxy.formats.sse import (
    Event,
    EventSplitter,
    EventTooLarge,
    SSEParser,
    encode_comment,
    encode_event,
)

STREAMS = [
    "data: a\n\ndata: b\n\n",
    "data: a\r\n\r\ndata: b\r\n\r\n",
    "data: a\r\rdata: b\r\r",
    ': ping\n\nevent: delta\ndata: {"v":1}\n\nid: 3\ndata: x\ndata: y\n\ndata: [DONE]\n\n',
    "data: a\r\n\ndata: b\n\r\n",
    'event: ping\r\ndata: 1700000000\r\n\r\ndata: {"message":{}}\r\n\r\n',
]


def split_all(stream: bytes, cut: int) -> list[bytes]:
    splitter = EventSplitter(1 << 20)
    out = [splitter.feed(stream[:cut]), splitter.feed(stream[cut:])]
    return [part for part in out if part] + ([splitter.pending] if splitter.pending else [])


@pytest.mark.parametrize("text", STREAMS)
def test_splitter_is_byte_exact_at_every_split_point(text: str) -> None:
    stream = text.encode()
    for cut in range(len(stream) + 1):
        parts = split_all(stream, cut)
        assert b"".join(parts) == stream, cut


@pytest.mark.parametrize("text", STREAMS)
def test_splitter_releases_only_whole_events(text: str) -> None:
    stream = text.encode()
    whole = [event for event in SSEParser().feed(stream)]
    for cut in range(len(stream) + 1):
        splitter = EventSplitter(1 << 20)
        released = splitter.feed(stream[:cut])
        # whatever was released parses to complete events only, and nothing is lost
        parser = SSEParser()
        events = parser.feed(released)
        assert events == whole[: len(events)]
        assert parser.feed(b"\n\n") == [] or released.endswith((b"\n", b"\r"))


def test_splitter_waits_for_a_crlf_split_in_the_middle() -> None:
    splitter = EventSplitter(1 << 20)
    assert splitter.feed(b"data: a\r\n\r") == b""
    assert splitter.feed(b"\n") == b"data: a\r\n\r\n"


def test_event_too_large() -> None:
    splitter = EventSplitter(16)
    with pytest.raises(EventTooLarge):
        splitter.feed(b"data: " + b"x" * 40)


def test_parser_fields() -> None:
    parser = SSEParser()
    events = parser.feed(b": hello\nevent: delta\nid: 9\nretry: 100\ndata: one\ndata:two\n\ndata\n\n")
    assert events == [
        Event(data="one\ntwo", event="delta", id="9", retry=100),
        Event(data="", event="message", id="9"),
    ]  # the last event ID persists
    assert parser.comments == ["hello"]


def test_parser_done_and_json() -> None:
    events = SSEParser().feed(b'data: {"a":1}\n\ndata: [DONE]\n\n')
    assert events[0].json() == {"a": 1}
    assert events[1].is_done


def test_encoders() -> None:
    assert encode_event('{"a":1}', event="error") == b'event: error\ndata: {"a":1}\n\n'
    assert encode_event("a\nb") == b"data: a\ndata: b\n\n"
    assert encode_comment("keep\nalive") == b": keep alive\n\n"
