"""Soak mode: keep the gateway under mixed load for a bounded time and sample its RSS and open file
descriptors, to show whether memory and descriptors stay flat after warm-up.

The load alternates wrk (16 connections, 10 s of non-streaming requests) with a burst of 200
short SSE streams; RSS and descriptors are sampled every 5 s into soak.jsonl, and soak.md reports
them minute by minute with the growth after the first minute. Descriptors are read mid-load, so a
sample counts whatever connections that moment has open; the fewest a minute saw (its floor) is what
a leak would raise.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import open_fds, rss_kb, tree

if TYPE_CHECKING:
    from bench.bench import Bench

SAMPLE_EVERY = 5.0


def soak(bench: Bench, seconds: int) -> None:
    bench.upstream = bench._start_nginx("upstream", Path(__file__).parent / "conf" / "upstream.conf", "1", 1)
    target = bench._start_system("gateway")
    if target is None or target.proc is None:
        raise RuntimeError("the gateway did not start")
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    began = time.monotonic()

    def sample() -> None:
        while not stop.wait(SAMPLE_EVERY):
            pids = tree(target.pids[0])
            row = {"t_s": round(time.monotonic() - began, 1), "rss_kb": rss_kb(pids), "fds": open_fds(pids)}
            samples.append(row)
            with open(bench.out / "soak.jsonl", "a") as out:
                out.write(json.dumps(row) + "\n")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    requests = streams = 0
    bench._log(f"soak: {seconds} s of mixed load on the gateway")
    for _ in range(seconds // 10 + 10):  # bounded in count as well as in time
        if time.monotonic() - began > seconds:
            break
        requests += int(bench._wrk(target, 16, 10)["requests"])
        streams += int(bench._sse(target, 200, "fake", 0)["ok"])
    stop.set()
    sampler.join(10)
    report = soak_report(samples, requests, streams, seconds)
    (bench.out / "soak.md").write_text(report)
    print(report)


def soak_report(samples: list[dict[str, Any]], requests: int, streams: int, seconds: int) -> str:
    lines = [
        f"# Gateway soak: {seconds} s, {requests:,} non-streaming requests and {streams:,} SSE streams",
        "",
        "| minute | RSS MB | open fds | fewest fds |",
        "|---|---|---|---|",
    ]
    per_minute: dict[int, dict[str, Any]] = {}
    fd_floor: dict[int, int] = {}
    for row in samples:
        minute = int(row["t_s"] // 60)
        per_minute[minute] = row  # the last sample of each minute
        fd_floor[minute] = min(fd_floor.get(minute, row["fds"]), row["fds"])
    for minute, row in sorted(per_minute.items()):
        lines.append(f"| {minute + 1} | {row['rss_kb'] / 1024:.1f} | {row['fds']} | {fd_floor[minute]} |")
    after_warmup = [r for r in samples if r["t_s"] >= 60] or samples
    if after_warmup:
        first, last = after_warmup[0], after_warmup[-1]
        peak = max(r["rss_kb"] for r in after_warmup)
        span_min = max((last["t_s"] - first["t_s"]) / 60, 1e-9)
        lines += [
            "",
            f"After the first minute: RSS {first['rss_kb'] / 1024:.1f} -> {last['rss_kb'] / 1024:.1f} MB "
            f"(peak {peak / 1024:.1f}), {(last['rss_kb'] - first['rss_kb']) / 1024 / span_min:+.2f} MB per "
            f"minute; open fds {first['fds']} -> {last['fds']}, fewest in a minute "
            f"{fd_floor[int(first['t_s'] // 60)]} -> {fd_floor[int(last['t_s'] // 60)]}.",
        ]
        tail = samples[len(samples) * 2 // 3 :]
        if len(tail) >= 2:
            span = max((tail[-1]["t_s"] - tail[0]["t_s"]) / 60, 1e-9)
            growth = (tail[-1]["rss_kb"] - tail[0]["rss_kb"]) / 1024
            lines.append(
                f"Last third of the run: RSS {tail[0]['rss_kb'] / 1024:.1f} -> "
                f"{tail[-1]['rss_kb'] / 1024:.1f} MB ({growth / span:+.2f} MB per minute)."
            )
    return "\n".join(lines) + "\n"
