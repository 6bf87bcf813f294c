"""Fixtures of the container tests: podman set up once a session, the stand-in base image, the
project's image built from its own Dockerfile, and containers run on the host's network and removed by
id. Skipped, with the reason, only where podman or debootstrap cannot be had."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.podman import Podman, ensure_base_image, missing_tools
from tests.harness import ROOT, free_port, request, wait_for

IMAGE_TAG = "localhost/tornadoproxy-test:latest"


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    reason = missing_tools()
    if reason:
        pytest.skip(f"container tests need podman and debootstrap: {reason}")
    return Podman.configured(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="session")
def base_image(podman: Podman) -> str:
    return ensure_base_image(podman)


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="session")
def gateway_image(podman: Podman, base_image: str) -> str:
    """The image built from this checkout's Dockerfile as a user would build it, labelled with the
    commit (its id and time: stable while the checkout is, so the layer cache holds)."""
    previous = podman.run("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG, check=False).stdout.strip()
    revision, created = git("rev-parse", "HEAD") or "unknown", git("log", "-1", "--format=%cI") or "unknown"
    image = podman.build(
        ROOT, IMAGE_TAG, "--build-arg", f"REVISION={revision}", "--build-arg", f"CREATED={created}"
    )
    if previous and previous != image:
        podman.run("rmi", previous, check=False)  # the last run's image, unless a container still uses it
    return image


class Container:
    """A container of the gateway image on the host's network, its gateway on a free loopback port."""

    def __init__(self, podman: Podman, image: str, config: dict[str, Any], work: Path, log_dir: Path) -> None:
        self.podman, self.port = podman, free_port()
        config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1"}}
        self.config_path = work / f"container-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.config_path.chmod(0o644)  # read by the image's non-root user
        self.log_path = log_dir / f"gateway-container-{self.port}.log"
        self.ident = podman.run(
            "run", "--detach", "--network", "host", "--env", f"PORT={self.port}",
            "--volume", f"{self.config_path}:/etc/tornadoproxy/tornadoproxy.yaml:ro",
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            image,
        ).stdout.strip()  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def answers(self, path: str) -> int | None:
        try:
            return request("GET", self.url + path, timeout=2).status
        except OSError:
            if self.state()["Status"] not in ("running", "stopping"):
                raise AssertionError(f"the container stopped:\n{self.logs()}") from None
            return None

    def wait_ready(self) -> None:
        wait_for(lambda: self.answers("/readyz") == 200, timeout=30, what="the container's /readyz")

    def state(self) -> dict[str, Any]:
        return dict(self.podman.inspect(self.ident)["State"])

    def logs(self) -> str:
        """The gateway's output (it logs to stderr, which `podman logs` replays on its own stderr)."""
        done = self.podman.run("logs", self.ident, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        """Keep its log beside the gateways' (the session's secret check reads them), then remove it."""
        self.log_path.write_text(self.logs())
        self.podman.remove_container(self.ident)


@pytest.fixture
def run_container(
    podman: Podman, gateway_image: str, tmp_path: Path, log_dir: Path
) -> Iterator[Callable[[dict[str, Any]], Container]]:
    started: list[Container] = []

    def start(config: dict[str, Any]) -> Container:
        container = Container(podman, gateway_image, config, tmp_path, log_dir)
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove()
