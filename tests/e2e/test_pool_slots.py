"""The pool's slots and queue in one process: one answer per account, FIFO, bounded wait, cool-downs,
failover that never reuses an account. Fixed-token accounts (no login needed) on a real pool built as
the gateway builds it; the upstream is never asked anything here."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest

from tests.harness import Simulator, metric_value
from tests.pool_fixtures import Running, fixed_accounts, jwt, running_pool, settle, until
from tornadoproxy.errors import AccountsBusy, AccountsUnavailable
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.outcome import Outcome


def queued(running: Running) -> float:
    return metric_value(running.metrics(), "tornadoproxy_pool_queue_length")


def test_concurrent_requests_share_the_accounts_one_at_a_time_in_fifo_order(
    sim: Simulator, tmp_path: Path
) -> None:
    """40 requests over 3 accounts: at most one in flight per account, all served, none refused
    while the queue has room, and the waiters served in the order they arrived."""

    async def scenario() -> None:
        config = {"accounts": fixed_accounts(3), "pool": {"queue_size": 40, "queue_timeout": 30}}
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            in_flight: dict[str, int] = dict.fromkeys(pool.accounts, 0)
            served: list[int] = []
            leases: dict[int, Lease] = {}
            peak = 0

            async def one(number: int) -> None:
                nonlocal peak
                lease = await pool.acquire()
                in_flight[lease.account] += 1
                peak = max(peak, in_flight[lease.account])
                served.append(number)
                leases[number] = lease

            def arrived(number: int) -> bool:
                return len(served) + len(pool._queue) == number + 1

            def served_one_more(before: int) -> bool:
                return len(served) == before + 1

            tasks = []
            for number in range(40):
                tasks.append(asyncio.create_task(one(number)))
                # each request is in the queue (or served) before the next one arrives
                await until(partial(arrived, number))
            assert sorted(served) == [0, 1, 2] and queued(running) == 37
            while leases:
                lease = leases.pop(min(leases))
                in_flight[lease.account] -= 1
                before = len(served)
                lease.release(Outcome.ok())
                if before < 40:  # the freed slot goes to the next waiter
                    await until(partial(served_one_more, before))
            await asyncio.gather(*tasks)
            assert served == list(range(40)), served  # FIFO
            assert peak == 1
            exposition = running.metrics()
            assert metric_value(exposition, "tornadoproxy_pool_queue_rejected_total", reason="full") == 0
            assert (
                sum(
                    metric_value(exposition, "tornadoproxy_pool_requests_total", account=name, outcome="ok")
                    for name in pool.accounts
                )
                == 40
            )
            assert metric_value(exposition, "tornadoproxy_pool_queue_wait_seconds_count") == 40

    asyncio.run(scenario())


def test_full_queue_and_timeout_answer_429_with_retry_after(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = {"accounts": fixed_accounts(1), "pool": {"queue_size": 2, "queue_timeout": 0.5}}
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            held = await pool.acquire()
            waiting = [asyncio.create_task(pool.acquire()) for _ in range(2)]
            await until(lambda: len(pool._queue) == 2)
            with pytest.raises(AccountsBusy) as full:
                await pool.acquire()
            assert full.value.status == 429 and full.value.code == "accounts_busy"
            assert "pool.queue_size" in full.value.message
            assert isinstance(full.value.retry_after, int) and full.value.retry_after >= 1
            assert ("Retry-After", str(full.value.retry_after)) in full.value.headers()
            for task in waiting:
                with pytest.raises(AccountsBusy) as late:
                    await task
                assert "pool.queue_timeout" in late.value.message and (late.value.retry_after or 0) >= 1
            assert queued(running) == 0
            exposition = running.metrics()
            assert metric_value(exposition, "tornadoproxy_pool_queue_rejected_total", reason="full") == 1
            assert metric_value(exposition, "tornadoproxy_pool_queue_rejected_total", reason="timeout") == 2
            held.release()
            (await pool.acquire()).release()  # the account is free again for the next one

    asyncio.run(scenario())


def test_a_waiter_that_goes_away_leaves_the_queue_at_once(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = {"accounts": fixed_accounts(1), "pool": {"queue_timeout": 60}}
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            held = await pool.acquire()
            first = asyncio.create_task(pool.acquire())
            second = asyncio.create_task(pool.acquire())
            await until(lambda: queued(running) == 2)
            first.cancel()  # the client disconnected: its handler's task is cancelled
            await settle()
            assert queued(running) == 1 and len(pool._queue) == 1
            held.release()
            lease = await asyncio.wait_for(second, 5)  # the slot went to the one still waiting
            assert lease.account == "acct0" and first.cancelled()
            lease.release()
            assert pool.accounts["acct0"].held == 0

    asyncio.run(scenario())


def test_a_429_with_clears_in_cools_the_account_that_long(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = {"accounts": fixed_accounts(2), "pool": {"queue_timeout": 30, "cooldown_base": 600}}
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            first = await pool.acquire()
            account = pool.accounts[first.account]
            first.release(Outcome.rate_limited(clears_in=0.4))
            assert running.state(account.name) == "cooling"
            assert 0 < account.cooldown_until - time.time() <= 0.4
            assert account.last_error == "rate_limit_exceeded"
            other = await pool.acquire()  # the cooling account is skipped
            assert other.account != account.name
            waiting = asyncio.create_task(pool.acquire())
            back = await asyncio.wait_for(waiting, 5)  # served the moment the cool-down ends
            assert back.account == account.name
            other.release()
            back.release()
            # Without clears_in: the backoff (pool.cooldown_base, 600 s here), doubling per failure.
            lease = await pool.acquire()
            lease.release(Outcome.rate_limited())
            first_wait = pool.accounts[lease.account].cooldown_until
            assert first_wait - time.time() > 590

    asyncio.run(scenario())


def test_failover_never_reuses_an_account_and_skips_invalid_ones(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        accounts = fixed_accounts(2) + [{"name": "stale", "access_token": jwt(ttl=-60)}]
        config = {"accounts": accounts, "pool": {"queue_timeout": 30}}
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            assert running.state("stale") == "invalid"
            assert "access_token expired" in (pool.accounts["stale"].invalid_reason or "")
            tried: list[str] = []
            for _ in range(2):
                lease = await pool.acquire(exclude=tried)
                tried.append(lease.account)
                lease.release(Outcome.challenge())
            assert sorted(tried) == ["acct0", "acct1"]
            with pytest.raises(AccountsUnavailable) as exhausted:
                await pool.acquire(exclude=tried)  # only the invalid one is left: no queue timeout
            assert exhausted.value.reason == "invalid" and "stale" in exhausted.value.message
            with pytest.raises(AccountsUnavailable) as everyone:
                await pool.acquire(exclude=["acct0", "acct1", "stale"])
            assert everyone.value.reason == "tried"
            # Both cool down after the challenges; the egress (direct here) has no health to count.
            assert {running.state(name) for name in tried} == {"cooling"}

    asyncio.run(scenario())


def test_models_an_account_may_serve(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        accounts = [
            {"name": "mini", "access_token": jwt(), "models": ["gpt-4o-mini"]},
            {"name": "four", "access_token": jwt(), "models": ["gpt-4*"]},
        ]
        async with running_pool(sim, tmp_path, {"accounts": accounts}) as running:
            pool = running.pool
            lease = await pool.acquire("gpt-4o")
            assert lease.account == "four"
            lease.release()
            with pytest.raises(AccountsUnavailable) as none:
                await pool.acquire("o1-preview")
            assert none.value.reason == "model"
            lease = await pool.acquire("gpt-4o-mini")  # both may: the one idle longest
            assert lease.account == "mini"
            lease.release()

    asyncio.run(scenario())


def test_a_waiter_fails_at_once_when_its_last_account_turns_invalid(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        config = {"accounts": fixed_accounts(1), "pool": {"queue_timeout": 60}}
        async with running_pool(sim, tmp_path, config) as running:
            pool = running.pool
            held = await pool.acquire()
            waiting = asyncio.create_task(pool.acquire())
            await until(lambda: len(pool._queue) == 1)
            held.release(Outcome.unauthorized())  # a fixed token refused: invalid
            with pytest.raises(AccountsUnavailable) as failed:
                await asyncio.wait_for(waiting, 5)
            assert "refused the access_token" in failed.value.message
            assert running.state("acct0") == "invalid"

    asyncio.run(scenario())


def test_a_lease_carries_what_the_consumer_sends(sim: Simulator, tmp_path: Path) -> None:
    async def scenario() -> None:
        token = jwt()
        accounts = [{"name": "solo", "access_token": token, "profile": "firefox", "proxy": "direct"}]
        async with running_pool(sim, tmp_path, {"accounts": accounts}) as running:
            lease = await running.pool.acquire()
            assert lease.authorization == "Bearer " + token
            assert lease.proxy.is_direct and lease.profile is not None and lease.profile.name == "firefox"
            assert len(lease.device_id) == 36 and lease.device_id == running.pool.accounts["solo"].device_id
            assert token not in repr(lease)
            lease.release()
            lease.release()  # once only
            assert running.pool.accounts["solo"].requests["ok"] == 1

    asyncio.run(scenario())
