"""Web answer streams as the ChatGPT backend sends them, in both framings (upstream spec, "Streaming"
and "The v1 delta framing, precisely"): the simulator plays them, unit tests feed them to readers.

`full_message_events` is the 2023 framing: each event carries the whole text so far.
`v1_events` is the 2024+ framing: documents installed by `c` (hidden system message, user echo,
assistant), text appended with sticky `p`/`o`, a final patch batch, typed events, `[DONE]`.
Each function returns the SSE text of each event, in order, so a caller can gate between them.
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


def full_message_events(
    conversation_id: str,
    answer_id: str,
    pieces: list[str],
    *,
    finish: str = "stop",
    error_at: int | None = None,
) -> list[str]:
    """A ping, one event per piece with the whole text so far, then `[DONE]`; with `error_at`, the
    event at that index is an in-stream error and the stream ends there."""
    events = [sse(time.strftime("%Y-%m-%d %H:%M:%S"), "ping")]
    text = ""
    for index, piece in enumerate(pieces):
        if index == error_at:
            events.append(
                sse(
                    {
                        "message": None,
                        "conversation_id": conversation_id,
                        "error": "Something went wrong, please try again.",
                    }
                )
            )
            return events
        text += piece
        done = index == len(pieces) - 1
        events.append(
            sse(
                {
                    "message": message(answer_id, "assistant", text, done=done, finish=finish),
                    "conversation_id": conversation_id,
                    "error": None,
                }
            )
        )
    return events + [sse("[DONE]")]


def v1_events(
    conversation_id: str,
    answer_id: str,
    user_message: dict[str, Any],
    pieces: list[str],
    *,
    finish: str = "stop",
    error_at: int | None = None,
) -> list[str]:
    """The v1 framing of an answer made of `pieces` (at least one)."""

    def document(msg: dict[str, Any]) -> dict[str, Any]:
        return {"message": msg, "conversation_id": conversation_id, "error": None}

    events = [sse("v1", "delta_encoding")]
    events.append(
        sse({"p": "", "o": "add", "v": document(message("sys-" + answer_id, "system", "")), "c": 0}, "delta")
    )
    echo = dict(user_message, status="finished_successfully")
    events.append(sse({"v": document(echo), "c": 1}, "delta"))
    events.append(sse({"type": "input_message", "input_message": echo, "conversation_id": conversation_id}))
    events.append(
        sse(
            {
                "type": "message_marker",
                "conversation_id": conversation_id,
                "message_id": answer_id,
                "marker": "user_visible_token",
                "event": "first",
            }
        )
    )
    events.append(
        sse({"p": "", "o": "add", "v": document(message(answer_id, "assistant", "")), "c": 2}, "delta")
    )
    for index, piece in enumerate(pieces[:-1]):
        if index == error_at:
            events.append(sse({"error": "Something went wrong while generating the response."}, "delta"))
            return events
        text_op = {"p": "/message/content/parts/0", "o": "append", "v": piece}
        events.append(sse(text_op if index == 0 else {"v": piece}, "delta"))
    if error_at is not None and error_at >= len(pieces) - 1:
        events.append(sse({"error": "Something went wrong while generating the response."}, "delta"))
        return events
    final = [
        {"p": "/message/content/parts/0", "o": "append", "v": pieces[-1]},
        {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
        {"p": "/message/end_turn", "o": "replace", "v": finish == "stop"},
        {
            "p": "/message/metadata",
            "o": "append",
            "v": {"is_complete": True, "finish_details": {"type": finish}},
        },
    ]
    events.append(sse({"p": "", "o": "patch", "v": final}, "delta"))
    events.append(
        sse(
            {
                "type": "server_ste_metadata",
                "metadata": {"tool_invoked": False, "turn_use_case": "text"},
                "conversation_id": conversation_id,
            }
        )
    )
    events.append(
        sse({"type": "title_generation", "title": "A short chat", "conversation_id": conversation_id})
    )
    events.append(
        sse({"type": "conversation_detail_metadata", "banner_info": None, "conversation_id": conversation_id})
    )
    events.append(sse({"type": "message_stream_complete", "conversation_id": conversation_id}))
    return events + [sse("[DONE]")]
