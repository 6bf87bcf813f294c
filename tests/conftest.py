"""Fixtures: the simulator (one per session, reset before each test) and gateway processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import secrets_used
from tests.harness import Gateway, Simulator, deep_merge


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
    """The default gateway, shared by every test that needs no special configuration."""
    gw = Gateway(base_config(simulator), log_dir)
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
    ) -> Gateway:
        gw = Gateway(deep_merge(base_config(simulator), extra or {}), log_dir, env, wrapper)
        started.append(gw)
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
