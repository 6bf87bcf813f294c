"""`./bench/run --instructions`: machine instructions the gateway executes per unit of work, counted
by callgrind, for this checkout and the base checkout (`--base DIR`) side by side.

Wall time and CPU time on a shared 2-core VM move by 10-20 % from run to run; an instruction count
moves by well under 1 %, so a change of a few per cent shows in one run. Each system runs as
`valgrind --tool=callgrind --instr-atstart=no python -m tornadoproxy` (the bench's gateway config:
shipped defaults, access log and metrics on) in front of the bench's fake upstream. Counting starts
switched off; for each phase the bench warms the gateway up, zeroes the counters, switches counting on
(`callgrind_control -i on`), does a fixed amount of work, switches it off and dumps the counts
(`callgrind_control --dump`), so start-up, warm-up and shutdown are never counted. Then, without
valgrind, `strace -c -f` attached to the gateway's threads counts the system calls of the same
relayed requests. Only the gateway's own process is counted (not the upstream nor the load), and only
user-space instructions (no kernel time, no cache misses: callgrind is an instruction counter).

The phases (one gateway process per system and repetition runs them all, in this order):
- `request`: non-streamed `POST /platform/v1/chat/completions` over one keep-alive connection;
- `stream50`, `stream1`: streamed completions of 50 and of 1 event (`fake-n50-d20`, `fake-n1-d20`:
  20 ms apart, so each event arrives in its own read), one after the other on one connection; their
  difference over 49 is the cost of one relayed event, without the stream's set-up;
- `imitate200`, `imitate1`: 10 streams each of `/imitate/v1/chat/completions` (the client's own
  web token) over the fake web backend's answer of 200 and of 1 text delta, 40 ms apart: the cost
  per converted web event.
  200, not 50: each /imitate stream solves a requirements token first (a random seed, about 16
  SHA3 hashes on average, geometrically distributed), a cost that varies by some 100,000s of
  instructions from stream to stream and, unlike the stream's fixed set-up, does not cancel out in
  the difference; over 199 events it weighs a quarter of what it would over 49.
Results: bench/results/<timestamp>-instructions/ (summary.md, raw.jsonl, args.json, the gateway
config, logs/; with `--keep-profiles` the callgrind dumps under callgrind/, for callgrind_annotate).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench import API_KEY, BENCH, LOAD_CPU
from bench.imitate import SUT_CPU
from bench.imitate import TOKEN as WEB_TOKEN  # a JWT-shaped web token: /imitate with the client's own
from bench.procs import Proc, Processes, clean_run_dir, free_port, progress, start_nginx, wait_http

SYSTEMS = ("gateway", "gateway-base")
VALGRIND = ("valgrind", "--tool=callgrind", "--instr-atstart=no")


# (gateway port, units) -> data events the client got (excluding `[DONE]`; a request counts one);
# raises when an answer is wrong.
Work = Callable[[int, int], int]


@dataclass(frozen=True)
class Phase:
    """A fixed amount of one kind of work: `units` measured after `warm` unmeasured ones."""

    name: str
    units: int
    warm: int
    work: Work


def _chat(model: str, stream: bool) -> bytes:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(body).encode()


def _requests(port: int, n: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    body = _chat("fake", False)
    for _ in range(n):
        connection.request("POST", "/platform/v1/chat/completions", body, headers)
        answer = connection.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"request answered {answer.status}: {data[:300]!r}")
    connection.close()
    return n


def _streams(port: int, n: int, path: str, body: bytes, token: str, least: int) -> int:
    """`n` streams in turn on one connection, each ending with `data: [DONE]` after at least `least`
    data events; returns how many data events they brought."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    seen = 0
    for _ in range(n):
        connection.request("POST", path, body, headers)
        answer = connection.getresponse()
        data = answer.read()
        events = data.count(b"data: ") - 1
        if answer.status != 200 or not data.rstrip().endswith(b"data: [DONE]") or events < least:
            raise RuntimeError(f"stream answered {answer.status}, {events} events: {data[:300]!r}")
        seen += events
    connection.close()
    return seen


def _relayed(events: int) -> Work:
    """The relay passes every upstream event on as one: exactly `events` of them."""
    body = _chat(f"fake-n{events}-d20", True)
    path = "/platform/v1/chat/completions"
    return lambda port, n: _streams(port, n, path, body, API_KEY, events)


def _imitated(events: int) -> Work:
    """A role chunk, a content chunk per upstream read that brought text (per web delta unless
    several came in one read), a finish chunk."""
    # 40 ms apart, not 20: a web event costs /imitate four times what a relayed event costs, and
    # under callgrind on a busy machine 20 ms was often too short to keep the deltas apart.
    message = {"role": "user", "content": f"fake-n{events}-d40"}  # the fake web answer's length
    body = json.dumps({"model": "gpt-4o", "stream": True, "messages": [message]}).encode()
    return lambda port, n: _streams(port, n, "/imitate/v1/chat/completions", body, WEB_TOKEN, 3)


PHASE_NAMES = ("request", "stream50", "stream1", "imitate200", "imitate1")
# A figure per event: (its name, the long stream's phase, the short one's, the upstream events
# between them).
PER_EVENT = (("event", "stream50", "stream1", 49), ("imitate_event", "imitate200", "imitate1", 199))


def phases(quick: bool) -> list[Phase]:
    requests, streams, imitated = (500, 5, 3) if quick else (2000, 20, 10)
    return [
        Phase("request", requests, 300, _requests),
        Phase("stream50", streams, 3, _relayed(50)),
        Phase("stream1", streams, 3, _relayed(1)),
        Phase("imitate200", imitated, 2, _imitated(200)),
        Phase("imitate1", imitated, 2, _imitated(1)),
    ]


# -- pure logic: what callgrind and strace print, and the per-unit figures ---------------------------
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def callgrind_total(text: str) -> int:
    """Instructions in a callgrind dump: its closing `totals:` line (a dump asked for with
    `callgrind_control --dump` after `--zero` heads it with `summary: 0`, so `summary:` counts only
    where there is no `totals:`), or in valgrind's log (`==PID== Collected : N`, the total at exit)."""
    found = _TOTALS.search(text) or _SUMMARY.search(text) or _COLLECTED.search(text)
    if found is None:
        raise ValueError("no instruction total in callgrind's output")
    return int(found.group(1))


def strace_counts(text: str) -> dict[str, int]:
    """Calls per system call from `strace -c` (its table; the `total` row as "total")."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall", the last row's syscall "total".
        if len(fields) < 5 or not fields[0].replace(".", "", 1).isdigit():
            continue
        counts[fields[-1]] = int(fields[3])
    return counts


def figures(totals: dict[str, int], units: dict[str, int]) -> dict[str, float]:
    """Instructions per unit of each phase, and per event: the long stream less the short one, over
    the upstream events between them (the stream's own set-up cancels out)."""
    per = {name: totals[name] / units[name] for name in totals}
    for event, many, one, between in PER_EVENT:
        if many in per and one in per:
            per[event] = (per[many] - per[one]) / between
    return per


def summary(records: list[dict[str, Any]], argv: list[str], machine: dict[str, Any]) -> str:
    """One row per figure: the median over repetitions of each system, its spread, and the ratio."""
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in records)]
    names = ["request", "stream50", "stream1", "event", "imitate200", "imitate1", "imitate_event"]
    names += ["syscalls_per_request"]
    label = {
        "request": "instructions per relayed request",
        "stream50": "instructions per 50-event stream",
        "stream1": "instructions per 1-event stream",
        "event": "instructions per relayed event",
        "imitate200": "instructions per /imitate stream of 200 web events",
        "imitate1": "instructions per /imitate stream of 1 web event",
        "imitate_event": "instructions per /imitate web event",
        "syscalls_per_request": "system calls per relayed request",
    }
    header = "| figure | " + " | ".join(f"{s} (spread)" for s in systems) + " |"
    lines = [
        "# Instructions per unit of work (callgrind)",
        "",
        f"`{' '.join(['bench/run', *argv])}`; {machine.get('gateway_stack', '')}; "
        f"load average at start {machine.get('loadavg_at_start')}.",
        "",
        header + (" this ÷ base |" if len(systems) == 2 else ""),
        "|---" * (len(systems) + 1 + (len(systems) == 2)) + "|",
    ]
    for name in names:
        cells, medians = [], []
        for system in systems:
            values = [r["figures"][name] for r in records if r["system"] == system and name in r["figures"]]
            if not values:
                cells.append("")
                continue
            median = statistics.median(values)
            medians.append(median)
            spread = (max(values) - min(values)) / median * 100 if median else 0.0
            digits = 2 if name == "syscalls_per_request" else 0
            cells.append(f"{median:,.{digits}f}" + (f" (±{spread / 2:.2f} %)" if len(values) > 1 else ""))
        if not any(cells):
            continue
        ratio = [f"{medians[0] / medians[1]:.4f}"] if len(medians) == 2 and medians[1] else []
        lines.append(f"| {label[name]} | " + " | ".join(cells + ratio) + " |")
    chunks = {
        f"{r['system']} rep {r['rep']}": r["events"]["imitate200"] / r["units"]["imitate200"] - 2
        for r in records
        if "imitate200" in r.get("events", {})
    }
    merged = [f"{name}: {n:.1f}" for name, n in chunks.items() if n < 200]
    if merged:  # the same work in fewer reads and chunks: a little less than one delta at a time
        lines += ["", "Web deltas that came in a read of their own, of 200 per stream: " + "; ".join(merged)]
    lines += [
        "",
        "Spread: half the range over repetitions, in % of the median (with `--reps` > 1). "
        "Counted: the gateway's process only, user-space instructions only (callgrind's Ir).",
    ]
    return "\n".join(lines) + "\n"


# -- the run -----------------------------------------------------------------------------------------
class InstructionBench:
    def __init__(self, out: Path, args: argparse.Namespace, python: str, env: dict[str, str]) -> None:
        self.out = out
        self.args = args
        self.python = python
        self.env = env
        self.run_dir = Path(tempfile.mkdtemp(prefix="tornadoproxy-bench-cg-"))
        self.run_dir.chmod(0o755)  # nginx workers may run as nobody
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Processes(out / "logs")
        self.records: list[dict[str, Any]] = []
        self.upstream: Proc | None = None
        self.phases = [p for p in phases(args.quick) if p.name in args.phases]

    def run(self, systems: list[str], reps: int, nofile: int) -> None:
        template = BENCH / "conf" / "upstream.conf"
        self.upstream = start_nginx(
            self.procs, self.run_dir, "upstream", template, LOAD_CPU, 1, nofile, 0, self.env
        )
        for rep in range(1, reps + 1):
            for system in systems:
                self._log(f"rep {rep}: {system} under callgrind")
                totals, events = self._count_instructions(system, rep)
                per = figures(totals, {p.name: p.units for p in self.phases})
                if "request" in totals and shutil.which("strace"):
                    self._log(f"rep {rep}: {system} under strace -c")
                    per["syscalls_per_request"], calls = self._count_syscalls(system, rep)
                else:
                    calls = {}
                record = {"system": system, "rep": rep, "totals": totals, "events": events, "figures": per}
                record["syscalls"] = calls
                record["units"] = {p.name: p.units for p in self.phases}
                self.records.append(record)
                with open(self.out / "raw.jsonl", "a") as raw:
                    raw.write(json.dumps(record) + "\n")
                self._log(f"{system}: " + ", ".join(f"{k} {v:,.1f}" for k, v in per.items()))

    def _count_instructions(self, system: str, rep: int) -> tuple[dict[str, int], dict[str, int]]:
        """Instructions and the client's data events of each phase."""
        dumps = self.run_dir / f"cg.{system}.{rep}"
        proc = self._start_gateway(system, [*VALGRIND, f"--callgrind-out-file={dumps}"], 600)
        totals: dict[str, int] = {}
        events: dict[str, int] = {}
        try:
            for phase in self.phases:
                phase.work(proc.port, phase.warm)
                self._control(proc, "--zero")
                self._control(proc, "--instr=on")
                events[phase.name] = phase.work(proc.port, phase.units)
                self._control(proc, "--instr=off")
                before = set(self.run_dir.glob(f"{dumps.name}.*"))
                self._control(proc, f"--dump={phase.name}")
                (dump,) = set(self.run_dir.glob(f"{dumps.name}.*")) - before
                totals[phase.name] = callgrind_total(dump.read_text(errors="replace"))
                if self.args.keep_profiles:
                    kept = self.out / "callgrind"
                    kept.mkdir(exist_ok=True)
                    shutil.copy(dump, kept / f"{system}.{rep}.{phase.name}.out")
                dump.unlink()
        finally:
            self.procs.stop(proc, timeout=120)  # valgrind's shutdown is slow
            for left in self.run_dir.glob(f"{dumps.name}*"):
                left.unlink()
        return totals, events

    def _count_syscalls(self, system: str, rep: int) -> tuple[float, dict[str, int]]:
        """System calls per relayed request: strace -c attached to every thread of a warm gateway."""
        phase = next(p for p in self.phases if p.name == "request")
        proc = self._start_gateway(system, [], 60)
        table = self.out / "logs" / f"strace-{system}-{rep}.txt"
        try:
            phase.work(proc.port, phase.warm)
            threads = [int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir()]
            argv = ["strace", "-c", "-f", "-o", str(table)]
            for tid in threads:
                argv += ["-p", str(tid)]
            tracer = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
            try:
                self._await_attached(tracer, len(threads))
                phase.work(proc.port, phase.units)
            finally:
                tracer.send_signal(signal.SIGINT)  # strace detaches and writes its table
                tracer.wait(60)
        finally:
            self.procs.stop(proc)
        calls = strace_counts(table.read_text())
        return calls.get("total", 0) / phase.units, calls

    @staticmethod
    def _await_attached(tracer: subprocess.Popen[str], threads: int) -> None:
        """strace says "Process N attached" for each thread before it counts anything."""
        assert tracer.stderr is not None
        attached = 0
        deadline = time.monotonic() + 30
        while attached < threads and time.monotonic() < deadline:
            line = tracer.stderr.readline()
            if not line:
                raise RuntimeError("strace exited before attaching")
            attached += "attached" in line

    def _start_gateway(self, system: str, wrapper: list[str], timeout: float) -> Proc:
        assert self.upstream is not None
        port, upstream = free_port(), f"http://127.0.0.1:{self.upstream.port}"
        lines = [
            "# Generated by bench/instructions.py: shipped defaults (access log, metrics) except these.",
            "server:",
            "  host: 127.0.0.1",
            f"  port: {port}",
            "upstreams:  # all of them: nothing leaves loopback",
            *(f"  {key}: {upstream}" for key in ("platform", "chatgpt", "auth", "platform_web")),
            "readiness:",
            "  enabled: false  # no probe lands inside a counted phase",
        ]
        config = self.out / f"{system}.yaml"
        config.write_text("\n".join(lines) + "\n")
        argv = [*wrapper, self.python, "-m", "tornadoproxy", "--config", str(config)]
        env = self.env
        if system == "gateway-base":
            # The other checkout's package ahead of this checkout's editable install; -P keeps the
            # working directory off the path.
            env = {**self.env, "PYTHONPATH": str(self.args.base)}
            argv.insert(len(wrapper) + 1, "-P")
        proc = self.procs.start(f"{system}{'-callgrind' if wrapper else ''}", argv, SUT_CPU, env, port)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout)
        return proc

    def _control(self, proc: Proc, option: str) -> None:
        subprocess.run(
            ["callgrind_control", option, str(proc.pid)], check=True, capture_output=True, timeout=300
        )

    def clean_up(self) -> None:
        clean_run_dir(self.run_dir, self.out)

    def _log(self, message: str) -> None:
        progress(self.out, message)
