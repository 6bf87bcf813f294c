"""Structural guards: the package rules of docs/style.md, handler ancestry, the README in step with code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT

PACKAGE = ROOT / "tornadoproxy"

# The rule of each package (and top-level module): the parts of tornadoproxy it may import, besides
# its own modules and the package root (`__version__`). Read bottom-up, this is the layering of
# docs/style.md ("Layout"); the test below also checks that it has no cycle.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),  # the error catalogue and classes: imported by every layer
    "redact": set(),  # what a secret is and how text is masked: config, logs and egress use it
    "parentdeath": set(),  # a child process that ends with its parent: workers and proof workers
    "formats": {"errors"},  # SSE and strict JSON, pure: below relay, imitate and web
    "config": {"errors", "redact"},
    "observability": {"errors", "config", "redact"},
    "upstream": {"errors", "redact", "config", "observability"},
    "relay": {"errors", "redact", "formats", "config", "observability", "upstream"},
    "auth": {"errors", "redact", "formats", "config", "observability", "upstream", "relay"},
    "pool": {"errors", "redact", "config", "observability", "upstream", "auth"},
    # Pure logic of /imitate: nothing that does HTTP, so it can be tested (and reshaped) alone.
    "imitate": {"errors", "formats", "parentdeath"},
    # ... and the service that runs a completion with it: the orchestration, above the pool.
    "imitate.service": {
        "errors",
        "parentdeath",
        "redact",
        "formats",
        "config",
        "observability",
        "upstream",
        "relay",
        "auth",
        "pool",
        "imitate",
    },
    "web": {
        "errors",
        "parentdeath",
        "redact",
        "formats",
        "config",
        "observability",
        "upstream",
        "relay",
        "auth",
        "pool",
        "imitate",
        "imitate.service",
    },
    "process": {
        "errors",
        "parentdeath",
        "redact",
        "formats",
        "config",
        "observability",
        "upstream",
        "relay",
        "auth",
        "pool",
        "imitate",
        "imitate.service",
        "web",
    },
    "__main__": {"process", "web"},
}
# Third-party libraries that only these packages may import; a library missing here is refused
# everywhere (declare it first). The standard library may be imported anywhere.
ONLY_IN: dict[str, set[str]] = {
    "pycurl": {"upstream"},
    "curl_cffi": {"upstream"},
    "yaml": {"config"},
    "cachetools": {"auth", "pool"},
    "cryptography": {"auth"},
    "redis": {"auth", "pool"},
    "tiktoken": {"imitate"},
    "prometheus_client": {"observability", "pool", "process"},
    # The event loop and the HTTP server; never in formats, config, relay, auth, pool or imitate.
    "tornado": {"observability", "upstream", "web", "process"},
    # (imitate.service: the standard library only; it reaches HTTP through the relay and fetcher.)
}


# Packages inside a package with a rule of their own (`a.b`: the modules under tornadoproxy/a/b/).
SUBPACKAGES = ("imitate.service",)


def package_of(path: Path) -> str:
    """The package (or top-level module) a source file belongs to."""
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) > 2 and ".".join(relative.parts[:2]) in SUBPACKAGES:
        return ".".join(relative.parts[:2])
    if len(relative.parts) > 1:
        return relative.parts[0]
    return "tornadoproxy" if relative.name == "__init__.py" else relative.stem


def target_of(parts: list[str]) -> str:
    """The package (or sub-package with a rule) an import of tornadoproxy.<parts> reaches."""
    if len(parts) > 1 and ".".join(parts[:2]) in SUBPACKAGES:
        return ".".join(parts[:2])
    return parts[0] if parts else "tornadoproxy"


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def imports(path: Path, at_run_time: bool = False) -> list[str]:
    """Every module `path` imports; with `at_run_time`, not those under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    if at_run_time:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.If)
                and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"
            ):
                node.body = []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_rule_and_the_rules_have_no_cycle() -> None:
    packages = {package_of(path) for path in SOURCES} - {"tornadoproxy"}
    assert packages == set(MAY_IMPORT), packages ^ set(MAY_IMPORT)
    placed: list[str] = []
    while len(placed) < len(MAY_IMPORT):
        ready = [p for p, below in MAY_IMPORT.items() if p not in placed and below <= set(placed)]
        assert ready, f"the rules form a cycle among {set(MAY_IMPORT) - set(placed)}"
        placed += sorted(ready)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_package_rules(path: Path) -> None:
    package = package_of(path)
    allowed = MAY_IMPORT.get(package, set())
    for name in imports(path):
        parts = name.split(".")
        if parts[0] == "tornadoproxy":
            target = target_of(parts[1:])
            assert target in (package, "tornadoproxy") or target in allowed, f"{package} imports {name}"
        elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
            assert parts[0] in ONLY_IN, f"{path.name} imports {parts[0]}, which no rule allows"
            assert package in ONLY_IN[parts[0]], f"{package} imports {parts[0]}"


def test_modules_do_not_import_each_other_in_a_cycle() -> None:
    """Within a package too (type-only imports aside): a module below never needs one above."""
    graph: dict[str, set[str]] = {module_name(path): set() for path in SOURCES}
    for path in SOURCES:
        for name in imports(path, at_run_time=True):
            if name in graph and name != module_name(path):
                graph[module_name(path)].add(name)
    done: set[str] = set()

    def visit(node: str, trail: tuple[str, ...]) -> None:
        assert node not in trail, " -> ".join(trail[trail.index(node) :] + (node,))
        if node not in done:
            for target in graph[node]:
                visit(target, trail + (node,))
            done.add(node)

    for node in graph:
        visit(node, ())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_alone_and_has_a_docstring(path: Path) -> None:
    name = module_name(path)
    if name.endswith("__main__"):
        return
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no module docstring"


def test_every_handler_subclasses_base_handler_directly() -> None:
    from tornadoproxy.web.app import all_routes
    from tornadoproxy.web.handlers.base import BaseHandler

    for route in all_routes():
        assert route.handler.__mro__[1] is BaseHandler, route.handler


def test_readme_lists_every_route_and_config_key() -> None:
    from tornadoproxy.config.options import describe, describe_records
    from tornadoproxy.config.schema import Config
    from tornadoproxy.web.app import all_routes

    readme = (ROOT / "README.md").read_text()
    for route in all_routes():
        assert f"`{route.template}`" in readme, route.template
    for path, _, _ in describe(Config) + describe_records(Config):
        assert f"`{path}`" in readme, path


def test_readme_lists_every_metric() -> None:
    from prometheus_client import CollectorRegistry

    from tornadoproxy.observability.imitatemetrics import ImitateMetrics
    from tornadoproxy.observability.metrics import Metrics
    from tornadoproxy.observability.sharedmetrics import SupervisorMetrics
    from tornadoproxy.pool.metrics import PoolMetrics

    readme = (ROOT / "README.md").read_text()
    registry = CollectorRegistry()
    metrics = Metrics(
        registry, ("platform",)
    )  # with its ProcessCollector: the names multiprocess mode samples
    SupervisorMetrics(registry)
    PoolMetrics(registry, metrics.watch, ("alice",), shared=True)
    ImitateMetrics(registry)
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        name = name + "_info" if family.type == "info" else name
        assert re.search(rf"`{re.escape(name)}`", readme), name


def test_readme_error_table_is_the_catalogue() -> None:
    """Every code of errors.Code has a row with its status (a row may name several codes of one
    status; `502/5xx` is a code whose status relays the upstream's 5xx), and no row names another."""
    from tornadoproxy.errors import Code

    readme = (ROOT / "README.md").read_text()
    start = readme.index("| status | code | when |")
    rows = readme[start : readme.index("\n\n", start)].splitlines()[2:]
    documented: dict[str, int] = {}
    for row in rows:
        status, codes, _ = (cell.strip() for cell in row.strip("|").split("|", 2))
        for code in re.findall(r"`([a-z_]+)`", codes):
            documented[code] = int(status.split("/")[0])
    assert set(documented) == {code.value for code in Code}, set(documented) ^ set(Code)
    for code in Code:
        assert documented[code] == code.status, code


def test_the_gateway_imports_redis_and_cryptography_only_when_they_are_used() -> None:
    """redis-py and cryptography cost about 6 and 7 MB per process: the gateway imports redis-py only
    where a Redis store or a shared pool is built (auth.redisstore, pool.shared) and AES-GCM at the
    first seal or unseal of a login, not at start-up."""
    code = (
        "import sys, tornadoproxy.__main__, tornadoproxy.process.workers, tornadoproxy.pool.pool\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('redis', 'cryptography')]\n"
        "assert not loaded, loaded\n"
        "import tornadoproxy.auth.redisstore, tornadoproxy.pool.shared\n"
        "from tornadoproxy.auth.sealing import seal, unseal\n"
        "record = seal(bytes(32), bytes(16), 10, 'k', 'f', 0, 't', b'body')\n"
        "assert unseal(record, bytes(32)) == b'body' and unseal(record, bytes(31) + b'x') is None\n"
        "assert 'redis.asyncio' in sys.modules and 'cryptography' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
