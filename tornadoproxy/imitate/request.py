"""Reading an OpenAI chat completion request: what it asks for, or a 400 naming the field at fault.

Only what the web backend can honour is read: `model`, `messages` (roles system, developer (sent as
system), user and assistant; content a string or a list of text parts), `stream`, `stream_options`.
`n` must be 1 when given (one web answer is one choice). Every other field in IGNORED_FIELDS, and
any field OpenAI adds later, is accepted and ignored. Nothing here goes upstream: a request refused
here costs no sentinel call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tornadoproxy.errors import BadRequest
from tornadoproxy.formats.bodies import parse_json

# OpenAI fields the web backend has no use for: accepted, never forwarded (the README lists them).
IGNORED_FIELDS = (
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
)
# OpenAI role -> web author role. `developer` is OpenAI's newer name for `system`.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Roles OpenAI knows that need function calling, which the web conversation does not offer.
_TOOL_ROLES = ("tool", "function")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message for the web: its author role and its text parts (at least one)."""

    role: str
    parts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    stream: bool
    include_usage: bool


def read_chat_request(raw: bytes) -> ChatRequest:
    """Parse and validate the body of `POST /imitate/v1/chat/completions` (strict JSON)."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not _is_string(model) or not model:
        raise BadRequest("you must provide a model name (a non-empty string)", param="model")
    stream = _optional_bool(body, "stream")
    include_usage = _include_usage(body.get("stream_options"), stream)
    n = body.get("n")
    if n is not None and not (_is_number(n) and float(n) == 1):
        raise BadRequest("n must be 1: a ChatGPT web answer is one choice", param="n")
    return ChatRequest(
        model=model,
        messages=_messages(body.get("messages")),
        stream=stream,
        include_usage=include_usage,
    )


def _is_string(value: object) -> bool:
    # parse_json keeps numbers as a str subclass (their source text); only a real JSON string counts.
    return type(value) is str


def _is_number(value: object) -> bool:
    return isinstance(value, str) and not _is_string(value)


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be a boolean", param=name)
    return value


def _include_usage(options: object, stream: bool) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", param="stream_options")
    if not stream:
        # As OpenAI answers: the usage chunk only exists in a stream.
        raise BadRequest("stream_options is only allowed when stream is true", param="stream_options")
    return _optional_bool(options, "include_usage")


def _messages(value: object) -> tuple[ChatMessage, ...]:
    if value is None:
        raise BadRequest("messages is required", param="messages")
    if not isinstance(value, list):
        raise BadRequest("messages must be a list", param="messages")
    if not value:
        raise BadRequest("messages must not be empty", param="messages")
    return tuple(_message(item, f"messages[{index}]") for index, item in enumerate(value))


def _message(value: object, where: str) -> ChatMessage:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = value.get("role")
    if role is None:
        raise BadRequest(f"{where} has no role", param=f"{where}.role")
    if not _is_string(role):
        raise BadRequest(f"{where}.role must be a string", param=f"{where}.role")
    if role in _TOOL_ROLES:
        raise BadRequest(
            f"{where}.role '{role}' needs function calling, which ChatGPT web accounts do not offer",
            param=f"{where}.role",
        )
    if role not in ROLES:
        raise BadRequest(f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role")
    return ChatMessage(role=ROLES[role], parts=_parts(value.get("content"), f"{where}.content"))


def _parts(content: object, where: str) -> tuple[str, ...]:
    if _is_string(content):
        return (str(content),)
    if not isinstance(content, list):
        raise BadRequest(f"{where} must be a string or a list of text parts", param=where)
    if not content:
        raise BadRequest(f"{where} must not be an empty list", param=where)
    parts = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        if not isinstance(part, dict) or not _is_string(part.get("type")):
            raise BadRequest(f"{at} must be an object with a type", param=at)
        if part["type"] != "text":
            kind = part["type"] if len(part["type"]) <= 40 else part["type"][:40] + "..."
            raise BadRequest(
                f"{at} is a '{kind}' part; only text parts can be sent to a ChatGPT web account",
                param=f"{at}.type",
            )
        if not _is_string(part.get("text")):
            raise BadRequest(f"{at}.text must be a string", param=f"{at}.text")
        parts.append(part["text"])
    return tuple(parts)
