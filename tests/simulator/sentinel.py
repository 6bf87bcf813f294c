"""The sentinel (docs/upstream-chatgpt.md, "Sentinel"): chat-requirements issues one-time tokens with
a proof of work, and `POST /conversation` checks the headers that spend them.

Enforcement is a switch, `enforce`: "when_sent" (the default) checks sentinel headers a request
carries and lets a request without any through, so relayed clients that send none (every relay
test) work as before while a gateway that does send them is held to them; "always" also refuses a
conversation without them, as the real upstream does; "never" checks nothing. A refusal is 403
`{"detail":"Unusual activity..."}` and its reason is kept for the tests (`refusals`).
The requirements token's proof cannot be checked (its seed is the client's own), so its shape is:
`gAAAAAC` + base64 of a JSON array with an integer counter at index 3 and a user agent at index 4.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.simulator import pages
from tests.simulator.webbase import ChatGPTData, ChatGPTHandler

UNUSUAL = {"detail": "Unusual activity has been detected from your device. Try again later."}


@dataclass
class SentinelSettings:
    enforce: str = "when_sent"  # "when_sent" | "always" | "never"
    proof_required: bool = True
    difficulty: str = "06a4f2"
    seed: str | None = None  # None: a fresh random seed per token
    turnstile: bool = False
    arkose: bool = False
    persona: str = "chatgpt-freeaccount"
    token_ttl: float = 300.0
    refuse: str | None = None  # "unauthorized" | "challenge" | "block" | "rate_limited"
    refuse_times: int = -1  # how many chat-requirements calls are refused (-1: all)


@dataclass
class IssuedToken:
    account: str
    seed: str
    difficulty: str
    proof_required: bool
    expires_at: float
    user_agent_matches: bool  # the requirements token's telemetry named the request's User-Agent
    used: bool = False


@dataclass
class SentinelData:
    settings: SentinelSettings = field(default_factory=SentinelSettings)
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    accepted: int = 0  # conversations whose sentinel headers were checked and good

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "issued": [{k: v for k, v in asdict(t).items() if k != "account"} for t in self.tokens.values()],
            "refusals": self.refusals,
            "accepted": self.accepted,
        }


def sentinel_of(data: ChatGPTData) -> SentinelData:
    if data.sentinel is None:
        data.sentinel = SentinelData()
    return data.sentinel


def meets(seed: str, answer: str, difficulty: str) -> bool:
    """The upstream's check: hex SHA3-512(seed + answer) starts with a string <= the difficulty."""
    return hashlib.sha3_512((seed + answer).encode()).hexdigest()[: len(difficulty)] <= difficulty


def telemetry_of(token: object, prefix: str) -> list[Any] | None:
    """The telemetry array inside a `gAAAAA?` token, or None if it is not one."""
    if not isinstance(token, str) or not token.startswith(prefix):
        return None
    try:
        values = json.loads(base64.b64decode(token[len(prefix) :], validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(values, list) or len(values) < 5 or type(values[3]) is not int:
        return None
    return values if isinstance(values[4], str) else None


class ChatRequirementsHandler(ChatGPTHandler):
    """`POST /backend-api/sentinel/chat-requirements`."""

    def post(self) -> None:
        if not self.authorised():
            return
        sentinel = sentinel_of(self.data)
        settings = sentinel.settings
        if settings.refuse and settings.refuse_times != 0:
            settings.refuse_times -= 1 if settings.refuse_times > 0 else 0
            self._refuse(settings.refuse)
            return
        body = self.json_body()
        telemetry = telemetry_of(body.get("p") if isinstance(body, dict) else None, "gAAAAAC")
        if telemetry is None and settings.enforce != "never":
            sentinel.refusals.append("malformed requirements token")
            self.reply(403, UNUSUAL)
            return
        token = "gAAAAAB" + secrets.token_urlsafe(96)  # opaque to clients, as the real one
        seed = settings.seed or str(random.random())
        sentinel.tokens[token] = IssuedToken(
            account=self.account,
            seed=seed,
            difficulty=settings.difficulty,
            proof_required=settings.proof_required,
            expires_at=time.time() + settings.token_ttl,
            user_agent_matches=telemetry is not None
            and telemetry[4] == self.request.headers.get("User-Agent"),
        )
        self.reply(200, self._answer(token, seed, settings))

    def _answer(self, token: str, seed: str, settings: SentinelSettings) -> dict[str, Any]:
        proof: dict[str, Any] = {"required": settings.proof_required}
        if settings.proof_required:
            proof |= {"seed": seed, "difficulty": settings.difficulty}
        turnstile: dict[str, Any] = {"required": settings.turnstile}
        arkose: dict[str, Any] = {"required": settings.arkose}
        if settings.turnstile:
            turnstile["dx"] = base64.b64encode(secrets.token_bytes(48)).decode()
        if settings.arkose:
            arkose["dx"] = base64.b64encode(secrets.token_bytes(48)).decode()
        return {
            "persona": settings.persona,
            "token": token,
            "proofofwork": proof,
            "turnstile": turnstile,
            "arkose": arkose,
        }

    def _refuse(self, kind: str) -> None:
        if kind == "unauthorized":
            self.reply(401, {"detail": "Unauthorized"})
        elif kind in ("challenge", "block"):
            self.reply_page(pages.challenge() if kind == "challenge" else pages.block())
        else:
            self.reply(429, {"detail": "Too many requests. Please slow down."})


def check_conversation_headers(sentinel: SentinelData, headers: Any, account: str) -> str | None:
    """Why the sentinel headers of a conversation are refused, or None when they pass."""
    settings = sentinel.settings
    token = headers.get("OpenAI-Sentinel-Chat-Requirements-Token")
    proof = headers.get("OpenAI-Sentinel-Proof-Token")
    if settings.enforce == "never" or (settings.enforce == "when_sent" and token is None and proof is None):
        return None
    issued = sentinel.tokens.get(token or "")
    if issued is None:
        return "missing chat-requirements token" if token is None else "unknown chat-requirements token"
    if issued.account != account:
        return "chat-requirements token of another account"
    if issued.used:
        return "reused chat-requirements token"
    issued.used = True
    if time.time() > issued.expires_at:
        return "expired chat-requirements token"
    if issued.proof_required:
        if telemetry_of(proof, "gAAAAAB") is None:
            return "missing or malformed proof token"
        if not meets(issued.seed, str(proof)[len("gAAAAAB") :], issued.difficulty):
            return "proof of work below the difficulty"
    sentinel.accepted += 1
    return None
