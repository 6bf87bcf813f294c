"""Measure what the metrics cost per relayed request, in one process and in multiprocess mode.

    .venv/bin/python scripts/metrics_cost.py        # prints microseconds per request, both modes

A relayed request takes and gives back a gate slot (gauge up and down) and records the upstream's
time to first byte (histogram) and the request's count and duration (counter and histogram); a
stream also moves the active-streams gauge up and down and counts its end. Each mode runs in its
own interpreter: multiprocess mode is a process-wide switch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import timeit

ROUNDS = 200_000


def measure(mode: str, kind: str) -> float:
    from prometheus_client import CollectorRegistry

    from tornadoproxy.observability.sharedmetrics import prepare_process

    shared = tempfile.mkdtemp(prefix="metrics-cost-") if mode == "multiprocess" else None
    try:
        prepare_process(shared)
        from tornadoproxy.observability.metrics import Metrics

        metrics = Metrics(CollectorRegistry(), ("platform",), shared)

        def one_request() -> None:
            metrics.gate_in_flight.inc()
            metrics.observe_first_byte("platform", 0.002)
            metrics.gate_in_flight.dec()
            metrics.observe_request("/platform/v1/chat/completions", "POST", 200, 0.004)

        def one_stream() -> None:
            metrics.gate_in_flight.inc()
            metrics.observe_first_byte("platform", 0.002)
            metrics.gate_in_flight.dec()
            metrics.streams_active.inc()
            metrics.streams_active.dec()
            metrics.count_stream_end("done")
            metrics.observe_request("/platform/v1/chat/completions", "POST", 200, 2.5)

        task = one_stream if kind == "stream" else one_request
        return min(timeit.repeat(task, number=ROUNDS, repeat=7)) / ROUNDS
    finally:
        if shared:
            shutil.rmtree(shared)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(measure(sys.argv[1], sys.argv[2]))
    else:
        for mode in ("single", "multiprocess"):
            for kind in ("request", "stream"):
                seconds = float(subprocess.check_output([sys.executable, __file__, mode, kind], text=True))
                print(f"{mode:13s} {kind:8s} {seconds * 1e6:5.2f} us")
