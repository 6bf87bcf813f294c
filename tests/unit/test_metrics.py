"""The bounded label sets cover every value the code can produce; multiprocess mode reports the same
process figures as one process; the worker restart budget."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from tests.harness import ROOT, metric_value
from tornadoproxy.errors import Code
from tornadoproxy.observability.metrics import (
    EGRESS_FAILURE_KINDS,
    GATEWAY_ERROR_CODES,
    LOGIN_OUTCOMES,
    UPSTREAM_ERROR_KINDS,
    Metrics,
    status_class,
)
from tornadoproxy.observability.sharedmetrics import Sampler
from tornadoproxy.process.workers import RestartBudget

PACKAGE = ROOT / "tornadoproxy"


def literal_keywords(name: str) -> set[str]:
    """Every string literal passed as keyword `name`, or assigned to a class attribute `name`."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == name and isinstance(node.value, ast.Constant):
                found.add(node.value.value)
            if (
                isinstance(node, ast.Assign)
                and [getattr(target, "id", None) for target in node.targets] == [name]
                and isinstance(node.value, ast.Constant)
            ):
                found.add(node.value.value)
    return {value for value in found if isinstance(value, str)}


def test_every_error_code_has_its_own_series_and_none_is_a_string() -> None:
    """The label set is the catalogue; no module passes a code as a plain string (nor compares with
    one): codes are errors.Code members, so a new code cannot miss its series."""
    assert set(GATEWAY_ERROR_CODES) == {code.value for code in Code} | {"other"}
    assert set(_tornado_codes()) <= set(Code)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "code":
                assert not isinstance(node.value, ast.Constant), (path, node.lineno)
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute):
                if node.left.attr == "code":
                    strings = [c for c in node.comparators if isinstance(c, ast.Constant)]
                    assert not strings, (path, node.lineno)


def _tornado_codes() -> list[str]:
    from tornadoproxy.web.handlers.base import _TORNADO_CODES

    return list(_TORNADO_CODES.values())


def test_every_catalogue_kind_is_a_label_of_its_family() -> None:
    for code in Code:
        if code.type == "upstream_error":
            assert code.kind in UPSTREAM_ERROR_KINDS, code
        elif code.type == "login_error":
            assert code.kind in LOGIN_OUTCOMES, code
        else:
            assert code.kind == "", code


def test_every_upstream_error_kind_in_the_package_has_its_own_series() -> None:
    from tornadoproxy.upstream.curl_errors import _DIRECT_FAILURES

    kinds = literal_keywords("kind") | {kind for kind, _ in _DIRECT_FAILURES.values()}
    kinds |= {code.kind for code in Code if code.kind and code.type == "upstream_error"}
    for node in ast.walk(ast.parse((PACKAGE / "upstream" / "curl_errors.py").read_text())):
        # `return "proxy_dns", "what happened"` in the proxy failure tables
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            first = node.value.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                kinds.add(first.value)
    assert {"timeout", "reset", "unreachable", "proxy_refused", "challenge"} <= kinds  # the scan works
    assert kinds <= set(UPSTREAM_ERROR_KINDS), kinds - set(UPSTREAM_ERROR_KINDS)
    assert {kind for kind in kinds if kind.startswith("proxy_")} <= set(EGRESS_FAILURE_KINDS)


def test_an_unknown_code_is_counted_as_other() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, ("platform",))
    metrics.count_gateway_error("something_new")
    metrics.count_gateway_error("not_found")
    exposition = metrics.render(None)[0].decode()
    assert metric_value(exposition, "tornadoproxy_gateway_errors_total", code="other") == 1
    assert metric_value(exposition, "tornadoproxy_gateway_errors_total", code="not_found") == 1
    assert "something_new" not in exposition


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 304, 404, 499, 503, 999, 0)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
        "5xx",
        "1xx",
    ]


def test_multiprocess_mode_samples_the_same_process_figures() -> None:
    sampler = Sampler(CollectorRegistry())
    sampled = {name.removesuffix("_total") for name in sampler._gauges} | {"process_cpu_seconds"}
    single = {family.name for family in ProcessCollector(registry=None).collect()}
    assert sampled == single


def test_restart_budget() -> None:
    budget = RestartBudget(limit=3, window=60)
    assert [budget.allow(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert budget.allow(60.5)  # the first restart left the window
    assert not budget.allow(61)
    assert budget.allow(200)


def test_metric_names_follow_the_conventions() -> None:
    registry = CollectorRegistry()
    Metrics(registry, ("platform",))
    for family in registry.collect():
        if family.name.startswith("process_"):
            continue
        assert family.name.startswith("tornadoproxy_"), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert family.documentation.endswith("."), family.name


def test_no_module_reads_the_multiprocess_environment() -> None:
    """Only sharedmetrics sets the library's environment variable; nothing else touches it."""
    for path in PACKAGE.rglob("*.py"):
        if path.name != "sharedmetrics.py":
            assert "PROMETHEUS_MULTIPROC_DIR" not in Path(path).read_text(), path
