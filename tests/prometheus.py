"""Debian's real Prometheus for the monitoring tests: started on a free loopback port with a config
derived from deploy/prometheus/prometheus.yml, queried through its HTTP API, stopped by PID. Also the
expressions of the dashboard and of the alert rules, read from the deploy files themselves."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from tests.harness import ROOT, free_port, request, stop_process, wait_for

DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tornadoproxy.json"
# What Grafana puts in place of the dashboard's variables when every instance is selected.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "5m"}


def scrape_config(targets: list[str], interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with these targets, short intervals and absolute rule paths."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(
        {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval}
    )
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": targets}]
    return config


class PrometheusServer:
    """A prometheus process on a free loopback port; its data and log live in `work`."""

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = work / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = work / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config_path}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._ready, timeout=30, what=f"prometheus on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            return request("GET", self.url + "/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        answer = request("GET", f"{self.url}/api/v1/{path}?{query}", timeout=10)
        payload = json.loads(answer.body)
        assert payload["status"] == "success", payload
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (vector or scalar results only)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expression) for every query of the dashboard, variables filled in as Grafana would."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"an unknown variable in {panel['title']}: {expr}"
            found.append((panel["title"], expr))
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
