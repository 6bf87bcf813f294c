"""The OpenAI Platform API as in docs/upstream-platform.md: endpoints, streams, error shapes.

API keys: any `sk-...` is valid except `sk-invalid...` (401 invalid_api_key); `sess-...` keys work
everywhere and are required on /dashboard. Every answer carries the headers the gateway must relay.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from typing import Any

from tests.simulator.base import SimHandler
from tests.simulator.mutations import mutated
from tests.simulator.streams import play

MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "omni-moderation-latest", "dall-e-3")


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class PlatformData:
    """Files uploaded through the simulator, kept until reset."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}

    def reset(self) -> None:
        self.files.clear()


class PlatformHandler(SimHandler):
    needs_session_key = False

    @property
    def data(self) -> PlatformData:
        return self.state.family_data.setdefault("platform", PlatformData())

    def common_headers(self) -> dict[str, str]:
        return {
            "x-request-id": "req_" + uuid.uuid4().hex[:24],
            "openai-processing-ms": "12",
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "2000000",
            "x-ratelimit-remaining-tokens": "1999990",
            "x-ratelimit-reset-tokens": "0s",
            "Set-Cookie": "__cf_bm=sim-cookie; path=/; HttpOnly; Secure",
            "Connection": "keep-alive",
        }

    def reply(self, status: int, payload: Any) -> None:
        self.send_json(status, payload, self.common_headers())

    def authorised(self) -> bool:
        key = self.bearer()
        if key.startswith("sess-") or (key.startswith("sk-") and not key.startswith("sk-invalid")):
            if self.needs_session_key and not key.startswith("sess-"):
                self.reply(
                    401,
                    error_body(
                        "Your request to GET /dashboard must be made with a session key.",
                        "invalid_request_error",
                        "invalid_api_key",
                    ),
                )
                return False
            return True
        shown = (key[:3] + "*" * 4 + key[-4:]) if key else ""
        self.reply(
            401,
            error_body(
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        )
        return False

    def body_or_400(self) -> dict[str, Any] | None:
        body = self.json_body()
        if not isinstance(body, dict):
            self.reply(
                400,
                error_body(
                    "We could not parse the JSON body of your request.", "invalid_request_error", None
                ),
            )
            return None
        return body


class ModelsHandler(PlatformHandler):
    def get(self) -> None:
        if self.authorised():
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"} for m in MODELS]
            self.reply(200, {"object": "list", "data": data})


class ModelHandler(PlatformHandler):
    def get(self, model: str) -> None:
        if not self.authorised():
            return
        if model not in MODELS:
            message = f"The model '{model}' does not exist or you do not have access to it."
            self.reply(404, error_body(message, "invalid_request_error", "model_not_found", "model"))
            return
        self.reply(200, {"id": model, "object": "model", "created": 1700000000, "owned_by": "system"})


def _answer_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    last = messages[-1].get("content", "") if messages else str(body.get("prompt", ""))
    return f"echo: {last}"


class ChatCompletionsHandler(PlatformHandler):
    async def post(self) -> None:
        if not self.authorised() or (body := self.body_or_400()) is None:
            return
        model = str(body.get("model", ""))
        if model.startswith("mutate-") and self.entry is not None:
            # A fuzzed stream: model "mutate-<seed>" selects a deterministic mutation (mutations.py).
            self.entry.scripted = True
            await play(self.detach(), mutated(int(model[7:])), self.state, self.entry)
            return
        text = _answer_text(body)
        ident = "chatcmpl-" + uuid.uuid4().hex[:20]
        model = body.get("model", "gpt-4o-mini")
        if body.get("stream"):
            pieces = [{"role": "assistant", "content": ""}] + [{"content": w} for w in _words(text)]
            chunks = [
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                for delta in pieces
            ]
            chunks.append(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
            await self.stream(chunks)
            return
        usage = {
            "prompt_tokens": 5,
            "completion_tokens": len(_words(text)),
            "total_tokens": 5 + len(_words(text)),
        }
        self.reply(
            200,
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                ],
                "usage": usage,
            },
        )

    async def stream(self, chunks: list[dict[str, Any]]) -> None:
        self.set_status(200)
        for name, value in self.common_headers().items():
            self.set_header(name, value)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        for chunk in chunks:
            self.write(f"data: {json.dumps(chunk)}\n\n")
            await self.flush()
            await asyncio.sleep(0)
        self.write("data: [DONE]\n\n")
        self.finish()


class CompletionsHandler(ChatCompletionsHandler):
    async def post(self) -> None:
        if not self.authorised() or (body := self.body_or_400()) is None:
            return
        text = _answer_text(body)
        ident = "cmpl-" + uuid.uuid4().hex[:20]
        model = body.get("model", "gpt-3.5-turbo-instruct")
        if body.get("stream"):
            await self.stream(
                [
                    {
                        "id": ident,
                        "object": "text_completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"text": word, "index": 0, "logprobs": None, "finish_reason": None}],
                    }
                    for word in _words(text)
                ]
            )
            return
        self.reply(
            200,
            {
                "id": ident,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            },
        )


class EditsHandler(PlatformHandler):
    def post(self) -> None:
        if not self.authorised() or (body := self.body_or_400()) is None:
            return
        text = f"{body.get('input', '')} ({body.get('instruction', '')})"
        self.reply(
            200,
            {
                "object": "edit",
                "created": int(time.time()),
                "choices": [{"text": text, "index": 0}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            },
        )


class ImagesHandler(PlatformHandler):
    def post(self) -> None:
        if not self.authorised() or (body := self.body_or_400()) is None:
            return
        count = int(body.get("n", 1))
        if body.get("response_format") == "b64_json":
            # Large bodies, as real images are: 256 KiB of deterministic bytes per image.
            seed = hashlib.sha256(str(body.get("prompt", "")).encode()).digest()
            image = base64.b64encode(seed * (256 * 1024 // 32)).decode()
            data = [{"b64_json": image} for _ in range(count)]
        else:
            data = [{"url": f"https://images.example/{i}.png"} for i in range(count)]
        self.reply(200, {"created": int(time.time()), "data": data})


class EmbeddingsHandler(PlatformHandler):
    def post(self) -> None:
        if not self.authorised() or (body := self.body_or_400()) is None:
            return
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, item in enumerate(items):
            digest = hashlib.sha256(json.dumps(item).encode()).digest()
            data.append({"object": "embedding", "index": index, "embedding": [b / 255 for b in digest[:8]]})
        self.reply(
            200,
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            },
        )


class ModerationsHandler(PlatformHandler):
    def post(self) -> None:
        if not self.authorised() or (body := self.body_or_400()) is None:
            return
        flagged = "kill" in json.dumps(body.get("input", ""))
        self.reply(
            200,
            {
                "id": "modr-" + uuid.uuid4().hex[:12],
                "model": body.get("model", "omni-moderation-latest"),
                "results": [
                    {
                        "flagged": flagged,
                        "categories": {"violence": flagged},
                        "category_scores": {"violence": 0.9 if flagged else 0.01},
                    }
                ],
            },
        )


class FilesHandler(PlatformHandler):
    def get(self) -> None:
        if self.authorised():
            self.reply(200, {"object": "list", "data": list(self.data.files.values()), "has_more": False})

    def post(self) -> None:
        if not self.authorised():
            return
        uploads = self.request.files.get("file")
        purpose = self.get_body_argument("purpose", None)
        if not uploads or not purpose:
            self.reply(
                400,
                error_body("Missing file or purpose in the multipart form.", "invalid_request_error", None),
            )
            return
        upload = uploads[0]
        ident = "file-" + uuid.uuid4().hex[:24]
        self.data.files[ident] = {
            "id": ident,
            "object": "file",
            "bytes": len(upload["body"]),
            "created_at": int(time.time()),
            "filename": upload["filename"],
            "purpose": purpose,
            "status": "processed",
            "sha256": hashlib.sha256(upload["body"]).hexdigest(),
        }
        self.reply(200, self.data.files[ident])


class FileHandler(PlatformHandler):
    def get(self, ident: str) -> None:
        if not self.authorised():
            return
        if ident not in self.data.files:
            self.reply(404, error_body(f"No such File object: {ident}", "invalid_request_error", None, "id"))
            return
        self.reply(200, self.data.files[ident])

    def delete(self, ident: str) -> None:
        if self.authorised():
            existed = self.data.files.pop(ident, None) is not None
            self.reply(200 if existed else 404, {"id": ident, "object": "file", "deleted": existed})


class CreditGrantsHandler(PlatformHandler):
    needs_session_key = True

    def get(self) -> None:
        if self.authorised():
            self.reply(
                200,
                {
                    "object": "credit_summary",
                    "total_granted": 18.0,
                    "total_used": 1.25,
                    "total_available": 16.75,
                    "grants": {
                        "object": "list",
                        "data": [{"object": "credit_grant", "grant_amount": 18.0, "used_amount": 1.25}],
                    },
                },
            )


class SubscriptionHandler(PlatformHandler):
    needs_session_key = True

    def get(self) -> None:
        if self.authorised():
            self.reply(
                200,
                {
                    "object": "billing_subscription",
                    "has_payment_method": True,
                    "hard_limit_usd": 120.0,
                    "soft_limit_usd": 100.0,
                    "plan": {"title": "Pay-as-you-go", "id": "payg"},
                    "access_until": 1900000000,
                },
            )


class ApiKeysHandler(PlatformHandler):
    needs_session_key = True

    def get(self) -> None:
        if self.authorised():
            self.reply(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "sensitive_id": "sk-...abcd",
                            "created": 1700000000,
                            "name": "default",
                            "last_use": 1700000500,
                        }
                    ],
                },
            )


class NotFoundHandler(PlatformHandler):
    def _not_found(self, *_args: str) -> None:
        message = f"Invalid URL ({self.request.method} {self.request.path})"
        self.reply(404, error_body(message, "invalid_request_error", None))

    get = post = put = patch = delete = _not_found


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


ROUTES = [
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/([^/]+)", ModelHandler),
    (r"/v1/chat/completions", ChatCompletionsHandler),
    (r"/v1/completions", CompletionsHandler),
    (r"/v1/edits", EditsHandler),
    (r"/v1/images/generations", ImagesHandler),
    (r"/v1/embeddings", EmbeddingsHandler),
    (r"/v1/moderations", ModerationsHandler),
    (r"/v1/files", FilesHandler),
    (r"/v1/files/([^/]+)", FileHandler),
    (r"/dashboard/billing/credit_grants", CreditGrantsHandler),
    (r"/dashboard/billing/subscription", SubscriptionHandler),
    (r"/dashboard/user/api_keys", ApiKeysHandler),
    (r"/.*", NotFoundHandler),
]
