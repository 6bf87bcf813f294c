"""The image, built from the project's own Dockerfile and run: what it holds, how it runs, how it stops.

Built on the stand-in base (tests/deploy/podman.py) with `--pull=never`; run with the host's network,
the gateway on a free loopback port via `PORT`, a config mounted read-only, a read-only root file
system, no capability and no-new-privileges (as the compose file and the Kubernetes manifests run it),
talking to the simulator on the host.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import base_config
from tests.deploy.kubernetes_accounts import account_files
from tests.deploy.podman import BASE_NAMES, Podman
from tests.harness import ROOT, Simulator, request, wait_for
from tests.secrets_used import ACCESS_TOKEN, API_KEY
from tornadoproxy import __version__
from tornadoproxy.config.schema import load_config

# The first test of a fresh machine makes the stand-in base and builds the image (about a minute here).
pytestmark = pytest.mark.timeout(600)

# What the final stage adds to the base: the virtualenv (about 50 MB today, curl_cffi's wheel will
# add its own libcurl). A compiler, a pip cache or the sources in there would show well above this.
MAX_ADDED_BYTES = 120 * 1024 * 1024
SSE = [["Content-Type", "text/event-stream; charset=utf-8"]]

# Run inside the image: what must not be there, and what must.
INVENTORY = r"""
import importlib.util, json, os, shutil, sys, sysconfig
venv = "/opt/tornadoproxy"
walk = [entry for entry in os.walk("/") if not entry[0].startswith(("/proc", "/sys", "/dev"))]
found = {
    "tools": sorted(t for t in ("gcc", "cc", "c++", "make", "ld", "as", "git") if shutil.which(t)),
    "venv_pip": [p for p in os.listdir(f"{venv}/bin") if p.startswith("pip")],
    "site_pip": os.path.isdir(sysconfig.get_paths(vars={"base": venv, "platbase": venv})["purelib"] + "/pip"),
    "sources": [p for p in ("/src", "/wheels", "/app", "/tests", "/.git", "/root/.cache/pip")
                if os.path.exists(p)],
    "tests": importlib.util.find_spec("tests") is not None or [
        os.path.join(d, f) for d, _, fs in walk for f in fs if f in ("harness.py", "secrets_used.py")
    ],
    "git": [d for d, ds, _ in walk for x in ds if x == ".git"],
    "python": sys.executable,
}
print(json.dumps(found))
"""


def test_image_metadata(podman: Podman, gateway_image: str) -> None:
    image = podman.inspect(gateway_image)
    config = image["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.title"] == "tornadoproxy"
    assert len(labels["org.opencontainers.image.revision"]) == 40  # this checkout's commit
    for key in ("description", "created", "base.name"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert config["User"] == "10001"  # numeric, so Kubernetes' runAsNonRoot can check it
    assert config["StopSignal"] == "SIGTERM" and "8080/tcp" in config["ExposedPorts"]
    assert image["Healthcheck"]["Test"][:2] == ["CMD", "python"]  # kept by --format docker
    assert config["Entrypoint"] == ["tornadoproxy"]


def test_image_holds_the_gateway_and_nothing_to_build_with(podman: Podman, gateway_image: str) -> None:
    found = json.loads(
        podman.run(
            "run", "--rm", "--network", "none", "--entrypoint", "python", gateway_image, "-c", INVENTORY
        ).stdout
    )
    assert found["tools"] == [] and found["sources"] == [] and found["git"] == []
    assert found["tests"] is False or found["tests"] == [], found["tests"]
    assert found["venv_pip"] == [] and not found["site_pip"]
    assert found["python"] == "/opt/tornadoproxy/bin/python"
    version = podman.run("run", "--rm", "--network", "none", gateway_image, "--version").stdout
    assert version.strip() == f"tornadoproxy {__version__}"
    size = int(podman.inspect(gateway_image)["Size"])
    base = int(podman.inspect(BASE_NAMES[0])["Size"])
    assert size - base < MAX_ADDED_BYTES, f"the image adds {(size - base) >> 20} MiB to its base"


def test_the_container_serves_relays_and_is_healthy(
    run_container: Callable[[dict[str, Any]], Any], sim: Simulator
) -> None:
    container = run_container(base_config(sim))
    container.wait_ready()
    assert container.answers("/healthz") == 200
    readiness = request("GET", container.url + "/readyz").json()
    assert {name: check["state"] for name, check in readiness.items()} == dict.fromkeys(
        readiness, "reachable"
    )
    models = request(
        "GET", container.url + "/platform/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert models.status == 200 and models.json()["object"] == "list"
    sent = {name.lower(): value for name, value in sim.journal("platform", "/v1/models")[-1]["headers"]}
    assert sent["authorization"] == f"Bearer {API_KEY}"
    answer = request(
        "POST",
        container.url + "/chatgpt/conversation",
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}", "Content-Type": "application/json"},
        body=conversation("through the container"),
    )
    assert answer.status == 200 and answer.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert b"You said: through the container" in answer.body and answer.body.endswith(b"data: [DONE]\n\n")
    # The gateway runs as the image's user, not root, with no capability at all.
    status = container.podman.run("exec", container.ident, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"] and fields["CapEff"] == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    host_pid = container.state()["Pid"]
    with open(f"/proc/{host_pid}/status") as stream:
        assert next(line for line in stream if line.startswith("Uid:")).split()[1] == "10001"
    # HEALTHCHECK, run by podman as it runs it on its schedule.
    checked = container.podman.run("healthcheck", "run", container.ident, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert container.state()["Health"]["Status"] == "healthy"


def test_podman_stop_drains_an_open_stream_and_exits_0(
    run_container: Callable[[dict[str, Any]], Any], sim: Simulator
) -> None:
    """SIGTERM with a conversation streaming: the stream completes, the gateway exits 0 on its own
    (podman would SIGKILL it, exit 137, only past drain_timeout + 10 s)."""
    drain = 20
    container = run_container({**base_config(sim), "server": {"drain_timeout": drain}})
    container.wait_ready()
    first, last = 'data: {"n": 1}\n\n', 'data: {"n": 2}\n\ndata: [DONE]\n\n'
    sim.script(
        "chatgpt",
        "/backend-api/conversation",
        {"status": 200, "headers": SSE, "chunks": [{"data": first}, {"gate": "drain"}, {"data": last}]},
    )
    connection = http.client.HTTPConnection("127.0.0.1", container.port, timeout=30)
    connection.request(
        "POST",
        "/chatgpt/conversation",
        body=conversation("held"),
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    assert response.status == 200
    seen = response.read1(65536)
    assert first.encode() in seen
    sim.wait_reached("drain")
    stop = subprocess.Popen(
        ["podman", "stop", "--time", str(drain + 10), container.ident],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=container.podman.env,
    )  # fmt: skip
    try:
        # Draining: /readyz says so (503) while the stream is still open.
        wait_for(lambda: container.answers("/readyz") in (503, None), timeout=10, what="the drain to begin")
        assert container.state()["Status"] in ("running", "stopping")  # not ended yet: draining
        sim.release("drain")
        rest = response.read()
        assert (seen + rest).endswith(last.encode())
        assert stop.wait(drain + 20) == 0
    finally:
        if stop.poll() is None:
            stop.kill()
        connection.close()
    state = container.state()
    assert state["Status"] == "exited" and state["ExitCode"] == 0, container.logs()[-2000:]
    assert "stopped" in container.logs()


def conversation(text: str) -> bytes:
    return json.dumps(
        {
            "action": "next",
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": [text]},
                }
            ],
            "parent_message_id": str(uuid.uuid4()),
            "model": "text-davinci-002-render-sha",
        }
    ).encode()


def test_the_kubernetes_init_step_runs_in_the_image(
    podman: Podman, gateway_image: str, tmp_path: Path
) -> None:
    """The Deployment's init container, as it runs there: the image's Python merges the ConfigMap's
    file and the Secret's into a volume, and the gateway accepts the result."""
    kubernetes = ROOT / "deploy" / "kubernetes"
    etc = tmp_path / "etc"  # the ConfigMap's files with the Secret's mounted below them, as in the pod
    (etc / "secret").mkdir(parents=True)
    for name in ("tornadoproxy.yaml", "merge_config.py"):
        shutil.copy2(kubernetes / "base" / name, etc / name)
    shutil.copy2(
        kubernetes / "overlays" / "production" / "secret.yaml.example", etc / "secret" / "secret.yaml"
    )
    for path in (etc, etc / "secret", *etc.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    out = tmp_path / "run"
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # written by the image's user
    init = yaml.safe_load((kubernetes / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"][
        "initContainers"
    ][0]
    podman.run(
        "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
        "--volume", f"{etc}:/etc/tornadoproxy:ro",
        "--volume", f"{out}:/run/tornadoproxy",
        "--entrypoint", init["command"][0], gateway_image, *init["command"][1:],
    )  # fmt: skip
    (written,) = out.iterdir()
    merged = tmp_path / "merged.yaml"
    merged.write_text(written.read_text())
    account_files(tmp_path / "accounts", merged)  # the accounts Secret the gateway container mounts
    config = load_config(str(merged), {})
    assert [account.name for account in config.accounts] == ["alice", "bob"]
    assert config.tokens.store == "redis" and config.tokens.redis_url.startswith("redis://:")
