"""/imitate/v1 as OpenAI clients meet it, answered by a client's own accessToken (no pool): the
official openai SDK against the gateway, the gateway against the simulated web backend with its
sentinel, proof-of-work check, both answer framings and one-answer-at-a-time limit."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.harness import Gateway, Simulator, metric_value, request, streaming, wait_for
from tests.pool_fixtures import jwt
from tests.secrets_used import ACCESS_TOKEN, API_KEY, EXPIRED_TOKEN
from tornadoproxy.imitate.request import ChatMessage
from tornadoproxy.imitate.tokens import EncodingCounter, load_counter, prompt_tokens

CONVERSATION = "/backend-api/conversation"
SENTINEL = "/backend-api/sentinel/chat-requirements"
COMPLETIONS = "/imitate/v1/chat/completions"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def counter() -> EncodingCounter:
    return load_counter()


@pytest.fixture
def sdk(imitate_sdk: Callable[..., openai.OpenAI]) -> Callable[..., openai.OpenAI]:
    """SDK clients of a gateway's /imitate/v1, with ACCESS_TOKEN as the key unless told otherwise."""

    def make(gw: Gateway, key: str = ACCESS_TOKEN, **options: Any) -> openai.OpenAI:
        return imitate_sdk(gw, key, **options)

    return make


def posted(sim: Simulator, path: str = CONVERSATION) -> list[dict[str, Any]]:
    return [entry for entry in sim.journal("chatgpt") if entry["path"] == path]


def header(entry: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in entry["headers"] if k.lower() == name.lower()), None)


def expected_usage(counter: EncodingCounter, text: str) -> tuple[int, int]:
    """The usage of an answer `text` to HELLO, counted here with the same tokenizer."""
    chat = (ChatMessage("user", ("hello there",)),)
    return prompt_tokens(counter, chat), counter.count(text)


@pytest.mark.parametrize("framing", ["v1", "full"])
def test_a_whole_completion_in_either_framing(
    gateway: Gateway,
    sim: Simulator,
    counter: EncodingCounter,
    framing: str,
    sdk: Callable[..., openai.OpenAI],
) -> None:
    pieces = ["Hello", ", wörld", " — 你好", "!"]
    sim.script_answer(pieces, framing=framing)
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, temperature=0.3, max_tokens=50
    )
    answer = raw.parse()
    text = "".join(pieces)
    assert answer.object == "chat.completion" and answer.model == "gpt-4o-mini"
    assert answer.id.startswith("chatcmpl-") and answer.choices[0].message.content == text
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == expected_usage(counter, text)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    (web,) = sim.web_conversations()
    assert raw.headers["x-conversation-id"] == web["id"] != answer.id
    assert raw.headers["x-message-id"] in web["mapping"]
    (entry,) = posted(sim)
    body = json.loads(base64.b64decode(entry["body_b64"]))
    assert body["model"] == "gpt-4o-mini" and body["history_and_training_disabled"] is True
    assert "max_tokens" not in body and "temperature" not in body
    state = sim.sentinel()
    assert state["accepted"] == 1 and state["refusals"] == [] and state["issued"][0]["user_agent_matches"]


@pytest.mark.parametrize("framing", ["v1", "full"])
def test_a_streamed_completion_in_either_framing(
    gateway: Gateway,
    sim: Simulator,
    counter: EncodingCounter,
    framing: str,
    sdk: Callable[..., openai.OpenAI],
) -> None:
    pieces = ["One", " two", " thr", "ee"]
    sim.script_answer(pieces, framing=framing)
    chunks = list(
        sdk(gateway).chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({chunk.id for chunk in chunks}) == 1 and len({chunk.created for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.model == "gpt-4o" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(pieces)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == "stop" and finish[0] is chunks[-2]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == expected_usage(counter, text)


def test_the_stream_ends_with_done_and_finish_length(gateway: Gateway, sim: Simulator) -> None:
    sim.script_answer(["cut short"], finish="max_tokens")
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True})
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}", "Content-Type": "application/json"}
    with streaming(gateway.url + COMPLETIONS, headers=headers, body=body) as answer:
        assert answer.status == 200 and answer.getheader("Content-Type", "").startswith("text/event-stream")
        assert answer.getheader("X-Conversation-Id")
        data = answer.read().decode()
    events = [line[6:] for line in data.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    assert "usage" not in json.loads(events[-2])  # only with stream_options.include_usage


def test_every_message_goes_upstream_as_its_own_web_message(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "developer", "content": "now in French"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": " part"}]},
    ]
    answer = sdk(gateway).chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "You said: second "
    (web,) = sim.web_conversations()
    sent = [node["message"] for node in web["mapping"].values() if node["message"]]
    assert [(m["author"]["role"], m["content"]["parts"]) for m in sent[:5]] == [
        ("system", ["be brief"]),
        ("user", ["first question"]),
        ("assistant", ["first answer"]),
        ("system", ["now in French"]),
        ("user", ["second", " part"]),
    ]


def test_the_first_text_is_sent_while_the_upstream_holds_the_next(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.script_answer(["first", " second", " third"], gates={"1": "second", "2": "third"})
    stream = sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    chunks = iter(stream)
    sim.wait_reached("second")
    assert next(chunks).choices[0].delta.role == "assistant"
    assert next(chunks).choices[0].delta.content == "first"  # arrived while "second" is held
    sim.release("second")
    sim.wait_reached("third")
    assert next(chunks).choices[0].delta.content == " second"
    sim.release("third")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " third"


def test_a_failure_midway_is_one_error_event_then_done(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    # The gate makes the text arrive first: an error in the same read as the first text would
    # still be before the first byte (and tried on another account).
    sim.script_answer(["fine", " so far", " never"], error_at=2, gates={"2": "fail"})
    before = metric_value(gateway.metrics(), "tornadoproxy_imitate_errors_total", code="upstream_error")
    chunks = iter(sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    seen = ""
    while seen != "fine so far":
        seen += next(chunks).choices[0].delta.content or ""
    sim.release("fail")
    with pytest.raises(openai.APIError) as raised:
        next(chunks)
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "upstream_error"
    assert "in the stream" in raised.value.body["message"]
    sim.script_answer(["fine", " never"], error_at=1, gates={"1": "fail-again"})
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True})
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    with streaming(gateway.url + COMPLETIONS, headers=headers, body=body) as answer:
        assert b"fine" in answer.read1(65536)
        sim.release("fail-again")
        data = answer.read().decode()
    events = [block for block in data.split("\n\n") if block]
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["error"]["code"] == "upstream_error"
    assert not any(block.startswith("event:") for block in events)
    after = metric_value(gateway.metrics(), "tornadoproxy_imitate_errors_total", code="upstream_error")
    assert after == before + 2


def test_a_client_that_leaves_ends_the_web_request_at_once(gateway: Gateway, sim: Simulator) -> None:
    sim.script_answer(["started", " never sent"], gates={"1": "held"})
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True})
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    seen = len(gateway.access_lines(COMPLETIONS))
    with streaming(gateway.url + COMPLETIONS, headers=headers, body=body) as answer:
        assert b"started" in answer.read1(65536) or b"started" in answer.read1(65536)
        sim.wait_reached("held")
    (entry,) = posted(sim)
    wait_for(
        lambda: sim.journal("chatgpt")[-1]["peer_closed_at"] is not None,
        what="the gateway to close the web request",
    )
    assert sim.web_limits()["answering"] == {"user-sim": 0}
    line = wait_for(lambda: gateway.access_lines(COMPLETIONS)[seen:], what="the access log line")[0]
    assert line["stream_end"] == "client_gone" and line["status"] == 200 and line["account"] == "(own token)"
    sim.release("held")


def test_a_client_that_stops_reading_a_stream_is_dropped_after_the_stall_timeout(
    make_gateway: Any, sim: Simulator
) -> None:
    """Chunks go to the socket at once while it takes them; once it does not, the writer waits for
    the client (holding the next web read back) and drops one that took nothing for
    server.client_stall_timeout."""
    gw = make_gateway({"server": {"client_stall_timeout": 1.0}})
    sim.script_answer(["x" * 8000] * 400)  # 3.2 MB of text, far beyond the sockets' buffers
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True}).encode()
    head = f"POST {COMPLETIONS} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ACCESS_TOKEN}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", gw.port))
        stalled.sendall(head.encode() + body)
        assert stalled.recv(1024).startswith(b"HTTP/1.1 200 ")  # then it reads no more
        line = wait_for(lambda: gw.access_lines(COMPLETIONS), what="the access log line")[0]
    assert line["stream_end"] == "client_gone" and line["status"] == 200
    assert "dropping a client that accepted nothing for 1 s" in gw.log_text()


def test_a_client_that_leaves_a_whole_answer_early_is_499(gateway: Gateway, sim: Simulator) -> None:
    sim.script_answer(["started", " never sent"], gates={"1": "held"})
    body = json.dumps({"model": "gpt-4o", "messages": HELLO})
    seen = len(gateway.access_lines(COMPLETIONS))
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACCESS_TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        sim.wait_reached("held")  # the answer has begun, and nothing is sent before its end
    wait_for(lambda: sim.journal("chatgpt")[-1]["peer_closed_at"] is not None, what="the web request to end")
    line = wait_for(lambda: gateway.access_lines(COMPLETIONS)[seen:], what="the access log line")[0]
    assert line["status"] == 499
    sim.release("held")


@pytest.fixture
def held_conversation(gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]) -> Iterator[None]:
    """One answer of the own token's account streaming, held at a gate."""
    sim.script_answer(["busy"], gates={"0": "busy"})
    done = threading.Event()

    def run() -> None:
        list(sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    sim.wait_reached("busy")
    yield
    sim.release("busy")
    thread.join(15)
    assert done.is_set()


@pytest.mark.usefixtures("held_conversation")
def test_a_second_answer_at_once_is_the_upstreams_rate_limit(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    with pytest.raises(openai.RateLimitError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "rate_limit_exceeded" and "already answering" in raised.value.message


def test_a_message_cap_says_when_it_clears(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.web_limits(cap=0, clears_in=125)
    with pytest.raises(openai.RateLimitError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.response.headers["retry-after"] == "125" and "message cap" in raised.value.message


@pytest.mark.parametrize(("check", "name"), [("turnstile", "Turnstile"), ("arkose", "Arkose")])
def test_a_human_check_is_403_naming_it(
    gateway: Gateway, sim: Simulator, check: str, name: str, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.sentinel(**{check: True})
    with pytest.raises(openai.PermissionDeniedError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "upstream_verification_required" and name in raised.value.message
    assert posted(sim) == []


@pytest.mark.parametrize(
    ("refuse", "code"), [("challenge", "upstream_challenge"), ("block", "upstream_blocked")]
)
def test_a_challenge_or_block_before_the_first_byte_is_a_clean_error(
    gateway: Gateway, sim: Simulator, refuse: str, code: str, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.sentinel(refuse=refuse)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert raised.value.code == code and raised.value.response.headers["content-type"] == "application/json"
    assert posted(sim) == []


def test_unusual_activity_is_403_upstream_blocked(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.sentinel(token_ttl=-1)  # every sentinel token has expired by the time it is spent
    with pytest.raises(openai.PermissionDeniedError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert raised.value.code == "upstream_blocked" and "unusual activity" in raised.value.message
    assert sim.sentinel()["refusals"] == ["expired chat-requirements token"]


def test_a_refused_own_token_is_invalid_api_key(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(gateway, EXPIRED_TOKEN).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "invalid_api_key" and "expired" in raised.value.message
    assert posted(sim) == [] and len(posted(sim, SENTINEL)) == 1


@pytest.mark.parametrize(
    "authorization", [None, f"Bearer {API_KEY}", "Basic dXNlcjpwYXNz", "Bearer", "eyJnope"]
)
def test_no_usable_credential_is_invalid_api_key_and_nothing_goes_upstream(
    gateway: Gateway, sim: Simulator, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method, path, body in (
        ("POST", COMPLETIONS, {"model": "gpt-4o", "messages": HELLO}),
        ("GET", "/imitate/v1/models", None),
    ):
        answer = request(method, gateway.url + path, headers=headers, body=body)
        error = answer.json()["error"]
        assert (answer.status, error["code"], error["type"]) == (
            401,
            "invalid_api_key",
            "invalid_request_error",
        )
        assert API_KEY not in answer.body.decode()
    assert sim.journal("chatgpt") == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        ({"model": "gpt-4o"}, "messages"),
        ({"model": "gpt-4o", "messages": []}, "messages"),
        ({"model": "gpt-4o", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
        ({"model": "gpt-4o", "messages": HELLO, "stream": "yes"}, "stream"),
    ],
)
def test_a_bad_request_is_400_naming_the_field_and_nothing_goes_upstream(
    gateway: Gateway, sim: Simulator, body: Any, param: str | None
) -> None:
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}", "Content-Type": "application/json"}
    answer = request("POST", gateway.url + COMPLETIONS, headers=headers, body=body)
    error = answer.json()["error"]
    assert (answer.status, error["code"], error["type"], error["param"]) == (
        400,
        "bad_request",
        "invalid_request_error",
        param,
    )
    assert sim.journal("chatgpt") == []


def test_models_list_and_retrieve(gateway: Gateway, sdk: Callable[..., openai.OpenAI]) -> None:
    client = sdk(gateway)
    assert [model.id for model in client.models.list()] == ["gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo"]
    assert client.models.retrieve("gpt-4o-mini").owned_by == "chatgpt-web"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("gpt-9-turbo")  # the default answers it, but only mapped names exist
    assert raised.value.code == "model_not_found"


def test_a_model_the_map_does_not_resolve_is_404(
    make_gateway: Any, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = make_gateway({"imitate": {"models": {"gpt-4*": "gpt-4o", "o3": "o3"}, "default_model": ""}})
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(gw).chat.completions.create(model="claude-3", messages=HELLO)
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert sim.journal("chatgpt") == []
    answer = sdk(gw).chat.completions.create(model="gpt-4.1-nano", messages=HELLO)
    assert answer.model == "gpt-4.1-nano"  # the name asked for, not the slug
    (entry,) = posted(sim)
    assert json.loads(base64.b64decode(entry["body_b64"]))["model"] == "gpt-4o"
    assert sdk(gw).models.retrieve("gpt-4-anything").id == "gpt-4-anything"
    assert [model.id for model in sdk(gw).models.list()] == ["o3"]


def test_hidden_after_completion_on_moved_paths(
    make_gateway: Any, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = make_gateway({"imitate": {"history": "hide", "conversation_path": "/backend-api/f/conversation"}})
    raw = sdk(gw).chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    conversation = raw.headers["x-conversation-id"]
    assert posted(sim, "/backend-api/f/conversation") and posted(sim) == []

    def hidden() -> bool:
        (web,) = sim.web_conversations()
        return web["id"] == conversation and web["is_visible"] is False

    wait_for(hidden, what="the conversation to be hidden")
    assert sim.web_conversations()[0]["history_disabled"] is False
    wait_for(
        lambda: (
            metric_value(gw.metrics(), "tornadoproxy_imitate_conversations_hidden_total", result="ok") == 1
        ),
        what="the hide to be counted",
    )


def test_a_proof_of_work_too_hard_is_refused_without_hashing(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.sentinel(difficulty="000001")
    before = metric_value(
        gateway.metrics(), "tornadoproxy_imitate_proof_of_work_failures_total", reason="too_hard"
    )
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.status_code == 502 and raised.value.code == "upstream_proof_of_work_failed"
    exposition = gateway.metrics()
    assert (
        metric_value(exposition, "tornadoproxy_imitate_proof_of_work_failures_total", reason="too_hard")
        == before + 1
    )
    assert posted(sim) == []


def test_an_answer_without_text_is_502(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.script_answer([""])
    with pytest.raises(openai.InternalServerError) as raised:
        sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert raised.value.code == "upstream_error" and "no assistant text" in raised.value.message


def test_the_sentinel_tokens_and_the_access_token_never_reach_the_log(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    sim.sentinel(enforce="always")
    answer = sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.choices[0].message.content == "You said: hello there "
    (entry,) = posted(sim)
    secrets = [
        header(entry, "OpenAI-Sentinel-Chat-Requirements-Token"),
        header(entry, "OpenAI-Sentinel-Proof-Token"),
    ]
    (sentinel_call,) = posted(sim, SENTINEL)
    secrets.append(json.loads(base64.b64decode(sentinel_call["body_b64"]))["p"])
    assert all(secrets) and header(entry, "Oai-Device-Id")
    text = gateway.log_text() + gateway.metrics()
    assert not [secret[:12] for secret in secrets if secret and secret in text]
    assert ACCESS_TOKEN not in text


def test_metrics_count_completions_tokens_and_the_proof_of_work(
    gateway: Gateway, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    def figures() -> dict[str, float]:
        exposition = gateway.metrics()
        return {
            "ok": metric_value(
                exposition, "tornadoproxy_imitate_completions_total", mode="plain", payer="token", result="ok"
            ),
            "first": metric_value(
                exposition, "tornadoproxy_imitate_first_token_seconds_count", payer="token"
            ),
            "completion": metric_value(exposition, "tornadoproxy_imitate_tokens_total", kind="completion"),
            "proofs": metric_value(exposition, "tornadoproxy_imitate_proof_of_work_seconds_count"),
            "hashes": metric_value(exposition, "tornadoproxy_imitate_proof_of_work_attempts_sum"),
        }

    before = figures()
    seen = len(gateway.access_lines(COMPLETIONS))
    sdk(gateway).chat.completions.create(model="gpt-4o", messages=HELLO)
    after = figures()
    assert after["ok"] == before["ok"] + 1 and after["first"] == before["first"] + 1
    assert after["completion"] > before["completion"] and after["proofs"] == before["proofs"] + 1
    assert after["hashes"] > before["hashes"]
    line = wait_for(lambda: gateway.access_lines(COMPLETIONS)[seen:], what="the access log line")[-1]
    assert line["attempts"] == 1 and line["model"] == "gpt-4o" and line["completion_tokens"] > 0
    assert line["first_token_ms"] > 0 and line["upstream_status"] == 200


def proof_workers(gw: Gateway) -> list[int]:
    """The gateway's proof-of-work processes (spawned children running multiprocessing's worker)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == gw.process.pid and b"spawn_main" in command:
            found.append(int(entry))
    return found


def niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


def test_proofs_are_solved_in_a_niced_worker_that_is_replaced_when_it_dies(
    make_gateway: Any, sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    # With an account configured the worker spawns at start-up (without, at the first completion).
    gw = make_gateway({"accounts": [{"name": "niced", "access_token": jwt(sub="niced")}]})
    (worker,) = wait_for(lambda: proof_workers(gw), what="the proof-of-work worker to start")
    wait_for(lambda: niceness(worker) == 10, what="its initializer to lower its priority")
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: worker not in proof_workers(gw), what="the worker to be gone")
    answer = sdk(gw).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.choices[0].message.content == "You said: hello there "
    assert sim.sentinel()["accepted"] == 1
    (replacement,) = proof_workers(gw)
    assert replacement != worker and niceness(replacement) == 10  # it has solved a proof already
    assert "a proof-of-work worker process died" in gw.log_text()
