"""The token cache beyond one process: persisted to a file across restarts, shared through Redis."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import base_config
from tests.e2e.test_logins import FAST, error_of, joined, login, new_email
from tests.harness import Gateway, RedisServer, Simulator, deep_merge, free_port, request, wait_for
from tests.secrets_used import LOGIN_PASSWORD, REDIS_PASSWORD, TOKENS_SECRET, WRONG_PASSWORD


def token_of(family: str, answer: Any) -> str:
    data = answer.json()
    return str(data["accessToken"] if family == "chatgpt" else data["user"]["session"]["sensitive_id"])


def file_config(sim: Simulator, path: Path, **tokens: Any) -> dict[str, Any]:
    extra = {"tokens": {"store": "file", "file": str(path), **tokens}}
    return deep_merge(base_config(sim), deep_merge(FAST, extra))


def records_in(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["records"])
    except (OSError, ValueError):
        return 0


def test_logins_survive_a_restart_through_the_file(
    simulator: Simulator, sim: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    first = Gateway(file_config(sim, path), log_dir)
    try:
        answers = {family: login(first, family, email, LOGIN_PASSWORD) for family in ("chatgpt", "platform")}
        assert all(answer.status == 200 for answer in answers.values())
        # Written shortly after each change, not only at shutdown: a crash loses nothing.
        wait_for(lambda: records_in(path) == 2, what="both logins in the file")
        first.process.kill()
    finally:
        first.stop()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json"]  # no temporary file left
    text = path.read_text()
    for secret in [LOGIN_PASSWORD, email, email.split("@")[0], *(token_of(f, a) for f, a in answers.items())]:
        assert secret not in text, "the file holds a password, a username or a token in clear"
    seen = sim.account_counters(email)
    second = Gateway(file_config(sim, path), log_dir)
    try:
        for family, answer in answers.items():
            again = login(second, family, email, LOGIN_PASSWORD)
            assert again.status == 200 and again.body == answer.body
            refused = login(second, family, email, WRONG_PASSWORD)
            assert refused.status == 401 and error_of(refused)["code"] == "login_failed"
        assert sim.account_counters(email) == seen == {"logins": 2, "password_attempts": 2}
    finally:
        second.stop()


def test_a_configured_secret_stays_out_of_the_file_and_a_new_one_starts_afresh(
    simulator: Simulator, sim: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    gw = Gateway(file_config(sim, path, secret=TOKENS_SECRET), log_dir)
    try:
        assert login(gw, "chatgpt", email, LOGIN_PASSWORD).status == 200
    finally:
        gw.stop()
    document = json.loads(path.read_text())
    assert document["secret"] is None and TOKENS_SECRET not in path.read_text()
    assert len(document["records"]) == 1
    gw = Gateway(file_config(sim, path, secret=TOKENS_SECRET + "-rotated"), log_dir)
    try:
        assert login(gw, "chatgpt", email, LOGIN_PASSWORD).status == 200
        assert sim.account_counters(email)["logins"] == 2  # records of the old secret were dropped
        assert "made under another tokens.secret" in gw.log_text()
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def redis_server(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir, password=REDIS_PASSWORD)
    yield server
    server.stop()


def test_two_gateways_share_one_cache_through_redis(
    make_gateway: Any, sim: Simulator, redis_server: RedisServer
) -> None:
    config = deep_merge(FAST, {"tokens": {"store": "redis", "redis_url": redis_server.url}})
    one, two = make_gateway(config), make_gateway(config)
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    tokens = []
    for family in ("chatgpt", "platform"):
        first = login(one, family, email, LOGIN_PASSWORD)
        assert first.status == 200
        again = login(two, family, email, LOGIN_PASSWORD)
        assert again.status == 200 and again.body == first.body
        assert login(two, family, email, WRONG_PASSWORD).status == 401
        tokens.append(token_of(family, first))
    assert sim.account_counters(email) == {"logins": 2, "password_attempts": 2}
    # Redis holds sealed records only.
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    names = list(client.scan_iter("tornadoproxy:tokens:*"))
    stored = " ".join(str(client.get(name)) for name in names)
    assert len(names) == 5  # the secret, and per login a record and its token index
    for secret in [LOGIN_PASSWORD, email, *tokens]:
        assert secret not in stored and secret not in " ".join(names)
    # A 401 seen by one gateway evicts the login for both.
    sim.script("platform", "/dashboard/billing/credit_grants", {"status": 401, "json": {"error": {}}})
    refused = request(
        "GET", two.url + "/platform/dashboard/billing/credit_grants", headers={"Authorization": tokens[1]}
    )
    assert refused.status == 401
    fresh = login(one, "platform", email, LOGIN_PASSWORD)
    assert fresh.status == 200 and token_of("platform", fresh) != tokens[1]
    assert sim.account_counters(email)["logins"] == 3
    assert REDIS_PASSWORD not in one.log_text() + two.log_text()


def test_concurrent_logins_on_two_gateways_make_one_upstream_login(
    make_gateway: Any, sim: Simulator, redis_server: RedisServer
) -> None:
    config = deep_merge(
        FAST, {"tokens": {"store": "redis", "redis_url": redis_server.url, "redis_prefix": "x:"}}
    )
    one, two = make_gateway(config), make_gateway(config)
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    sim.hold("session", "held")
    with ThreadPoolExecutor(20) as pool:
        try:
            first = [pool.submit(login, one, "chatgpt", email, LOGIN_PASSWORD) for _ in range(10)]
            sim.wait_reached("held")  # the first gateway's login is in flight and holds the user's lock
            second = [pool.submit(login, two, "chatgpt", email, LOGIN_PASSWORD) for _ in range(10)]
            wait_for(
                lambda: "waiting for another gateway" in two.log_text(), what="the second gateway to wait"
            )
            wait_for(lambda: joined(one, "chatgpt") == joined(two, "chatgpt") == 9, what="in-process joins")
        finally:
            sim.release("held")
        bodies = {future.result().body for future in first + second}
    assert len(bodies) == 1
    assert sim.account_counters(email) == {"logins": 1, "password_attempts": 1}
    assert joined(two, "chatgpt") == 10  # its own first request joined the first gateway's login


def test_an_unreachable_redis_costs_logins_not_the_service(
    make_gateway: Any, sim: Simulator, tmp_path: Path
) -> None:
    gw = make_gateway(
        deep_merge(FAST, {"tokens": {"store": "redis", "redis_url": f"redis://127.0.0.1:{free_port()}"}})
    )
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    for _ in range(2):
        assert login(gw, "chatgpt", email, LOGIN_PASSWORD).status == 200
    assert sim.account_counters(email)["logins"] == 2
    assert "token cache unavailable" in gw.log_text()
