"""`python -m bench.imitate`: /imitate beside the relay it is built on, side by side in one run.

One gateway (cpu 0) in front of the fake upstream (nginx + Lua, cpu 1: bench/conf/upstream.conf
serves the web backend's sentinel and a v1 answer stream); load and this script on cpu 1. The same
web answer reaches the client relayed unchanged (`POST /chatgpt/conversation`, the plain relayed
stream) or converted (`POST /imitate/v1/chat/completions`, the client's own token or the pool):
- events: CPU per web event, converted ÷ relayed, on the same 100-event streams;
- ttft: time to the first text over fresh connections, in turns: the upstream alone (sentinel, then
  conversation, as a client of the web backend would do), relayed, imitate without proof of work,
  then imitate with one at difficulty 0003ff (its proof_ms from the access log);
- pooled: CPU per short stream served by the pool ÷ by the client's own token, for /imitate and for the
  relayed conversation (`pool.serve_chatgpt`: a slot, the account's token, egress and device id);
- hold: 1,000 slow streams held at once on a fresh gateway, relayed and imitated: RSS per stream.
Results in bench/results/<timestamp>-imitate/ (summary.md, raw.jsonl, the configs and logs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench.procs import Proc, Processes, Sampler, cpu_seconds, free_port, rss_kb, start_nginx, tree, wait_http

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOAD_CPU = "1"
SUT_CPU = "0"
CLIENT_KEY = "bench-client-key-0123456789abcdef0123456789"
# A JWT-shaped accessToken (the fake upstream checks nothing): the client's own token.
TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJiZW5jaCJ9.c2ln"
POW_DIFFICULTY = "0003ff"
TESTS = ("events", "ttft", "pooled", "hold")
QUICK = {"events_c": 100, "events_n": 100, "ttft_n": 100, "pooled_c": 600, "hold_c": 1000, "reps": 1}
FULL = {"events_c": 200, "events_n": 300, "ttft_n": 300, "pooled_c": 2000, "hold_c": 1000, "reps": 3}


def web_body(text: str) -> str:
    """A web conversation body, as a client of /chatgpt sends it; `text` names the fake answer."""
    message = {"id": "m1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": [text]}}
    return json.dumps({"action": "next", "messages": [message], "parent_message_id": "p1", "model": "auto"})


def chat_body(text: str, stream: bool = True) -> str:
    return json.dumps({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": text}]})


class Client:
    """One keep-alive connection, as an SDK keeps one: requests in turn, the time to a marker."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def first_text(self, path: str, body: str, headers: dict[str, str], marker: bytes = b"token") -> float:
        """Seconds from sending the request to the first bytes holding `marker`; reads to the end."""
        started = time.perf_counter()
        self.connection.request("POST", path, body=body, headers=headers)
        answer = self.connection.getresponse()
        seen = b""
        while marker not in seen:
            chunk = answer.read1(65536)
            if not chunk:
                raise RuntimeError(f"no text in the answer: {seen[:300]!r}")
            seen = seen[-64:] + chunk
        took = time.perf_counter() - started
        answer.read()
        return took

    def whole(self, path: str, body: str, headers: dict[str, str]) -> float:
        started = time.perf_counter()
        self.connection.request("POST", path, body=body, headers=headers)
        self.connection.getresponse().read()
        return time.perf_counter() - started

    def close(self) -> None:
        self.connection.close()


class ImitateBench:
    def __init__(self, settings: dict[str, int], out: Path, profile: str, tests: set[str]) -> None:
        self.s = settings
        self.profile = profile
        self.tests = tests
        self.out = out
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="tornadoproxy-bench-imitate-"))
        os.chmod(self.run_dir, 0o755)
        self.procs = Processes(out / "logs")
        self.python = str(ROOT / ".venv" / "bin" / "python")
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        drop = ("PORT", "GO_CHATGPT_API_PORT", "PROXY", "GO_CHATGPT_API_PROXY")
        self.env = {k: v for k, v in os.environ.items() if k not in drop and "proxy" not in k.lower()}
        self.records: list[dict[str, Any]] = []
        self.upstream: Proc | None = None

    # -- processes ---------------------------------------------------------------------------------
    def start_upstream(self) -> None:
        template = BENCH / "conf" / "upstream.conf"
        self.upstream = start_nginx(
            self.procs, self.run_dir, "upstream", template, LOAD_CPU, 1, self.nofile, 0, self.env
        )

    def start_gateway(self, name: str, sentinel: str = "/backend-api/sentinel/chat-requirements") -> Proc:
        assert self.upstream is not None
        from tornadoproxy.web.access import key_digest

        port, base = free_port(), f"http://127.0.0.1:{self.upstream.port}"
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "access": {"client_keys": [key_digest(CLIENT_KEY)]},
            "upstreams": {key: base for key in ("chatgpt", "auth", "platform", "platform_web")},
            "readiness": {"enabled": False},
            "fetch": {"max_clients": 20000},
            "accounts": [{"name": f"bench{i}", "access_token": TOKEN, "concurrency": 64} for i in range(4)],
            "imitate": {"sentinel_path": sentinel},
            "pool": {"serve_chatgpt": True},
            "profiles": {"chatgpt": self.profile, "auth": self.profile},
        }
        path = self.out / f"{name}.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        argv = [self.python, "-m", "tornadoproxy", "--config", str(path)]
        proc = self.procs.start(name, argv, SUT_CPU, self.env, port)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        warm = Client(port)
        headers = {**self.own(), "Content-Type": "application/json"}
        for _ in range(20):  # the token counter loaded, the proof worker up, connections warm
            warm.whole("/imitate/v1/chat/completions", chat_body("fake-n2-d0"), headers)
            warm.whole("/chatgpt/conversation", web_body("fake-n2-d0"), headers)
        warm.close()
        time.sleep(0.5)
        return proc

    @staticmethod
    def own() -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}", "X-Gateway-Key": CLIENT_KEY}

    # -- tests --------------------------------------------------------------------------------------
    def sse(
        self, gw: Proc, path: str, body: str, c: int, ramp: float, events: int, key: str
    ) -> dict[str, Any]:
        argv = ["taskset", "-c", LOAD_CPU, self.python, str(BENCH / "sse_load.py")]
        argv += ["--url", f"http://127.0.0.1:{gw.port}{path}", "--c", str(c), "--ramp", str(ramp)]
        argv += ["--body", body, "--events", str(events), "--api-key", key, "--deadline", "300"]
        if key == TOKEN:
            argv += ["--header", f"X-Gateway-Key: {CLIENT_KEY}"]
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=400)
        line = next((x for x in done.stdout.splitlines() if x.startswith("SSEJSON ")), None)
        if line is None:
            raise RuntimeError(f"sse_load printed no result: {done.stdout[-500:]} {done.stderr[-800:]}")
        return dict(json.loads(line[len("SSEJSON ") :]))

    def measure(self, gw: Proc, test: str, system: str, action: Any, **extra: Any) -> dict[str, Any]:
        time.sleep(1.0)  # the previous test's connections close
        pids = tree(gw.pid)
        cpu, rss = cpu_seconds(pids), rss_kb(pids)
        started = time.monotonic()
        with Sampler(pids) as sampler:
            result = action()
        record = {
            "test": test,
            "system": system,
            "wall_s": round(time.monotonic() - started, 3),
            "sut_cpu_s": round(cpu_seconds(tree(gw.pid)) - cpu, 3),
            "rss_before_kb": rss,
            "rss_peak_kb": sampler.peak_kb,
            "others_load": round(os.getloadavg()[0], 2),
            **extra,
            **result,
        }
        self.records.append(record)
        with open(self.out / "raw.jsonl", "a") as raw:
            raw.write(json.dumps(record) + "\n")
        shown = {k: record[k] for k in ("test", "system", "sut_cpu_s") if k in record}
        print(
            f"[{time.strftime('%H:%M:%S')}] {shown} ok={record.get('ok')} failed={record.get('failed')}",
            flush=True,
        )
        return record

    def events(self, gw: Proc) -> None:
        c, n = self.s["events_c"], self.s["events_n"]
        text = f"fake-n{n}-d20"
        for system, path, body, key, count in (
            ("relayed", "/chatgpt/conversation", web_body(text), TOKEN, -1),
            ("imitate", "/imitate/v1/chat/completions", chat_body(text), TOKEN, -1),
        ):
            load = partial(self.sse, gw, path, body, c, 0, count, key)
            self.measure(gw, "events", system, load, web_events=c * n)

    def pooled(self, gw: Proc) -> None:
        c = self.s["pooled_c"]
        text = "fake-n2-d0"
        for system, path, body, key, count in (
            ("relayed", "/chatgpt/conversation", web_body(text), TOKEN, -1),
            ("relayed_pool", "/chatgpt/conversation", web_body(text), CLIENT_KEY, -1),
            ("token", "/imitate/v1/chat/completions", chat_body(text), TOKEN, -1),
            ("pool", "/imitate/v1/chat/completions", chat_body(text), CLIENT_KEY, -1),
        ):
            self.measure(gw, "pooled", system, partial(self.sse, gw, path, body, c, c / 100, count, key))

    def ttft(self, gw: Proc, pow_gw: Proc) -> None:
        assert self.upstream is not None
        headers = {**self.own(), "Content-Type": "application/json"}
        upstream, relay, imitate, imitate_pow = (
            Client(port) for port in (self.upstream.port, gw.port, gw.port, pow_gw.port)
        )
        web, chat = web_body("fake-n1-d0"), chat_body("fake-n1-d0")
        conversation, completions = "/chatgpt/conversation", "/imitate/v1/chat/completions"
        first_content = b'"content":"token'

        def direct() -> float:  # what a client of the web backend does itself: sentinel, then conversation
            took = upstream.whole("/backend-api/sentinel/chat-requirements", '{"p":"gAAAAAC"}', headers)
            return took + upstream.first_text("/backend-api/conversation", web, headers)

        runs: dict[str, list[float]] = {"upstream": [], "relayed": [], "imitate": [], "imitate_pow": []}
        for _ in range(self.s["ttft_n"]):
            runs["upstream"].append(direct())
            runs["relayed"].append(relay.first_text(conversation, web, headers))
            runs["imitate"].append(imitate.first_text(completions, chat, headers, first_content))
            runs["imitate_pow"].append(imitate_pow.first_text(completions, chat, headers, first_content))
        for client in (upstream, relay, imitate, imitate_pow):
            client.close()
        proofs = [
            line["proof_ms"]
            for line in _access_lines(pow_gw)
            if line.get("route") == "/imitate/v1/chat/completions" and "proof_ms" in line
        ][20:]  # after the warm-up
        for system, values in runs.items():
            record = {"test": "ttft", "system": system, "n": len(values), **_ms(values)}
            if system == "imitate_pow":
                record["proof_ms"] = _ms([p / 1000 for p in proofs])
            self.records.append(record)
            with open(self.out / "raw.jsonl", "a") as raw:
                raw.write(json.dumps(record) + "\n")
            print(f"[{time.strftime('%H:%M:%S')}] ttft {system}: {record}", flush=True)

    def hold(self, system: str) -> None:
        gw = self.start_gateway(f"gateway-hold-{system}")
        try:
            c, text = self.s["hold_c"], "fake-n8-d2000"
            if system == "relayed":
                args = ("/chatgpt/conversation", web_body(text), c, 5.0, -1, TOKEN)
            else:
                args = ("/imitate/v1/chat/completions", chat_body(text), c, 5.0, -1, TOKEN)
            self.measure(gw, "hold", system, lambda: self.sse(gw, *args))
        finally:
            self.procs.stop(gw)

    # -- the run -----------------------------------------------------------------------------------
    def run(self) -> None:
        facts = {
            "settings": self.s,
            "profile": self.profile,
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        }
        (self.out / "args.json").write_text(json.dumps(facts, indent=1))
        self.start_upstream()
        for rep in range(1, self.s["reps"] + 1):
            print(f"rep {rep}", flush=True)
            gw = self.start_gateway("gateway")
            pow_gw = self.start_gateway(
                "gateway-pow", f"/backend-api/sentinel/chat-requirements-pow-{POW_DIFFICULTY}"
            )
            try:
                if "events" in self.tests:
                    self.events(gw)
                if "ttft" in self.tests:
                    self.ttft(gw, pow_gw)
                if "pooled" in self.tests:
                    self.pooled(gw)
            finally:
                self.procs.stop(pow_gw)
                self.procs.stop(gw)
            if "hold" in self.tests:
                for system in ("relayed", "imitate"):
                    self.hold(system)
        (self.out / "summary.md").write_text(summary(self.records))
        print(summary(self.records))


def _access_lines(proc: Proc) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log_path.read_text(errors="replace").splitlines():
        if '"tornadoproxy.access"' in line:
            lines.append(json.loads(line))
    return lines


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3),
    }


def summary(records: list[dict[str, Any]]) -> str:
    """Medians over the repetitions, and the ratios the issue asks for."""

    def median(test: str, system: str, value: Any) -> float:
        found = [value(r) for r in records if r["test"] == test and r["system"] == system]
        return statistics.median(found) if found else float("nan")

    event_us = {
        s: median("events", s, lambda r: r["sut_cpu_s"] / r["web_events"] * 1e6)
        for s in ("relayed", "imitate")
    }
    per_request = {
        s: median("pooled", s, lambda r: r["sut_cpu_s"] / max(1, r["ok"]) * 1000)
        for s in ("relayed", "relayed_pool", "token", "pool")
    }
    hold = {
        s: median("hold", s, lambda r: (r["rss_peak_kb"] - r["rss_before_kb"]) / max(1, r["c"]))
        for s in ("relayed", "imitate")
    }
    failed = {s: sum(r["failed"] for r in records if r["test"] == "hold" and r["system"] == s) for s in hold}
    ttft = {
        s: median("ttft", s, lambda r: r["p50_ms"]) for s in ("upstream", "relayed", "imitate", "imitate_pow")
    }
    ttft90 = {s: median("ttft", s, lambda r: r["p90_ms"]) for s in ttft}
    proof = median("ttft", "imitate_pow", lambda r: r["proof_ms"].get("p50_ms", float("nan")))
    relayed, imitate = event_us["relayed"], event_us["imitate"]
    added, added90 = ttft["imitate"] - ttft["upstream"], ttft90["imitate"] - ttft90["upstream"]
    token, pool, plain = per_request["token"], per_request["pool"], per_request["relayed"]
    plain_pool = per_request["relayed_pool"]
    rows = [
        "| figure | relayed / base | imitate | ratio or difference | goal |",
        "|---|---|---|---|---|",
        f"| CPU µs per web event (same v1 stream) | {relayed:.1f} | {imitate:.1f} | "
        f"{imitate / relayed:.2f}× | ≤ 2× |",
        f"| time to first text, p50 ms (the upstream alone: {ttft['upstream']:.2f}) | "
        f"relayed {ttft['relayed']:.2f} | {ttft['imitate']:.2f} | +{added:.2f} ms over the upstream | "
        "< 2 ms |",
        f"| time to first text, p90 ms (the upstream alone: {ttft90['upstream']:.2f}) | "
        f"relayed {ttft90['relayed']:.2f} | {ttft90['imitate']:.2f} | +{added90:.2f} ms | |",
        f"| ... with a proof of work at {POW_DIFFICULTY}, p50 ms | | {ttft['imitate_pow']:.2f} | "
        f"proof p50 {proof:.2f} ms | < 2 ms + proof |",
        f"| CPU ms per short streamed completion: own token ÷ relayed | {plain:.2f} | {token:.2f} | "
        f"{token / plain:.2f}× | |",
        f"| CPU ms per completion: pool ÷ own token | {token:.2f} | {pool:.2f} | {pool / token:.2f}× | "
        "≤ 1.2× |",
        f"| CPU ms per relayed conversation: pool ÷ own token | {plain:.2f} | {plain_pool:.2f} | "
        f"{plain_pool / plain:.2f}× | ≤ 1.2× |",
        f"| RSS KB per held stream (1,000 held; failures {failed['relayed']} / {failed['imitate']}) | "
        f"{hold['relayed']:.1f} | {hold['imitate']:.1f} | {hold['imitate'] / hold['relayed']:.2f}× | "
        "0 failures |",
    ]
    heading = "# /imitate beside the relay (python -m bench.imitate)\n\n"
    return heading + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one repetition, shorter tests")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (medians are reported)")
    parser.add_argument("--tests", default=",".join(TESTS), help="a subset of " + ",".join(TESTS))
    parser.add_argument(
        "--profile", default="chrome", help="profiles.chatgpt: chrome (shipped: curl_cffi) or plain (pycurl)"
    )
    args = parser.parse_args()
    settings = dict(QUICK if args.quick else FULL)
    if args.reps:
        settings["reps"] = max(1, min(args.reps, 10))
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = BENCH / "results" / (time.strftime("%Y%m%d-%H%M%S") + f"-imitate-{args.profile}")
    bench = ImitateBench(settings, out, args.profile, set(args.tests.split(",")))
    try:
        bench.run()
    finally:
        bench.procs.stop_all()
        for log in bench.run_dir.glob("*-error.log"):
            shutil.copy(log, out / "logs" / log.name)
        shutil.rmtree(bench.run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
