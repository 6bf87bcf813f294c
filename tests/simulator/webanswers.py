"""Web answer streams as the ChatGPT backend sends them, in both framings (docs/upstream-chatgpt.md,
"Streaming" and "The v1 delta framing"): the simulator plays them, unit tests feed them to readers.

`full_message_events` is the 2023 framing: each event carries the whole text so far.
`v1_events` is the 2024+ framing: documents installed by `c` (hidden system message, user echo,
assistant), text appended with sticky `p`/`o`, a final patch batch, typed events, `[DONE]`.
Each `*_plan` returns (piece index or None, SSE text) per event, so the simulator can hold a gate
before the event that carries a given piece; `*_events` return the texts alone.
"""

from __future__ import annotations

import json
import time
from typing import Any


def sse(data: Any, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def message(
    ident: str,
    role: str,
    text: str,
    *,
    done: bool = False,
    finish: str = "stop",
) -> dict[str, Any]:
    return {
        "id": ident,
        "author": {"role": role, "name": None, "metadata": {}},
        "create_time": time.time(),
        "content": {"content_type": "text", "parts": [text]},
        "status": "finished_successfully" if done else "in_progress",
        "end_turn": (finish == "stop") if done else None,
        "weight": 1.0,
        "metadata": {"finish_details": {"type": finish}, "is_complete": True} if done else {},
        "recipient": "all",
    }


Plan = list[tuple[int | None, str]]


def full_message_events(conversation_id: str, answer_id: str, pieces: list[str], **kw: Any) -> list[str]:
    return [text for _, text in full_message_plan(conversation_id, answer_id, pieces, **kw)]


def v1_events(
    conversation_id: str, answer_id: str, user_message: dict[str, Any], pieces: list[str], **kw: Any
) -> list[str]:
    return [text for _, text in v1_plan(conversation_id, answer_id, user_message, pieces, **kw)]


_ERROR = "Something went wrong while generating the response."


def full_message_plan(
    conversation_id: str,
    answer_id: str,
    pieces: list[str],
    *,
    finish: str = "stop",
    error_at: int | None = None,
) -> Plan:
    """A ping, one event per piece with the whole text so far, then `[DONE]`; with `error_at`, the
    event of that piece is an in-stream error and the stream ends there."""
    plan: Plan = [(None, sse(time.strftime("%Y-%m-%d %H:%M:%S"), "ping"))]
    text = ""
    for index, piece in enumerate(pieces):
        if index == error_at:
            error = {"message": None, "conversation_id": conversation_id, "error": _ERROR}
            return plan + [(index, sse(error))]
        text += piece
        done = index == len(pieces) - 1
        msg = message(answer_id, "assistant", text, done=done, finish=finish)
        plan.append((index, sse({"message": msg, "conversation_id": conversation_id, "error": None})))
    return plan + [(None, sse("[DONE]"))]


def v1_plan(
    conversation_id: str,
    answer_id: str,
    user_message: dict[str, Any],
    pieces: list[str],
    *,
    finish: str = "stop",
    error_at: int | None = None,
) -> Plan:
    """The v1 framing of an answer made of `pieces` (at least one): the last piece rides in the
    final patch batch, as the upstream sends it; `error_at` replaces that piece's event by an error."""

    def document(msg: dict[str, Any]) -> dict[str, Any]:
        return {"message": msg, "conversation_id": conversation_id, "error": None}

    echo = dict(user_message, status="finished_successfully")
    system = message("sys-" + answer_id, "system", "")
    marker = {"type": "message_marker", "conversation_id": conversation_id, "message_id": answer_id}
    plan: Plan = [
        (None, sse("v1", "delta_encoding")),
        (None, sse({"p": "", "o": "add", "v": document(system), "c": 0}, "delta")),
        (None, sse({"v": document(echo), "c": 1}, "delta")),
        (None, sse({"type": "input_message", "input_message": echo, "conversation_id": conversation_id})),
        (None, sse(dict(marker, marker="user_visible_token", event="first"))),
        (
            None,
            sse({"p": "", "o": "add", "v": document(message(answer_id, "assistant", "")), "c": 2}, "delta"),
        ),
    ]
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        if index == error_at:
            return plan + [(index, sse({"error": _ERROR}, "delta"))]
        append = {"p": "/message/content/parts/0", "o": "append", "v": piece}
        if index < last:
            plan.append((index, sse(append if index == 0 else {"v": piece}, "delta")))
            continue
        final = [
            append,
            {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/end_turn", "o": "replace", "v": finish == "stop"},
            {
                "p": "/message/metadata",
                "o": "append",
                "v": {"is_complete": True, "finish_details": {"type": finish}},
            },
        ]
        plan.append((index, sse({"p": "", "o": "patch", "v": final}, "delta")))
    metadata = {"tool_invoked": False, "turn_use_case": "text"}
    for typed in (
        {"type": "server_ste_metadata", "metadata": metadata},
        {"type": "title_generation", "title": "A short chat"},
        {"type": "conversation_detail_metadata", "banner_info": None},
        {"type": "message_stream_complete"},
    ):
        plan.append((None, sse(dict(typed, conversation_id=conversation_id))))
    return plan + [(None, sse("[DONE]"))]
