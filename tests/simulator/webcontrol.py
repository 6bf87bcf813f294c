"""/__sim__/chatgpt/...: the tests' side door to the web backend's sentinel, answers and limits.

POST /__sim__/chatgpt/sentinel     {settings...}  change SentinelSettings fields; GET: settings,
                                                  issued tokens, refusal reasons, accepted count
POST /__sim__/chatgpt/answers      {"pieces": [...], "finish", "framing", "error_at", "gates":
                                   {"<piece>": "<gate>"}, "cut_at", "times"}  queue a scripted answer
DELETE /__sim__/chatgpt/answers    drop the queued answers
POST /__sim__/chatgpt/limits       {"one_at_a_time", "cap", "clears_in"}; GET: limits and, per
                                   account, answers streaming now and answers started
GET /__sim__/chatgpt/conversations every conversation, hidden or kept out of history included
All of it is cleared by /__sim__/reset.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tests.simulator.control import ControlHandler
from tests.simulator.sentinel import sentinel_of
from tests.simulator.webbase import Answer, ChatGPTData


def _updated(current: Any, changes: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(current)}
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    return dataclasses.replace(current, **changes)


class WebControlHandler(ControlHandler):
    @property
    def data(self) -> ChatGPTData:
        return self.state.family_data.setdefault("chatgpt", ChatGPTData())

    def changes(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.request.body or b"{}")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.reply({"error": "a JSON object is required"}, status=400)
            return None
        return value


class SentinelControlHandler(WebControlHandler):
    def get(self) -> None:
        self.reply(sentinel_of(self.data).to_json())

    def post(self) -> None:
        changes = self.changes()
        if changes is None:
            return
        sentinel = sentinel_of(self.data)
        try:
            sentinel.settings = _updated(sentinel.settings, changes)
        except (ValueError, TypeError) as error:
            self.reply({"error": str(error)}, status=400)
            return
        self.reply(dataclasses.asdict(sentinel.settings))


class AnswersControlHandler(WebControlHandler):
    def post(self) -> None:
        spec = self.changes()
        if spec is None:
            return
        spec["gates"] = {int(k): str(v) for k, v in (spec.get("gates") or {}).items()}
        try:
            answer = Answer(**spec)
        except TypeError as error:
            self.reply({"error": str(error)}, status=400)
            return
        if not answer.pieces:
            self.reply({"error": "an answer needs at least one piece"}, status=400)
            return
        self.data.answers.append(answer)
        self.reply({"ok": True})

    def delete(self) -> None:
        self.data.answers.clear()
        self.reply({"ok": True})


class LimitsControlHandler(WebControlHandler):
    def get(self) -> None:
        self.reply(
            {
                "limits": dataclasses.asdict(self.data.limits),
                "answering": self.data.answering,
                "answered": self.data.answered,
            }
        )

    def post(self) -> None:
        changes = self.changes()
        if changes is None:
            return
        try:
            self.data.limits = _updated(self.data.limits, changes)
        except (ValueError, TypeError) as error:
            self.reply({"error": str(error)}, status=400)
            return
        self.reply(dataclasses.asdict(self.data.limits))


class ConversationsControlHandler(WebControlHandler):
    def get(self) -> None:
        fields = ("id", "owner", "title", "is_visible", "history_disabled", "mapping")
        self.reply([{k: c[k] for k in fields} for c in self.data.conversations.values()])


ROUTES: list[tuple[str, Any]] = [
    (r"/__sim__/chatgpt/sentinel", SentinelControlHandler),
    (r"/__sim__/chatgpt/answers", AnswersControlHandler),
    (r"/__sim__/chatgpt/limits", LimitsControlHandler),
    (r"/__sim__/chatgpt/conversations", ConversationsControlHandler),
]
