"""The simulated web backend's sentinel, v1 answers and account limits, driven by the imitate
package's own logic over real HTTP (the gateway's /imitate routes are wired in later): requirements
token -> chat-requirements -> proof of work -> conversation with sentinel headers -> reader."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import random
import urllib.parse
from typing import Any

import pytest

from tests.harness import Simulator, request, wait_for
from tornadoproxy.errors import UpstreamError
from tornadoproxy.imitate.browser import browser_telemetry
from tornadoproxy.imitate.conversation import conversation_body
from tornadoproxy.imitate.proofofwork import PROOF_PREFIX, answer_for, requirements_token, solve
from tornadoproxy.imitate.reader import WebAnswerReader, WebStreamFailure
from tornadoproxy.imitate.refusals import refusal
from tornadoproxy.imitate.request import read_chat_request
from tornadoproxy.imitate.sentinel import ChatRequirements, conversation_headers, read_requirements

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/150.0.0.0 Safari/537.36"
DEVICE = "0b9a6c1e-3f2d-4e5a-8b7c-6d5e4f3a2b1c"


def token_for(account: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part({'sub': account, 'exp': 2_000_000_000})}.c2ln"


def telemetry():
    return browser_telemetry(
        UA, session_id=DEVICE, now=datetime.datetime.now(datetime.UTC), rng=random.Random(3)
    )


def headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": UA, "Content-Type": "application/json"}


def requirements(sim: Simulator, token: str) -> ChatRequirements:
    body = json.dumps({"p": requirements_token(telemetry(), str(random.random()))})
    answer = request(
        "POST",
        sim.urls["chatgpt"] + "/backend-api/sentinel/chat-requirements",
        headers=headers(token),
        body=body,
    )
    assert answer.status == 200, answer.body
    return read_requirements(answer.body)


def proof_for(needs: ChatRequirements) -> str | None:
    if not needs.proof_required:
        return None
    assert needs.proof_seed is not None and needs.proof_difficulty is not None
    solution = solve(needs.proof_seed, needs.proof_difficulty, telemetry().values(), 1_000_000)
    assert solution.answer is not None
    return PROOF_PREFIX + solution.answer


def web_body(text: str = "Hello there", history: bool = True) -> bytes:
    chat = read_chat_request(
        json.dumps(
            {
                "model": "gpt-4o",
                "messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": text}],
            }
        ).encode()
    )
    return json.dumps(conversation_body(chat, "gpt-4o", history_and_training_disabled=history)).encode()


_OPEN: list[Conversation] = []


@pytest.fixture(autouse=True)
def close_conversations() -> Any:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Conversation:
    """A `POST /backend-api/conversation` read incrementally, as the handler will read it."""

    def __init__(self, sim: Simulator, token: str, extra: list[tuple[str, str]], body: bytes) -> None:
        parts = urllib.parse.urlsplit(sim.urls["chatgpt"])
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
        self.connection.request(
            "POST", "/backend-api/conversation", body=body, headers=headers(token) | dict(extra)
        )
        self.response = self.connection.getresponse()
        self.reader = WebAnswerReader()
        _OPEN.append(self)

    def read_text(self, until: int | None = None) -> str:
        """Answer text until `until` characters arrived, or the end of the stream."""
        text = ""
        while until is None or len(text) < until:
            chunk = self.response.read1(65536)
            if not chunk:
                self.close()
                break
            text += "".join(self.reader.feed(chunk))
        return text

    def close(self) -> None:
        self.connection.close()


def converse(sim: Simulator, token: str, body: bytes | None = None, fresh: bool = True) -> Conversation:
    needs = requirements(sim, token)
    return Conversation(sim, token, conversation_headers(needs, proof_for(needs), DEVICE), body or web_body())


def test_the_whole_sentinel_flow_then_a_v1_answer(sim: Simulator) -> None:
    sim.sentinel(enforce="always", difficulty="03ffff")
    conversation = converse(sim, token_for("alice"))
    assert conversation.response.status == 200
    assert conversation.read_text() == "You said: Hello there "
    assert conversation.reader.framing == "v1" and conversation.reader.end().finish_reason == "stop"
    assert conversation.reader.conversation_id and conversation.reader.message_id
    state = sim.sentinel()
    assert state["accepted"] == 1 and state["refusals"] == []
    assert [t["user_agent_matches"] for t in state["issued"]] == [True]
    [stored] = sim.web_conversations()
    roles = [node["message"]["author"]["role"] for node in stored["mapping"].values() if node["message"]]
    assert roles[:2] == ["system", "user"]  # every OpenAI message went as its own web message


def refused(answer: Any) -> UpstreamError:
    error = refusal(answer.status, answer.body, own_token=False)
    assert error is not None, (answer.status, answer.body)
    return error


def post_conversation(sim: Simulator, token: str, extra: list[tuple[str, str]]) -> Any:
    return request(
        "POST",
        sim.urls["chatgpt"] + "/backend-api/conversation",
        headers=headers(token) | dict(extra),
        body=web_body(),
    )


def test_missing_reused_expired_foreign_and_weak_sentinel_headers_are_unusual_activity(
    sim: Simulator,
) -> None:
    alice, bob = token_for("alice"), token_for("bob")
    sim.sentinel(enforce="always", difficulty="0fffff")
    reasons = []
    assert post_conversation(sim, alice, []).status == 403
    reasons.append("missing chat-requirements token")
    needs = requirements(sim, alice)
    good = conversation_headers(needs, proof_for(needs), DEVICE)
    conversation = Conversation(sim, alice, good, web_body())
    assert conversation.response.status == 200 and conversation.read_text()
    conversation.close()
    answer = post_conversation(sim, alice, good)
    reasons.append("reused chat-requirements token")
    assert refused(answer).code == "upstream_blocked" and refused(answer).kind == "blocked"
    needs = requirements(sim, alice)
    assert post_conversation(sim, bob, conversation_headers(needs, proof_for(needs), DEVICE)).status == 403
    reasons.append("chat-requirements token of another account")
    sim.sentinel(difficulty="0000000f")  # a counter-0 answer practically never meets this
    needs = requirements(sim, alice)
    weak = PROOF_PREFIX + answer_for(telemetry().values(), 0)
    assert post_conversation(sim, alice, conversation_headers(needs, weak, DEVICE)).status == 403
    reasons.append("proof of work below the difficulty")
    sim.sentinel(token_ttl=-1, difficulty="0fffff")
    needs = requirements(sim, alice)
    assert post_conversation(sim, alice, conversation_headers(needs, proof_for(needs), DEVICE)).status == 403
    reasons.append("expired chat-requirements token")
    assert sim.sentinel()["refusals"] == reasons


def test_by_default_only_sentinel_headers_that_are_sent_are_checked(sim: Simulator) -> None:
    assert sim.sentinel()["settings"]["enforce"] == "when_sent"
    plain = request(
        "POST",
        sim.urls["chatgpt"] + "/backend-api/conversation",
        headers=headers(token_for("a")),
        body=web_body(),
    )
    assert plain.status == 200  # relayed clients send none
    bogus = post_conversation(sim, token_for("a"), [("OpenAI-Sentinel-Chat-Requirements-Token", "nope")])
    assert bogus.status == 403 and json.loads(bogus.body)["detail"].startswith("Unusual activity")


@pytest.mark.parametrize(("check", "name"), [("turnstile", "Turnstile"), ("arkose", "Arkose")])
def test_human_checks_are_reported_not_attempted(sim: Simulator, check: str, name: str) -> None:
    sim.sentinel(**{check: True})
    with pytest.raises(UpstreamError) as caught:
        requirements(sim, token_for("a"))
    assert caught.value.code == "upstream_verification_required" and name in caught.value.message


@pytest.mark.parametrize(
    ("kind", "status"), [("unauthorized", 401), ("challenge", 403), ("block", 403), ("rate_limited", 429)]
)
def test_chat_requirements_refusals_then_recovery(sim: Simulator, kind: str, status: int) -> None:
    sim.sentinel(refuse=kind, refuse_times=1)
    url = sim.urls["chatgpt"] + "/backend-api/sentinel/chat-requirements"
    body = json.dumps({"p": requirements_token(telemetry(), "0.1")})
    answer = request("POST", url, headers=headers(token_for("a")), body=body)
    assert answer.status == status
    if kind == "challenge":
        assert answer.header("cf-mitigated") == "challenge" and b"Just a moment..." in answer.body
    assert request("POST", url, headers=headers(token_for("a")), body=body).status == 200


def test_one_answer_at_a_time_per_account(sim: Simulator) -> None:
    alice = token_for("alice")
    sim.script_answer(["first ", "second"], gates={1: "held"})
    held = converse(sim, alice)
    assert held.read_text(until=6) == "first "
    sim.wait_reached("held")
    needs = requirements(sim, alice)
    busy = post_conversation(sim, alice, conversation_headers(needs, proof_for(needs), DEVICE))
    error = refused(busy)
    assert (busy.status, error.code, error.kind) == (429, "rate_limit_exceeded", "rate_limited")
    other = converse(sim, token_for("bob"))  # another account is free
    assert other.response.status == 200 and other.read_text().startswith("You said")
    sim.release("held")
    assert held.read_text() == "second"
    wait_for(lambda: sim.web_limits()["answering"].get("alice") == 0, what="alice's answer to end")
    again = converse(sim, alice)
    assert again.response.status == 200 and again.read_text()


def test_message_caps_say_when_they_clear(sim: Simulator) -> None:
    sim.web_limits(cap=1, clears_in=42)
    first = converse(sim, token_for("alice"))
    assert first.read_text()
    needs = requirements(sim, token_for("alice"))
    capped = post_conversation(sim, token_for("alice"), conversation_headers(needs, proof_for(needs), DEVICE))
    error = refused(capped)
    assert (capped.status, error.kind, error.retry_after) == (429, "rate_limited", 42)
    assert json.loads(capped.body)["detail"]["clears_in"] == 42


def test_history_and_hiding(sim: Simulator) -> None:
    token = token_for("alice")
    for history_disabled in (True, False):
        conversation = converse(sim, token, web_body(history=history_disabled))
        assert conversation.read_text()
    listed = request("GET", sim.urls["chatgpt"] + "/backend-api/conversations", headers=headers(token)).json()
    assert listed["total"] == 1  # the one with history disabled is never listed
    ident = listed["items"][0]["id"]
    patch = request(
        "PATCH",
        sim.urls["chatgpt"] + f"/backend-api/conversation/{ident}",
        headers=headers(token),
        body={"is_visible": False},
    )
    assert patch.status == 200
    listed = request("GET", sim.urls["chatgpt"] + "/backend-api/conversations", headers=headers(token)).json()
    assert listed["total"] == 0 and len(sim.web_conversations()) == 2


@pytest.mark.parametrize("framing", ["v1", "full"])
def test_scripted_in_stream_error_and_finish(sim: Simulator, framing: str) -> None:
    sim.script_answer(["a", "b", "c"], error_at=1, framing=framing)
    conversation = converse(sim, token_for("alice"))
    with pytest.raises(WebStreamFailure) as caught:
        conversation.read_text()
    assert caught.value.kind == "in_stream_error"
    sim.script_answer(["a", "b"], finish="max_tokens", framing=framing)
    conversation = converse(sim, token_for("alice"))
    assert conversation.read_text() == "ab" and conversation.reader.end().finish_reason == "length"
    assert conversation.reader.framing == framing


def test_a_client_that_goes_away_frees_the_account_and_is_journaled(sim: Simulator) -> None:
    sim.script_answer(["one ", "two"], gates={1: "g"})
    conversation = converse(sim, token_for("alice"))
    assert conversation.read_text(until=4) == "one "
    sim.wait_reached("g")
    conversation.close()
    wait_for(lambda: sim.web_limits()["answering"].get("alice") == 0, what="the slot to be freed")
    [entry] = sim.journal(path="/backend-api/conversation")
    assert entry["peer_closed_at"] is not None and not entry["completed"]
