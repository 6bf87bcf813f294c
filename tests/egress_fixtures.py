"""Shared by the egress tests: module-wide real proxies, and requests sent with an in-process Fetcher.

The gateway's relay routes reach only the Platform upstream so far, so the other upstreams (ChatGPT,
auth, platform web: logins and probes) are exercised through the same `Relay.fetch()` the gateway
uses, built by the composition root's own `build_routes` from a config file: real libcurl, real
proxies, real simulator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import base_config
from tests.harness import Simulator, deep_merge
from tests.proxies import (
    BlackHole,
    RunningProxy,
    closed_port,
    start_microsocks,
    start_squid,
    start_tinyproxy,
)
from tests.secrets_used import PROXY_PASSWORD
from tornadoproxy.config.schema import load_config
from tornadoproxy.errors import UpstreamError
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.process.server import build_upstream_side
from tornadoproxy.process.wiring import build_routes
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.request import UpstreamRequest

SOCKS_USER = "us@r:1"
SQUID_USER = "tp-us@r"
TINY_USER, TINY_PASSWORD = "tiny-user", "tiny.pass-1"  # tinyproxy's BasicAuth takes [-a-z0-9._] only
TINY_CLOSED_PORT = closed_port()  # allowed by tinyproxy's ConnectPort, but nothing listens there


@dataclass
class Proxies:
    socks: RunningProxy  # microsocks, no credentials, out via 127.0.0.2
    socks_auth: RunningProxy  # microsocks, -u/-P, out via 127.0.0.4
    tiny: RunningProxy  # tinyproxy with BasicAuth, out via 127.0.0.3
    squid: RunningProxy  # squid with Basic auth (the password with @ : % /), out via 127.0.0.5
    black_hole: BlackHole


@pytest.fixture(scope="session")
def proxies(tmp_path_factory: pytest.TempPathFactory, simulator: Simulator) -> Iterator[Proxies]:
    base = tmp_path_factory.mktemp("proxies")
    ports = [int(url.rsplit(":", 1)[1]) for name, url in simulator.urls.items() if name != "control"]
    ports.append(TINY_CLOSED_PORT)
    started: list[RunningProxy] = []
    hole = BlackHole()
    try:
        started.append(start_microsocks(base / "socks", "127.0.0.2"))
        started.append(start_microsocks(base / "socks-auth", "127.0.0.4", SOCKS_USER, PROXY_PASSWORD))
        started.append(start_tinyproxy(base / "tiny", "127.0.0.3", ports, TINY_USER, TINY_PASSWORD))
        started.append(start_squid("127.0.0.5", SQUID_USER, PROXY_PASSWORD))
        socks, socks_auth, tiny, squid = started
        yield Proxies(socks, socks_auth, tiny, squid, black_hole=hole)
    finally:
        for proxy in started:
            proxy.stop()
        hole.close()


@dataclass
class Outcome:
    upstream: str
    status: int
    body: bytes
    error: UpstreamError | None
    seconds: float
    proxy: EgressProxy | None


def fetch_through(
    sim: Simulator,
    tmp_path: Path,
    extra: dict[str, Any],
    calls: Sequence[tuple[str, str]],
    environ: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (("Authorization", "Bearer egress-test"),),
) -> tuple[list[Outcome], str]:
    """Send GET `path` (POST `body`, if given) to each (upstream, path) in turn with a relay built
    from the config; return the outcomes and the metrics exposition."""
    path = tmp_path / "fetch-config.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base_config(sim), extra)))
    config = load_config(str(path), environ or {})
    routes = build_routes(config)
    registry = CollectorRegistry()

    async def run() -> list[Outcome]:
        metrics = Metrics(registry, tuple(routes))
        upstream = build_upstream_side(config, routes, metrics)
        outcomes = []
        try:
            for name, target in calls:
                url = getattr(config.upstreams, name) + target
                method = "GET" if body is None else "POST"
                request = UpstreamRequest(name, method, url, list(headers), body)
                started = time.monotonic()
                try:
                    answer = await upstream.relay.fetch(request)
                    seconds = time.monotonic() - started
                    outcomes.append(Outcome(name, answer.status, answer.body, None, seconds, answer.proxy))
                except UpstreamError as error:
                    outcomes.append(Outcome(name, 0, b"", error, time.monotonic() - started, None))
        finally:
            upstream.fetcher.close()
        return outcomes

    outcomes = asyncio.run(run())
    return outcomes, generate_latest(registry).decode()


def last_remote_ip(sim: Simulator, family: str) -> str:
    entries = sim.journal(family=family)
    assert entries, f"no request reached the {family} upstream"
    return str(entries[-1]["remote_ip"])
