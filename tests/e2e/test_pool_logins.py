"""Token lifecycle of the pool's password accounts against the simulated login hosts: background
logins that never block, requests that wait for them, refresh ahead of expiry, one login per 401 however
many requests saw it, backoff after failures, invalid accounts for refused credentials."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from tests.harness import Simulator, metric_value, request, wait_for
from tests.pool_fixtures import running_pool, settle, until
from tests.secrets_used import LOGIN_PASSWORD, WRONG_PASSWORD
from tornadoproxy.pool.outcome import Outcome

FAST = {"tokens": {"kdf_cost": 10}}


def account(sim: Simulator, name: str = "alice", **flags: Any) -> tuple[str, dict[str, Any]]:
    email = f"{name}+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(email, LOGIN_PASSWORD, **flags)
    return email, {"name": name, "username": email, "password": LOGIN_PASSWORD}


def logins(running: Any, name: str, kind: str, outcome: str) -> float:
    exposition = running.metrics()
    return metric_value(
        exposition, "tornadoproxy_pool_logins_total", account=name, kind=kind, outcome=outcome
    )


def test_a_request_before_any_login_waits_and_is_served_when_one_completes(
    sim: Simulator, tmp_path: Path
) -> None:
    email, spec = account(sim)
    sim.hold("password", "pool-login")

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, {"accounts": [spec], **FAST}) as running:
            assert running.state("alice") == "logging_in"
            waiting = asyncio.create_task(running.pool.acquire())
            await until(lambda: len(running.pool._queue) == 1)
            await asyncio.to_thread(sim.wait_reached, "pool-login")
            assert not waiting.done()
            await asyncio.to_thread(sim.release, "pool-login")
            lease = await asyncio.wait_for(waiting, 10)
            assert lease.account == "alice" and lease.token.reveal().startswith("eyJ")
            assert lease.token.reveal() in await asyncio.to_thread(sim.issued_tokens)
            lease.release()
            assert logins(running, "alice", "login", "ok") == 1

    asyncio.run(scenario())
    assert sim.account_counters(email)["logins"] == 1


def test_tokens_are_renewed_ahead_of_expiry(sim: Simulator, tmp_path: Path) -> None:
    """A 4 s token with a 3 s margin is renewed halfway (2 s in); the token cache, which would still
    serve it (tokens.expiry_margin 1 s), gives it up for a fresh login."""
    email, spec = account(sim, token_ttl=4)
    config = {
        "accounts": [spec],
        "pool": {"refresh_margin": 3},
        "tokens": {"kdf_cost": 10, "expiry_margin": 1},
    }

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, config) as running:
            alice = running.pool.accounts["alice"]
            await until(lambda: alice.token is not None, what="the first login")
            first = alice.token
            await until(
                lambda: alice.token is not None and alice.token != first, timeout=15, what="a renewal"
            )
            assert running.state("alice") == "ready"
            assert logins(running, "alice", "refresh", "ok") >= 1
            exposition = running.metrics()
            assert (
                metric_value(exposition, "tornadoproxy_token_cache_evictions_total", reason="refreshed") >= 1
            )

    asyncio.run(scenario())
    assert sim.account_counters(email)["logins"] >= 2


def test_many_401s_on_one_token_start_one_fresh_login(sim: Simulator, tmp_path: Path) -> None:
    email, spec = account(sim)
    spec["concurrency"] = 5

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, {"accounts": [spec], **FAST}) as running:
            pool = running.pool
            leases = [await pool.acquire() for _ in range(5)]
            refused = leases[0].token
            assert all(lease.token == refused for lease in leases)
            for lease in leases:
                lease.release(Outcome.unauthorized())
            assert pool.accounts["alice"].token is None  # not handed out again
            await until(lambda: pool.accounts["alice"].usable(time.time()), what="the re-login")
            fresh = await pool.acquire()
            assert fresh.token != refused
            fresh.release()
            await settle()
            assert pool.accounts["alice"].requests["unauthorized"] == 5

    asyncio.run(scenario())
    assert sim.account_counters(email)["logins"] == 2  # the start-up login and one after the 401s


def test_failed_logins_back_off_and_recover(sim: Simulator, tmp_path: Path) -> None:
    email, spec = account(sim)
    sim.challenge("csrf", times=2)
    config = {"accounts": [spec], "pool": {"login_backoff": 0.3}, **FAST}

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, config) as running:
            alice = running.pool.accounts["alice"]
            await until(lambda: alice.login_failures == 1, what="the first failure")
            assert running.state("alice") in ("cooling", "logging_in")
            assert alice.last_error == "upstream_challenge"
            await until(lambda: alice.token is not None, what="the login after two failures")
            assert alice.login_failures == 0 and running.state("alice") == "ready"
            assert logins(running, "alice", "login", "challenge") == 2
            assert logins(running, "alice", "login", "ok") == 1

    asyncio.run(scenario())
    assert sim.account_counters(email)["logins"] == 1


def test_refused_credentials_make_the_account_invalid(sim: Simulator, tmp_path: Path) -> None:
    email, spec = account(sim)
    spec["password"] = WRONG_PASSWORD

    async def scenario() -> None:
        async with running_pool(sim, tmp_path, {"accounts": [spec], **FAST}) as running:
            alice = running.pool.accounts["alice"]
            await until(lambda: running.state("alice") == "invalid", what="the refused login")
            assert "login was refused (login_failed)" in (alice.invalid_reason or "")
            assert "accounts[0]" in (alice.invalid_reason or "")
            assert WRONG_PASSWORD not in (alice.invalid_reason or "") and email not in (
                alice.invalid_reason or ""
            )
            assert logins(running, "alice", "login", "refused") == 1
            assert all(task.done() for task in running.pool._keeper._tasks)  # no retry loop

    asyncio.run(scenario())
    assert sim.account_counters(email)["password_attempts"] == 1


def test_start_up_does_not_wait_for_logins(make_gateway: Any, sim: Simulator) -> None:
    from tests.harness import free_port

    email, spec = account(sim)
    sim.hold("password", "gateway-login")
    ops = free_port()
    gw = make_gateway({"accounts": [spec], "server": {"ops_port": ops}, **FAST}, ready=False)
    sim.wait_reached("gateway-login")
    # Serving already while the login waits upstream.
    assert request("GET", gw.url + "/healthz").status == 200
    report = request("GET", f"http://127.0.0.1:{ops}/accounts").json()
    assert (
        report["accounts"][0]["state"] == "logging_in" and report["accounts"][0]["token_expires_at"] is None
    )
    sim.release("gateway-login")
    wait_for(
        lambda: request("GET", f"http://127.0.0.1:{ops}/accounts").json()["accounts"][0]["state"] == "ready",
        what="the background login",
    )
    ready = request("GET", gw.url + "/readyz").json()["pool"]
    assert ready["accounts"]["ready"] == 1 and ready["shared"] == "off"
