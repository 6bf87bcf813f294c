"""OpenAI output of /imitate (chunks, the non-stream object, the in-stream error, models), the
sentinel's chat-requirements, and upstream refusals."""

from __future__ import annotations

import json

import pytest

from tornadoproxy.errors import Code, UpstreamError
from tornadoproxy.formats.sse import SSEParser
from tornadoproxy.imitate.output import ChunkStream, Usage, completion, model_list, stream_error
from tornadoproxy.imitate.refusals import refusal
from tornadoproxy.imitate.sentinel import conversation_headers, read_requirements, requirements_body


def events(data: bytes) -> list[str]:
    return [event.data for event in SSEParser().feed(data)]


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_is_one_id_role_first_content_finish_usage_done(include_usage: bool) -> None:
    stream = ChunkStream("gpt-4o", include_usage=include_usage)
    data = stream.role() + stream.content("Hel") + stream.content("lo") + stream.finish("length", Usage(5, 2))
    raw = events(data)
    assert raw[-1] == "[DONE]"
    chunks = [json.loads(item) for item in raw[:-1]]
    assert {c["id"] for c in chunks} == {stream.id} and stream.id.startswith("chatcmpl-")
    assert {c["created"] for c in chunks} == {stream.created} and {c["model"] for c in chunks} == {"gpt-4o"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hel", "lo"]
    assert chunks[3]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    if include_usage:
        assert chunks[4]["choices"] == [] and chunks[4]["usage"] == {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
        }
        assert all(c["usage"] is None for c in chunks[:4]) and len(chunks) == 5
    else:
        assert len(chunks) == 4 and all("usage" not in c for c in chunks)


def test_the_non_stream_object_always_has_usage() -> None:
    answer = completion("gpt-3.5-turbo", "Hi", "stop", Usage(3, 1))
    assert answer["object"] == "chat.completion" and answer["model"] == "gpt-3.5-turbo"
    assert (
        answer["choices"][0]["message"]["content"] == "Hi" and answer["choices"][0]["finish_reason"] == "stop"
    )
    assert answer["usage"]["total_tokens"] == 4


def test_a_failure_mid_stream_is_one_data_error_then_done() -> None:
    data = stream_error(UpstreamError("the upstream broke", code=Code.UPSTREAM_ERROR))
    assert b"event:" not in data
    raw = events(data)
    assert raw[1] == "[DONE]" and json.loads(raw[0])["error"]["code"] == "upstream_error"


def test_models_list_shape() -> None:
    assert model_list(["gpt-4o"]) == {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "chatgpt-web"}],
    }


def test_chat_requirements_are_read_and_human_checks_refused() -> None:
    plain = read_requirements(b'{"persona":"chatgpt-paid","token":"tok","proofofwork":{"required":false}}')
    assert plain.token == "tok" and not plain.proof_required
    pow_ = read_requirements(
        b'{"token":"t","proofofwork":{"required":true,"seed":"0.5","difficulty":"06a4f2"},"turnstile":{"required":false}}'
    )
    assert (pow_.proof_seed, pow_.proof_difficulty) == ("0.5", "06a4f2")
    assert conversation_headers(pow_, "gAAAAABx", "dev-1") == [
        ("OpenAI-Sentinel-Chat-Requirements-Token", "t"),
        ("OpenAI-Sentinel-Proof-Token", "gAAAAABx"),
        ("Oai-Device-Id", "dev-1"),
        ("Oai-Language", "en-US"),
    ]
    for check, name in (("turnstile", "Turnstile"), ("arkose", "Arkose")):
        with pytest.raises(UpstreamError) as caught:
            read_requirements(json.dumps({"token": "t", check: {"required": True, "dx": "blob"}}).encode())
        assert caught.value.code == "upstream_verification_required" and caught.value.status == 403
        assert name in caught.value.message
    for bad in (b"<html>", b"[]", b"{}", b'{"token":"t","proofofwork":{"required":true}}'):
        with pytest.raises(UpstreamError):
            read_requirements(bad)
    assert json.loads(requirements_body("gAAAAACx")) == {"p": "gAAAAACx"}


def test_upstream_refusals_become_the_contracts_codes() -> None:
    unusual = refusal(
        403,
        b'{"detail":"Unusual activity has been detected from your device. Try again later."}',
        own_token=False,
    )
    assert unusual is not None and (unusual.status, unusual.code, unusual.kind) == (
        403,
        "upstream_blocked",
        "blocked",
    )
    busy = refusal(
        429,
        b'{"detail":"Only one message at a time. Please allow any other responses to complete."}',
        own_token=False,
    )
    assert (
        busy is not None
        and "already answering" in busy.message
        and (busy.code, busy.kind, busy.retry_after)
        == (
            "rate_limit_exceeded",
            "rate_limited",
            None,
        )
    )
    cap = refusal(
        429,
        b'{"detail":{"code":"model_cap_exceeded","clears_in":90.2,'
        b'"message":"You\'ve reached our limit of messages per hour."}}',
        own_token=False,
    )
    assert (
        cap is not None
        and cap.kind == "rate_limited"
        and "cap" in cap.message
        and cap.retry_after == 91
        and cap.headers() == [("Retry-After", "91")]
    )
    own = refusal(401, b'{"detail":"Unauthorized"}', own_token=True)
    assert own is not None and (own.status, own.code) == (401, "invalid_api_key")
    pooled = refusal(401, b'{"detail":"Unauthorized"}', own_token=False)
    assert pooled is not None and pooled.status == 502 and pooled.kind == "unauthorized"
    assert refusal(403, b"<html>Just a moment...</html>", own_token=False) is None  # diagnosis reads pages
    assert refusal(500, b'{"detail":"x"}', own_token=False) is None


@pytest.mark.parametrize("model", ["gpt-4o", 'odd "model" \u0000 name', "ünïcode"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_content_chunks_from_the_template_are_the_chunks_themselves(model: str, include_usage: bool) -> None:
    stream = ChunkStream(model, include_usage=include_usage)
    for text in ("token ", 'quote " backslash \\ newline \n', "\u0000\u2028 你好 🙂", ""):
        assert stream.content(text) == stream._chunk({"content": text}, None)
        chunk = json.loads(stream.content(text).decode()[len("data: ") :])
        assert chunk["choices"][0]["delta"] == {"content": text} and chunk["model"] == model
