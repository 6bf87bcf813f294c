"""Server-Sent Events, incrementally: event boundaries for the relay, full parsing for inspection.

The relay never re-encodes upstream events (framing is kept byte for byte, docs/gateway.md):
`EventSplitter` only finds where complete events end, so that whole events are written at once and
keep-alives or a final error event are never inserted inside one. `SSEParser` follows the WHATWG
parsing rules (LF, CRLF or CR line ends, comments, multi-line data) for code that must read events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# A blank line ends an event: a line terminator directly followed by another one. A CR at the very
# end of the input may be the first half of a CRLF, so it never counts as a terminator yet.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?=[^\n])|\n)")
_LINE_END = re.compile(rb"\r\n|\r|\n")


class EventTooLarge(Exception):
    """An upstream event grew past the configured maximum without ending."""


class EventSplitter:
    """Cuts a byte stream after its last complete event; holds the incomplete rest."""

    __slots__ = ("_pending", "_max_event_size")

    def __init__(self, max_event_size: int) -> None:
        self._pending = b""
        self._max_event_size = max_event_size

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not ended yet."""
        return self._pending

    def feed(self, chunk: bytes) -> bytes:
        """Add `chunk`; return every byte up to and including the last complete event's blank line."""
        data = self._pending + chunk if self._pending else chunk
        end = _last_event_end(data)
        if end == 0:
            self._pending = data
            if len(data) > self._max_event_size:
                raise EventTooLarge(f"sent an event larger than {self._max_event_size} bytes")
            return b""
        self._pending = data[end:]
        if len(self._pending) > self._max_event_size:
            raise EventTooLarge(f"sent an event larger than {self._max_event_size} bytes")
        return data[:end]


def _last_event_end(data: bytes) -> int:
    """Offset just after the last blank line in `data`, or 0 when it holds none."""
    # Fast path: the common framing is LF only; search backwards for it first.
    if b"\r" not in data:
        lf = data.rfind(b"\n\n")
        return lf + 2 if lf != -1 else 0
    end = 0
    for match in _EVENT_END.finditer(data):
        end = match.end()
    return end


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event. `event` is "message" when the stream named none."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"

    def json(self) -> object:
        return json.loads(self.data)


class SSEParser:
    """Incremental WHATWG event-stream parser: `feed(bytes)` returns the events completed so far."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False
        self.comments: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events: list[Event] = []
        position = 0
        for match in _LINE_END.finditer(self._buffer):
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break  # maybe half of a CRLF: wait for the next byte
            line = self._buffer[position : match.start()].decode("utf-8", "replace")
            position = match.end()
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._buffer = self._buffer[position:]
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._has_fields = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if not self._has_fields:
            return None
        event = None
        if self._data:
            event = Event(
                data="\n".join(self._data), event=self._event or "message", id=self._id, retry=self._retry
            )
        self._data, self._event, self._retry, self._has_fields = [], "", None, False
        return event


def encode_event(data: str, event: str | None = None) -> bytes:
    """One event in LF framing; each line of `data` becomes its own `data:` field."""
    lines = [f"event: {event}"] if event else []
    lines.extend("data: " + part for part in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def encode_comment(text: str) -> bytes:
    return (": " + text.replace("\n", " ").replace("\r", " ") + "\n\n").encode()
