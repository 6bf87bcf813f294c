"""Fixtures: the simulator (one per session, reset before each test) and gateway processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests import secrets_used
from tests.harness import Gateway, Simulator, deep_merge

# Property tests explore a fixed sequence of examples: the suite stays deterministic (no test that
# passes on one run and fails on the next); set HYPOTHESIS_PROFILE=explore to search afresh.
settings.register_profile(
    "deterministic",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore", deadline=None, max_examples=2000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def simulator(log_dir: Path) -> Iterator[Simulator]:
    sim = Simulator(log_dir)
    yield sim
    sim.stop()


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    simulator.reset()
    return simulator


def base_config(simulator: Simulator) -> dict[str, Any]:
    urls = simulator.urls
    return {
        "upstreams": {
            "platform": urls["platform"],
            **{name: urls[name] for name in ("chatgpt", "auth", "platform_web") if name in urls},
        },
        "fetch": {"connect_timeout": 5, "idle_timeout": 30},
        "logging": {"level": "INFO"},
    }


@pytest.fixture(scope="session")
def gateway(simulator: Simulator, log_dir: Path) -> Iterator[Gateway]:
    """The default gateway, shared by every test that needs no special configuration. It probes its
    upstreams once, at start-up: a periodic probe landing during a test that checks nothing went
    upstream would fail it by chance (tests of the probes start gateways of their own)."""
    gw = Gateway(deep_merge(base_config(simulator), {"readiness": {"interval": 0}}), log_dir)
    gw.wait_ready()
    simulator.clear_journal()  # the start-up probes are not part of any test
    yield gw
    gw.stop()


@pytest.fixture
def make_gateway(simulator: Simulator, log_dir: Path) -> Iterator[Callable[..., Gateway]]:
    """Start gateways with extra configuration; each is stopped after the test."""
    started: list[Gateway] = []

    def start(
        extra: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        ready: bool = True,
    ) -> Gateway:
        """A gateway with `extra` config (run under `wrapper`, e.g. a namespace); with `ready`, its
        start-up probes are over and cleared from the journal."""
        gw = Gateway(deep_merge(base_config(simulator), extra or {}), log_dir, env, wrapper)
        started.append(gw)
        if ready:
            gw.wait_ready()
            simulator.clear_journal()
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log(log_dir: Path) -> Iterator[None]:
    """After the whole session: no credential the tests used appears in any gateway log."""
    yield
    leaks = []
    for path in sorted(log_dir.glob("gateway-*.log")):
        text = path.read_text(errors="replace")
        leaks += [f"{path.name}: {secret[:6]}..." for secret in secrets_used.ALL if secret in text]
    assert not leaks, f"secrets found in gateway logs: {leaks}"
