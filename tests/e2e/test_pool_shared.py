"""The pool shared through a real redis-server: two pools (each its own process id, heartbeat and
channel, as two gateway processes have) keep one answer per account between them, serve their
waiters in arrival order, share cool-downs, and keep serving on their own slots while Redis is down,
sharing again once it is back."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.harness import RedisServer, Simulator, metric_value, wait_for
from tests.pool_fixtures import PoolProcess, Running, fixed_accounts, running_pool, until, write_config
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.pool.report import pool_report, readiness_report


@pytest.fixture
def redis(log_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(log_dir)
    yield server
    server.stop()


def shared_config(redis: RedisServer, accounts: list[dict[str, Any]], **pool: Any) -> dict[str, Any]:
    return {
        "accounts": accounts,
        "tokens": {"store": "redis", "redis_url": redis.url, "kdf_cost": 10},
        "pool": {"slot_lease": 2, "queue_timeout": 30, **pool},
    }


async def two_pools(
    stack: AsyncExitStack, sim: Simulator, tmp_path: Path, config: dict[str, Any]
) -> tuple[Running, Running]:
    first = await stack.enter_async_context(running_pool(sim, tmp_path, config, "first.yaml"))
    second = await stack.enter_async_context(running_pool(sim, tmp_path, config, "second.yaml"))
    await until(lambda: first.pool.shared_state == second.pool.shared_state == "redis", what="both to join")
    return first, second


class Ledger:
    """Who holds which account right now, across both pools: never two at once."""

    def __init__(self) -> None:
        self.holding: dict[str, int] = {}
        self.peak = 0
        self.served = 0

    async def serve(self, pool: Running, rounds: int, hold: float) -> None:
        for _ in range(rounds):
            lease = await pool.pool.acquire()
            self.holding[lease.account] = self.holding.get(lease.account, 0) + 1
            self.peak = max(self.peak, self.holding[lease.account])
            await asyncio.sleep(hold * random.random())
            self.holding[lease.account] -= 1
            self.served += 1
            lease.release()


def test_two_pools_keep_one_answer_per_account_between_them(
    sim: Simulator, tmp_path: Path, redis: RedisServer
) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            first, second = await two_pools(stack, sim, tmp_path, shared_config(redis, fixed_accounts(3)))
            ledger = Ledger()
            random.seed(15)
            workers = [ledger.serve(first if n % 2 else second, 5, 0.01) for n in range(12)]
            await asyncio.wait_for(asyncio.gather(*workers), 30)
            assert ledger.served == 60 and ledger.peak == 1
            exposition = first.metrics() + second.metrics()
            assert metric_value(exposition, "tornadoproxy_pool_queue_rejected_total", reason="full") == 0

    asyncio.run(scenario())


def test_waiters_of_both_pools_are_served_in_arrival_order(
    sim: Simulator, tmp_path: Path, redis: RedisServer
) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            first, second = await two_pools(stack, sim, tmp_path, shared_config(redis, fixed_accounts(1)))
            held = await first.pool.acquire()
            order: list[int] = []
            leases: list[Lease] = []

            async def wait(pool: Running, number: int) -> None:
                lease = await pool.pool.acquire()
                order.append(number)
                leases.append(lease)

            def waiting(count: int) -> bool:
                return len(first.pool._queue) + len(second.pool._queue) == count

            def served(count: int) -> bool:
                return len(order) == count

            tasks = []
            for number in range(6):
                pool = second if number % 2 == 0 else first  # alternate between the two processes
                tasks.append(asyncio.create_task(wait(pool, number)))
                await until(partial(waiting, number + 1))
            held.release()
            for number in range(6):
                await until(partial(served, number + 1), what=f"waiter {number} to be served")
                leases[-1].release()
            await asyncio.gather(*tasks)
            assert order == list(range(6))

    asyncio.run(scenario())


def test_a_cool_down_holds_for_every_process(sim: Simulator, tmp_path: Path, redis: RedisServer) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            config = shared_config(redis, fixed_accounts(2))
            first, second = await two_pools(stack, sim, tmp_path, config)
            lease = await first.pool.acquire()
            cooled = lease.account
            lease.release(Outcome.rate_limited(clears_in=120))
            await until(lambda: second.pool.accounts[cooled].state() == "cooling", what="the other to see it")
            for _ in range(3):
                other = await second.pool.acquire()
                assert other.account != cooled
                other.release()

    asyncio.run(scenario())


def test_serving_goes_on_while_redis_is_down_and_sharing_resumes(
    sim: Simulator, tmp_path: Path, log_dir: Path, redis: RedisServer
) -> None:
    """Mid-load, Redis stops: no request fails (each process serves with its own slots, and says so),
    then Redis starts again, empty, on the same port: both rejoin by themselves, re-register what they
    hold, and one answer per account holds across them again."""

    async def scenario() -> None:
        nonlocal redis
        async with AsyncExitStack() as stack:
            first, second = await two_pools(stack, sim, tmp_path, shared_config(redis, fixed_accounts(2)))
            ledgers = [Ledger()]
            stop = asyncio.Event()

            async def load(pool: Running) -> None:
                while not stop.is_set():
                    await ledgers[-1].serve(pool, 1, 0.02)

            loads = [asyncio.create_task(load(pool)) for pool in (first, second) for _ in range(4)]
            ledger = ledgers[0]
            await until(lambda: ledger.served >= 20, what="traffic through shared slots")
            assert ledger.peak == 1
            await asyncio.to_thread(redis.stop)
            await until(
                lambda: first.pool.shared_state == second.pool.shared_state == "unavailable",
                what="both to notice",
            )
            assert metric_value(first.metrics(), "tornadoproxy_pool_shared_state_up") == 0
            assert (
                readiness_report(first.pool)["shared"] == pool_report(second.pool)["shared"] == "unavailable"
            )
            served = ledger.served
            await until(lambda: ledger.served >= served + 20, what="traffic on each process's own slots")
            port = redis.port
            redis = await asyncio.to_thread(RedisServer, log_dir, None, port)
            await until(
                lambda: first.pool.shared_state == second.pool.shared_state == "redis",
                timeout=15,
                what="both to rejoin",
            )
            assert metric_value(second.metrics(), "tornadoproxy_pool_shared_state_up") == 1
            # Slots taken from now on are Redis's again (those taken while it was down may still
            # overlap them until they are given back: one answer per process, as said).
            ledgers.append(Ledger())
            await until(lambda: ledgers[-1].served >= 20, what="traffic through shared slots again")
            stop.set()
            await asyncio.wait_for(asyncio.gather(*loads), 10)  # none of them failed
            assert ledgers[-1].peak == 1

    try:
        asyncio.run(scenario())
    finally:
        redis.stop()


@pytest.fixture
def pool_processes(sim: Simulator, tmp_path: Path, log_dir: Path, redis: RedisServer) -> Iterator[Any]:
    started: list[PoolProcess] = []

    def start(accounts: list[dict[str, Any]], name: str) -> PoolProcess:
        path = write_config(sim, tmp_path, shared_config(redis, accounts), name)
        process = PoolProcess(path, log_dir)
        started.append(process)
        wait_for(lambda: process.accounts()["shared"] == "redis", what="the process to join Redis")
        return process

    yield start
    for process in started:
        process.stop()


def test_two_processes_keep_one_answer_per_account_and_a_killed_holder_frees_its_slot(
    pool_processes: Any,
) -> None:
    accounts = fixed_accounts(1)
    holder, other = pool_processes(accounts, "a.yaml"), pool_processes(accounts, "b.yaml")
    first = holder.acquire()
    assert first["status"] == 200 and first["account"] == "acct0"
    with ThreadPoolExecutor(1) as executor:
        waiting = executor.submit(other.acquire)
        wait_for(
            lambda: metric_value(other.metrics(), "tornadoproxy_pool_queue_length") == 1, what="a waiter"
        )
        assert holder.accounts()["accounts"][0]["in_flight"] == 1
        holder.release(first["lease"])  # handed to the other process's waiter through Redis
        second = waiting.result(timeout=10)
        assert second["status"] == 200 and second["account"] == "acct0"
        # The other process holds it now: this one waits, and its holder dies without giving it back.
        again = executor.submit(holder.acquire)
        wait_for(
            lambda: metric_value(holder.metrics(), "tornadoproxy_pool_queue_length") == 1, what="a waiter"
        )
        os.kill(other.process.pid, signal.SIGKILL)
        other.process.wait(10)
        third = again.result(timeout=20)  # after pool.slot_lease (2 s), no later than the queue timeout
        assert third["status"] == 200 and third["account"] == "acct0"
    holder.release(third["lease"])


def test_a_redis_restart_keeps_the_cool_downs(sim: Simulator, tmp_path: Path, log_dir: Path) -> None:
    """Redis restarts empty: the processes put back the cool-downs they know, so a cooling account
    stays out of service everywhere."""
    redis = RedisServer(log_dir)

    async def scenario() -> None:
        nonlocal redis
        async with AsyncExitStack() as stack:
            first, second = await two_pools(stack, sim, tmp_path, shared_config(redis, fixed_accounts(2)))
            lease = await first.pool.acquire()
            cooled = lease.account
            lease.release(Outcome.rate_limited(clears_in=300))
            await until(
                lambda: second.pool.accounts[cooled].state() == "cooling", what="the cool-down shared"
            )
            port = redis.port
            await asyncio.to_thread(redis.stop)
            redis = await asyncio.to_thread(RedisServer, log_dir, None, port)
            client = aioredis.Redis.from_url(redis.url)
            try:
                key = "tornadoproxy:pool:cool:" + cooled
                await until(lambda: first.pool.shared_state == second.pool.shared_state == "redis")
                for _ in range(500):  # the heartbeats put it back within a second
                    if await client.pttl(key) > 200_000:
                        break
                    await asyncio.sleep(0.01)
                assert await client.pttl(key) > 200_000
            finally:
                await client.aclose()
            other = await second.pool.acquire()
            assert other.account != cooled
            other.release()

    try:
        asyncio.run(scenario())
    finally:
        redis.stop()
