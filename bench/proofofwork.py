"""Proof of work, measured: solve times on one core, and the event loop's lag while solves run.

Run: .venv/bin/python -m bench.proofofwork [--samples N] (about two minutes with the defaults).
Solve times: N random seeds at each difficulty, in this process pinned to one CPU; median, p95 and
hashes per second. Loop lag: an asyncio loop wakes every millisecond and records how late it woke,
while 4 solves at 00003a run through a ProcessPoolExecutor: 2 workers (this machine's cores) at
normal priority and niced, and 1 niced worker (a core left to the loop); then through a
ThreadPoolExecutor for comparison (the GIL). A benchmark, not a test: it prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from tornadoproxy.imitate.browser import browser_telemetry
from tornadoproxy.imitate.proofofwork import solve

UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/150.0.0.0 Safari/537.36"
)
VALUES = browser_telemetry(
    UA,
    session_id="5f1e2d3c-4b5a-4978-8190-a1b2c3d4e5f6",
    now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
    rng=random.Random(1),
).values()
MAX_ATTEMPTS = 20_000_000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def solve_times(difficulty: str, samples: int, rng: random.Random) -> tuple[list[float], float]:
    times, hashes = [], 0
    for _ in range(samples):
        seed = str(rng.random())
        started = time.perf_counter()
        solution = solve(seed, difficulty, VALUES, MAX_ATTEMPTS)
        times.append(time.perf_counter() - started)
        hashes += solution.attempts
    return times, hashes / sum(times)


async def _lag_while(executor: Executor, seeds: list[str]) -> list[float]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    jobs = [loop.run_in_executor(executor, solve, seed, "00003a", VALUES, MAX_ATTEMPTS) for seed in seeds]
    done = asyncio.gather(*jobs)
    while not done.done():
        expected = loop.time() + 0.001
        await asyncio.sleep(0.001)
        lags.append(max(0.0, loop.time() - expected))
    await done
    return lags


def loop_lag(make: Callable[[], Executor], seeds: list[str]) -> list[float]:
    with make() as executor:
        # Start the workers before measuring: a spawn costs a few hundred ms once, at start-up.
        list(executor.map(abs, range(4)))
        return asyncio.run(_lag_while(executor, seeds))


def _nice() -> None:
    os.nice(10)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proofofwork")
    parser.add_argument("--samples", type=int, default=40, help="seeds per difficulty (default 40)")
    args = parser.parse_args()
    rng = random.Random(2026)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(affinity)})
    for difficulty in ("00003a", "0003ff"):
        times, rate = solve_times(difficulty, args.samples, rng)
        print(
            f"solve at {difficulty}, one core, {args.samples} seeds: "
            f"median {statistics.median(times):.3f} s, p95 {percentile(times, 0.95):.3f} s, "
            f"mean {statistics.mean(times):.3f} s, {rate:,.0f} hashes/s"
        )
    os.sched_setaffinity(0, affinity)
    seeds = [str(rng.random()) for _ in range(4)]
    spawn = multiprocessing.get_context("spawn")
    setups: dict[str, Callable[[], Executor]] = {
        "process pool, 2 workers": lambda: ProcessPoolExecutor(2, mp_context=spawn),
        "process pool, 1 worker niced": lambda: ProcessPoolExecutor(1, mp_context=spawn, initializer=_nice),
        "process pool, 2 workers niced": lambda: ProcessPoolExecutor(2, mp_context=spawn, initializer=_nice),
        "thread pool, 2 threads": lambda: ThreadPoolExecutor(2),
    }
    for name, make in setups.items():
        lags = loop_lag(make, seeds)
        print(
            f"loop lag during 4 solves at 00003a, {name}: {len(lags)} wake-ups, "
            f"p50 {percentile(lags, 0.5) * 1000:.2f} ms, p99 {percentile(lags, 0.99) * 1000:.2f} ms, "
            f"max {max(lags) * 1000:.2f} ms"
        )


if __name__ == "__main__":
    main()
