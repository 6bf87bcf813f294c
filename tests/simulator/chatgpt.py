"""The ChatGPT web backend (`/backend-api/...`) as in shared/spec/upstream-chatgpt.md.

Tokens: a Bearer token that looks like a JWT (`eyJ...`) is accepted, except one whose text contains
`expired` (401 token_expired); anything else is 401 Unauthorized. Conversation answers stream in the
full-message framing (2023) unless the model starts with `gpt-4`, which selects the delta framing
(2024+). A user message containing `trigger-error` makes the stream end with an in-stream error.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from tests.simulator.base import SimHandler

MODELS = [
    {
        "slug": "text-davinci-002-render-sha",
        "max_tokens": 8191,
        "title": "Default (GPT-3.5)",
        "description": "Our fastest model",
        "tags": ["gpt3.5"],
    },
    {
        "slug": "gpt-4o",
        "max_tokens": 32767,
        "title": "GPT-4o",
        "description": "Our most capable model",
        "tags": ["gpt4"],
    },
]


class ChatGPTData:
    """Conversations of the simulated account, kept until reset."""

    def __init__(self) -> None:
        self.conversations: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        self.conversations.clear()


class ChatGPTHandler(SimHandler):
    @property
    def data(self) -> ChatGPTData:
        return self.state.family_data.setdefault("chatgpt", ChatGPTData())

    def reply(self, status: int, payload: Any) -> None:
        self.send_json(status, payload, {"Set-Cookie": "__cf_bm=sim; path=/; HttpOnly; Secure"})

    def authorised(self) -> bool:
        token = self.bearer()
        if token.startswith("eyJ") and "expired" not in token:
            return True
        if token.startswith("eyJ"):
            self.reply(
                401,
                {
                    "detail": {
                        "message": "Your authentication token has expired. Please try signing in again.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "token_expired",
                    }
                },
            )
        else:
            self.reply(401, {"detail": "Unauthorized"})
        return False

    def conversation_or_404(self, ident: str) -> dict[str, Any] | None:
        conversation = self.data.conversations.get(ident)
        if conversation is None:
            self.reply(404, {"detail": f"Can't load conversation {ident}"})
        return conversation


class ConversationsHandler(ChatGPTHandler):
    def get(self) -> None:
        if not self.authorised():
            return
        offset = int(self.get_argument("offset", "0"))
        limit = int(self.get_argument("limit", "20"))
        visible = [c for c in self.data.conversations.values() if c["is_visible"]]
        items = [
            {k: c[k] for k in ("id", "title", "create_time", "update_time", "is_archived")}
            for c in visible[offset : offset + limit]
        ]
        self.reply(
            200,
            {
                "items": items,
                "total": len(visible),
                "limit": limit,
                "offset": offset,
                "has_missing_conversations": False,
            },
        )

    def patch(self) -> None:
        if not self.authorised():
            return
        body = self.json_body()
        if not isinstance(body, dict) or "is_visible" not in body:
            self.reply(
                422,
                {
                    "detail": [
                        {
                            "loc": ["body", "is_visible"],
                            "msg": "field required",
                            "type": "value_error.missing",
                        }
                    ]
                },
            )
            return
        for conversation in self.data.conversations.values():
            conversation["is_visible"] = bool(body["is_visible"])
        self.reply(200, {"success": True})


class ConversationHandler(ChatGPTHandler):
    def get(self, ident: str) -> None:
        if not self.authorised() or (conversation := self.conversation_or_404(ident)) is None:
            return
        self.reply(
            200,
            {
                key: conversation[key]
                for key in (
                    "title",
                    "create_time",
                    "update_time",
                    "current_node",
                    "conversation_id",
                    "mapping",
                )
            },
        )

    def patch(self, ident: str) -> None:
        if not self.authorised() or (conversation := self.conversation_or_404(ident)) is None:
            return
        body = self.json_body() or {}
        if "title" in body:
            conversation["title"] = body["title"]
        if "is_visible" in body:
            conversation["is_visible"] = bool(body["is_visible"])
        conversation["update_time"] = time.time()
        self.reply(200, {"success": True})


def _missing_role(body: dict[str, Any]) -> int | None:
    for index, message in enumerate(body.get("messages") or []):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("author"), dict)
            or "role" not in message["author"]
        ):
            return index
    return None


class ConversationCreateHandler(ChatGPTHandler):
    async def post(self) -> None:
        if not self.authorised():
            return
        body = self.json_body()
        if not isinstance(body, dict) or not body.get("messages"):
            self.reply(
                422,
                {
                    "detail": [
                        {"loc": ["body", "messages"], "msg": "field required", "type": "value_error.missing"}
                    ]
                },
            )
            return
        missing = _missing_role(body)
        if missing is not None:
            self.reply(
                422,
                {
                    "detail": [
                        {
                            "loc": ["body", "messages", missing, "author", "role"],
                            "msg": "field required",
                            "type": "value_error.missing",
                        }
                    ]
                },
            )
            return
        conversation = self._conversation(body)
        parts = body["messages"][0].get("content", {}).get("parts") or [""]
        words = [w + " " for w in f"You said: {parts[0]}".split(" ")]
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        if str(body.get("model", "")).startswith("gpt-4"):
            await self._delta_stream(conversation, words, "trigger-error" in str(parts[0]))
        else:
            await self._full_stream(conversation, words, "trigger-error" in str(parts[0]))

    def _conversation(self, body: dict[str, Any]) -> dict[str, Any]:
        ident = body.get("conversation_id") or str(uuid.uuid4())
        if ident not in self.data.conversations:
            now = time.time()
            self.data.conversations[ident] = {
                "id": ident,
                "conversation_id": ident,
                "title": "New chat",
                "create_time": now,
                "update_time": now,
                "is_archived": False,
                "is_visible": True,
                "current_node": None,
                "mapping": {},
            }
        conversation = self.data.conversations[ident]
        user_id = body["messages"][0].get("id", str(uuid.uuid4()))
        answer_id = str(uuid.uuid4())
        conversation["mapping"][user_id] = {
            "id": user_id,
            "parent": body.get("parent_message_id"),
            "children": [answer_id],
            "message": body["messages"][0],
        }
        conversation["mapping"][answer_id] = {
            "id": answer_id,
            "parent": user_id,
            "children": [],
            "message": None,
        }
        conversation["current_node"] = answer_id
        conversation["answer_id"] = answer_id
        return conversation

    async def _send(self, text: str) -> None:
        self.write(text)
        await self.flush()
        await asyncio.sleep(0)

    def _message(self, conversation: dict[str, Any], text: str, done: bool) -> dict[str, Any]:
        return {
            "id": conversation["answer_id"],
            "author": {"role": "assistant", "name": None, "metadata": {}},
            "content": {"content_type": "text", "parts": [text]},
            "status": "finished_successfully" if done else "in_progress",
            "end_turn": True if done else None,
            "metadata": {"finish_details": {"type": "stop"}} if done else {},
        }

    async def _full_stream(self, conversation: dict[str, Any], words: list[str], fail: bool) -> None:
        await self._send(f"event: ping\ndata: {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n")
        text = ""
        for index, word in enumerate(words):
            text += word
            done = index == len(words) - 1
            if fail and index == 1:
                await self._send(
                    "data: "
                    + json.dumps(
                        {
                            "message": None,
                            "conversation_id": conversation["id"],
                            "error": "Something went wrong, please try again.",
                        }
                    )
                    + "\n\n"
                )
                self.finish()
                return
            event = {
                "message": self._message(conversation, text, done),
                "conversation_id": conversation["id"],
                "error": None,
            }
            await self._send("data: " + json.dumps(event) + "\n\n")
        conversation["mapping"][conversation["answer_id"]]["message"] = self._message(
            conversation, text, True
        )
        await self._send("data: [DONE]\n\n")
        self.finish()

    async def _delta_stream(self, conversation: dict[str, Any], words: list[str], fail: bool) -> None:
        await self._send('event: delta_encoding\ndata: "v1"\n\n')
        first = {
            "p": "",
            "o": "add",
            "v": {
                "message": self._message(conversation, "", False),
                "conversation_id": conversation["id"],
                "error": None,
            },
        }
        await self._send("event: delta\ndata: " + json.dumps(first) + "\n\n")
        for index, word in enumerate(words):
            if fail and index == 1:
                await self._send(
                    "event: delta\ndata: " + json.dumps({"error": "Something went wrong."}) + "\n\n"
                )
                self.finish()
                return
            op = {"p": "/message/content/parts/0", "o": "append", "v": word} if index == 0 else {"v": word}
            await self._send("event: delta\ndata: " + json.dumps(op) + "\n\n")
        patch = {
            "p": "",
            "o": "patch",
            "v": [
                {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
                {"p": "/message/end_turn", "o": "replace", "v": True},
            ],
        }
        await self._send("event: delta\ndata: " + json.dumps(patch) + "\n\n")
        await self._send("event: title_generation\ndata: " + json.dumps({"title": "Greeting"}) + "\n\n")
        text = "".join(words)
        conversation["mapping"][conversation["answer_id"]]["message"] = self._message(
            conversation, text, True
        )
        await self._send("data: [DONE]\n\n")
        self.finish()


class GenTitleHandler(ChatGPTHandler):
    def post(self, ident: str) -> None:
        if not self.authorised() or (conversation := self.conversation_or_404(ident)) is None:
            return
        body = self.json_body() or {}
        if body.get("message_id") not in conversation["mapping"]:
            self.reply(
                422,
                {
                    "detail": [
                        {
                            "loc": ["body", "message_id"],
                            "msg": "field required",
                            "type": "value_error.missing",
                        }
                    ]
                },
            )
            return
        conversation["title"] = "A short greeting"
        self.reply(200, {"title": conversation["title"]})


class MessageFeedbackHandler(ChatGPTHandler):
    def post(self) -> None:
        if not self.authorised():
            return
        body = self.json_body() or {}
        if body.get("rating") not in ("thumbsUp", "thumbsDown"):
            self.reply(
                422,
                {
                    "detail": [
                        {
                            "loc": ["body", "rating"],
                            "msg": "value is not a valid enumeration member",
                            "type": "type_error.enum",
                        }
                    ]
                },
            )
            return
        self.reply(
            200,
            {
                "message_id": body.get("message_id"),
                "conversation_id": body.get("conversation_id"),
                "user_id": "user-sim",
                "rating": body["rating"],
                "content": "{}",
            },
        )


class ModelsHandler(ChatGPTHandler):
    def get(self) -> None:
        if self.authorised():
            self.reply(200, {"models": MODELS})


class AccountsCheckHandler(ChatGPTHandler):
    def get(self) -> None:
        if self.authorised():
            self.reply(
                200,
                {
                    "accounts": {
                        "default": {
                            "account": {"account_user_role": "account-owner", "plan_type": "free"},
                            "features": [],
                        }
                    }
                },
            )


class NotFoundHandler(ChatGPTHandler):
    def _not_found(self, *_args: str) -> None:
        self.reply(404, {"detail": "Not Found"})

    get = post = put = patch = delete = _not_found


ROUTES: list[tuple[str, Any]] = [
    (r"/backend-api/conversations", ConversationsHandler),
    (r"/backend-api/conversation", ConversationCreateHandler),
    (r"/backend-api/conversation/gen_title/([^/]+)", GenTitleHandler),
    (r"/backend-api/conversation/message_feedback", MessageFeedbackHandler),
    (r"/backend-api/conversation/([^/]+)", ConversationHandler),
    (r"/backend-api/models", ModelsHandler),
    (r"/backend-api/accounts/check", AccountsCheckHandler),
    (r"/.*", NotFoundHandler),
]
