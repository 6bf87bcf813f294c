"""The Kubernetes manifests (deploy/kubernetes/), checked offline: every object against the API's own
schemas (PyPI `kubernetes-validate`, strict: unknown fields are errors) for the oldest and newest
Kubernetes it ships that we support; the overlays rendered by kustomize (built into kubectl) and their
references resolved; the ServiceMonitor, a CRD without a shipped schema, checked structurally against
the Service it selects; every pod linted for the restricted security context; and the gateway's
configuration, as the init container merges it, loaded by the gateway's own config loader and held
against the ports, probes and grace period of the Deployment.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.kubernetes_accounts import MOUNT, account_files
from tests.harness import ROOT
from tornadoproxy import __version__
from tornadoproxy.process.wiring import load
from tornadoproxy.process.workers import DRAIN_GRACE

KUBERNETES = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.29.0", "1.37.0")
CORE_GROUPS = ("v1", "apps/", "autoscaling/", "policy/", "networking.k8s.io/")
GATEWAY = {"app.kubernetes.io/name": "tornadoproxy", "app.kubernetes.io/component": "gateway"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_objects() -> list[dict[str, Any]]:
    listed = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())["resources"]
    return [doc for name in listed for doc in documents(KUBERNETES / "base" / name)]


def components() -> list[dict[str, Any]]:
    return documents(KUBERNETES / "components" / "servicemonitor" / "servicemonitor.yaml")


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [o for o in by_kind(objects, kind) if name in (None, o["metadata"]["name"])]
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay as kustomize renders it, with the Secret's files made from the examples; plus the
    production overlay with both components."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (which builds in kustomize) is not installed: overlays not rendered")
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    production = tree / "overlays" / "production"
    for example in production.glob("*.example"):
        shutil.copy2(example, production / example.stem)
    both = tree / "overlays" / "with-components"  # production, its commented components switched on
    shutil.copytree(production, both)
    overlay = yaml.safe_load((production / "kustomization.yaml").read_text())
    overlay["components"] = ["../../components/servicemonitor", "../../components/external-redis"]
    (both / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    result = {}
    for name, path in (("base", tree / "base"), ("production", production), ("with-components", both)):
        built = subprocess.run(
            ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60
        )
        assert built.returncode == 0, f"kubectl kustomize {name}:\n{built.stderr}"
        result[name] = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    return result


def core(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (obj for obj in objects if obj["apiVersion"].startswith(CORE_GROUPS))


@pytest.mark.parametrize("version", VERSIONS)
def test_every_file_is_valid_against_the_api_schemas(version: str) -> None:
    objects = base_objects() + documents(KUBERNETES / "overlays" / "production" / "namespace.yaml")
    assert {obj["kind"] for obj in objects} >= {"Deployment", "Service", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy", "StatefulSet", "ServiceAccount", "Namespace"}  # fmt: skip
    for obj in core(objects):
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_rendered_overlay_is_valid(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    for objects in rendered.values():
        for obj in core(objects):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_schemas_catch_what_they_should() -> None:
    """The validation is no formality: an unknown field and a wrong type are refused."""
    deployment = one(base_objects(), "Deployment")
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True  # wrong level
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, VERSIONS[0], strict=True)
    wrong = yaml.safe_load(yaml.safe_dump(deployment))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, VERSIONS[0], strict=True)


def test_the_overlay_resolves_every_reference(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["production"]
    assert {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"} == {
        "tornadoproxy"
    }
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects}
    deployment, redis = one(objects, "Deployment"), one(objects, "StatefulSet")
    pod = deployment["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in names
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in names
    secret_ref = redis["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]
    assert ("Secret", secret_ref["name"]) in names
    assert ("ServiceAccount", pod["serviceAccountName"]) in names
    images = {c["image"] for c in pod["initContainers"] + pod["containers"]}
    assert images == {f"registry.example.com/tornadoproxy:{__version__}"}  # the package's version
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    with_components = rendered["with-components"]
    assert not by_kind(with_components, "StatefulSet")  # the external Redis replaces it
    check_service_monitor(with_components)


def check_service_monitor(objects: list[dict[str, Any]]) -> None:
    """The Prometheus Operator's CRD is not shipped here: its shape and its wiring, checked by hand."""
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"jobLabel", "selector", "endpoints", "namespaceSelector"}
    selected = [
        s for s in by_kind(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]  # fmt: skip
    (service,) = selected
    assert service["spec"]["clusterIP"] == "None"  # one target per pod
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert (
        endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    )
    # job="tornadoproxy", as the alerts expect: the jobLabel names a label whose value is that.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "tornadoproxy"


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def test_every_pod_meets_the_restricted_security_standard() -> None:
    """Lint: non-root, no privilege escalation, read-only root file system, every capability dropped,
    seccomp RuntimeDefault, no service account token, resources bounded, images pinned."""
    specs = list(pod_specs(base_objects()))
    assert len(specs) == 2
    for name, spec in specs:
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), name
        for container in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert "privileged" not in security and "add" not in security["capabilities"], where
            resources = container["resources"]
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, where
            image = container["image"]
            assert image == "tornadoproxy" or (":" in image and not image.endswith(":latest")), where


def merged_config(tmp_path: Path) -> Path:
    """The init container's work, done here by the same script and Python the image has."""
    output = tmp_path / "tornadoproxy.yaml"
    merged = subprocess.run(
        [sys.executable, str(KUBERNETES / "base" / "merge_config.py"),
         str(KUBERNETES / "base" / "tornadoproxy.yaml"),
         str(KUBERNETES / "overlays" / "production" / "secret.yaml.example"), str(output)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert merged.returncode == 0 and merged.stdout == merged.stderr == "", merged.stderr
    assert output.stat().st_mode & 0o777 == 0o600
    return output


def test_the_merged_configuration_fits_the_deployment(tmp_path: Path) -> None:
    spec = one(base_objects(), "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "accounts"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "accounts"]
    assert volume["secret"]["secretName"] == "tornadoproxy-accounts" and volume["secret"]["optional"] is True
    assert mount["mountPath"] == MOUNT
    merged = merged_config(tmp_path)
    assert f"{MOUNT}/" in merged.read_text()  # the accounts' files are where the pod has them
    secrets = account_files(tmp_path / "accounts", merged)
    config, _, _ = load(str(merged), {})  # every check of a start, the pool's included
    accounts = {account.name: account for account in config.accounts}
    assert accounts["alice"].password.reveal() == secrets["alice-password"] and accounts["alice"].logs_in
    assert accounts["bob"].access_token.reveal() == secrets["bob-access-token"]
    # The pool is shared by every replica through the token store's Redis.
    assert config.tokens.store == "redis" and config.pool.redis_prefix and config.pool.slot_lease
    secret = yaml.safe_load((KUBERNETES / "overlays" / "production" / "secret.yaml.example").read_text())
    assert config.tokens.redis_url == secret["tokens"]["redis_url"] and config.tokens.store == "redis"
    assert config.access.client_keys == tuple(secret["access"]["client_keys"])
    password = (KUBERNETES / "overlays" / "production" / "redis-password.example").read_text()
    assert f":{password}@tornadoproxy-redis:6379/" in config.tokens.redis_url  # the Redis Service
    objects = base_objects()
    spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    (gateway,) = spec["containers"]
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    assert ports == {"http": config.server.port, "ops": config.server.ops_port}
    assert config.server.ops_host == config.server.host == "0.0.0.0"
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert gateway[probe]["httpGet"] == {"path": path, "port": "ops"}, probe
    init = spec["initContainers"][0]
    assert init["command"][-1] == gateway["args"][-1]  # the merged file is the one the gateway reads
    pause = int(gateway["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > pause + config.server.drain_timeout + DRAIN_GRACE
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.server.ops_port)
    # The Service, PodDisruptionBudget, NetworkPolicy and HPA all select the gateway's pods.
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert GATEWAY.items() <= labels.items()
    assert one(objects, "Service", "tornadoproxy")["spec"]["selector"] == GATEWAY
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == GATEWAY
    assert one(objects, "NetworkPolicy", "tornadoproxy")["spec"]["podSelector"]["matchLabels"] == GATEWAY
    kustomization = yaml.safe_load((KUBERNETES / "base" / "kustomization.yaml").read_text())
    assert kustomization["images"] == [{"name": "tornadoproxy", "newTag": __version__}]


def test_the_merge_keeps_secrets_out_of_its_output(tmp_path: Path) -> None:
    broken = tmp_path / "secret.yaml"
    broken.write_text("tokens:\n  secret: s3cr3t-value\n   bad: [\n")
    merged = subprocess.run(
        [sys.executable, str(KUBERNETES / "base" / "merge_config.py"),
         str(KUBERNETES / "base" / "tornadoproxy.yaml"), str(broken), str(tmp_path / "out.yaml")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert merged.returncode != 0 and "not valid YAML at line" in merged.stderr
    assert "s3cr3t" not in merged.stdout + merged.stderr


def test_the_secret_files_are_never_committed() -> None:
    ignored = (KUBERNETES / "overlays" / "production" / ".gitignore").read_text().split()
    generated = yaml.safe_load((KUBERNETES / "overlays" / "production" / "kustomization.yaml").read_text())
    names = [name for generator in generated["secretGenerator"] for key in ("files", "envs")
             for name in generator.get(key, [])]  # fmt: skip
    assert {"secret.yaml", "redis-password", "accounts.env"} <= set(names) and set(names) <= set(ignored)
    for name in names:
        assert (KUBERNETES / "overlays" / "production" / f"{name}.example").exists(), name
