"""The monitoring stack against a real Prometheus: a gateway with two worker processes is scraped by
Debian's prometheus (config from deploy/prometheus/prometheus.yml, rules from alerts.yml) while the
test drives every kind of traffic the dashboard and the alerts watch; then every expression of the
dashboard JSON and of the alert rules is evaluated through Prometheus's HTTP API and must return data.
The expressions are read from the deploy files, so a new panel or alert cannot escape."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import base_config
from tests.faults import Fault, FaultProxy
from tests.harness import (
    Gateway,
    RedisServer,
    Simulator,
    deep_merge,
    free_port,
    metric_value,
    raw_exchange,
    request,
    streaming,
    wait_for,
)
from tests.pool_fixtures import jwt
from tests.prometheus import PrometheusServer, alert_rules, dashboard_expressions, scrape_config
from tests.secrets_used import API_KEY, CLIENT_KEY, LOGIN_PASSWORD, OTHER_PASSWORD, WRONG_PASSWORD
from tests.simulator import pages
from tornadoproxy.web.access import key_digest

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
SSE = [["Content-Type", "text/event-stream"]]
STREAM_BODY = json.dumps({"model": "m", "stream": True, "messages": []})
MODELS = "/platform/v1/models"
FILES = "/platform/v1/files"


def worker_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (the gateway's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry))
    return found


def served_by(gw: Gateway) -> set[int]:
    return {line["worker"] for line in gw.log_lines() if line.get("message") == "request"}


class Stack:
    """The gateway (two workers, Redis token store, a dead egress proxy for chatgpt, an account pool
    with an invalid account and one whose logins are challenged), a second gateway whose /imitate
    requests wait for its one pool account, and Prometheus."""

    def __init__(self, work: Path, log_dir: Path, simulator: Simulator) -> None:
        self.redis = RedisServer(log_dir)
        self.ops_port = free_port()
        carol = f"carol+{uuid.uuid4().hex[:8]}@example.com"
        simulator.add_account(carol, LOGIN_PASSWORD)
        simulator.challenge("csrf", times=-1)  # every ChatGPT login (the pool's) meets a challenge
        config = {
            "server": {"workers": 2, "ops_port": self.ops_port, "drain_timeout": 2},
            "fetch": {"max_clients": 1, "queue_timeout": 0},
            "readiness": {"interval": 1, "timeout": 2},
            "egress": {"chatgpt": f"socks5h://127.0.0.1:{free_port()}", "cooldown": 3600},
            "tokens": {"store": "redis", "redis_url": self.redis.url, "kdf_cost": 10},
            "logins": {"max_failures_per_username": 1, "max_failures_per_address": 1000},
            "accounts": [
                {"name": "bob", "access_token": jwt(ttl=-60)},  # expired: invalid
                {"name": "carol", "username": carol, "password": LOGIN_PASSWORD},
            ],
            "pool": {"login_backoff": 60},
        }
        self.gateway = Gateway(deep_merge(base_config(simulator), config), log_dir)
        self.gateway.wait_ready()
        imitating = {
            "access": {"client_keys": [key_digest(CLIENT_KEY)]},
            "accounts": [{"name": "dave", "access_token": jwt(sub="dave")}],
            "server": {"ops_port": free_port()},
        }
        self.imitating = Gateway(deep_merge(base_config(simulator), imitating), log_dir)
        self.imitating.key_headers = {"X-Gateway-Key": CLIENT_KEY}
        self.imitating.wait_ready(headers=self.imitating.key_headers)
        self.waits = threading.Thread(target=imitate_requests_waiting, args=(self.imitating, simulator))
        self.waits.start()
        # The second target is down; the third is the gateway whose requests wait.
        imitating_ops = f"127.0.0.1:{self.imitating.config['server']['ops_port']}"
        targets = [f"127.0.0.1:{self.ops_port}", f"127.0.0.1:{free_port()}", imitating_ops]
        self.prometheus = PrometheusServer(work, scrape_config(targets))
        # Prometheus starts scraping a few seconds after it is ready (target updates are throttled);
        # the traffic starts once the series before it are stored, so that rates have a start.
        wait_for(
            lambda: self.prometheus.value(f'up{{instance="{targets[0]}"}}') == 1,
            timeout=30,
            interval=0.2,
            what="the first scrape",
        )

    def stop(self) -> None:
        self.prometheus.stop()
        self.waits.join(30)
        self.imitating.stop()
        assert self.gateway.stop() == 0
        self.redis.stop()


def imitate_requests_waiting(gw: Gateway, sim: Simulator) -> None:
    """/imitate requests that wait 6 s for the gateway's one pool account (the queue-wait series and
    alert): one answer holds the account at a gate while three more wait in the queue."""
    sim.script_answer(["held", " answer"], gates={"1": "dave"}, times=4)
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    url = gw.url + "/imitate/v1/chat/completions"
    with ThreadPoolExecutor(4) as executor:
        held = executor.submit(request, "POST", url, headers=headers, body=body)
        sim.wait_reached("dave")
        waiting = [executor.submit(request, "POST", url, headers=headers, body=body) for _ in range(3)]
        wait_for(lambda: metric_value(gw.metrics(), "tornadoproxy_pool_queue_length") == 3, what="waiters")
        time.sleep(6)  # the scenario itself: requests that waited long, not a wait for something
        sim.release("dave")
        for future in as_completed([held, *waiting], timeout=30):  # each served once the one before is done
            assert future.result().status == 200


@pytest.fixture
def stack(tmp_path: Path, log_dir: Path, sim: Simulator) -> Iterator[Stack]:
    started = Stack(tmp_path, log_dir, sim)
    yield started
    started.stop()


def drive_traffic(stack: Stack, sim: Simulator) -> dict[str, int]:
    """Every kind of traffic the dashboard and the alerts watch; returns what the metrics must count."""
    gw = stack.gateway
    counts = {"models_ok": 0}
    # Ordinary requests, until both workers have answered some.
    for _ in range(40):
        for _ in range(10):
            assert request("GET", gw.url + MODELS, headers=AUTH).status == 200
            counts["models_ok"] += 1
        if served_by(gw) == {0, 1}:
            break
    assert served_by(gw) == {0, 1}, "the kernel never handed a connection to one of the workers"
    # Gateway errors, upstream 5xx (over 5% of the traffic), a challenge page and a block page.
    assert request("GET", gw.url + MODELS).status == 401
    assert request("GET", gw.url + "/nowhere").status == 404
    # Scripted answers go to a route the readiness probes (GET /v1/models, every second) never take.
    failing = math.ceil(counts["models_ok"] / 5)
    sim.script("platform", "/v1/files", {"status": 500, "json": {"error": {"message": "x"}}}, times=failing)
    assert request("GET", gw.url + FILES, headers=AUTH).status == 500
    # A series is created by its first event: rates count from its first scrape, so the other 500s
    # come once Prometheus has seen it (as they would in a long-running gateway).
    five_xx = f'tornadoproxy_http_requests_total{{route="{FILES}",status="5xx"}}'
    wait_for(lambda: stack.prometheus.query(five_xx), timeout=10, what="the first scrape of the 5xx series")
    for _ in range(failing - 1):
        assert request("GET", gw.url + FILES, headers=AUTH).status == 500
    sim.script("platform", "/v1/files", pages.challenge(403))
    assert request("GET", gw.url + FILES, headers=AUTH).json()["error"]["code"] == "upstream_challenge"
    sim.script("platform", "/v1/files", pages.block())
    assert request("GET", gw.url + FILES, headers=AUTH).json()["error"]["code"] == "upstream_blocked"
    # The chatgpt upstream leaves through a dead egress proxy: every request fails.
    for _ in range(4):
        answer = request("GET", gw.url + "/chatgpt/conversations", headers=AUTH)
        assert answer.json()["error"]["code"] == "egress_proxy_error"
    # The platform_web probe meets a challenge page from now on.
    sim.script("platform_web", "/", pages.challenge(403), method="GET", times=-1)
    drive_streams(gw, sim)
    drive_logins(gw, sim)
    counts["models_ok"] += fill_the_gate(gw, sim)
    return counts


def drive_streams(gw: Gateway, sim: Simulator) -> None:
    """One stream that ends well, one the client leaves, one the upstream cuts."""
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": "data: 1\n\ndata: [DONE]\n\n"}]},
    )
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=STREAM_BODY) as answer:
        assert answer.read().endswith(b"data: [DONE]\n\n")
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": "data: 1\n\n"}, {"stall": True}]},
    )
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=STREAM_BODY) as answer:
        assert answer.read1(100).startswith(b"data: 1")

    def let_go() -> bool:  # the stream is counted, and its upstream slot free again (one per worker)
        exposition = gw.metrics()
        return (
            metric_value(exposition, "tornadoproxy_streams_ended_total", reason="client_gone") == 1
            and metric_value(exposition, "tornadoproxy_gate_in_flight") == 0
        )

    wait_for(let_go, what="the stream the client left to end upstream")
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": "data: 1\n\n"}, {"reset": True}]},
    )
    with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=STREAM_BODY) as answer:
        assert b"event: error" in answer.read()


def login(gw: Gateway, username: str, password: str) -> int:
    body = {"username": username, "password": password}
    return request("POST", gw.url + "/platform/login", body=body).status


def drive_logins(gw: Gateway, sim: Simulator) -> None:
    """A login, its cache hit (through Redis, whichever worker answers), a challenged login, a
    wrong password and the limit it runs into."""
    email = f"user+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(email, LOGIN_PASSWORD)
    assert login(gw, email, LOGIN_PASSWORD) == 200
    assert login(gw, email, LOGIN_PASSWORD) == 200
    assert sim.account_counters(email)["logins"] == 1
    other = f"other+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(other, LOGIN_PASSWORD)
    sim.challenge("authorize", times=1)
    assert login(gw, other, LOGIN_PASSWORD) == 403
    # One failure per username allowed, counted per worker: by the third, each worker has seen one.
    statuses = [login(gw, other, wrong) for wrong in (WRONG_PASSWORD, OTHER_PASSWORD, WRONG_PASSWORD + "3")]
    assert set(statuses) <= {401, 429} and 429 in statuses, statuses


def fill_the_gate(gw: Gateway, sim: Simulator) -> int:
    """With one upstream slot per worker, held streams fill both; the next request is refused.
    Returns how many of the requests sent alongside got through."""
    held: list[Any] = []
    through = 0
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": SSE, "chunks": [{"data": "data: 1\n\n"}, {"gate": "held"}]},
        times=3,
    )
    try:
        for _ in range(3):
            if metric_value(gw.metrics(), "tornadoproxy_gate_rejected_total"):
                break
            sock = socket.create_connection(("127.0.0.1", gw.port))
            held.append(sock)
            sock.sendall(
                "POST /platform/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {API_KEY}\r\n"
                f"Content-Length: {len(STREAM_BODY)}\r\n\r\n{STREAM_BODY}".encode()
            )
            sock.settimeout(10)
            head = sock.recv(65536)
            assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), head
            status = request("GET", gw.url + MODELS, headers=AUTH).status
            assert status in (200, 503)
            if status == 503:
                break
            through += 1
        assert metric_value(gw.metrics(), "tornadoproxy_gate_rejected_total") >= 1
        return through
    finally:
        sim.release("held")
        for sock in held:
            sock.close()


def restart_a_worker(gw: Gateway) -> None:
    victim = worker_pids(gw.process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (
            victim not in worker_pids(gw.process.pid)
            and len(worker_pids(gw.process.pid)) == 2
            and metric_value(gw.metrics(), "tornadoproxy_workers") == 2
        ),
        timeout=15,
        what="the killed worker to be replaced",
    )


def fail_a_reload(gw: Gateway) -> None:
    """A reload that every worker refuses. Each worker reads the file when its SIGHUP arrives: the
    good file comes back only once both have failed, and by rename, so that no worker can read a
    half-written (or empty: all defaults) file."""

    def failed() -> float:
        return metric_value(gw.metrics(), "tornadoproxy_config_reloads_total", outcome="failed")

    good = gw.config_path.read_text()
    before = failed()
    gw.config_path.write_text("server:\n  port: not-a-port\n")
    try:
        gw.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                failed() == before + 2
                and metric_value(gw.metrics(), "tornadoproxy_config_last_reload_successful") == 0
            ),
            what="both workers to refuse the reload",
        )
    finally:
        restored = gw.config_path.with_suffix(".restored")
        restored.write_text(good)
        restored.replace(gw.config_path)


def test_every_dashboard_and_alert_expression_returns_data(stack: Stack, sim: Simulator) -> None:
    gw, prometheus = stack.gateway, stack.prometheus
    counts = drive_traffic(stack, sim)
    exposition = gw.metrics()
    ok = metric_value(
        exposition, "tornadoproxy_http_requests_total", route=MODELS, method="GET", status="2xx"
    )
    assert ok == counts["models_ok"]  # every worker's requests, counted once
    restart_a_worker(gw)
    assert (
        metric_value(
            gw.metrics(), "tornadoproxy_http_requests_total", route=MODELS, method="GET", status="2xx"
        )
        == ok
    ), "a dead worker's counts must stay in the sums"
    fail_a_reload(gw)
    stack.redis.stop()
    assert login(gw, f"late+{uuid.uuid4().hex[:8]}@example.com", LOGIN_PASSWORD) == 401  # no such account
    wait_for(
        lambda: metric_value(gw.metrics(), "tornadoproxy_token_store_errors_total") >= 1, what="a store error"
    )
    wait_for(
        lambda: metric_value(gw.metrics(), "tornadoproxy_pool_shared_state_up") == 0,
        what="the pool to say it serves on its own slots",
    )
    exposition = gw.metrics()
    assert metric_value(exposition, "tornadoproxy_pool_account_state", account="bob", state="invalid") == 1
    assert metric_value(exposition, "tornadoproxy_pool_account_login_failures", account="carol") >= 1

    # Prometheus has what the gateway says now, and evaluated the rules on it.
    wait_for(
        lambda: (
            prometheus.value("sum(tornadoproxy_token_store_errors_total)")
            and prometheus.value("sum(tornadoproxy_worker_restarts_total)") == 1
            and prometheus.value(
                'sum(tornadoproxy_http_requests_total{route="/platform/v1/models",status="2xx"})'
            )
            == ok
        ),
        timeout=30,
        what="prometheus to scrape the traffic",
    )
    targets = prometheus.api("targets")["activeTargets"]
    healthy = [t for t in targets if t["health"] == "up"]
    assert len(targets) == 3 and len(healthy) == 2 and all(t["lastError"] == "" for t in healthy)
    stack.waits.join(30)  # the long waits of the second gateway's requests are over and counted

    empty = []
    for title, expr in dashboard_expressions():
        result = prometheus.query(expr)
        if not any(math.isfinite(float(sample["value"][1])) for sample in result):
            empty.append(f"{title}: {expr} -> {result}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    rules = alert_rules()
    silent = [f"{rule['alert']}: {rule['expr']}" for rule in rules if not prometheus.query(rule["expr"])]
    assert not silent, "alert expressions without data:\n" + "\n".join(silent)

    def alert_states() -> dict[str, str] | None:
        groups = prometheus.api("rules", type="alert")["groups"]
        states = {rule["name"]: rule["state"] for group in groups for rule in group["rules"]}
        assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
        return states if "inactive" not in states.values() else None

    states = wait_for(alert_states, timeout=30, what="every alert to be pending or firing")
    assert sorted(states) == sorted(rule["alert"] for rule in rules)


def test_a_single_process_exposition_passes_promtool_and_parses_as_openmetrics(gateway: Gateway) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    assert request("GET", gateway.url + MODELS, headers=AUTH).status == 200
    text = gateway.metrics()
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "_created" not in text  # one series less per counter and histogram, as with workers
    answer = request("GET", gateway.url + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert (answer.header("Content-Type") or "").startswith("application/openmetrics-text")
    names = {family.name for family in text_string_to_metric_families(answer.body.decode())}
    assert {"tornadoproxy_http_requests", "tornadoproxy_build", "process_cpu_seconds"} <= names


def test_gateway_errors_are_counted_by_code_and_logged(gateway: Gateway) -> None:
    def count(code: str) -> float:
        return metric_value(gateway.metrics(), "tornadoproxy_gateway_errors_total", code=code)

    before = {code: count(code) for code in ("missing_authorization", "bad_request", "not_found")}
    assert request("GET", gateway.url + MODELS).status == 401
    assert raw_exchange(gateway.port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert request("GET", gateway.url + "/nowhere").status == 404
    assert {code: count(code) - before[code] for code in before} == {
        "missing_authorization": 1,
        "bad_request": 1,
        "not_found": 1,
    }
    refused = [
        line
        for line in gateway.log_lines()
        if line.get("message") == "request" and line.get("error") == "missing_authorization"
    ]
    assert refused and refused[-1]["route"] == MODELS and refused[-1]["status"] == 401


def test_token_cache_entries_follow_logins_and_evictions(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    gw = make_gateway({"tokens": {"kdf_cost": 10}})
    assert metric_value(gw.metrics(), "tornadoproxy_token_cache_entries") == 0
    email = f"user+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(email, LOGIN_PASSWORD)
    answer = request("POST", gw.url + "/platform/login", body={"username": email, "password": LOGIN_PASSWORD})
    key = answer.json()["user"]["session"]["sensitive_id"]
    assert metric_value(gw.metrics(), "tornadoproxy_token_cache_entries") == 1
    sim.script("platform", "/dashboard/billing/credit_grants", {"status": 401, "json": {"error": {}}})
    path = "/platform/dashboard/billing/credit_grants"
    assert request("GET", gw.url + path, headers={"Authorization": key}).status == 401
    exposition = gw.metrics()
    assert metric_value(exposition, "tornadoproxy_token_cache_entries") == 0
    assert metric_value(exposition, "tornadoproxy_token_cache_evictions_total", reason="unauthorized") == 1


def test_each_transport_failure_is_counted_under_its_kind(
    make_gateway: Callable[..., Gateway], sim: Simulator
) -> None:
    """Refused, reset before the answer, reset midstream, closed without an answer, silent: each one
    counted once under its own kind (no readiness probes here to add to the counts)."""
    host, port = sim.urls["platform"].split("//")[1].split(":")
    faults = FaultProxy((host, int(port)))
    try:
        gw = make_gateway(
            {
                "upstreams": {"platform": faults.url, "chatgpt": f"http://127.0.0.1:{free_port()}"},
                "readiness": {"enabled": False},
                "fetch": {"idle_timeout": 1},
            }
        )

        def errors() -> dict[tuple[str, str], float]:
            exposition = gw.metrics()
            return {
                (upstream, kind): metric_value(
                    exposition, "tornadoproxy_upstream_errors_total", upstream=upstream, kind=kind
                )
                for upstream in ("platform", "chatgpt")
                for kind in ("unreachable", "reset", "timeout")
            }

        assert set(errors().values()) == {0}
        chatgpt = request("GET", gw.url + "/chatgpt/conversations", headers=AUTH)
        assert chatgpt.status == 502 and chatgpt.json()["error"]["code"] == "upstream_unreachable"
        for fault, status in ((Fault("reset"), 502), (Fault("close"), 502), (Fault("stall"), 504)):
            faults.set(fault)
            assert request("GET", gw.url + MODELS, headers=AUTH).status == status, fault
        faults.set(Fault("reset", after_bytes=300))
        sim.script(
            "platform",
            "/v1/chat/completions",
            {
                "status": 200,
                "headers": SSE,
                "chunks": [{"data": "data: 1\n\n"}, {"data": "data: 2\n\n" * 100}],
            },
        )
        with streaming(gw.url + "/platform/v1/chat/completions", headers=AUTH, body=STREAM_BODY) as answer:
            assert b"event: error" in answer.read()
        counted = {key: value for key, value in errors().items() if value}
        assert counted == {
            ("chatgpt", "unreachable"): 1,
            ("platform", "reset"): 3,  # before the status line (reset, close) and midstream
            ("platform", "timeout"): 1,
        }
    finally:
        faults.stop()
