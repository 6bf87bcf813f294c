"""Structural guards: the import layers of STYLE.md, handler ancestry, and the README in step with code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

PACKAGE = ROOT / "tornadoproxy"

# module -> layer; a module may import only from lower layers (and third-party code as listed).
LAYERS: dict[str, float] = {
    "tornadoproxy": 0,
    "errors": 0,
    "redact": 0,
    "options": 0.5,  # declaring and building options, generic
    "option_checks": 0.6,  # value checks of options
    "account_options": 0.8,  # the account pool's options, part of the configuration
    "config": 1,
    "sse": 1,
    "profiles": 1,
    "shipped_profiles": 1.2,  # the shipped profiles, data made of profiles
    "fingerprint_options": 1.2,  # a browser profile as curl-impersonate options
    "egress": 1,
    "forwarding": 1,
    "framing": 1,
    "diagnosis": 1,
    "access": 1,
    "bodies": 1,
    "cors": 1,
    "credentials": 1,
    "body_intake": 1,
    "sealing": 1,
    "imitate": 1.5,  # pure logic of /imitate: errors, bodies and sse only; nothing that does HTTP
    "pages": 1,
    "limits": 1,
    "sharedmetrics": 1.5,  # prometheus-client's process-wide settings, below metrics
    "metrics": 2,
    "upstream": 2,
    "transport": 2.1,  # the engine contract: Transfer, Sink, Transport
    "curl_client": 2.2,  # the pycurl engine
    "impersonation": 2.2,  # the curl_cffi engine
    "engines": 2.3,  # which engine runs a profile; one transport per profile
    "gate": 2.5,
    "exchange": 2.5,
    "curl_errors": 2,
    "egress_pool": 2,
    "fetcher": 2.7,  # builds exchanges, fails over between egress proxies
    "logs": 2,
    "tokenstore": 2,
    "readiness": 3,
    "logins": 3,
    "tokens": 3,
    "pool": 3.2,  # the account pool (a package): logins, token cache, egress, Redis
    "services": 3.5,  # gathers the layer-3 components for the handlers
    "accounts_page": 3.8,  # the HTML status page of the pool, rendered for a handler
    "handlers": 4,
    "app": 5,
    "wiring": 5,
    "listener": 5,
    "runtime": 5,
    "workers": 5.5,  # the supervisor of worker processes, started by server
    "server": 6,
    "__main__": 7,
}
# STYLE.md: the fetcher (and the token store) may take Metrics in their constructors; the fetcher's
# egress pools and error table are split out of it (one concern each) and used by it alone.
SAME_LAYER_ALLOWED = {
    ("fetcher", "metrics"),
    ("fetcher", "egress_pool"),
    ("fetcher", "curl_errors"),
    ("egress_pool", "metrics"),
    ("tokenstore", "metrics"),
}
FORBIDDEN_THIRD_PARTY: dict[float, set[str]] = {
    4: {"pycurl", "curl_cffi", "yaml", "cachetools"},
}
ONLY_HERE = {
    "yaml": {"config"},
    "pycurl": {"fetcher", "curl_client", "upstream", "egress", "profiles", "metrics"},
    "curl_cffi": {"impersonation", "fingerprint_options", "profiles"},
    "redis": {"tokenstore", "pool"},
    "cryptography": {"sealing"},
    "tiktoken": {"imitate"},
}
# What the imitate package may import at all: the standard library, these, and tiktoken.
IMITATE_MAY_IMPORT = {"tornadoproxy.errors", "tornadoproxy.bodies", "tornadoproxy.sse"}


PACKAGES = ("handlers", "pool", "imitate")


def module_key(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    if relative.parts[0] in PACKAGES:
        return relative.parts[0]
    return "tornadoproxy" if relative.name == "__init__.py" else relative.stem


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_down(path: Path) -> None:
    key = module_key(path)
    layer = LAYERS[key]
    for name in imports(path):
        top = name.split(".")[0]
        if top == "tornadoproxy":
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else "tornadoproxy"
            target_layer = LAYERS[target]
            same_package = key in PACKAGES and target == key
            allowed = same_package or target == "tornadoproxy" or (key, target) in SAME_LAYER_ALLOWED
            assert target_layer < layer or allowed, f"{key} imports {name}"
        else:
            assert top not in FORBIDDEN_THIRD_PARTY.get(layer, set()), f"{key} imports {top}"
            if top in ONLY_HERE:
                assert key in ONLY_HERE[top], f"{key} imports {top}"


def test_imitate_imports_only_pure_parts() -> None:
    for path in sorted((PACKAGE / "imitate").glob("*.py")):
        for name in imports(path):
            top = name.split(".")[0]
            if top == "tornadoproxy":
                assert name.startswith("tornadoproxy.imitate") or name in IMITATE_MAY_IMPORT, (path, name)
            else:
                assert top in sys.stdlib_module_names or top in ("tiktoken", "__future__"), (path, name)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_alone_and_has_a_docstring(path: Path) -> None:
    relative = path.relative_to(ROOT).with_suffix("")
    name = ".".join(relative.parts).removesuffix(".__init__")
    if name.endswith("__main__"):
        return
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no module docstring"


def test_every_handler_subclasses_base_handler_directly() -> None:
    from tornadoproxy.app import all_routes
    from tornadoproxy.handlers.base import BaseHandler

    for route in all_routes():
        assert route.handler.__mro__[1] is BaseHandler, route.handler


def test_readme_lists_every_route_and_config_key() -> None:
    from tornadoproxy.app import all_routes
    from tornadoproxy.config import Config
    from tornadoproxy.options import describe, describe_records

    readme = (ROOT / "README.md").read_text()
    for route in all_routes():
        assert f"`{route.template}`" in readme, route.template
    for path, _, _ in describe(Config) + describe_records(Config):
        assert f"`{path}`" in readme, path


def test_readme_lists_every_metric() -> None:
    from prometheus_client import CollectorRegistry

    from tornadoproxy.metrics import Metrics
    from tornadoproxy.pool.metrics import PoolMetrics
    from tornadoproxy.sharedmetrics import SupervisorMetrics

    readme = (ROOT / "README.md").read_text()
    registry = CollectorRegistry()
    metrics = Metrics(
        registry, ("platform",)
    )  # with its ProcessCollector: the names multiprocess mode samples
    SupervisorMetrics(registry)
    PoolMetrics(registry, metrics.watch, ("alice",), shared=True)
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name = name + "_info" if family.type == "info" else name
        assert re.search(rf"`{re.escape(name)}`", readme), name
