"""The shipped compose file brought up with Debian's podman-compose: the gateway, Redis holding its
token cache and its account pool's shared state (an account logging in with its password as a compose
secret, as deploy/docker-compose.yml describes; a relayed conversation served by the pool), and
Prometheus scraping it and loading the shipped alerting rules.

A test override (written here, applied with `-f` after the shipped file, as a user would override it)
changes only what this machine needs: every service on the host's network, each on a free loopback
port (podman's networks are private-range addresses, which no test here may send to); the images that
cannot be pulled replaced by stand-ins (tests/deploy/standins/) and the gateway by the image built
from this checkout; configs derived from the shipped ones with loopback addresses for the compose
network's service names; file limits pinned at what the sandbox allows. Grafana is left out (its image
cannot be had here; tests/deploy/test_files.py checks its provisioning against the compose file), and
so is the WARP sidecar (an optional profile, not enabled by default).

podman-compose merges an override's lists into the shipped ones (a `command` is extended, a volume
with the same target replaced); the test checks the merged result before bringing it up.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.conftest import base_config
from tests.deploy.podman import Podman
from tests.harness import ROOT, Simulator, deep_merge, free_port, request, wait_for
from tests.pool_fixtures import jwt
from tests.secrets_used import CLIENT_KEY, LOGIN_PASSWORD
from tornadoproxy import __version__
from tornadoproxy.web.access import key_digest

# The first test of a fresh machine makes the stand-in base and builds the image (about a minute here).
pytestmark = pytest.mark.timeout(600)

DEPLOY = ROOT / "deploy"
STANDINS = Path(__file__).parent / "standins"
# Debian's podman-compose, through a shim for its one defect with host networking (see that file).
HOST_NETWORK_SHIM = Path(__file__).parent / "podman_host_network.py"
SERVICES = ("tornadoproxy", "redis", "prometheus")
KEY = {"X-Gateway-Key": CLIENT_KEY}


class Compose:
    """One podman-compose project (a name of its own), its override and ports."""

    def __init__(self, podman: Podman, work: Path, gateway_image: str, sim: Simulator) -> None:
        self.podman, self.work = podman, work
        # A pool of two accounts: alice logs in (her password a compose secret, as deploy/ says), bob
        # has a fixed token; relayed /chatgpt requests with the client key are served by them.
        self.email = f"compose+{uuid.uuid4().hex[:8]}@example.com"
        sim.add_account(self.email, LOGIN_PASSWORD)
        self.project = f"tptest{uuid.uuid4().hex[:8]}"
        self.port, self.ops_port, self.redis_port, self.prometheus_port = (free_port() for _ in range(4))
        self.override = work / "override.yml"
        self.shim = work / "podman"  # the shim, run by this interpreter
        self.shim.write_text(f'#!/bin/sh\nexec {sys.executable} {HOST_NETWORK_SHIM} "$@"\n')
        self.shim.chmod(0o755)
        self.override.write_text(yaml.safe_dump(self._override(gateway_image, sim)))

    def _override(self, gateway_image: str, sim: Simulator) -> dict[str, Any]:
        shipped = yaml.safe_load((DEPLOY / "tornadoproxy.yaml").read_text())
        server = {"host": "127.0.0.1", "port": self.port, "ops_host": "127.0.0.1", "ops_port": self.ops_port}
        tokens = {"redis_url": f"redis://127.0.0.1:{self.redis_port}/0", "kdf_cost": 10}
        loopback = {"server": server, "tokens": tokens}
        config = self.work / "tornadoproxy.yaml"
        pool = {
            "accounts": [
                {"name": "alice", "username": self.email, "password_file": "/run/secrets/alice_password"},
                {"name": "bob", "access_token": jwt(sub=f"compose-bob-{uuid.uuid4().hex[:6]}")},
            ],
            "access": {"client_keys": [key_digest(CLIENT_KEY)]},
            "pool": {"serve_chatgpt": True},
        }
        merged = deep_merge(deep_merge(deep_merge(shipped, base_config(sim)), loopback), pool)
        config.write_text(yaml.safe_dump(merged))
        config.chmod(0o644)
        password = self.work / "alice_password"
        password.write_text(LOGIN_PASSWORD + "\n")
        password.chmod(0o644)  # read by the image's user, as deploy/docker-compose.yml says
        prometheus_dir = self.work / "prometheus"
        prometheus_dir.mkdir()
        scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        scrape["global"].update(scrape_interval="1s", scrape_timeout="1s")  # a first scrape soon
        (job,) = scrape["scrape_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{self.ops_port}"]}]
        (prometheus_dir / "prometheus.yml").write_text(yaml.safe_dump(scrape))
        shutil.copy2(DEPLOY / "prometheus" / "alerts.yml", prometheus_dir / "alerts.yml")
        for path in (prometheus_dir, *prometheus_dir.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)  # read by the image's user nobody
        host = {"network_mode": "host"}
        return {
            "services": {
                "tornadoproxy": {
                    **host,
                    "image": gateway_image,
                    "volumes": [f"{config}:/etc/tornadoproxy/tornadoproxy.yaml:ro"],
                    "secrets": ["alice_password"],  # the lines deploy/docker-compose.yml has commented
                    # Raising limits is not permitted here: a service that sets some must keep all at
                    # what containers.conf pins (else podman raises the others to its own defaults).
                    "ulimits": {
                        "nofile": {"soft": 20000, "hard": 20000},
                        "nproc": {"soft": 32768, "hard": 32768},
                    },
                },
                "redis": {
                    **host,
                    "image": standin(self.podman, "redis"),
                    "command": ["--port", str(self.redis_port), "--bind", "127.0.0.1"],
                },
                "prometheus": {
                    **host,
                    "image": standin(self.podman, "prometheus"),
                    "command": [f"--web.listen-address=127.0.0.1:{self.prometheus_port}"],
                    "volumes": [f"{prometheus_dir}:/etc/prometheus:ro"],
                },
            },
            "secrets": {"alice_password": {"file": str(password)}},
        }

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.podman.env.items() if not k.startswith(("GO_CHATGPT_API", "COMPOSE_"))}
        env["GRAFANA_ADMIN_PASSWORD"] = "unused-here"  # the shipped file refuses to load without it
        done = subprocess.run(
            ["podman-compose", "--podman-path", str(self.shim), "-p", self.project,
             "-f", "docker-compose.yml", "-f", str(self.override), *args],
            cwd=DEPLOY, capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
        assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def containers(self) -> dict[str, str]:
        """Service name to container id, for this project's containers."""
        listed = self.podman.run(
            "ps", "--all", "--filter", f"label=io.podman.compose.project={self.project}", "--format", "json"
        ).stdout
        return {c["Labels"]["com.docker.compose.service"]: c["Id"] for c in json.loads(listed or "[]")}


def standin(podman: Podman, target: str) -> str:
    return podman.build(STANDINS, f"localhost/tornadoproxy-test-{target}:standin", "--target", target)


@pytest.fixture
def compose(
    podman: Podman, gateway_image: str, sim: Simulator, tmp_path: Path, log_dir: Path
) -> Iterator[Compose]:
    project = Compose(podman, tmp_path, gateway_image, sim)
    yield project
    ids = project.containers()
    if "tornadoproxy" in ids:
        logs = podman.run("logs", ids["tornadoproxy"], check=False)
        (log_dir / f"gateway-compose-{project.port}.log").write_text(logs.stdout + logs.stderr)
    project("down", "--volumes")
    for ident in project.containers().values():
        podman.remove_container(ident)  # whatever down left behind
    # The network podman-compose defines for the project (unused on the host's network; down keeps it).
    podman.run("network", "rm", f"{project.project}_default", check=False)


def check_merged(compose: Compose, ids: dict[str, str]) -> None:
    """What the containers were started with: the shipped file's settings, changed only as the override
    says (this podman-compose has no `config` command to show the merge)."""
    shipped = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    started = {name: compose.podman.inspect(ident) for name, ident in ids.items()}
    for name, container in started.items():
        assert container["HostConfig"]["NetworkMode"] == "host", name
        targets = [mount["Destination"] for mount in container["Mounts"]]
        assert len(targets) == len(set(targets)), targets  # an override's volume replaced, not added
    redis_args = [*shipped["redis"]["command"], "--port", str(compose.redis_port), "--bind", "127.0.0.1"]
    assert started["redis"]["Config"]["Cmd"] == redis_args
    assert started["redis"]["Config"]["User"] == shipped["redis"]["user"]
    assert started["prometheus"]["Config"]["Cmd"][:-1] == shipped["prometheus"]["command"]
    gateway = started["tornadoproxy"]["HostConfig"]
    assert (
        gateway["ReadonlyRootfs"]
        and gateway["Init"]
        and "ALL" in str(gateway["CapDrop"]).upper()
        or (gateway["ReadonlyRootfs"] and gateway["Init"] and len(gateway["CapDrop"]) > 10)
    ), gateway["CapDrop"]
    assert "no-new-privileges" in " ".join(gateway["SecurityOpt"])
    assert started["redis"]["HostConfig"]["ReadonlyRootfs"]


def test_compose_brings_up_the_gateway_redis_and_prometheus(compose: Compose, sim: Simulator) -> None:
    up = compose("up", "--detach", "--no-build", *SERVICES)
    ids = compose.containers()
    assert set(ids) == set(SERVICES), up.stdout + up.stderr
    check_merged(compose, ids)
    gateway = f"http://127.0.0.1:{compose.port}"

    def ready() -> bool:
        try:
            return request("GET", f"http://127.0.0.1:{compose.ops_port}/readyz", timeout=2).status == 200
        except OSError:
            state = compose.podman.inspect(ids["tornadoproxy"])["State"]
            if state["Status"] not in ("running", "created", "configured"):
                logs = compose.podman.run("logs", ids["tornadoproxy"], check=False)
                raise AssertionError(f"the gateway container is {state['Status']}:\n{logs.stderr}") from None
            return False

    wait_for(ready, timeout=60, interval=0.2, what="the compose gateway's /readyz")
    client = redis.Redis(host="127.0.0.1", port=compose.redis_port, decode_responses=True)
    try:
        check_token_cache(gateway, sim, client)
        check_pool(compose, gateway, client)
        assert client.config_get("appendonly")["appendonly"] == "yes"
    finally:
        client.close()
    # Prometheus scrapes the ops listener and has loaded the shipped rules.
    api = f"http://127.0.0.1:{compose.prometheus_port}/api/v1"

    def build_info() -> list[dict[str, Any]]:
        try:
            answer = request("GET", api + "/query?query=tornadoproxy_build_info", timeout=2)
        except OSError:
            return []
        return list(answer.json()["data"]["result"]) if answer.status == 200 else []

    (series,) = wait_for(build_info, timeout=60, interval=0.5, what="Prometheus to scrape the gateway")
    assert series["metric"]["job"] == "tornadoproxy" and series["metric"]["version"] == __version__
    rules = request("GET", api + "/rules").json()["data"]["groups"]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    assert {group["name"] for group in rules} == {group["name"] for group in alerts}
    # Every service runs as the user its image or the compose file names, none as root.
    for name, ident in ids.items():
        status = compose.podman.run("exec", ident, "cat", "/proc/1/status").stdout
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
        assert uid != "0", name


def check_token_cache(gateway: str, sim: Simulator, client: redis.Redis) -> None:
    """The token cache is the redis service: a login lands there, sealed."""
    email = f"compose+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(email, LOGIN_PASSWORD)
    login = {"username": email, "password": LOGIN_PASSWORD}
    answer = request("POST", gateway + "/chatgpt/login", headers=KEY, body=login)
    assert answer.status == 200, answer.body
    keys = wait_for(lambda: list(client.scan_iter("tornadoproxy:tokens:*")), what="the login in Redis")
    assert len(keys) >= 2 and all(email not in key for key in keys)  # the secret, the record, its index


def check_pool(compose: Compose, gateway: str, client: redis.Redis) -> None:
    """The account pool shares its state through the same redis service: its process, the accounts it
    has tokens for, the slots' last use, and the conversation map of a relayed conversation."""
    ops = f"http://127.0.0.1:{compose.ops_port}"

    def pool_ready() -> bool:
        report = request("GET", ops + "/accounts").json()
        return report["shared"] == "redis" and all(a["state"] == "ready" for a in report["accounts"])

    wait_for(pool_ready, timeout=30, what="alice's login (her password a compose secret) and Redis")
    body = {
        "action": "next",
        "model": "text-davinci-002-render-sha",
        "parent_message_id": str(uuid.uuid4()),
        "messages": [{"id": str(uuid.uuid4()), "content": {"content_type": "text", "parts": ["hi"]}}],
    }
    answer = request("POST", gateway + "/chatgpt/conversation", headers=KEY, body=body)
    assert answer.status == 200 and answer.header("X-Pool-Account") in ("alice", "bob"), answer.body
    conversation = next(
        json.loads(line[6:])["conversation_id"]
        for line in answer.body.decode().splitlines()
        if line.startswith("data: {")
    )
    prefix = "tornadoproxy:pool:"
    learned = wait_for(lambda: client.hget(prefix + "aff", f"c:{conversation}"), what="the conversation map")
    assert learned == answer.header("X-Pool-Account")
    keys = set(client.scan_iter(prefix + "*"))
    assert {prefix + "idle", prefix + "aff", prefix + "aff:t", prefix + "bind:alice"} <= keys, keys
    assert any(key.startswith(prefix + "alive:") for key in keys) and any(
        key.startswith(prefix + "u:") for key in keys
    )
    (usable,) = [client.get(key) for key in keys if key.startswith(prefix + "u:")]
    assert usable == "|alice|bob|"
    # Accounts by name only: no e-mail address, no password, no token in any key or field.
    names = " ".join(keys) + json.dumps([client.hgetall(prefix + "aff"), client.hgetall(prefix + "idle")])
    assert compose.email not in names and LOGIN_PASSWORD not in names and "eyJ" not in names
