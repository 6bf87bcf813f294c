"""Processes of a bench run: start pinned to a CPU in their own process group, stop by process group,
and read what /proc says of a process tree (RSS, CPU time, open file descriptors).

Every process the bench starts goes through `Processes.start`, so `Processes.stop_all` (also run on
SIGINT/SIGTERM and at exit) can end each of them by its own process group id, and only them.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Starts and stops the bench's processes; each runs in a new session (its own process group)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[Proc] = []

    def start(
        self, name: str, argv: Sequence[str], cpus: str, env: dict[str, str] | None = None, port: int = 0
    ) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                ["taskset", "-c", cpus, *argv],  # taskset execs argv: the PID is the program's own
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path, port)
        self.running.append(proc)
        return proc

    def stop(self, proc: Proc, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL to it after `timeout` seconds."""
        if proc in self.running:
            self.running.remove(proc)
        if proc.alive():
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.popen.wait(5)
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of the group (e.g. workers), if any

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            self.stop(proc, timeout=5.0)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def wait_http(url: str, proc: Proc, timeout: float = 20.0) -> None:
    """Poll `url` until it answers (any HTTP status) or raise, with a deadline."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                response.read()
                return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:g} s ({last})")


def start_nginx(
    procs: Processes,
    run_dir: Path,
    name: str,
    template: Path,
    cpus: str,
    workers: int,
    nofile: int,
    upstream_port: int,
    env: dict[str, str],
    health: str = "/v1/models",
) -> Proc:
    """nginx on a free port from one of bench/conf's templates (@@NAME@@ placeholders filled in)."""
    port = free_port()
    values = {
        "RUN": str(run_dir),
        "NAME": name,
        "PORT": str(port),
        "UPSTREAM_PORT": str(upstream_port),
        "WORKERS": str(workers),
        "NOFILE": str(nofile),
        # nginx counts connections in ways descriptors do not (it warned "worker_connections are
        # not enough" at 19,000 sockets with 19,900): let the descriptor limit be the only one.
        "CONNECTIONS": str(max(1024, nofile + 1000)),
    }
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    conf = run_dir / f"{name}.conf"
    conf.write_text(text)
    argv = ["nginx", "-c", str(conf), "-p", str(run_dir), "-e", str(run_dir / f"{name}-error.log")]
    proc = procs.start(name, argv, cpus, env, port)
    wait_http(f"http://127.0.0.1:{port}{health}", proc)
    return proc


def clean_run_dir(run_dir: Path, out: Path) -> None:
    """Keep nginx's error logs with the results (`out/logs`), then remove the scratch folder."""
    for log in run_dir.glob("*-error.log"):
        shutil.copy(log, out / "logs" / log.name)
    shutil.rmtree(run_dir, ignore_errors=True)


def progress(out: Path, message: str) -> None:
    """A progress line, timestamped: printed and appended to `out/bench.log`."""
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(out / "bench.log", "a") as log:
        log.write(line + "\n")


# -- /proc readings -----------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (by scanning /proc once)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10000:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_kb(pids: Sequence[int]) -> int:
    """Sum of resident memory over `pids` (shared pages of several processes counted each time)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/statm").read_text().split()
            total += int(fields[1]) * PAGE_KB
        except OSError:
            continue
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of `pids` (processes that ended are not counted)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def open_fds(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return total


class Sampler:
    """Samples the RSS of a process tree every `interval` seconds in a thread, and its open file
    descriptors every fifth time (listing 20,000 of them is not free); keeps the peaks."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak_kb = rss_kb(self.pids)
        self.peak_fds = open_fds(self.pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        ticks = 0
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pids))
            ticks += 1
            if ticks % 5 == 0:
                self.peak_fds = max(self.peak_fds, open_fds(self.pids))


# -- what the CPUs did during a test ------------------------------------------------------------
def _cpu_busy() -> dict[str, tuple[int, int, int]]:
    """Per CPU since boot, in USER_HZ jiffies: (user + nice + system, irq + softirq, steal)."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            n = [int(v) for v in values[:8]]
            found[name] = (n[0] + n[1] + n[2], n[5] + n[6], n[7])
    return found


class CpuAccount:
    """What the machine's CPUs did during one test, and how much of it was not the bench's own
    processes (the SUT, the upstream, wrk / the SSE client, this script): the noise of a shared box.

    Interrupt time (mostly loopback networking, caused by the bench) and steal (the hypervisor) are
    reported apart; "others" is user + system time that no process of the bench accounts for."""

    def __init__(self, sut_pids: Sequence[int], upstream_pids: Sequence[int]) -> None:
        """`upstream_pids`: the upstream's tree when it is not itself the system under test."""
        self.sut_pids = list(sut_pids)
        self.upstream_pids = list(upstream_pids)
        self.busy = _cpu_busy()
        self.sut = cpu_seconds(self.sut_pids)
        self.upstream = cpu_seconds(self.upstream_pids)
        self.mine = _rusage_seconds(resource.RUSAGE_SELF) + _rusage_seconds(resource.RUSAGE_CHILDREN)

    def shares(self, wall: float) -> dict[str, Any]:
        """Busy share of each CPU, and CPUs' worth of others' time, interrupts and steal, over `wall`."""
        wall = max(wall, 1e-6)
        now = _cpu_busy()
        delta = {
            name: [
                (a - b) / CLOCK_TICKS for a, b in zip(now[name], self.busy.get(name, now[name]), strict=True)
            ]
            for name in now
        }
        ours = cpu_seconds(self.sut_pids) - self.sut + cpu_seconds(self.upstream_pids) - self.upstream
        ours += _rusage_seconds(resource.RUSAGE_SELF) + _rusage_seconds(resource.RUSAGE_CHILDREN) - self.mine
        user_system = sum(d[0] for d in delta.values())
        return {
            "cpu_busy": {name: round(sum(d) / wall, 3) for name, d in delta.items()},
            "others_cpu": round(max(0.0, user_system - ours) / wall, 3),
            "irq_cpu": round(sum(d[1] for d in delta.values()) / wall, 3),
            "steal_cpu": round(sum(d[2] for d in delta.values()) / wall, 3),
        }


def _rusage_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
