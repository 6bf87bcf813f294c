"""`POST /backend-api/conversation`: the answer stream, the account's limits and the sentinel check.

Order of checks: the token, the body (422), the conversation (a `conversation_id` of another
account's conversation is 404 "Can't load conversation"; an unknown one starts a conversation of that
id), the sentinel headers (403 "Unusual activity", see sentinel.py), the message cap (429
`model_cap_exceeded` with `clears_in`), one answer at a time per account (429 "Only one message at a
time"). Then the answer streams:
- a scripted answer (`/__sim__/chatgpt/answers`: pieces, finish, gates before pieces, in-stream
  error, cut) or else "You said: <last message>", word by word;
- in the v1 delta framing when the body asks for `supported_encodings: ["v1"]` (webanswers.py),
  else as before: the full-message framing, or the older delta framing for `gpt-4*` models.
A user message containing `trigger-error` makes the stream end with an in-stream error. The
account's slot is freed when the stream ends or the peer goes away (recorded in the journal).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from tornado.iostream import StreamClosedError

from tests.simulator.sentinel import UNUSUAL, check_conversation_headers, sentinel_of
from tests.simulator.state import State
from tests.simulator.streams import _first
from tests.simulator.webanswers import Plan, full_message_plan, v1_plan
from tests.simulator.webbase import Answer, ChatGPTHandler

ONE_AT_A_TIME = (
    "Only one message at a time. Please allow any other responses to complete before sending another "
    "message, or wait one minute."
)


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
    def initialize(self, state: State, family: str) -> None:
        super().initialize(state, family)
        self._closed = asyncio.Event()
        self._slot: str | None = None

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
        known = self.data.conversations.get(str(body.get("conversation_id") or ""))
        if known is not None and known["owner"] != self.account:
            self.reply(404, {"detail": f"Can't load conversation {known['id']}"})
            return
        if not self._admitted():
            return
        self._slot = self.account
        self.data.answering[self._slot] = self.data.answering.get(self._slot, 0) + 1
        self.data.answered[self._slot] = self.data.answered.get(self._slot, 0) + 1
        try:
            await self._answer(body)
        except StreamClosedError:
            pass  # the peer went away: on_connection_close recorded it
        finally:
            self._free_slot()

    def _admitted(self) -> bool:
        """The sentinel, the cap, one at a time: False once the refusal is sent."""
        reason = check_conversation_headers(sentinel_of(self.data), self.request.headers, self.account)
        if reason is not None:
            sentinel_of(self.data).refusals.append(reason)
            self.reply(403, UNUSUAL)
            return False
        limits = self.data.limits
        if limits.cap is not None and self.data.answered.get(self.account, 0) >= limits.cap:
            message = "You've reached our limit of messages per hour. Please try again later."
            detail = {"code": "model_cap_exceeded", "message": message, "clears_in": limits.clears_in}
            self.reply(429, {"detail": detail})
            return False
        if limits.one_at_a_time and self.data.answering.get(self.account, 0) > 0:
            self.reply(429, {"detail": ONE_AT_A_TIME})
            return False
        return True

    def on_connection_close(self) -> None:
        self._closed.set()
        if self.entry is not None and not self.entry.completed:
            self.entry.peer_closed_at = time.time()
        self._free_slot()

    def on_finish(self) -> None:
        if not self._closed.is_set():  # an answer the peer left is not complete
            super().on_finish()

    def _free_slot(self) -> None:
        if self._slot is not None:
            self.data.answering[self._slot] -= 1
            self._slot = None

    async def _answer(self, body: dict[str, Any]) -> None:
        conversation = self._conversation(body)
        last = body["messages"][-1]
        parts = (last.get("content") or {}).get("parts") or [""]
        fail = "trigger-error" in str(parts[0])
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        script = self.data.take_answer()
        v1 = "v1" in (body.get("supported_encodings") or [])
        if script is not None or v1:
            words = [w + " " for w in f"You said: {parts[0]}".split(" ")]
            answer = script or Answer(pieces=words, error_at=1 if fail else None)
            await self._play(conversation, last, answer, v1)
            return
        words = [w + " " for w in f"You said: {parts[0]}".split(" ")]
        if str(body.get("model", "")).startswith("gpt-4"):
            await self._delta_stream(conversation, words, fail)
        else:
            await self._full_stream(conversation, words, fail)

    async def _play(
        self, conversation: dict[str, Any], user: dict[str, Any], answer: Answer, v1: bool
    ) -> None:
        ident, answer_id = conversation["id"], conversation["answer_id"]
        kw: dict[str, Any] = {"finish": answer.finish, "error_at": answer.error_at}
        use_v1 = answer.framing == "v1" or (answer.framing == "auto" and v1)
        plan: Plan = (
            v1_plan(ident, answer_id, user, answer.pieces, **kw)
            if use_v1
            else full_message_plan(ident, answer_id, answer.pieces, **kw)
        )
        for piece, text in plan:
            if piece is not None and piece == answer.cut_at:
                self.request.connection.close()  # type: ignore[union-attr]
                return
            if piece is not None and piece in answer.gates:
                gate = self.state.gate(answer.gates[piece])
                gate.reached.set()
                await _first(gate.released.wait(), self._closed.wait())
                if self._closed.is_set():
                    return
            await self._send(text)
        if answer.error_at is None:
            conversation["mapping"][answer_id]["message"] = self._message(
                conversation, "".join(answer.pieces), True
            )
        self.finish()

    def _conversation(self, body: dict[str, Any]) -> dict[str, Any]:
        ident = body.get("conversation_id") or str(uuid.uuid4())
        if ident not in self.data.conversations:
            now = time.time()
            self.data.conversations[ident] = {
                "id": ident,
                "owner": self.account,
                "conversation_id": ident,
                "title": "New chat",
                "create_time": now,
                "update_time": now,
                "is_archived": False,
                "is_visible": True,
                "current_node": None,
                "mapping": {},
                "history_disabled": body.get("history_and_training_disabled") is True,
            }
        conversation = self.data.conversations[ident]
        answer_id = str(uuid.uuid4())
        parent = body.get("parent_message_id")
        # Every message of the body, each the child of the one before: multi-turn input as sent.
        for message in body["messages"]:
            message_id = message.get("id") or str(uuid.uuid4())
            conversation["mapping"][message_id] = {
                "id": message_id,
                "parent": parent,
                "children": [],
                "message": message,
            }
            if parent in conversation["mapping"]:
                conversation["mapping"][parent]["children"].append(message_id)
            parent = message_id
        user_id = parent
        conversation["mapping"][user_id]["children"].append(answer_id)
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
