"""The bench's orchestrator: start the fake upstream and each system, load them, record what happens.

Systems, measured side by side in one run: `upstream-alone` (the fake upstream by itself on cpu 0:
its own capacity, to show it is not the bottleneck), `direct` (load generator -> upstream), `nginx`
(proxy_pass, buffering off), `naive` (bench/naive_relay.py) and `gateway` (python -m tornadoproxy
with the shipped access log and metrics). Each system runs on cpu 0; the upstream, wrk, the SSE
client and this script run on cpu 1. Results: bench/results/<timestamp>/raw.jsonl + summary.md.
Run it through bench/run, which installs what is missing; see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import (
    CpuAccount,
    Proc,
    Processes,
    Sampler,
    clean_run_dir,
    cpu_seconds,
    free_port,
    open_fds,
    progress,
    rss_kb,
    start_nginx,
    tree,
    wait_http,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SYSTEMS = ("upstream-alone", "direct", "nginx", "naive", "gateway", "gateway-chrome", "gateway-base")
# The gateway with its Platform route on a browser profile: the curl_cffi engine instead of pycurl
# (over the bench's plain-HTTP upstream, so HTTP/1.1 and no TLS handshake, as for `gateway`).
ENGINE_PROFILES = {"gateway": "plain", "gateway-chrome": "chrome", "gateway-base": "plain"}
SUT_CPUS = {1: "0", 2: "0,1"}
LOAD_CPU = "1"
API_KEY = "sk-bench-not-a-real-key"
# Variables that would change where the SUTs listen or send (the gateway reads PORT and PROXY,
# libcurl reads *_proxy): never inherited from the caller's shell.
_DROPPED_ENV = ("PORT", "GO_CHATGPT_API_PORT", "PROXY", "GO_CHATGPT_API_PROXY")


@dataclass(frozen=True)
class Settings:
    """How long and how hard each test runs; `quick` and `full` below are the two presets."""

    mode: str
    warmup_s: int
    wrk_s: int
    wrk1_s: int
    conns: int
    burst_c: int
    burst_model: str
    events_c: int
    events_model: str
    hold_c: int
    hold_model: str
    hold_ramp_s: float
    reps: int = 1
    workers: int = 1


# The events test offers about 5,000 events/s, which every system here can relay. The hold test is
# about holding: slow streams (one event every 2 or 5 s) arriving at 160-200 per second, each lasting
# longer than the ramp, so that all C are open at once without the arrival rate or the event rate
# saturating a Python relay's core (the burst and events tests measure those).
QUICK = Settings("quick", 2, 5, 3, 64, 1000, "fake", 100, "fake-n100-d20", 1000, "fake-n8-d2000", 5.0)
FULL = Settings("full", 3, 20, 10, 64, 1000, "fake", 200, "fake-n300-d40", 10000, "fake-n16-d5000", 60.0)


@dataclass
class Target:
    """A system under test as the load generators see it."""

    system: str
    url: str  # the chat completions URL
    pids: list[int] = field(default_factory=list)  # the process tree whose CPU and RSS are measured
    proc: Proc | None = None
    rss_start_kb: int = 0


class Bench:
    def __init__(self, settings: Settings, out: Path, args: argparse.Namespace) -> None:
        self.settings = settings
        self.out = out
        self.args = args
        self.run_dir = Path(tempfile.mkdtemp(prefix="tornadoproxy-bench-"))
        os.chmod(self.run_dir, 0o755)  # nginx workers may run as nobody
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.procs = Processes(out / "logs")
        self.records: list[dict[str, Any]] = []
        self.env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV and "proxy" not in k.lower()}
        self.python = str(ROOT / ".venv" / "bin" / "python")
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.upstream: Proc | None = None

    # -- the run --------------------------------------------------------------------------------
    def run(self, systems: list[str]) -> None:
        self.upstream = self._start_nginx("upstream", BENCH / "conf" / "upstream.conf", LOAD_CPU, 1)
        for rep in range(1, self.settings.reps + 1):
            for system in systems:
                self._log(f"rep {rep}: {system}")
                target = self._start_system(system)
                if target is None:
                    continue
                try:
                    target = self._measure_system(target, rep)
                finally:
                    if target.proc is not None and target.proc is not self.upstream:
                        self.procs.stop(target.proc)
        if self.args.profile:
            self._profile()

    def _measure_system(self, target: Target, rep: int) -> Target:
        """Run every test on `target`; returns the target as it is at the end (it may be restarted)."""
        s = self.settings
        self._wrk(target, 16, s.warmup_s)  # warm-up, not recorded
        time.sleep(0.5)
        target.rss_start_kb = rss_kb(target.pids)
        self._record(target, rep, "wrk", lambda: self._wrk(target, s.conns, s.wrk_s))
        if target.system == "upstream-alone":
            return target
        self._record(target, rep, "wrk1", lambda: self._wrk(target, 1, s.wrk1_s))
        self._record(target, rep, "burst", lambda: self._sse(target, s.burst_c, s.burst_model, 0))
        self._record(target, rep, "events", lambda: self._sse(target, s.events_c, s.events_model, 0))
        if target.system == "gateway":
            self._gateway_checks(target, rep)
        # Allocators keep what the burst took: RSS per held stream is measured on a fresh process.
        target = self._restart(target)
        self._wrk(target, 16, s.warmup_s)
        target.rss_start_kb = rss_kb(target.pids)
        hold_c = min(s.hold_c, self.hold_cap())
        self._record(target, rep, "hold", lambda: self._sse(target, hold_c, s.hold_model, s.hold_ramp_s))
        return target

    def _restart(self, target: Target) -> Target:
        if target.proc is None or target.proc is self.upstream:
            return target
        self.procs.stop(target.proc)
        fresh = self._start_system(target.system)
        assert fresh is not None
        return fresh

    def hold_cap(self) -> int:
        return hold_cap(self.nofile)

    def _record(self, target: Target, rep: int, test: str, action: Any) -> dict[str, Any]:
        time.sleep(1.0)  # let the previous test's connections close
        target.pids = tree(target.pids[0]) if target.pids else []
        upstream = self.upstream
        upstream_pids = tree(upstream.pid) if upstream and target.proc is not upstream else []
        ours = CpuAccount(target.pids, upstream_pids)
        cpu_before = cpu_seconds(target.pids)
        rss_before = rss_kb(target.pids)
        fds_before = open_fds(target.pids)
        started = time.monotonic()
        with Sampler(target.pids) as sampler:
            result = action()
        wall = time.monotonic() - started
        cpu = ours.shares(wall)
        record = {
            "system": target.system,
            "rep": rep,
            "test": test,
            "workers": self.settings.workers,
            "wall_s": round(wall, 3),
            "sut_cpu_s": round(cpu_seconds(target.pids) - cpu_before, 3),
            "sut_rss_start_kb": target.rss_start_kb,
            "sut_rss_before_kb": rss_before,
            "sut_rss_peak_kb": sampler.peak_kb,
            "sut_fds_before": fds_before,
            "sut_fds_peak": sampler.peak_fds,
            **cpu,
            "loadavg": round(os.getloadavg()[0], 2),
            **result,
        }
        self.records.append(record)
        with open(self.out / "raw.jsonl", "a") as raw:
            raw.write(json.dumps(record) + "\n")
        self._log(report.one_line(record))
        return record

    # -- systems ---------------------------------------------------------------------------------
    def _start_system(self, system: str) -> Target | None:
        assert self.upstream is not None
        upstream_url = f"http://127.0.0.1:{self.upstream.port}"
        cpus = SUT_CPUS[self.settings.workers]
        if system == "upstream-alone":
            proc = self._start_nginx("upstream-alone", BENCH / "conf" / "upstream.conf", "0", 1)
            return Target(system, f"http://127.0.0.1:{proc.port}/v1/chat/completions", [proc.pid], proc)
        if system == "direct":
            return Target(system, f"{upstream_url}/v1/chat/completions", [self.upstream.pid], self.upstream)
        if system == "nginx":
            conf = BENCH / "conf" / "nginx-proxy.conf"
            proc = self._start_nginx("nginx", conf, cpus, self.settings.workers, "/platform/v1/models")
        elif system == "naive":
            port = free_port()
            argv = [self.python, str(BENCH / "naive_relay.py"), "--port", str(port)]
            argv += ["--upstream", upstream_url, "--workers", str(self.settings.workers)]
            proc = self.procs.start("naive", argv, cpus, self.env, port)
            wait_http(f"http://127.0.0.1:{port}/", proc)
        elif system in ENGINE_PROFILES:
            started = self._start_gateway(upstream_url, cpus, system)
            if started is None:
                return None
            proc = started
        else:
            raise ValueError(f"unknown system {system!r}")
        return Target(system, f"http://127.0.0.1:{proc.port}/platform/v1/chat/completions", [proc.pid], proc)

    def _start_nginx(
        self, name: str, template: Path, cpus: str, workers: int, health: str = "/v1/models"
    ) -> Proc:
        assert self.upstream is not None or name == "upstream"
        upstream_port = self.upstream.port if self.upstream else 0
        return start_nginx(
            self.procs,
            self.run_dir,
            name,
            template,
            cpus,
            workers,
            self.nofile,
            upstream_port,
            self.env,
            health,
        )

    def _start_gateway(self, upstream_url: str, cpus: str, system: str = "gateway") -> Proc | None:
        port = free_port()
        lines = [
            "# Generated by bench/bench.py: shipped defaults (access log and metrics on) except these.",
            "server:",
            "  host: 127.0.0.1",
            f"  port: {port}",
        ]
        if self.settings.workers > 1:
            if "server.workers" not in gateway_config_keys(self.python):
                self._log("gateway skipped: this gateway has no server.workers option yet")
                return None
            lines.append(f"  workers: {self.settings.workers}")
        lines += [
            "upstreams:  # all of them: nothing leaves loopback (the readiness probes included)",
            f"  platform: {upstream_url}",
            f"  chatgpt: {upstream_url}",
            f"  auth: {upstream_url}",
            f"  platform_web: {upstream_url}",
            "fetch:",
            "  max_clients: 20000  # above the bench's largest hold test, so the gate never answers 503",
        ]
        if ENGINE_PROFILES[system] != "plain":
            lines += ["profiles:", f"  platform: {ENGINE_PROFILES[system]}"]
        config = self.out / f"{system}.yaml"
        config.write_text("\n".join(lines) + "\n")
        argv = [self.python, "-m", "tornadoproxy", "--config", str(config)]
        env = self.env
        if system == "gateway-base":
            # Another checkout's package first on the path, ahead of this checkout's editable install;
            # -P keeps the working directory (this checkout) off the path.
            env = {**self.env, "PYTHONPATH": str(self.args.base)}
            argv = [self.python, "-P", *argv[1:]]
        proc = self.procs.start(system, argv, cpus, env, port)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        return proc

    # -- load generators -------------------------------------------------------------------------
    def _wrk(self, target: Target, conns: int, seconds: int) -> dict[str, Any]:
        argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
        argv += ["-s", str(BENCH / "load" / "post.lua"), target.url]
        env = {**self.env, "BENCH_MODEL": "fake", "BENCH_API_KEY": API_KEY}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
        line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")
        result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
        result["conns"] = conns
        result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
        return result

    def _sse(self, target: Target, c: int, model: str, ramp: float) -> dict[str, Any]:
        deadline = 60 + ramp + _stream_seconds(model) * 3 + c / 200
        argv = ["taskset", "-c", LOAD_CPU, self.python, str(BENCH / "sse_load.py"), "--url", target.url]
        argv += ["--c", str(c), "--model", model, "--ramp", str(ramp), "--deadline", str(round(deadline))]
        argv += ["--api-key", API_KEY]
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=deadline + 60)
        line = next((x for x in done.stdout.splitlines() if x.startswith("SSEJSON ")), None)
        if line is None:
            raise RuntimeError(f"sse_load printed no result: {done.stdout[-500:]} {done.stderr[-800:]}")
        return dict(json.loads(line[len("SSEJSON ") :]))

    # -- extras ------------------------------------------------------------------------------------
    def _gateway_checks(self, target: Target, rep: int) -> None:
        """Show that metrics and the access log were on: their counts against what was sent."""
        assert target.proc is not None
        base = target.url.split("/platform/")[0]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tornadoproxy_http_requests_total{")
        )
        active = next(
            (float(x.split()[-1]) for x in text.splitlines() if x.startswith("tornadoproxy_streams_active ")),
            None,
        )
        with open(target.proc.log_path, errors="replace") as log:
            access = sum(1 for line in log if "tornadoproxy.access" in line)
        record = {
            "system": "gateway",
            "rep": rep,
            "test": "checks",
            "metrics_requests_total": counted,
            "metrics_streams_active": active,
            "access_log_lines": access,
            "log_bytes": target.proc.log_path.stat().st_size,
        }
        self.records.append(record)
        with open(self.out / "raw.jsonl", "a") as raw:
            raw.write(json.dumps(record) + "\n")
        self._log(f"gateway checks: {record}")

    def _profile(self) -> None:
        """py-spy on the gateway (and the naive relay) under the non-streaming load."""
        spy = self.args.py_spy
        for system in ("gateway", "naive"):
            target = self._start_system(system)
            if target is None or target.proc is None:
                continue
            try:
                self._wrk(target, 16, self.settings.warmup_s)
                raw = self.out / f"profile-{system}.txt"
                seconds = self.args.profile_seconds
                argv = ["taskset", "-c", LOAD_CPU, spy, "record", "--nonblocking", "-r", "200", "-f", "raw"]
                argv += ["-d", str(seconds), "-o", str(raw), "-p", str(target.proc.pid)]
                spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(0.5)
                self._wrk(target, self.settings.conns, seconds)
                _, err = spy_proc.communicate(timeout=seconds + 60)
                if not raw.exists():
                    self._log(f"py-spy wrote no profile: {err.decode()[-500:]}")
                    continue
                top = report.profile_top(raw.read_text())
                (self.out / f"profile-{system}.md").write_text(top)
                self._log(f"profile of {system} under wrk -c{self.settings.conns}:\n{top}")
            finally:
                self.procs.stop(target.proc)

    def clean_up(self) -> None:
        clean_run_dir(self.run_dir, self.out)

    def _log(self, message: str) -> None:
        progress(self.out, message)


def hold_cap(nofile: int) -> int:
    """Streams one process can hold: a relay needs two descriptors per stream (client + upstream),
    plus a margin for idle keep-alive connections (the nginx baseline caches up to 128)."""
    return max(100, (nofile - 1000) // 2 // 100 * 100)


def gateway_config_keys(python: str) -> set[str]:
    """Every key the gateway's config accepts (from its own declarations)."""
    code = (  # the package layout of issue 13 first, then the flat one (a gateway of an older commit)
        "try:\n"
        " from tornadoproxy.config.schema import Config\n"
        " from tornadoproxy.config.options import describe\n"
        "except ImportError:\n"
        " from tornadoproxy.config import Config\n"
        " from tornadoproxy.options import describe\n"
        "for key, _, _ in describe(Config): print(key)"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return set(done.stdout.split())


def _stream_seconds(model: str) -> float:
    parts = model.split("-")
    if len(parts) == 3 and parts[1].startswith("n") and parts[2].startswith("d"):
        return int(parts[1][1:]) * int(parts[2][1:]) / 1000
    return 1.0
