"""The deployment files, checked by the tools that will read them where those run here: promtool
(config, rules, the alerts' unit tests), docker-compose (Debian's 1.29; no Docker engine runs here),
systemd-analyze (verify, and the unit's exposure score), the Dockerfile parsed by BuildKit's own
parser (PyPI `dockerfile`) with our lint rules, its install step replayed, its HEALTHCHECK run
against a real gateway. The Grafana files are checked for shape and against the compose file."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from tests.harness import ROOT, Gateway, stop_process
from tornadoproxy import __version__
from tornadoproxy.config.schema import load_config
from tornadoproxy.process.workers import DRAIN_GRACE

DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "tornadoproxy.service"


def run(
    args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


# -- Prometheus -----------------------------------------------------------------------------------
def test_promtool_checks_the_config_and_the_rules() -> None:
    checked = run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr
    rules = run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")])
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_unit_tests_cover_every_alert() -> None:
    tested = run(["promtool", "test", "rules", "alerts.test.yml"], cwd=DEPLOY / "prometheus")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    cases = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())["tests"]
    firing = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if check["exp_alerts"]  # a case where the alert fires, not only one where it must not
    }
    assert firing == names


def test_every_alert_says_what_to_do() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (rule for group in alerts["groups"] for rule in group["rules"]):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 60, rule["alert"]
        assert re.fullmatch(r"Tornadoproxy[A-Z][A-Za-z]+", rule["alert"])


# -- Grafana --------------------------------------------------------------------------------------
def test_the_dashboard_file_is_the_rendered_one() -> None:
    rendered = run([sys.executable, "scripts/render_dashboard.py"])
    assert rendered.returncode == 0, rendered.stderr
    assert (DEPLOY / "grafana" / "dashboards" / "tornadoproxy.json").read_text() == rendered.stdout, (
        "run: python scripts/render_dashboard.py > deploy/grafana/dashboards/tornadoproxy.json"
    )


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "tornadoproxy.json").read_text())
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in board["panels"]:
        assert (
            set(panel["gridPos"]) == {"h", "w", "x", "y"}
            and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        )
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat", "table") and panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    titles = " ".join(panel["title"].lower() for panel in board["panels"])
    for topic in ("requests", "duration", "first byte", "active streams", "errors", "egress", "logins",
                  "token cache", "readiness", "gate"):  # fmt: skip
        assert topic in titles, topic


def test_grafana_provisioning_points_at_the_compose_services() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert (
        source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    )
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/tornadoproxy.yml").read_text())
    (provider,) = providers["providers"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/tornadoproxy.json"


# -- docker compose -------------------------------------------------------------------------------
def compose(*args: str, password: str | None = "test-only") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFANA_ADMIN_PASSWORD", "COMPOSE_PROFILES")}
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password
    return run(["docker-compose", "-f", "docker-compose.yml", *args], cwd=DEPLOY, env=env)


def test_docker_compose_accepts_the_file_with_and_without_the_warp_profile() -> None:
    plain = compose("config")
    assert plain.returncode == 0, plain.stderr
    resolved = yaml.safe_load(plain.stdout)
    assert set(resolved["services"]) >= {"tornadoproxy", "prometheus", "grafana"}
    with_warp = compose("--profile", "warp", "config", "--services")
    assert with_warp.returncode == 0 and "warp" in with_warp.stdout.split(), with_warp.stderr
    refused = compose("config", password=None)
    assert refused.returncode != 0 and "set GRAFANA_ADMIN_PASSWORD" in refused.stderr


def test_the_local_override_puts_gateway_and_redis_on_the_host_network() -> None:
    """deploy/local.override.yml (README "Trying it on one machine first"), merged by compose."""
    merged = compose("-f", "local.override.yml", "config")
    assert merged.returncode == 0, merged.stderr
    services = yaml.safe_load(merged.stdout)["services"]
    assert services["tornadoproxy"]["network_mode"] == services["redis"]["network_mode"] == "host"
    (volume,) = services["tornadoproxy"]["volumes"]  # the shipped config replaced by the trial's
    source, target, *_ = volume.split(":")  # docker-compose 1.29 writes "source:target:mode"
    assert target == "/etc/tornadoproxy/tornadoproxy.yaml" and source == str(ROOT / "local.yaml")
    shipped = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["redis"]
    assert services["redis"]["command"] == shipped["command"]  # Redis as shipped, on the host's 6379


def test_compose_wiring_fits_the_gateway_config() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
    config = load_config(str(DEPLOY / "tornadoproxy.yaml"), {})
    gateway = services["tornadoproxy"]
    assert gateway["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert "./tornadoproxy.yaml:/etc/tornadoproxy/tornadoproxy.yaml:ro" in gateway["volumes"]
    assert f"{config.server.port}:{config.server.port}" in gateway["ports"]
    assert gateway["read_only"] and gateway["cap_drop"] == ["ALL"] and "/tmp" in gateway["tmpfs"][0]
    assert config.tokens.store == "redis" and config.tokens.redis_url == "redis://redis:6379/0"
    assert gateway["depends_on"] == ["redis"] and "ports" not in services["redis"]
    assert (
        services["redis"]["volumes"] == ["redis-data:/data"]
        and "--appendonly" in services["redis"]["command"]
    )
    grace = float(gateway["stop_grace_period"].rstrip("s"))
    assert grace > config.server.drain_timeout + DRAIN_GRACE
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "tornadoproxy"  # the alerts' up{job="tornadoproxy"}
    assert job["static_configs"][0]["targets"] == [f"tornadoproxy:{config.server.ops_port}"]
    assert config.server.ops_host == "0.0.0.0"
    warp = services["warp"]
    assert warp["profiles"] == ["warp"] and "ports" not in warp  # reached as warp:1080 only
    assert "GO_CHATGPT_API_PROXY=socks5h://warp:1080" in (DEPLOY / ".env.example").read_text()


# -- systemd --------------------------------------------------------------------------------------
def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's gateway (verify checks it exists)."""
    text = UNIT.read_text().replace(
        "/opt/tornadoproxy/bin/tornadoproxy", str(ROOT / ".venv/bin/tornadoproxy")
    )
    path = tmp_path / "tornadoproxy.service"
    path.write_text(text)
    return path


def test_systemd_analyze_verifies_the_unit(unit_here: Path) -> None:
    verified = run(["systemd-analyze", "verify", str(unit_here)])
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_the_unit_is_hardened(unit_here: Path) -> None:
    security = run(["systemd-analyze", "security", "--offline=yes", str(unit_here)])
    assert security.returncode == 0, security.stderr
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))  # type: ignore[union-attr]
    assert exposure <= 2.0, security.stdout  # systemd's scale: 0 (locked down) to 10 (unprotected)
    settings = unit_settings()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
        "ReadWritePaths": "/var/lib/tornadoproxy",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "User": "tornadoproxy",
    }.items():
        assert settings[key] == [value], key
    drain = load_config(None, {}).server.drain_timeout
    assert float(settings["TimeoutStopSec"][0]) > drain + DRAIN_GRACE


# -- Dockerfile -----------------------------------------------------------------------------------
INSTRUCTIONS = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL",
                "ENTRYPOINT", "CMD", "ARG", "LABEL"}  # fmt: skip
BASE = re.compile(r"python:3\.11(\.\d+)?-slim-[a-z]+")


def parsed() -> list[Any]:
    return list(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def final_stage(commands: list[Any]) -> list[Any]:
    last_from = max(i for i, command in enumerate(commands) if command.cmd == "FROM")
    return commands[last_from:]


def test_dockerfile_lint() -> None:
    """Rules after hadolint's (which Debian does not package), applied to BuildKit's own parse; the
    image itself is built and run by tests/deploy/test_image.py."""
    commands = parsed()
    names = [command.cmd for command in commands]
    assert set(names) <= INSTRUCTIONS, set(names) - INSTRUCTIONS
    assert [c.cmd for c in commands if c.cmd != "ARG"][0] == "FROM" and names.count("FROM") == 2
    for image in (command.value[0] for command in commands if command.cmd == "FROM"):
        assert BASE.fullmatch(image), "pin the base image's tag (DL3006/DL3007)"
    assert "ADD" not in names  # DL3020
    for command in commands:
        if command.cmd in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
            assert command.json, f"{command.cmd} in exec (JSON) form, so signals reach the gateway (DL3025)"
        if command.cmd == "WORKDIR":
            assert command.value[0].startswith("/")  # DL3000
        if command.cmd == "RUN":
            text = command.value[0]
            assert "sudo" not in text and "apt-get upgrade" not in text  # DL3004, DL3005
            if re.search(r"pip (install|wheel)", text):
                assert "--no-cache-dir" in text, text  # DL3042
                assert "-c constraints.txt" in text or "--no-index" in text, "pinned, or from the wheels"
    final = final_stage(commands)
    assert not any(c.cmd == "RUN" and "pip" in c.value[0] for c in final), (
        "installs belong to the build stage"
    )
    copied = [c for c in final if c.cmd == "COPY" and c.flags == ("--from=build",)]
    assert [c.value for c in copied] == [("/opt/tornadoproxy", "/opt/tornadoproxy")]  # the virtualenv only
    users = [command.value[0] for command in final if command.cmd == "USER"]
    assert users and users[-1].isdigit() and users[-1] != "0", "a numeric non-root user (DL3002)"
    assert names.index("USER") < names.index("ENTRYPOINT")
    stop = next(command for command in commands if command.cmd == "STOPSIGNAL")
    assert stop.value == ("SIGTERM",)
    expose = next(command for command in commands if command.cmd == "EXPOSE")
    assert expose.value == (str(load_config(None, {}).server.port),)


def test_the_image_version_is_the_package_version() -> None:
    """One version: tornadoproxy/__init__.py, read by setup.py; the Dockerfile's default must match it
    (its build refuses a VERSION other than the built wheel's)."""
    (default,) = [c.value[0] for c in parsed() if c.cmd == "ARG" and c.value[0].startswith("VERSION=")]
    assert default == f"VERSION={__version__}"
    assert importlib.metadata.version("tornadoproxy") == __version__, "reinstall: pip install -e ."
    declared = run([sys.executable, "setup.py", "--version"])
    assert declared.stdout.strip().splitlines()[-1] == __version__, declared.stderr
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    labels = " ".join(" ".join(c.value) for c in parsed() if c.cmd == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "base.name"):
        assert f"org.opencontainers.image.{key}" in labels, key


def dockerignore_allows(path: str) -> bool:
    """.dockerignore's verdict on a path: the last matching pattern wins, `!` re-includes."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            allowed = negated
    return allowed


def test_dockerfile_copies_only_what_the_build_context_holds() -> None:
    local = [c for c in parsed() if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)]
    for command in local:
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), source
            assert dockerignore_allows(source), source
    for kept_out in ("tests", ".git", "deploy", ".venv", "bench", "README.md", ".pytest-tmp"):
        assert not dockerignore_allows(kept_out), kept_out


def test_dockerfile_install_step_and_healthcheck(
    tmp_path: Path, make_gateway: Callable[..., Gateway]
) -> None:
    """Replay the image's pip install (the package from its COPY'd files, no editable install) and run
    the HEALTHCHECK command against a gateway started from that installed copy."""
    context = tmp_path / "context"
    for command in (c for c in parsed() if c.cmd == "COPY" and not c.flags):
        *sources, _ = command.value
        for source in sources:
            if source.startswith("conf/"):
                continue  # copied to /etc by the image; the test gateway gets its own config
            target = context / source
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    site = tmp_path / "site"
    installed = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(context),
        ]  # fmt: skip
    )
    assert installed.returncode == 0, installed.stderr
    assert (site / "bin" / "tornadoproxy").exists()
    assert sorted(p.name for p in (site / "tornadoproxy").glob("*.py")) == sorted(
        p.name for p in (ROOT / "tornadoproxy").glob("*.py")
    )
    copy = os.environ | {"PYTHONPATH": str(site)}
    where = run([sys.executable, "-c", "import tornadoproxy; print(tornadoproxy.__file__)"], tmp_path, copy)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # not this checkout
    version = run([str(site / "bin" / "tornadoproxy"), "--version"], tmp_path, copy)
    assert version.returncode == 0 and version.stdout.startswith("tornadoproxy "), version.stderr
    health = next(command for command in parsed() if command.cmd == "HEALTHCHECK")
    assert health.value[0] == "CMD" and health.value[1] == "python"
    probe = [sys.executable, *health.value[2:]]
    # `env -C` runs it from outside this checkout, so the installed copy is the one imported.
    gw = make_gateway(env={"PYTHONPATH": str(site)}, wrapper=["env", "-C", str(tmp_path)])
    assert os.readlink(f"/proc/{gw.process.pid}/cwd") == str(tmp_path)
    assert run(probe, env=os.environ | {"PORT": str(gw.port)}).returncode == 0
    stop_process(gw.process)
    assert run(probe, env=os.environ | {"PORT": str(gw.port)}).returncode == 1
