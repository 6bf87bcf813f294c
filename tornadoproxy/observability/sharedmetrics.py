"""prometheus-client's process-wide settings, and its multiprocess mode for several worker processes.

With `server.workers > 1` every worker writes its figures to memory-mapped files in one directory
(prometheus-client's multiprocess mode) and whichever worker answers /metrics adds them up: counters
and histograms are summed over every worker that ever ran (so they never go backwards when one is
restarted), each gauge is combined as its `multiprocess_mode` says. Figures a single process computes
at scrape time (egress proxy health, cached logins, the process's own CPU and memory) are written to
the files by each worker once a second instead (`Sampler`). The library chooses its value class when
it is imported, from the environment; the workers are forked after that import, so `prepare_process`
switches it explicitly, before any metric exists. Its values check the process id on every update
(to start files of their own after a fork); they are given one read once per process (`_pid`) and
refreshed in a forked child, instead of a getpid system call per update.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

# How often each worker writes its sampled figures to the shared files.
SAMPLE_INTERVAL = 1.0

# This process's id, read at import and again in every forked child.
_process_id = os.getpid()


def _refresh_pid() -> None:
    global _process_id
    _process_id = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def _pid() -> int:
    return _process_id


def prepare_process(shared_dir: str | None) -> None:
    """Settings for the whole process, before any metric is created: no `_created` series (one more
    series per counter and histogram that Prometheus stores and nobody reads), and with `shared_dir`
    the multiprocess mode that forked workers inherit."""
    disable_created_metrics()
    if shared_dir is not None:
        # MmapedValue reads the directory from the environment each time it opens a file.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_dir
        values.ValueClass = values.MultiProcessValue(process_identifier=_pid)


def forget_worker(pid: int, shared_dir: str) -> None:
    """A worker is gone: drop its `live*` gauges (its counters stay in the sums)."""
    mark_process_dead(pid, shared_dir)


class StaticCollector:
    """Families computed once (build info): the same in every process."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def shared_registry(shared_dir: str, constant: StaticCollector) -> CollectorRegistry:
    """What /metrics exposes in multiprocess mode: every worker's files, plus the constant families."""
    exposed = CollectorRegistry()
    MultiProcessCollector(exposed, shared_dir)
    exposed.register(constant)
    return exposed


class SupervisorMetrics:
    """The parent process's own figure, written to the shared files like the workers' ones."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.worker_restarts = Counter(
            "tornadoproxy_worker_restarts",
            "Worker processes the parent restarted after one died (server.workers > 1 only).",
            registry=registry,
        )


_PROCESS_GAUGES: tuple[tuple[str, str, Literal["livesum", "livemin"]], ...] = (
    ("process_resident_memory_bytes", "Resident memory size in bytes (sum over workers).", "livesum"),
    ("process_virtual_memory_bytes", "Virtual memory size in bytes (sum over workers).", "livesum"),
    ("process_open_fds", "Number of open file descriptors (sum over workers).", "livesum"),
    ("process_max_fds", "Maximum number of open file descriptors (of one worker).", "livemin"),
    (
        "process_start_time_seconds",
        "Start time of the oldest worker process since unix epoch in seconds.",
        "livemin",
    ),
)


class Sampler:
    """Writes scrape-time figures to the shared files: the gauges given to `watch`, and this process's
    CPU, memory and file descriptors (the library's ProcessCollector reads /proc for them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._watched: list[tuple[Gauge, Callable[[], float]]] = []
        self._process = ProcessCollector(registry=None)
        self._cpu_seen = 0.0
        self._cpu = Counter(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds (the sum over every worker process).",
            registry=registry,
        )
        self._gauges = {
            name: Gauge(name, text, registry=registry, multiprocess_mode=mode)
            for name, text, mode in _PROCESS_GAUGES
        }

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        self._watched.append((gauge, read))
        gauge.set(read())

    def sample(self) -> None:
        for gauge, read in self._watched:
            gauge.set(read())
        for family in self._process.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    if sample.value > self._cpu_seen:
                        self._cpu.inc(sample.value - self._cpu_seen)
                        self._cpu_seen = sample.value
                elif sample.name in self._gauges:
                    self._gauges[sample.name].set(sample.value)
