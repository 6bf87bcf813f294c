"""The relayed routes' affinity: the conversation map's bounds in one process (size, time since the
last answer, sentinel tokens briefly and as digests), the conversation a request names, and what an
answer's ending does to its account (answer_outcome)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tornadoproxy.errors import Code, GatewayBusy, UpstreamError
from tornadoproxy.pool.affinity import SENTINEL_TTL, AffinityMap
from tornadoproxy.web.pooled_relay import AnswerWatch, answer_outcome, body_fields, conversation_of

CONVERSATION = "6f1c2a9e-3b4d-4c5e-8f70-1a2b3c4d5e6f"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def lookup(affinity: AffinityMap, conversation: str) -> str | None:
    return asyncio.run(affinity.conversation_account(conversation))


def test_a_conversation_is_bound_for_the_ttl_after_its_last_answer() -> None:
    clock = Clock()
    affinity = AffinityMap(100, conversation_ttl=3600, shared=None, clock=clock)
    affinity.learn_conversation(CONVERSATION, "alice")
    clock.now += 3000
    assert lookup(affinity, CONVERSATION) == "alice"
    affinity.learn_conversation(CONVERSATION, "alice")  # another answer in it: 3600 s from now
    clock.now += 3000
    assert lookup(affinity, CONVERSATION) == "alice"
    clock.now += 601
    assert lookup(affinity, CONVERSATION) is None and len(affinity) == 0


def test_the_map_keeps_at_most_its_size_the_least_recent_going_first() -> None:
    clock = Clock()
    affinity = AffinityMap(3, conversation_ttl=3600, shared=None, clock=clock)
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(5)]
    for n, ident in enumerate(ids):
        affinity.learn_conversation(ident, f"acct{n}")
        clock.now += 1
    assert len(affinity) == 3
    assert [lookup(affinity, ident) for ident in ids] == [None, None, "acct2", "acct3", "acct4"]


def test_a_sentinel_token_binds_briefly_and_is_kept_as_a_digest() -> None:
    clock = Clock()
    affinity = AffinityMap(10, conversation_ttl=3600, shared=None, clock=clock)
    token = "gAAAAAB-a-chat-requirements-token-" + "x" * 40
    affinity.learn_sentinel(token, "bob")
    assert asyncio.run(affinity.sentinel_account(token)) == "bob"
    assert token not in repr(affinity._local) and "x" * 20 not in repr(affinity._local)
    clock.now += SENTINEL_TTL + 1
    assert asyncio.run(affinity.sentinel_account(token)) is None


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (f"/backend-api/conversation/{CONVERSATION}", b"", CONVERSATION),
        (f"/backend-api/conversation/{CONVERSATION.upper()}", b"", CONVERSATION),
        (f"/backend-api/conversation/gen_title/{CONVERSATION}", b"{}", CONVERSATION),
        (
            "/backend-api/conversation/message_feedback",
            b'{"conversation_id":"%s"}' % CONVERSATION.encode(),
            CONVERSATION,
        ),
        (
            "/backend-api/conversation",
            b'{"conversation_id":"%s","model":"m"}' % CONVERSATION.encode(),
            CONVERSATION,
        ),
        ("/backend-api/conversation", b'{"conversation_id":null}', None),
        ("/backend-api/conversation", b'{"conversation_id":"not-a-uuid"}', None),
        ("/backend-api/conversation/message_feedback", b"not json", None),
        ("/backend-api/conversations", b"", None),
    ],
)
def test_the_conversation_a_request_names(path: str, body: bytes, expected: str | None) -> None:
    assert conversation_of(path, body_fields(body)) == expected


def watched(status: int, body: bytes) -> AnswerWatch:
    watch = AnswerWatch(AffinityMap(10, 3600, None), "alice")
    watch.body(status, body)
    return watch


QUIET = watched(200, b"")
CAP = b'{"detail":{"code":"model_cap_exceeded","message":"limit","clears_in":900}}'
UNUSUAL = b'{"detail":"Unusual activity has been detected from your device. Try again later."}'


@pytest.mark.parametrize(
    ("status", "stream_end", "error", "watch", "bound", "kind", "extra"),
    [
        (200, "done", None, QUIET, False, "ok", {}),
        (200, "client_gone", None, QUIET, False, "aborted", {}),
        (200, "shutdown", None, QUIET, False, "aborted", {}),
        (200, "upstream_error", None, QUIET, False, "transport", {"code": "upstream_unreachable"}),
        (None, None, None, QUIET, False, "aborted", {}),  # the client left before the answer
        (401, None, None, QUIET, False, "unauthorized", {}),
        (429, None, None, watched(429, CAP), False, "rate_limited", {"clears_in": 900.0}),
        (
            429,
            None,
            None,
            watched(429, b'{"detail":"Only one message at a time."}'),
            False,
            "rate_limited",
            {"clears_in": None},
        ),
        (403, None, None, watched(403, UNUSUAL), False, "ok", {}),  # the client's own sentinel headers
        (403, None, None, watched(403, UNUSUAL), True, "blocked", {}),  # a token issued through this account
        (404, None, None, QUIET, False, "ok", {}),
        (502, None, None, QUIET, False, "transport", {"code": "upstream_error"}),
        (None, None, UpstreamError("c", code=Code.UPSTREAM_CHALLENGE), QUIET, False, "challenge", {}),
        (None, None, UpstreamError("b", code=Code.UPSTREAM_BLOCKED), QUIET, False, "blocked", {}),
        (
            None,
            None,
            UpstreamError("t", code=Code.UPSTREAM_TIMEOUT),
            QUIET,
            False,
            "transport",
            {"code": "upstream_timeout"},
        ),
        (None, None, GatewayBusy.of(Code.SHUTTING_DOWN), QUIET, False, "aborted", {}),
    ],
)
def test_what_an_answer_does_to_its_account(
    status: int | None,
    stream_end: str | None,
    error: Any,
    watch: AnswerWatch,
    bound: bool,
    kind: str,
    extra: dict[str, Any],
) -> None:
    outcome = answer_outcome(status, stream_end, None, error, watch, bound)
    assert outcome.kind == kind
    for key, value in extra.items():
        assert getattr(outcome, key) == value
