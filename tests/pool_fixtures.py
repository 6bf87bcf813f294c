"""The account pool in-process, built as the gateway builds it (server.build_pool) from a config file:
real Fetcher and libcurl, real logins and token cache against the simulator, real Redis when the
config says so. For the pool's own tests (its queue, cool-downs and shared state in detail); /imitate
drives it end to end in tests/e2e/test_imitate_pool.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import base_config
from tests.harness import ROOT, Simulator, deep_merge, free_port, request, stop_process
from tornadoproxy.auth.logins import Logins
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.config.schema import Config
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.process.server import build_pool, build_upstream_side
from tornadoproxy.process.wiring import build_store, load
from tornadoproxy.relay.service import Relay


def jwt(ttl: float = 3600 * 24 * 365, **claims: Any) -> str:
    """A JWT-shaped fixed accessToken (the simulator accepts eyJ... tokens) expiring in `ttl` s."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    payload = {"exp": int(time.time() + ttl), "sub": "pool-test", **claims}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(payload)}.c2lnLXBvb2wtdGVzdA"


def fixed_accounts(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": f"acct{index}", "access_token": jwt(), **extra} for index in range(count)]


@dataclass
class Running:
    pool: AccountPool
    relay: Relay
    config: Config
    registry: CollectorRegistry

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()

    def state(self, name: str) -> str:
        return self.pool.accounts[name].state()


def write_config(sim: Simulator, tmp_path: Path, extra: dict[str, Any], name: str = "pool.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(deep_merge(base_config(sim), extra)))
    return path


@asynccontextmanager
async def running_pool(
    sim: Simulator, tmp_path: Path, extra: dict[str, Any], name: str = "pool.yaml"
) -> AsyncIterator[Running]:
    """A started pool (its background logins under way) and the relay it shares with logins."""
    config, routes, _ = load(str(write_config(sim, tmp_path, extra, name)), {})
    registry = CollectorRegistry()
    metrics = Metrics(registry, tuple(routes))
    upstream = build_upstream_side(config, routes, metrics)
    egress, fetcher = upstream.egress, upstream.fetcher
    logins = Logins(config.logins, config.upstreams, upstream.relay, metrics)
    tokens = TokenCache(config.tokens, config.logins, build_store(config, metrics), metrics)
    pool = build_pool(config, metrics, egress, logins, tokens)
    assert pool is not None
    pool.start()
    try:
        yield Running(pool, upstream.relay, config, registry)
    finally:
        await pool.close()
        await tokens.close()
        fetcher.close()


async def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll `condition` on the event loop until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.01)


async def settle() -> None:
    """Let every callback that is ready run (grants handed over, tasks woken)."""
    for _ in range(5):
        await asyncio.sleep(0)


class PoolProcess:
    """tests/pool_driver.py as a process of its own (stopped by PID, or killed)."""

    def __init__(self, config_path: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_dir / f"pool-driver-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.pool_driver", str(config_path), str(self.port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.process.stdout is not None
        if not self.process.stdout.readline():
            raise RuntimeError(f"the pool driver did not start; see {self.log.name}")

    def acquire(self, exclude: str = "", timeout: float = 30) -> dict[str, Any]:
        answer = request("POST", f"{self.url}/acquire?exclude={exclude}", body=b"", timeout=timeout)
        return {"status": answer.status, **answer.json()}

    def release(self, lease: str, outcome: str = "ok") -> None:
        assert request("POST", f"{self.url}/release/{lease}?outcome={outcome}", body=b"").status == 200

    def accounts(self) -> dict[str, Any]:
        return dict(request("GET", self.url + "/accounts").json())

    def metrics(self) -> str:
        return request("GET", self.url + "/metrics").body.decode()

    def stop(self) -> None:
        stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()
