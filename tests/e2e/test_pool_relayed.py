"""Relayed /chatgpt routes served by the pool (pool.serve_chatgpt) through a real gateway: a client
with a client key and no accessToken gets pool accounts. Conversations take a slot (the simulator's
one-answer-at-a-time rule would refuse a second one in flight), wait in the queue and leave it when
their client goes away; reads and edits of a conversation go to the account that made it (its token,
its proxy's address in the journal, through real microsocks and tinyproxy); a 401 on the pool's
token starts one fresh login; neither the client key nor a pool token ever shows where it must not."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis as redis_client

from tests.egress_fixtures import Proxies
from tests.harness import Gateway, RedisServer, Response, Simulator, metric_value, request, wait_for
from tests.pool_fixtures import jwt
from tests.secrets_used import ACCESS_TOKEN, CLIENT_KEY, LOGIN_PASSWORD
from tests.simulator import pages
from tornadoproxy.pool.affinity import AffinityMap
from tornadoproxy.pool.shared import SharedSlots
from tornadoproxy.web.access import key_digest

KEY = {"X-Gateway-Key": CLIENT_KEY}
MODEL = "text-davinci-002-render-sha"


def pooled(accounts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A gateway whose /chatgpt routes the pool serves to clients with a client key."""
    return {
        "accounts": accounts,
        "access": {"client_keys": [key_digest(CLIENT_KEY)]},
        "pool": {"serve_chatgpt": True, **extra.pop("pool", {})},
        "tokens": {"kdf_cost": 10},
        **extra,
    }


def fixed(names: list[str]) -> list[dict[str, Any]]:
    """Fixed-token accounts, each its own account upstream (the simulator keys accounts by `sub`)."""
    return [
        {"name": name, "access_token": jwt(sub=f"relayed-{name}-{uuid.uuid4().hex[:6]}")} for name in names
    ]


def start(make_gateway: Any, config: dict[str, Any]) -> Gateway:
    gw: Gateway = make_gateway(config, ready=False)
    gw.wait_ready(headers=KEY)
    settled = ("ready", "invalid")  # logged in, or never to be (an expired fixed token)
    wait_for(lambda: all(a["state"] in settled for a in accounts_report(gw)), what="the accounts")
    return gw


def accounts_report(gw: Gateway) -> list[dict[str, Any]]:
    return list(request("GET", gw.url + "/accounts", headers=KEY).json()["accounts"])


def shared_state(gw: Gateway) -> str:
    return str(request("GET", gw.url + "/accounts", headers=KEY).json()["shared"])


def metrics(gw: Gateway) -> str:
    return request("GET", gw.url + "/metrics", headers=KEY).body.decode()


def message_body(text: str = "hello", conversation: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": "next",
        "messages": [{"id": str(uuid.uuid4()), "content": {"content_type": "text", "parts": [text]}}],
        "parent_message_id": str(uuid.uuid4()),
        "model": MODEL,
        **extra,
    }
    if conversation is not None:
        body["conversation_id"] = conversation
    return body


def converse(gw: Gateway, headers: dict[str, str] | None = None, **body: Any) -> Response:
    return request(
        "POST",
        gw.url + "/chatgpt/conversation",
        headers={**KEY, **(headers or {})},
        body=message_body(**body),
    )


def conversation_id(answer: Response) -> str:
    for line in answer.body.decode().splitlines():
        if line.startswith("data: {"):
            found = json.loads(line[6:]).get("conversation_id")
            if found:
                return str(found)
    raise AssertionError(f"no conversation_id in {answer.body[:200]!r}")


def upstream_account(entry: dict[str, Any], tokens: dict[str, str]) -> str:
    """The pool account whose token a journal entry carried."""
    headers = {name.lower(): value for name, value in entry["headers"]}
    (name,) = [name for name, token in tokens.items() if headers.get("authorization") == f"Bearer {token}"]
    return name


def tokens_of(accounts: list[dict[str, Any]]) -> dict[str, str]:
    return {account["name"]: account["access_token"] for account in accounts}


def test_concurrent_conversations_share_the_accounts_one_answer_each(
    make_gateway: Any, sim: Simulator
) -> None:
    accounts = fixed(["acct0", "acct1", "acct2"])
    gw = start(make_gateway, pooled(accounts))
    total, held = 8, len(accounts)
    assert sim.web_limits()["limits"]["one_at_a_time"] is True
    sim.script_answer(["Hello", " there"], gates={1: "hold"}, times=total)
    with ThreadPoolExecutor(total) as pool:
        answers = [pool.submit(converse, gw, text=f"question {n}") for n in range(total)]
        # Every account streams one answer, held by the simulator; the others wait in the queue.
        wait_for(
            lambda: (
                len(sim.journal("chatgpt", "/backend-api/conversation")) == held
                and metric_value(metrics(gw), "tornadoproxy_pool_queue_length") == total - held
            ),
            what="one answer per account in flight, the rest queued",
        )
        assert all(a["state"] == "busy" and a["in_flight"] == 1 for a in accounts_report(gw))
        sim.release("hold")
        results = [answer.result() for answer in answers]
    assert [r.status for r in results] == [200] * total, [r.body[:200] for r in results]
    assert all(b"Hello there" in r.body for r in results)
    served = Counter(str(r.header("X-Pool-Account")) for r in results)
    assert set(served) == {"acct0", "acct1", "acct2"} and sum(served.values()) == total
    # No request was refused upstream, nor sent twice: one conversation per client request.
    journal = sim.journal("chatgpt", "/backend-api/conversation")
    assert len(journal) == total
    tokens = tokens_of(accounts)
    assert Counter(upstream_account(entry, tokens) for entry in journal) == served
    for entry in journal:
        headers = {name.lower(): value for name, value in entry["headers"]}
        assert "x-gateway-key" not in headers and CLIENT_KEY not in json.dumps(entry)
    exposition = metrics(gw)
    for name, count in served.items():
        assert (
            metric_value(exposition, "tornadoproxy_pool_requests_total", account=name, outcome="ok") == count
        )
    assert metric_value(exposition, "tornadoproxy_pool_queue_length") == 0
    lines = gw.access_lines("/chatgpt/conversation")
    assert Counter(line["account"] for line in lines) == served
    log = gw.log_text()
    assert not [token for token in tokens.values() if token in log]


def read_conversation(gw: Gateway, ident: str) -> Response:
    return request("GET", f"{gw.url}/chatgpt/conversation/{ident}", headers=KEY)


def test_a_conversation_is_read_edited_and_continued_by_the_account_that_made_it(
    make_gateway: Any, sim: Simulator, proxies: Proxies
) -> None:
    accounts = fixed(["alice", "bob"])
    accounts[0]["proxy"] = proxies.socks.url()  # microsocks, out via 127.0.0.2
    accounts[1]["proxy"] = proxies.tiny.url()  # tinyproxy, out via 127.0.0.3
    address = {"alice": "127.0.0.2", "bob": "127.0.0.3"}
    gw = start(make_gateway, pooled(accounts))
    made: dict[str, str] = {}
    for _ in range(2):  # the account idle longest serves: one conversation each
        answer = converse(gw)
        assert answer.status == 200
        made[str(answer.header("X-Pool-Account"))] = conversation_id(answer)
    assert set(made) == {"alice", "bob"}
    sim.clear_journal()
    for owner, ident in made.items():
        # The simulator, like the upstream, answers 404 to any other account.
        stored = read_conversation(gw, ident)
        assert stored.status == 200 and stored.header("X-Pool-Account") == owner
        node = stored.json()["current_node"]
        url = f"{gw.url}/chatgpt/conversation/{ident}"
        assert request("PATCH", url, headers=KEY, body={"title": f"{owner}'s"}).status == 200
        assert request("POST", url, headers=KEY, body={"is_visible": True}).status == 200  # POST for PATCH
        titled = request(
            "POST", f"{gw.url}/chatgpt/conversation/gen_title/{ident}", headers=KEY, body={"message_id": node}
        )
        assert titled.status == 200, titled.body
        rating = {"message_id": node, "conversation_id": ident, "rating": "thumbsUp"}
        feedback = request(
            "POST", f"{gw.url}/chatgpt/conversation/message_feedback", headers=KEY, body=rating
        )
        assert feedback.status == 200, feedback.body
        # Continued, even while the other account is the one idle longest.
        follow_up = converse(gw, conversation=ident, text="and then?")
        assert follow_up.status == 200 and follow_up.header("X-Pool-Account") == owner
        assert conversation_id(follow_up) == ident
    tokens = tokens_of(accounts)
    journal = sim.journal("chatgpt")
    assert len(journal) == 2 * 6
    devices: dict[str, set[str]] = {"alice": set(), "bob": set()}
    for entry in journal:
        account = upstream_account(entry, tokens)
        text = entry["path"] + base64.b64decode(entry["body_b64"]).decode()
        (ident,) = [ident for ident in made.values() if ident in text]
        assert made[account] == ident, entry["path"]
        assert entry["remote_ip"] == address[account], (account, entry["path"])
        devices[account].add({name.lower(): value for name, value in entry["headers"]}["oai-device-id"])
    # Each account's own stable device id, never the client's.
    assert all(len(ids) == 1 for ids in devices.values()) and devices["alice"] != devices["bob"]
    for line in gw.access_lines():
        if line["route"].startswith("/chatgpt/"):
            assert line["account"] in made and line["status"] == 200


def test_lists_and_hide_all_act_on_the_named_account_else_the_first(
    make_gateway: Any, sim: Simulator
) -> None:
    accounts = [*fixed(["alice", "bob"]), {"name": "carol", "access_token": jwt(ttl=-60, sub="carol")}]
    gw = start(make_gateway, pooled(accounts))
    made = {}
    for name in ("bob", "alice"):
        answer = converse(gw, headers={"X-Pool-Account": name}, text=f"from {name}")
        assert answer.status == 200 and answer.header("X-Pool-Account") == name
        made[name] = conversation_id(answer)
    url = gw.url + "/chatgpt/conversations"
    named = request("GET", url, headers={**KEY, "X-Pool-Account": "bob"})
    assert named.header("X-Pool-Account") == "bob"
    assert [item["id"] for item in named.json()["items"]] == [made["bob"]]
    default = request("GET", url, headers=KEY)
    assert default.header("X-Pool-Account") == "alice"  # the first account of the configuration
    assert [item["id"] for item in default.json()["items"]] == [made["alice"]]
    hidden = request("PATCH", url, headers={**KEY, "X-Pool-Account": "bob"}, body={"is_visible": False})
    assert hidden.status == 200 and hidden.json() == {"success": True}
    visible = {c["id"]: c["is_visible"] for c in sim.web_conversations()}
    assert visible == {made["bob"]: False, made["alice"]: True}
    unknown = request("GET", url, headers={**KEY, "X-Pool-Account": "mallory"})
    assert unknown.status == 400 and unknown.json()["error"]["code"] == "bad_request"
    assert "X-Pool-Account" in unknown.json()["error"]["message"]
    for refused in (
        request("GET", url, headers={**KEY, "X-Pool-Account": "carol"}),
        converse(gw, headers={"X-Pool-Account": "carol"}),
    ):
        error = refused.json()["error"]
        assert refused.status == 503 and error["code"] == "accounts_unavailable"
        assert "(carol)" in error["message"] and "expired" in error["message"]


def test_a_client_that_leaves_the_queue_is_gone_from_it_at_once(make_gateway: Any, sim: Simulator) -> None:
    gw = start(make_gateway, pooled(fixed(["solo"])))
    sim.script_answer(["Hello", " there"], gates={1: "hold"}, times=1)
    body = json.dumps(message_body())
    raw = (
        f"POST /chatgpt/conversation HTTP/1.1\r\nHost: x\r\nX-Gateway-Key: {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(converse, gw)
        sim.wait_reached("hold")
        waiting = socket.create_connection(("127.0.0.1", gw.port))
        waiting.sendall(raw)
        wait_for(lambda: metric_value(metrics(gw), "tornadoproxy_pool_queue_length") == 1, what="a waiter")
        waiting.close()
        wait_for(lambda: metric_value(metrics(gw), "tornadoproxy_pool_queue_length") == 0, what="it left")
        wait_for(lambda: [e for e in gw.access_lines("/chatgpt/conversation") if e["status"] == 499])
        sim.release("hold")
        assert first.result().status == 200
    assert len(sim.journal("chatgpt", "/backend-api/conversation")) == 1  # the leaver never went upstream
    (gone,) = [line for line in gw.access_lines("/chatgpt/conversation") if line["status"] == 499]
    assert "account" not in gone and gone["upstream_status"] is None


def json_answer(status: int, payload: Any) -> dict[str, Any]:
    """A scripted upstream answer (the simulator's script format)."""
    return {"status": status, "headers": [["Content-Type", "application/json"]], "json": payload}


def test_a_401_on_the_pool_token_starts_one_fresh_login(make_gateway: Any, sim: Simulator) -> None:
    email = f"relayed+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(email, LOGIN_PASSWORD)
    gw = start(make_gateway, pooled([{"name": "pw", "username": email, "password": LOGIN_PASSWORD}]))
    assert sim.account_counters(email)["logins"] == 1
    sim.script("chatgpt", "/backend-api/conversation", json_answer(401, {"detail": "Unauthorized"}))
    refused = converse(gw)
    # Passed through as the upstream said it (relayed routes never fail over), naming the account.
    assert refused.status == 401 and refused.json() == {"detail": "Unauthorized"}
    assert refused.header("X-Pool-Account") == "pw"
    wait_for(lambda: sim.account_counters(email)["logins"] == 2, what="the fresh login")
    served = converse(gw)  # waits for the new token if the login is still finishing
    assert served.status == 200
    first, second = sim.journal("chatgpt", "/backend-api/conversation")
    old, new = (dict((k.lower(), v) for k, v in e["headers"])["authorization"] for e in (first, second))
    assert old != new and new.removeprefix("Bearer ") in sim.issued_tokens()
    # A read refused the same way: one more login, and the read after it is served.
    sim.script("chatgpt", "/backend-api/conversations", json_answer(401, {"detail": "Unauthorized"}))
    assert request("GET", gw.url + "/chatgpt/conversations", headers=KEY).status == 401
    wait_for(lambda: sim.account_counters(email)["logins"] == 3, what="the read's fresh login")
    assert request("GET", gw.url + "/chatgpt/conversations", headers=KEY).status == 200
    assert sim.account_counters(email)["logins"] == 3
    exposition = metrics(gw)
    assert (
        metric_value(exposition, "tornadoproxy_pool_requests_total", account="pw", outcome="unauthorized")
        == 1
    )
    assert metric_value(exposition, "tornadoproxy_pool_requests_total", account="pw", outcome="ok") == 1
    log = gw.log_text()
    assert email not in log and not [t for t in sim.issued_tokens() if t in log]


def test_a_429_or_a_challenge_passes_to_the_client_and_rests_the_account(
    make_gateway: Any, sim: Simulator
) -> None:
    gw = start(make_gateway, pooled(fixed(["alice", "bob"]), pool={"queue_size": 0}))  # none waits
    detail = {"code": "model_cap_exceeded", "message": "You've reached our limit", "clears_in": 900}
    sim.script("chatgpt", "/backend-api/conversation", json_answer(429, {"detail": detail}))
    limited = converse(gw)
    assert limited.status == 429 and limited.json() == {"detail": detail}
    assert limited.header("X-Pool-Account") == "alice"
    report = {a["name"]: a for a in accounts_report(gw)}
    assert report["alice"]["state"] == "cooling" and report["alice"]["last_error"] == "rate_limit_exceeded"
    until = datetime.datetime.fromisoformat(report["alice"]["cooldown_until"].replace("Z", "+00:00"))
    assert until.timestamp() > time.time() + 800  # clears_in, not the 30 s backoff
    challenge = pages.challenge()
    sim.script("chatgpt", "/backend-api/conversation", challenge)
    challenged = converse(gw)  # bob: alice rests
    assert challenged.status == 403 and challenged.json()["error"]["code"] == "upstream_challenge"
    assert challenged.header("X-Pool-Account") == "bob"
    report = {a["name"]: a for a in accounts_report(gw)}
    assert report["bob"]["state"] == "cooling" and report["bob"]["last_error"] == "upstream_challenge"
    busy = converse(gw)  # both rest: the pool says when to come back
    assert (
        busy.status == 429 and busy.json()["error"]["code"] == "accounts_busy" and busy.header("Retry-After")
    )
    assert len(sim.journal("chatgpt", "/backend-api/conversation")) == 2  # never retried elsewhere
    exposition = metrics(gw)
    outcomes = {"alice": "rate_limited", "bob": "challenge"}
    for name, outcome in outcomes.items():
        assert (
            metric_value(exposition, "tornadoproxy_pool_requests_total", account=name, outcome=outcome) == 1
        )
    # Counted once as the upstream's error, not once more by the relay as an egress failure.
    assert (
        metric_value(exposition, "tornadoproxy_upstream_errors_total", upstream="chatgpt", kind="challenge")
        == 1
    )


def requirements_token() -> str:
    """A requirements token of the shape the simulator checks (`gAAAAAC` + base64 of a telemetry array)."""
    telemetry = [1920, "Mon Jan 01 2026", 4294705152, 1, "Mozilla/5.0 (test)"]
    return "gAAAAAC" + base64.b64encode(json.dumps(telemetry).encode()).decode()


def test_a_sentinel_token_got_through_the_pool_binds_its_conversation(
    make_gateway: Any, sim: Simulator
) -> None:
    gw = start(make_gateway, pooled(fixed(["alice", "bob"])))
    sim.sentinel(enforce="always", proof_required=False)
    bare = converse(gw)  # no sentinel headers: the upstream refuses; the client's doing, not alice's
    assert bare.status == 403 and "Unusual activity" in bare.json()["detail"]
    assert bare.header("X-Pool-Account") == "alice"
    assert {a["name"]: a["state"] for a in accounts_report(gw)} == {"alice": "ready", "bob": "ready"}
    needs = request(
        "POST",
        gw.url + "/chatgpt/backend-api/sentinel/chat-requirements",
        headers=KEY,
        body={"p": requirements_token()},
    )
    assert needs.status == 200 and needs.header("X-Pool-Account") == "alice"
    spent = {"OpenAI-Sentinel-Chat-Requirements-Token": needs.json()["token"]}
    answer = converse(gw, headers=spent)  # bob is idle longer, but the token is alice's
    assert answer.status == 200 and answer.header("X-Pool-Account") == "alice"
    assert sim.sentinel()["accepted"] == 1 and sim.sentinel()["refusals"] == [
        "missing chat-requirements token"
    ]
    assert needs.json()["token"] not in gw.log_text()


def test_the_client_key_as_bearer_reaches_the_pool_and_an_own_token_does_not(
    make_gateway: Any, sim: Simulator
) -> None:
    accounts = fixed(["alice"])
    gw = start(make_gateway, pooled(accounts))
    url = gw.url + "/chatgpt/conversation"
    as_bearer = request("POST", url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, body=message_body())
    assert as_bearer.status == 200 and as_bearer.header("X-Pool-Account") == "alice"
    own = request("POST", url, headers={**KEY, "Authorization": ACCESS_TOKEN}, body=message_body())
    assert own.status == 200 and own.header("X-Pool-Account") is None
    wrong = request("POST", url, headers={"Authorization": "Bearer not-a-key"}, body=message_body())
    assert wrong.status == 401 and wrong.json()["error"]["code"] == "gateway_key_required"
    pooled_entry, own_entry = sim.journal("chatgpt", "/backend-api/conversation")
    assert upstream_account(pooled_entry, tokens_of(accounts)) == "alice"
    assert dict((k.lower(), v) for k, v in own_entry["headers"])["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert CLIENT_KEY not in json.dumps(sim.journal())
    assert [line.get("account") for line in gw.access_lines("/chatgpt/conversation")] == ["alice", None, None]


def test_without_serve_chatgpt_a_request_without_token_is_refused_as_before(
    make_gateway: Any, sim: Simulator
) -> None:
    gw = start(make_gateway, pooled(fixed(["alice"]), pool={"serve_chatgpt": False}))
    answer = converse(gw)
    assert answer.status == 401 and answer.json()["error"]["code"] == "missing_authorization"
    as_bearer = request(
        "POST",
        gw.url + "/chatgpt/conversation",
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        body=message_body(),
    )
    assert as_bearer.status == 401 and as_bearer.json()["error"]["code"] == "gateway_key_required"
    assert sim.journal("chatgpt", "/backend-api/conversation") == []


def test_gateways_sharing_redis_send_a_conversation_to_its_account(
    make_gateway: Any, sim: Simulator, log_dir: Path
) -> None:
    server = RedisServer(log_dir)
    try:
        accounts = fixed(["alice", "bob"])
        tokens = {"store": "redis", "redis_url": server.url, "kdf_cost": 10}
        config = pooled(accounts, pool={"conversation_map_size": 3}, tokens=tokens)
        first, second = start(make_gateway, config), start(make_gateway, config)
        wait_for(lambda: all(shared_state(gw) == "redis" for gw in (first, second)), what="both to share")
        made = converse(first)
        owner, ident = made.header("X-Pool-Account"), conversation_id(made)
        store = redis_client.Redis.from_url(server.url)
        wait_for(lambda: store.hget("tornadoproxy:pool:aff", f"c:{ident}") == str(owner).encode())
        read = read_conversation(second, ident)  # the other gateway never saw this conversation
        assert read.status == 200 and read.header("X-Pool-Account") == owner
        follow_up = converse(second, conversation=ident, text="and then?")
        assert follow_up.status == 200 and follow_up.header("X-Pool-Account") == owner
        for n in range(4):
            assert converse(first, text=f"more {n}").status == 200
        # Bounded in Redis as in each process: the 3 latest conversations, the oldest gone.
        wait_for(
            lambda: store.zcard("tornadoproxy:pool:aff:t") == 3 and store.hlen("tornadoproxy:pool:aff") == 3
        )
        assert store.hget("tornadoproxy:pool:aff", f"c:{ident}") is None
        store.close()
    finally:
        server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_shared_map_expires_and_trims_in_redis(log_dir: Path) -> None:
    server = RedisServer(log_dir)
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(3)]

    async def scenario() -> None:
        shared = SharedSlots(server.url, "relayed-test:", lease=30)
        shared.available = True  # as once joined: the map's scripts run on its connections
        clock = Clock()
        writer = AffinityMap(2, conversation_ttl=100, shared=shared, clock=clock)
        writer.learn_conversation(ids[0], "alice")
        clock.now += 1
        writer.learn_conversation(ids[1], "bob")
        await writer.close()  # the writes are in Redis
        reader = AffinityMap(2, conversation_ttl=100, shared=shared, clock=clock)
        assert await reader.conversation_account(ids[0]) == "alice"
        clock.now += 99.5  # the first one's time is up, not the second's
        assert await AffinityMap(2, 100, shared, clock).conversation_account(ids[0]) is None
        assert await AffinityMap(2, 100, shared, clock).conversation_account(ids[1]) == "bob"
        writer.learn_conversation(ids[2], "carol")
        await writer.close()
        store = redis_client.Redis.from_url(server.url)
        assert store.zrange("relayed-test:aff:t", 0, -1) == [f"c:{ids[1]}".encode(), f"c:{ids[2]}".encode()]
        assert store.hlen("relayed-test:aff") == 2
        store.close()
        await shared.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
