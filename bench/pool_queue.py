"""The account pool's own overhead: `python -m bench.pool_queue [--rounds N] [--waiting N]`.

A benchmark, not a test (it asserts nothing). The pool is built as the gateway builds it
(server.build_pool) with fixed-token accounts, so no login and no upstream are involved:

- hand-off: 200 concurrent requests over 4 accounts, each taking a slot, holding it 1 ms (a fast
  answer) and giving it back, `--rounds` times; for every slot given to a waiting request, the time
  from `release()` to that request's `acquire()` returning. In one process without Redis, in one
  process through Redis (the release script hands the slot to the waiter), and across two pools
  through Redis (two process ids, heartbeats and channels in one interpreter: the grant travels
  through Redis's PUBLISH to the other pool's subscription, as between two gateway processes).
- memory: `--waiting` requests (5,000) waiting while every account is taken: Python heap allocated
  per waiting request (tracemalloc: the task, its coroutine frames, the waiter and its queue entries;
  with Redis also its ticket's bookkeeping) and the process's RSS growth per request.

Starts its own redis-server (Debian) on a free loopback port and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from bench.procs import free_port
from tornadoproxy.auth.logins import Logins
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.observability.sharedmetrics import prepare_process
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.process.server import build_pool, build_upstream_side
from tornadoproxy.process.wiring import build_store, load

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDB9.YmVuY2g"  # exp: year 2100


def config_file(directory: Path, redis_url: str | None, name: str) -> Path:
    dead = f"http://127.0.0.1:{free_port()}"  # never contacted: fixed tokens need no login
    config: dict[str, Any] = {
        "upstreams": {"chatgpt": dead, "auth": dead, "platform": dead, "platform_web": dead},
        "accounts": [{"name": f"acct{n}", "access_token": TOKEN} for n in range(4)],
        "pool": {"queue_size": 1_000_000, "queue_timeout": 600},
        "logging": {"level": "WARNING"},
    }
    if redis_url:
        config["tokens"] = {"store": "redis", "redis_url": redis_url}
    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def pool_from(path: Path) -> AsyncIterator[AccountPool]:
    config, routes, _ = load(str(path), {})
    metrics = Metrics(CollectorRegistry(), tuple(routes))
    upstream = build_upstream_side(config, routes, metrics)
    egress, fetcher = upstream.egress, upstream.fetcher
    logins = Logins(config.logins, config.upstreams, upstream.relay, metrics)
    tokens = TokenCache(config.tokens, config.logins, build_store(config, metrics), metrics)
    pool = build_pool(config, metrics, egress, logins, tokens)
    assert pool is not None
    pool.start()
    try:
        deadline = time.monotonic() + 10
        while config.tokens.store == "redis" and pool.shared_state != "redis":
            if time.monotonic() > deadline:
                raise RuntimeError("the pool did not join Redis")
            await asyncio.sleep(0.01)
        yield pool
    finally:
        await pool.close()
        await tokens.close()
        fetcher.close()


async def hand_offs(pools: list[AccountPool], concurrency: int, rounds: int) -> list[float]:
    """Seconds from each release to the acquisition of the waiter that slot went to."""
    released_at: dict[str, float] = {}
    latencies: list[float] = []

    async def client(pool: AccountPool) -> None:
        for _ in range(rounds):
            lease = await pool.acquire()
            got = time.perf_counter()
            if lease.waited > 0 and lease.account in released_at:
                latencies.append(got - released_at[lease.account])
            await asyncio.sleep(0.001)  # a fast answer
            released_at[lease.account] = time.perf_counter()
            lease.release()

    await asyncio.gather(*(client(pools[n % len(pools)]) for n in range(concurrency)))
    return latencies


async def memory_per_waiter(pool: AccountPool, waiting: int) -> tuple[float, float]:
    """(heap bytes, RSS bytes) per request waiting while every account is held."""
    held = [await pool.acquire() for _ in range(4)]
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    tasks = [asyncio.ensure_future(pool.acquire()) for _ in range(waiting)]
    while len(pool._queue) < waiting:
        await asyncio.sleep(0.01)
    gc.collect()
    after = tracemalloc.take_snapshot()
    heap = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    tracemalloc.stop()
    rss = rss_bytes() - rss_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for lease in held:
        lease.release()
    return heap / waiting, rss / waiting


def rss_bytes() -> int:
    with open("/proc/self/statm") as stat:
        return int(stat.read().split()[1]) * 4096


def percentiles(values: list[float]) -> str:
    if not values:
        return "no hand-offs"
    ordered = sorted(values)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:.3f} ms, p99 {p99:.3f} ms ({len(values)} hand-offs)"


async def run(directory: Path, redis_url: str, rounds: int, waiting: int) -> list[str]:
    lines = []
    local, shared = (
        config_file(directory, None, "local.yaml"),
        config_file(directory, redis_url, "shared.yaml"),
    )
    async with pool_from(local) as pool:
        lines.append("hand-off, one process, no Redis: " + percentiles(await hand_offs([pool], 200, rounds)))
    async with pool_from(shared) as pool:
        lines.append("hand-off, one process, Redis: " + percentiles(await hand_offs([pool], 200, rounds)))
    async with AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(pool_from(shared)) for _ in range(2)]
        lines.append("hand-off, two pools, Redis: " + percentiles(await hand_offs(pools, 200, rounds)))
    for label, path in (("no Redis", local), ("Redis", shared)):
        async with pool_from(path) as pool:
            heap, rss = await memory_per_waiter(pool, waiting)
            lines.append(
                f"memory per waiting request ({waiting:,} waiting, {label}): heap {heap / 1024:.1f} KB, "
                f"RSS {rss / 1024:.1f} KB"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="acquisitions per concurrent request")
    parser.add_argument("--waiting", type=int, default=5000, help="requests waiting for the memory figure")
    args = parser.parse_args()
    prepare_process(None)
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as work:
        port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)  # redis-server listens within milliseconds; a bench, not a test
            for line in asyncio.run(
                run(Path(work), f"redis://127.0.0.1:{port}/0", args.rounds, args.waiting)
            ):
                print(line, flush=True)
        finally:
            redis.terminate()
            redis.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
