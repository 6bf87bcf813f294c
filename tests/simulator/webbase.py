"""What every simulated `/backend-api/...` endpoint shares: the account state and the token check.

Tokens: a Bearer token that looks like a JWT (`eyJ...`) is accepted, except one whose text contains
`expired` (401 token_expired); anything else is 401 Unauthorized. The account a token belongs to
is its JWT `sub` when the payload decodes, else the token itself: per-account limits (one answer
at a time, message caps), sentinel tokens and conversations are kept by that key. As upstream, an
account sees only its own conversations: another account's id is 404 "Can't load conversation".
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from tests.simulator.base import SimHandler


@dataclass
class Answer:
    """A scripted web answer for the next conversation(s): pieces of text, in the framing asked
    for ("auto": v1 when the body asks for it, else full-message), with gates held before pieces."""

    pieces: list[str]
    finish: str = "stop"
    framing: str = "auto"
    error_at: int | None = None
    gates: dict[int, str] = field(default_factory=dict)  # piece index -> gate held before its event
    cut_at: int | None = None  # the connection closes before this piece's event
    times: int = 1


@dataclass
class Limits:
    """The upstream's limits of one account (docs/upstream-chatgpt.md, "Limits of one account")."""

    one_at_a_time: bool = True
    cap: int | None = None  # answers per account before 429 model_cap_exceeded
    clears_in: int = 3600


@dataclass
class ChatGPTData:
    """Conversations and limits of the simulated accounts, kept until reset."""

    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    answering: dict[str, int] = field(default_factory=dict)  # account -> answers streaming now
    answered: dict[str, int] = field(default_factory=dict)  # account -> answers started
    sentinel: Any = None  # tests.simulator.sentinel.SentinelData, made on first use

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def take_answer(self) -> Answer | None:
        for answer in self.answers:
            if answer.times != 0:
                answer.times -= 1
                return answer
        return None


def account_of(token: str) -> str:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return token


class ChatGPTHandler(SimHandler):
    @property
    def data(self) -> ChatGPTData:
        return self.state.family_data.setdefault("chatgpt", ChatGPTData())

    @property
    def account(self) -> str:
        return account_of(self.bearer())

    def reply(self, status: int, payload: Any) -> None:
        self.send_json(status, payload, {"Set-Cookie": "__cf_bm=sim; path=/; HttpOnly; Secure"})

    def reply_page(self, spec: dict[str, Any]) -> None:
        """An HTML page answer as tests.simulator.pages builds them."""
        self.set_status(int(spec["status"]))
        for name, value in spec.get("headers", []):
            self.set_header(name, value)
        self.finish(spec["body"])

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
        if conversation is None or conversation["owner"] != self.account:
            self.reply(404, {"detail": f"Can't load conversation {ident}"})
        return conversation
