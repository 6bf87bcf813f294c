"""The OpenAI chat request read for /imitate: every 400 of the contract, the model map, the web body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tornadoproxy.config.imitate import DEFAULT_MODEL, DEFAULT_MODELS
from tornadoproxy.errors import BadRequest, NotFound
from tornadoproxy.imitate.conversation import conversation_body
from tornadoproxy.imitate.models import ModelMap, resolve_model
from tornadoproxy.imitate.request import IGNORED_FIELDS, ChatMessage, read_chat_request


def body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"model": "gpt-4o", "model": "x", "messages": []}', None),  # duplicate keys: strict JSON
        (body(model=...), "model"),
        (body(model=5), "model"),
        (body(model=""), "model"),
        (body(messages=...), "messages"),
        (body(messages={"role": "user"}), "messages"),
        (body(messages=[]), "messages"),
        (body(messages=["hi"]), "messages[0]"),
        (body(messages=[{"content": "hi"}]), "messages[0].role"),
        (body(messages=[{"role": 1, "content": "hi"}]), "messages[0].role"),
        (body(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
        (
            body(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "x"}]),
            "messages[1].role",
        ),
        (body(messages=[{"role": "user"}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": None}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": 12}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": {"text": "x"}}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": []}]), "messages[0].content"),
        (body(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content[0]"),
        (
            body(messages=[{"role": "user", "content": [{"type": "text", "text": 3}]}]),
            "messages[0].content[0].text",
        ),
        (body(stream="true"), "stream"),
        (body(stream=1), "stream"),
        (body(stream=True, stream_options=[]), "stream_options"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "include_usage"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(n=2), "n"),
        (body(n="1"), "n"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(raw: bytes, param: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        read_chat_request(raw)
    error = caught.value
    assert error.status == 400 and error.code == "bad_request" and error.type == "invalid_request_error"
    assert error.param == param
    shape = json.loads(error.to_json())
    assert set(shape["error"]) == {"message", "type", "param", "code"} and shape["errorMessage"]


def test_non_text_parts_are_refused_naming_the_part_type() -> None:
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(BadRequest) as caught:
        read_chat_request(body(messages=[{"role": "user", "content": content}]))
    assert caught.value.param == "messages[0].content[1].type" and "image_url" in caught.value.message


def test_roles_and_text_parts_are_kept_in_order() -> None:
    request = read_chat_request(
        body(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "no emoji"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok", "name": "bot"},
                {"role": "user", "content": "", "name": "me"},
            ],
        )
    )
    assert request.messages == (
        ChatMessage("system", ("be brief",)),
        ChatMessage("system", ("no emoji",)),
        ChatMessage("user", ("a", "b")),
        ChatMessage("assistant", ("ok",)),
        ChatMessage("user", ("",)),
    )
    assert request.stream is False and request.include_usage is False


def test_stream_options_and_ignored_fields_are_accepted() -> None:
    ignored = {name: 1 for name in IGNORED_FIELDS} | {"some_future_field": {"x": 1}}
    request = read_chat_request(body(stream=True, stream_options={"include_usage": True}, n=1, **ignored))
    assert request.stream and request.include_usage
    assert read_chat_request(body(stream=None, stream_options=None)).stream is False


def test_model_map_exact_names_win_over_prefixes_then_the_default() -> None:
    models = ModelMap.build({"gpt-4*": "gpt-4", "gpt-4o": "gpt-4o", "o*": "o1", "o3": "o3"}, "auto")
    assert models.slug_for("gpt-4o") == "gpt-4o"  # exact beats the earlier prefix
    assert models.slug_for("gpt-4-turbo") == "gpt-4"
    assert models.slug_for("o4-mini") == "o1" and models.slug_for("o3") == "o3"
    assert models.slug_for("claude") == "auto" and models.mapped("claude") is None
    assert list(models.listed()) == ["gpt-4o", "o3"]
    no_default = ModelMap.build({"gpt-4o": "gpt-4o"}, "")
    with pytest.raises(NotFound) as caught:
        resolve_model(no_default, "claude")
    error = caught.value
    assert (error.status, error.code, error.param, error.type) == (
        404,
        "model_not_found",
        "model",
        "invalid_request_error",
    )
    with pytest.raises(ValueError):
        ModelMap.build({"*": "x"}, "")


def test_the_default_map_is_the_contracts_example() -> None:
    models = ModelMap.build(DEFAULT_MODELS, DEFAULT_MODEL)
    assert models.slug_for("gpt-3.5-turbo") == "text-davinci-002-render-sha"
    assert models.slug_for("anything") == "auto"


def test_each_message_goes_as_its_own_web_message_in_a_new_conversation() -> None:
    request = read_chat_request(
        body(
            messages=[
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "u"}]},
            ]
        )
    )
    web = conversation_body(request, "gpt-4o", history_and_training_disabled=True)
    assert web["action"] == "next" and "conversation_id" not in web and web["model"] == "gpt-4o"
    assert web["supported_encodings"] == ["v1"] and web["history_and_training_disabled"] is True
    ids = [message["id"] for message in web["messages"]] + [web["parent_message_id"]]
    assert len(set(ids)) == 3
    assert [(m["author"]["role"], m["content"]) for m in web["messages"]] == [
        ("system", {"content_type": "text", "parts": ["s"]}),
        ("user", {"content_type": "text", "parts": ["u"]}),
    ]
    again = conversation_body(request, "gpt-4o", history_and_training_disabled=False)
    assert (
        again["history_and_training_disabled"] is False
        and again["parent_message_id"] != web["parent_message_id"]
    )
