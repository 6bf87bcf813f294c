"""The ChatGPT web backend (`/backend-api/...`) as in docs/upstream-chatgpt.md: conversation
lists, reading, renaming and hiding, titles, feedback, models, accounts/check; the conversation
stream lives in conversation.py, the sentinel in sentinel.py, tokens and account state in webbase.py.
A conversation created with `history_and_training_disabled` is never listed. Lists and hide-all
see the token's own account's conversations only.
"""

from __future__ import annotations

import time
from typing import Any

from tests.simulator.conversation import ConversationCreateHandler
from tests.simulator.sentinel import ChatRequirementsHandler
from tests.simulator.webbase import ChatGPTHandler

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


class ConversationsHandler(ChatGPTHandler):
    def get(self) -> None:
        if not self.authorised():
            return
        offset = int(self.get_argument("offset", "0"))
        limit = int(self.get_argument("limit", "20"))
        visible = [
            c
            for c in self.data.conversations.values()
            if c["is_visible"] and not c["history_disabled"] and c["owner"] == self.account
        ]
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
            if conversation["owner"] == self.account:
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
    # Where the web client posts conversations since 2025; the gateway's path is configurable.
    (r"/backend-api/f/conversation", ConversationCreateHandler),
    (r"/backend-api/sentinel/chat-requirements", ChatRequirementsHandler),
    (r"/backend-api/conversation/gen_title/([^/]+)", GenTitleHandler),
    (r"/backend-api/conversation/message_feedback", MessageFeedbackHandler),
    (r"/backend-api/conversation/([^/]+)", ConversationHandler),
    (r"/backend-api/models", ModelsHandler),
    (r"/backend-api/accounts/check", AccountsCheckHandler),
    (r"/.*", NotFoundHandler),
]
