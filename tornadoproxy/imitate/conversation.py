"""The web conversation body for one OpenAI chat request: a new conversation every time.

Each OpenAI message becomes its own web message (fresh UUID, author role kept, text parts kept as
parts) in one `action: "next"` with a new `parent_message_id` and no `conversation_id`, as the web
client starts a conversation. `supported_encodings: ["v1"]` asks for the delta framing (the reader
handles both anyway); `history_and_training_disabled` follows the operator's history policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tornadoproxy.imitate.request import ChatRequest


def conversation_body(
    request: ChatRequest,
    slug: str,
    *,
    history_and_training_disabled: bool,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> dict[str, Any]:
    """The JSON body of `POST /backend-api/conversation` answering `request` with model `slug`."""
    return {
        "action": "next",
        "messages": [
            {
                "id": new_id(),
                "author": {"role": message.role},
                "content": {"content_type": "text", "parts": list(message.parts)},
                "metadata": {},
            }
            for message in request.messages
        ],
        "parent_message_id": new_id(),
        "model": slug,
        "timezone_offset_min": 0,
        "history_and_training_disabled": history_and_training_disabled,
        "conversation_mode": {"kind": "primary_assistant"},
        "supported_encodings": ["v1"],
    }
