"""One reader for the web answer stream, whichever framing it comes in, yielding text deltas.

Bytes go in as they arrive (`feed`), split anywhere: the SSE parser holds partial lines, so a
UTF-8 character or a CRLF cut across reads is decoded whole. Full-message events carry the whole
text so far; v1 deltas change documents (see delta.py). Either way the answer is the text of the
assistant messages meant for the user (author `assistant`, recipient `all`, text content), and a
delta is what lies past the length already sent for that message id: never string replacement, so
a repeated or reordered full text can neither repeat nor garble what the client has.
An event or document with a non-null `error` is a failure; `[DONE]` or `message_stream_complete`
ends the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from tornadoproxy.errors import Code, UpstreamError
from tornadoproxy.formats.sse import Event, SSEParser
from tornadoproxy.imitate.delta import DeltaDocuments

_TEXT_CONTENT = ("text", "multimodal_text")
_DELTA_KEYS = frozenset(("p", "o", "v", "c"))
_FINISH_REASONS: dict[str, Literal["stop", "length"]] = {"stop": "stop", "max_tokens": "length"}


class WebStreamFailure(UpstreamError):
    """The web stream failed: an in-stream error, no answer text, or a cut before the end."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message, kind=kind, code=Code.UPSTREAM_ERROR)


@dataclass(frozen=True, slots=True)
class AnswerEnd:
    """How the answer ended. `expected` is False when the finish reason had to be guessed
    (an unknown finish type, or an end without `end_turn`): worth a log line."""

    finish_reason: Literal["stop", "length"]
    upstream_finish: str | None
    expected: bool


class WebAnswerReader:
    """Feed the upstream body's bytes; get the new answer text; call `end()` when it is over."""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._documents = DeltaDocuments()
        self._sent: dict[str, int] = {}
        self._answer: dict[str, Any] | None = None  # the assistant message the text came from
        self.conversation_id: str | None = None
        self.message_id: str | None = None
        self.framing: Literal["full", "v1"] = "full"
        self.complete = False  # [DONE] or message_stream_complete seen
        self.shrunk = False  # an answer text got shorter than what was sent (logged, not undone)

    @property
    def skipped_operations(self) -> int:
        return self._documents.skipped

    @property
    def has_text(self) -> bool:
        return any(self._sent.values())

    def feed(self, chunk: bytes) -> list[str]:
        """The answer text that `chunk` completes, in order (maybe none); WebStreamFailure on an
        in-stream error. Bytes after the end of the answer are ignored."""
        pieces: list[str] = []
        for event in self._parser.feed(chunk):
            if self.complete:
                break
            pieces += self._event(event)
        return pieces

    def end(self) -> AnswerEnd:
        """After the upstream body ended: how the answer finished, or WebStreamFailure."""
        if not self.has_text:
            raise WebStreamFailure(
                "the ChatGPT upstream's answer ended with no assistant text", "empty_answer"
            )
        message = self._answer or {}
        if not self.complete and message.get("status") != "finished_successfully":
            raise WebStreamFailure(
                "the ChatGPT upstream's stream ended before the answer was complete", "cut"
            )
        metadata = message.get("metadata")
        details = metadata.get("finish_details") if isinstance(metadata, dict) else None
        kind = details.get("type") if isinstance(details, dict) else None
        upstream = kind if isinstance(kind, str) else None
        reason = _FINISH_REASONS.get(upstream or "", "stop")
        expected = upstream == "max_tokens" or (upstream == "stop" and message.get("end_turn") is True)
        return AnswerEnd(finish_reason=reason, upstream_finish=upstream, expected=expected)

    def _event(self, event: Event) -> list[str]:
        if event.is_done:
            self.complete = True
            return []
        if event.event == "delta_encoding":
            self.framing = "v1"
            return []
        try:
            value = json.loads(event.data)
        except ValueError:
            if event.event == "delta":
                raise WebStreamFailure(
                    "the ChatGPT upstream sent a delta that is not JSON", "protocol"
                ) from None
            return []  # keep-alives (`event: ping`, a timestamp) and other non-JSON events
        if not isinstance(value, dict):
            return []
        _raise_on_error(value)
        if isinstance(value.get("type"), str):
            self._typed(value)
            return []
        if event.event == "delta":
            return self._delta(value)
        if event.event != "message":
            return []  # named events (title_generation, server_ste_metadata, ...) carry no text
        if self.framing == "v1" and not _DELTA_KEYS.isdisjoint(value):
            return self._delta(value)  # a delta on a plain data line: tolerated
        if isinstance(value.get("message"), dict):
            self._note_conversation(value)
            return self._text_of(value["message"])
        return []

    def _typed(self, value: dict[str, Any]) -> None:
        self._note_conversation(value)
        if value["type"] == "message_stream_complete":
            self.complete = True

    def _delta(self, delta: dict[str, Any]) -> list[str]:
        key = self._documents.apply(delta)
        if key is None:
            return []
        document = self._documents.documents.get(key)
        if not isinstance(document, dict):
            return []
        _raise_on_error(document)
        self._note_conversation(document)
        message = document.get("message")
        return self._text_of(message) if isinstance(message, dict) else []

    def _note_conversation(self, value: dict[str, Any]) -> None:
        ident = value.get("conversation_id")
        if self.conversation_id is None and isinstance(ident, str) and ident:
            self.conversation_id = ident

    def _text_of(self, message: dict[str, Any]) -> list[str]:
        text = answer_text(message)
        if text is None:
            return []
        ident = message.get("id")
        ident = ident if isinstance(ident, str) else ""
        if self._answer is None or text:
            self._answer = message
        sent = self._sent.get(ident, 0)
        if len(text) < sent:
            self.shrunk = True
        if len(text) <= sent:
            return []
        self._sent[ident] = len(text)
        self.message_id = ident or self.message_id
        return [text[sent:]]


def answer_text(message: dict[str, Any]) -> str | None:
    """The text of an assistant message meant for the user; None for any other message."""
    author = message.get("author")
    if not isinstance(author, dict) or author.get("role") != "assistant":
        return None
    if message.get("recipient", "all") != "all":
        return None  # a tool call (code, browsing): not shown to the user
    content = message.get("content")
    if not isinstance(content, dict) or content.get("content_type") not in _TEXT_CONTENT:
        return None
    parts = content.get("parts")
    if not isinstance(parts, list):
        return ""
    texts = [part for part in parts if isinstance(part, str)]
    # One part (the usual case) joins to the same object: no copy of a growing answer per event.
    return "".join(texts)


def _raise_on_error(value: dict[str, Any]) -> None:
    error = value.get("error")
    if error is None:
        return
    if isinstance(error, dict):
        error = error.get("message", error.get("code", "an error"))
    text = str(error)
    shown = text if len(text) <= 200 else text[:200] + "..."
    raise WebStreamFailure(
        f"the ChatGPT upstream reported an error in the stream: {shown}", "in_stream_error"
    )
