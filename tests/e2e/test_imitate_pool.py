"""/imitate/v1 served by the account pool: a client key as the OpenAI SDK's key, accounts of the
simulated web backend with its one-answer-at-a-time rule on, failover before the first byte to
accounts not yet tried, the queue, and the credentials that may (or may not) reach the pool."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.harness import Gateway, Simulator, metric_value, request, wait_for
from tests.pool_fixtures import jwt
from tests.secrets_used import ACCESS_TOKEN, CLIENT_KEY, INVALID_API_KEY
from tests.simulator.sentinel import UNUSUAL
from tornadoproxy.web.access import key_digest

COMPLETIONS = "/imitate/v1/chat/completions"
CONVERSATION = "/backend-api/conversation"
SENTINEL = "/backend-api/sentinel/chat-requirements"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
KEY_HEADER = {"X-Gateway-Key": CLIENT_KEY}
TOKENS = {f"acct{index}": jwt(sub=f"acct{index}") for index in range(4)}


@pytest.fixture
def sdk(imitate_sdk: Callable[..., openai.OpenAI]) -> Callable[..., openai.OpenAI]:
    """SDK clients of a gateway's /imitate/v1, with CLIENT_KEY as the key unless told otherwise."""

    def make(gw: Gateway, key: str = CLIENT_KEY, **options: Any) -> openai.OpenAI:
        return imitate_sdk(gw, key, **options)

    return make


def pool_gateway(make_gateway: Callable[..., Gateway], sim: Simulator, accounts: int, **pool: Any) -> Gateway:
    gw = make_gateway(
        {
            "access": {"client_keys": [key_digest(CLIENT_KEY)]},
            "accounts": [{"name": name, "access_token": TOKENS[name]} for name in list(TOKENS)[:accounts]],
            "pool": {"queue_timeout": 30, **pool},
        },
        ready=False,
    )
    gw.wait_ready(headers=KEY_HEADER)
    wait_for(lambda: all(a["state"] == "ready" for a in accounts_of(gw)), what="the accounts")
    sim.clear_journal()  # the start-up probes are not part of any test
    return gw


def metrics(gw: Gateway) -> str:
    return request("GET", gw.url + "/metrics", headers=KEY_HEADER).body.decode()


def accounts_of(gw: Gateway) -> list[dict[str, Any]]:
    return list(request("GET", gw.url + "/accounts", headers=KEY_HEADER).json()["accounts"])


def account_of(entry: dict[str, Any]) -> str:
    """Which account a journaled request was sent as."""
    bearer = next(v for k, v in entry["headers"] if k.lower() == "authorization")[7:]
    return next(name for name, token in TOKENS.items() if token == bearer)


def last_line(gw: Gateway) -> dict[str, Any]:
    """The access log line of the last /imitate completion (written just after its answer)."""
    return dict(wait_for(lambda: gw.access_lines(COMPLETIONS), what="the access log line")[-1])


def posted(sim: Simulator, path: str = CONVERSATION) -> list[dict[str, Any]]:
    return [entry for entry in sim.journal("chatgpt") if entry["path"] == path]


def test_streams_beyond_the_accounts_wait_and_each_account_answers_one_at_a_time(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    accounts, streams = 3, 8
    gw = pool_gateway(make_gateway, sim, accounts)
    sim.script_answer(["Hello", " from", " the pool"], gates={"1": "go"}, times=streams)
    client = sdk(gw)

    def converse() -> str:
        chunks = client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks)

    with ThreadPoolExecutor(streams) as executor:
        futures = [executor.submit(converse) for _ in range(streams)]
        wait_for(
            lambda: (
                sim.web_limits()["answering"] == {name: 1 for name in list(TOKENS)[:accounts]}
                and metric_value(metrics(gw), "tornadoproxy_pool_queue_length") == streams - accounts
            ),
            what="every account busy and the other requests queued",
        )
        sim.release("go")
        texts = [future.result(timeout=30) for future in futures]
    assert texts == ["Hello from the pool"] * streams
    limits = sim.web_limits()
    assert sum(limits["answered"].values()) == streams and set(limits["answered"]) == set(
        list(TOKENS)[:accounts]
    )
    assert len(posted(sim)) == streams  # no answer was refused "one at a time" and retried
    exposition = metrics(gw)
    assert metric_value(exposition, "tornadoproxy_imitate_errors_total", code="rate_limit_exceeded") == 0
    assert (
        metric_value(
            exposition, "tornadoproxy_imitate_completions_total", mode="stream", payer="pool", result="ok"
        )
        == streams
    )
    assert metric_value(exposition, "tornadoproxy_pool_queue_wait_seconds_count") == streams
    for name in list(TOKENS)[:accounts]:
        assert metric_value(exposition, "tornadoproxy_pool_requests_total", account=name, outcome="ok") >= 1


@pytest.mark.parametrize("where", ["sentinel challenge", "conversation unusual activity"])
def test_a_refusal_before_the_first_byte_is_retried_on_another_account(
    make_gateway: Callable[..., Gateway], sim: Simulator, where: str, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = pool_gateway(make_gateway, sim, 2)
    if where == "sentinel challenge":
        sim.sentinel(refuse="challenge", refuse_times=1)
        outcome, code = "challenge", "upstream_challenge"
    else:
        sim.script("chatgpt", CONVERSATION, {"status": 403, "json": UNUSUAL}, method="POST")
        outcome, code = "blocked", "upstream_blocked"
    answer = sdk(gw).chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in answer) == "You said: hello there "
    sent = [account_of(entry) for entry in posted(sim, SENTINEL)]
    assert len(sent) == 2 and sent[0] != sent[1]
    line = last_line(gw)
    assert line["attempts"] == 2 and line["account"] == sent[1] and line["status"] == 200
    report = {account["name"]: account for account in accounts_of(gw)}
    assert report[sent[0]]["requests"][outcome] == 1 and report[sent[0]]["state"] == "cooling"
    assert report[sent[0]]["last_error"] == code
    assert report[sent[1]]["requests"]["ok"] == 1
    assert metric_value(metrics(gw), "tornadoproxy_imitate_errors_total", code=code) == 1


def test_when_every_account_failed_the_client_hears_the_last_upstream_error(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = pool_gateway(make_gateway, sim, 2, attempts=3)
    sim.sentinel(refuse="challenge")
    with pytest.raises(openai.PermissionDeniedError) as raised:
        sdk(gw).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "upstream_challenge"  # not accounts_unavailable
    assert sorted(account_of(entry) for entry in posted(sim, SENTINEL)) == ["acct0", "acct1"]
    assert posted(sim) == []


def test_attempts_are_bounded_by_pool_attempts(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = pool_gateway(make_gateway, sim, 3, attempts=2)
    sim.sentinel(refuse="block")
    with pytest.raises(openai.PermissionDeniedError) as raised:
        sdk(gw).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "upstream_blocked"
    tried = [account_of(entry) for entry in posted(sim, SENTINEL)]
    assert len(tried) == 2 and len(set(tried)) == 2
    assert last_line(gw)["attempts"] == 2


def test_a_client_that_leaves_the_queue_is_out_of_it_at_once(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = pool_gateway(make_gateway, sim, 1)
    sim.script_answer(["held"], gates={"0": "held"})
    body = json.dumps({"model": "gpt-4o", "messages": HELLO, "stream": True})
    raw = (
        f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with socket.create_connection(("127.0.0.1", gw.port)) as first:
        first.sendall(raw)
        sim.wait_reached("held")
        with socket.create_connection(("127.0.0.1", gw.port)) as second:
            second.sendall(raw)
            wait_for(
                lambda: metric_value(metrics(gw), "tornadoproxy_pool_queue_length") == 1, what="a waiter"
            )
        wait_for(lambda: metric_value(metrics(gw), "tornadoproxy_pool_queue_length") == 0, what="it to leave")
        line = wait_for(lambda: gw.access_lines(COMPLETIONS), what="its access log line")[0]
        assert line["status"] == 499 and line["attempts"] == 0  # it never had an account
        sim.release("held")
    assert len(posted(sim)) == 1


def test_an_accounts_own_token_refused_is_tried_on_another(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = pool_gateway(make_gateway, sim, 2)
    sim.sentinel(refuse="unauthorized", refuse_times=1)
    answer = sdk(gw).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert answer.choices[0].message.content == "You said: hello there "
    first = account_of(posted(sim, SENTINEL)[0])
    report = {account["name"]: account for account in accounts_of(gw)}
    assert report[first]["state"] == "invalid" and report[first]["requests"]["unauthorized"] == 1


def test_an_own_token_with_a_client_key_is_answered_by_that_account(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = pool_gateway(make_gateway, sim, 1)
    client = sdk(gw, ACCESS_TOKEN, default_headers=KEY_HEADER)
    assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content
    (entry,) = posted(sim)
    assert (("Authorization", f"Bearer {ACCESS_TOKEN}")) in [tuple(h) for h in entry["headers"]]
    assert last_line(gw)["account"] == "(own token)"
    assert accounts_of(gw)[0]["requests"]["ok"] == 0


@pytest.mark.parametrize(
    ("key", "extra", "says"),
    [
        (ACCESS_TOKEN, {}, "X-Gateway-Key header beside an accessToken"),
        (INVALID_API_KEY, {}, "client key is not valid"),
        (ACCESS_TOKEN, {"X-Gateway-Key": INVALID_API_KEY}, "X-Gateway-Key header is not valid"),
        (INVALID_API_KEY, KEY_HEADER, "neither a client key"),
    ],
)
def test_credentials_the_pool_refuses_are_invalid_api_key(
    make_gateway: Callable[..., Gateway],
    sim: Simulator,
    key: str,
    extra: dict[str, str],
    says: str,
    sdk: Callable[..., openai.OpenAI],
) -> None:
    gw = pool_gateway(make_gateway, sim, 1)
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(gw, key, default_headers=extra).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "invalid_api_key" and says in raised.value.message
    assert sim.journal("chatgpt") == []


def test_no_own_tokens_when_the_operator_turns_them_off(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = make_gateway({"imitate": {"access_tokens": False}})
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(gw, ACCESS_TOKEN).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.code == "invalid_api_key" and "imitate.access_tokens" in raised.value.message
    assert sim.journal("chatgpt") == []


def test_without_client_keys_the_pool_is_never_reached(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = make_gateway({"accounts": [{"name": "acct0", "access_token": TOKENS["acct0"]}]})
    for key in (CLIENT_KEY, "anything"):
        with pytest.raises(openai.AuthenticationError) as raised:
            sdk(gw, key).chat.completions.create(model="gpt-4o", messages=HELLO)
        assert "no client keys" in raised.value.message
    assert sim.journal("chatgpt") == []


def test_the_accounts_tokens_never_reach_the_log_or_metrics(
    make_gateway: Callable[..., Gateway], sim: Simulator, sdk: Callable[..., openai.OpenAI]
) -> None:
    gw = pool_gateway(make_gateway, sim, 2)
    sdk(gw).chat.completions.create(model="gpt-4o", messages=HELLO)
    (entry,) = posted(sim)
    spent = [v for k, v in entry["headers"] if k.lower().startswith("openai-sentinel-")]
    sentinel_body = base64.b64decode(posted(sim, SENTINEL)[0]["body_b64"])
    spent.append(json.loads(sentinel_body)["p"])
    text = gw.log_text() + metrics(gw) + json.dumps(accounts_of(gw))
    assert len(spent) == 3 and not [s[:10] for s in [*spent, *TOKENS.values()] if s in text]
