"""The OpenAI side of an answer: `chat.completion.chunk` events, the `chat.completion` object,
the in-stream error, and the model list.

A stream is one id (`chatcmpl-...`) and one `created` for the whole answer: the role chunk first,
content chunks, a chunk with an empty delta and the finish reason, with `include_usage` a last
chunk with `usage` and no choices, then `data: [DONE]`. Once a stream has started, a failure is one
`data: {"error": {...}}` event and `data: [DONE]`: OpenAI clients read only data lines.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tornadoproxy.errors import GatewayError
from tornadoproxy.formats.sse import encode_event

DONE = encode_event("[DONE]")
# The `owned_by` of listed models: they are served by ChatGPT accounts behind this gateway.
OWNER = "chatgpt-web"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(21)


def _event(payload: dict[str, Any]) -> bytes:
    return encode_event(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))


class ChunkStream:
    """The events of one streamed answer, all with the same id, created time and model."""

    def __init__(
        self, model: str, *, include_usage: bool, ident: str | None = None, created: int | None = None
    ) -> None:
        self.id = ident or completion_id()
        self.created = int(time.time()) if created is None else created
        self.model = model
        self.include_usage = include_usage
        self._content_template: tuple[bytes, bytes] | None = None

    def _chunk(self, delta: dict[str, str], finish_reason: str | None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            payload["usage"] = None  # as OpenAI: every chunk but the last says "no usage here"
        return _event(payload)

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def content(self, text: str) -> bytes:
        """A content chunk: the hot path of a stream, so the bytes around the text are made once
        (the same bytes `_chunk` makes; tests/unit/test_imitate_output.py compares them)."""
        template = self._content_template
        if template is None:
            marker = "\u0000"
            # The last occurrence: the content comes after the model, which the client names.
            head, tail = self._chunk({"content": marker}, None).rsplit(json.dumps(marker).encode(), 1)
            template = self._content_template = (head, tail)
        return template[0] + json.dumps(text, ensure_ascii=False).encode() + template[1]

    def finish(self, reason: str, usage: Usage | None = None) -> bytes:
        """The closing events: the finish chunk, the usage chunk when asked for, `[DONE]`."""
        out = self._chunk({}, reason)
        if self.include_usage and usage is not None:
            out += _event(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": usage.to_dict(),
                }
            )
        return out + DONE


def stream_error(error: GatewayError) -> bytes:
    """What ends a started stream on a failure: the error in the OpenAI shape, then `[DONE]`."""
    return _event(error.to_dict()) + DONE


def completion(
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    *,
    ident: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """The `chat.completion` object of a non-stream answer (with `usage`, always)."""
    return {
        "id": ident or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage.to_dict(),
    }


def model_object(name: str, created: int = 0) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def model_list(names: Iterable[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(name) for name in names]}
