"""README "Trying it on one machine first", as written: its first block run by bash (in a directory of
the test's, with the checkout's .venv and tests beside it; only `./scripts/serve --version`, which
makes .venv, left out), the gateway started on the `local.yaml` it wrote, and the README's own checks
(the same request body) answered as its comments say. Nothing but the simulator is reached."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import ROOT, Gateway, free_port, request, wait_for

SECTION = "### Trying it on one machine first"


def readme_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION) : readme.index("\n### ", readme.index(SECTION) + 1)]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The first block, run: `local.yaml` and the client key it made; its simulator stopped after."""
    for name in (".venv", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    setup = readme_blocks()[0].replace("./scripts/serve --version", ": made .venv")
    # The simulator's PID is kept however the block ends, to stop what it started.
    script = f'set -e\ntrap \'echo "${{SIMULATOR:-}}" > simulator.pid\' EXIT\n{setup}\necho "$KEY" > key\n'
    try:
        # Output to files: the simulator the block leaves running would hold a pipe open.
        with open(tmp_path / "trial.log", "w") as log:
            done = subprocess.run(["bash", "-c", script], cwd=tmp_path, stdout=log, stderr=log, timeout=60)
        assert done.returncode == 0, (tmp_path / "trial.log").read_text()
        yield tmp_path / "local.yaml", (tmp_path / "key").read_text().strip()
    finally:
        pid = (
            (tmp_path / "simulator.pid").read_text().strip() if (tmp_path / "simulator.pid").exists() else ""
        )
        if pid:
            os.kill(int(pid), signal.SIGTERM)


def test_the_readme_trial_config_serves_the_readme_checks(trial: tuple[Path, str], log_dir: Path) -> None:
    path, key = trial
    config = yaml.safe_load(path.read_text())
    assert set(config["upstreams"]) == {"chatgpt", "auth", "platform", "platform_web"}
    assert all(url.startswith("http://127.0.0.1:") for url in config["upstreams"].values())
    ops = free_port()  # the README's ports (8080, 9100) may be taken on a machine running tests
    config["server"]["ops_port"] = ops
    gateway = Gateway(config, log_dir)
    try:
        checks = readme_blocks()[2]
        body = re.search(r"-d '(\{.*?\})'", checks, re.S)
        assert body is not None
        wait_for(lambda: request("GET", f"http://127.0.0.1:{ops}/readyz").status == 200, what="ready")
        readiness = request("GET", f"http://127.0.0.1:{ops}/readyz").json()
        assert {readiness[name]["state"] for name in config["upstreams"]} == {"reachable"}
        assert readiness["pool"]["accounts"]["ready"] == 1
        headers = {"X-Gateway-Key": key, "Content-Type": "application/json"}
        answer = request("POST", gateway.url + "/chatgpt/conversation", headers=headers, body=body.group(1))
        assert answer.status == 200 and answer.header("X-Pool-Account") == "demo"
        assert "You said: Hello" in answer.body.decode() and answer.body.rstrip().endswith(b"data: [DONE]")
        (account,) = request("GET", f"http://127.0.0.1:{ops}/accounts").json()["accounts"]
        assert account["name"] == "demo" and account["state"] == "ready" and account["requests"]["ok"] == 1
        log = gateway.log_text()
        assert key not in log and config["accounts"][0]["access_token"] not in log
    finally:
        gateway.stop()
