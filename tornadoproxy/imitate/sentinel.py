"""The sentinel's permission for one conversation: reading chat-requirements, sending its headers.

Before every `POST /backend-api/conversation` the web client asks `sentinel/chat-requirements`
(body `{"p": <requirements token>}`) and gets a one-time token, maybe a proof of work to solve, and
flags for human checks. A required Turnstile or Arkose check is one the gateway cannot pass: it is
reported as 403 `upstream_verification_required` naming which, never attempted. Error statuses
(401, 429, challenge pages) are the caller's to diagnose before the body is read here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tornadoproxy.errors import Code, UpstreamError

LANGUAGE = "en-US"


@dataclass(frozen=True, slots=True)
class ChatRequirements:
    """What one conversation needs: the token, and the proof of work when one is required."""

    token: str
    persona: str
    proof_seed: str | None = None
    proof_difficulty: str | None = None

    @property
    def proof_required(self) -> bool:
        return self.proof_seed is not None


def verification_required(which: str) -> UpstreamError:
    return UpstreamError(
        f"the ChatGPT upstream asks this account to pass a {which} check, which the gateway does not "
        "solve; open ChatGPT in a browser with this account, or use another account",
        code=Code.UPSTREAM_VERIFICATION_REQUIRED,
    )


def malformed_requirements(what: str) -> UpstreamError:
    return UpstreamError(f"the ChatGPT upstream's chat-requirements answer {what}", code=Code.UPSTREAM_ERROR)


def requirements_body(requirements_token: str) -> bytes:
    """The body of `POST /backend-api/sentinel/chat-requirements`."""
    return json.dumps({"p": requirements_token}, separators=(",", ":")).encode()


def read_requirements(body: bytes) -> ChatRequirements:
    """The 200 answer of chat-requirements, or the UpstreamError it amounts to."""
    try:
        value = json.loads(body)
    except ValueError:
        raise malformed_requirements("is not JSON") from None
    if not isinstance(value, dict):
        raise malformed_requirements("is not a JSON object")
    for check, name in (("turnstile", "Turnstile"), ("arkose", "Arkose")):
        section = value.get(check)
        if isinstance(section, dict) and section.get("required") is True:
            raise verification_required(name)
    token = value.get("token")
    if not isinstance(token, str) or not token:
        raise malformed_requirements("has no token")
    persona = value.get("persona")
    requirements = ChatRequirements(token=token, persona=persona if isinstance(persona, str) else "")
    proof = value.get("proofofwork")
    if not isinstance(proof, dict) or proof.get("required") is not True:
        return requirements
    seed, difficulty = proof.get("seed"), proof.get("difficulty")
    if not isinstance(seed, str) or not isinstance(difficulty, str):
        raise malformed_requirements("requires a proof of work without a seed and difficulty")
    return ChatRequirements(
        token=token, persona=requirements.persona, proof_seed=seed, proof_difficulty=difficulty
    )


def conversation_headers(
    requirements: ChatRequirements, proof_token: str | None, device_id: str
) -> list[tuple[str, str]]:
    """The sentinel headers of the `POST /backend-api/conversation` that uses `requirements`."""
    headers = [("OpenAI-Sentinel-Chat-Requirements-Token", requirements.token)]
    if requirements.proof_required:
        if proof_token is None:
            raise ValueError("these chat requirements need a proof token")
        headers.append(("OpenAI-Sentinel-Proof-Token", proof_token))
    headers += [("Oai-Device-Id", device_id), ("Oai-Language", LANGUAGE)]
    return headers
