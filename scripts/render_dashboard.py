"""Print the Grafana dashboard deploy/grafana/dashboards/tornadoproxy.json from the panel list below.

Run `python scripts/render_dashboard.py > deploy/grafana/dashboards/tornadoproxy.json` after a change;
tests/deploy/test_files.py checks the file matches, and tests/e2e/test_monitoring.py evaluates every
expression of the file against a real Prometheus scraping a real gateway.
"""

from __future__ import annotations

import json
from typing import Any

SEL = 'instance=~"$instance"'
RATE = "[$__rate_interval]"
NOT_OPS = 'route!~"/healthz|/readyz|/metrics"'

# (row title, [(panel type, title, unit, [(expr, legend)], description)])
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], str]]]] = [
    (
        "Traffic",
        [
            (
                "timeseries",
                "Requests per second by route",
                "reqps",
                [(f"sum by (route) (rate(tornadoproxy_http_requests_total{{{SEL}}}{RATE}))", "{{route}}")],
                "Requests answered, by route template (never the raw path).",
            ),
            (
                "timeseries",
                "Requests per second by status class",
                "reqps",
                [(f"sum by (status) (rate(tornadoproxy_http_requests_total{{{SEL}}}{RATE}))", "{{status}}")],
                "Upstream statuses pass through: 4xx and 5xx include the upstream's own answers.",
            ),
            (
                "stat",
                "5xx ratio (relayed routes)",
                "percentunit",
                [
                    (
                        f'sum(rate(tornadoproxy_http_requests_total{{{SEL}, status="5xx", {NOT_OPS}}}{RATE}))'
                        f" / sum(rate(tornadoproxy_http_requests_total{{{SEL}, {NOT_OPS}}}{RATE}))",
                        "5xx",
                    )
                ],
                "Share of requests answered 5xx, /healthz, /readyz and /metrics left out.",
            ),
            (
                "timeseries",
                "Gateway errors by code",
                "reqps",
                [(f"sum by (code) (rate(tornadoproxy_gateway_errors_total{{{SEL}}}{RATE}))", "{{code}}")],
                "Error answers the gateway wrote itself (JSON errors and final stream error events).",
            ),
        ],
    ),
    (
        "Latency",
        [
            (
                "timeseries",
                "Request duration percentiles",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) (rate("
                        f"tornadoproxy_http_request_duration_seconds_bucket{{{SEL}, {NOT_OPS}}}{RATE})))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ],
                "Request received to response finished; a stream counts for its whole length.",
            ),
            (
                "timeseries",
                "Request duration p95 by route",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, route) "
                        f"(rate(tornadoproxy_http_request_duration_seconds_bucket{{{SEL}}}{RATE})))",
                        "{{route}}",
                    )
                ],
                "95th percentile per route template.",
            ),
            (
                "timeseries",
                "Upstream time to first byte",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (le, upstream) "
                        f"(rate(tornadoproxy_upstream_first_byte_seconds_bucket{{{SEL}}}{RATE})))",
                        f"{{{{upstream}}}} p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                "Upstream request sent to its response headers, per upstream.",
            ),
        ],
    ),
    (
        "Streams",
        [
            (
                "timeseries",
                "Active streams",
                "short",
                [(f"sum(tornadoproxy_streams_active{{{SEL}}})", "active")],
                "SSE streams being relayed now (all instances and workers).",
            ),
            (
                "timeseries",
                "Streams ended by reason",
                "ops",
                [(f"sum by (reason) (rate(tornadoproxy_streams_ended_total{{{SEL}}}{RATE}))", "{{reason}}")],
                "done, client_gone, upstream_error, idle_timeout, shutdown.",
            ),
        ],
    ),
    (
        "Upstreams and egress",
        [
            (
                "timeseries",
                "Upstream errors by kind",
                "ops",
                [
                    (
                        f"sum by (upstream, kind) (rate(tornadoproxy_upstream_errors_total{{{SEL}}}{RATE}))",
                        "{{upstream}} {{kind}}",
                    )
                ],
                "Timeouts, refused or reset connections, TLS, DNS, egress proxy failures, challenge and "
                "block pages.",
            ),
            (
                "table",
                "Upstream readiness (last probe)",
                "short",
                [(f"max by (upstream, state) (tornadoproxy_upstream_state{{{SEL}}}) == 1", "{{upstream}}")],
                "The state each upstream's last /readyz probe saw: reachable, challenged, blocked, "
                "unreachable, pending or disabled.",
            ),
            (
                "timeseries",
                "Egress proxies in rotation",
                "short",
                [
                    (
                        f"min by (upstream, proxy) (tornadoproxy_egress_proxy_up{{{SEL}}})",
                        "{{upstream}} {{proxy}}",
                    )
                ],
                "1 while a proxy is in rotation, 0 while it cools down after a failure.",
            ),
            (
                "timeseries",
                "Egress proxy failures by kind",
                "ops",
                [
                    (
                        "sum by (upstream, proxy, kind) "
                        f"(rate(tornadoproxy_egress_proxy_failures_total{{{SEL}}}{RATE}))",
                        "{{upstream}} {{proxy}} {{kind}}",
                    )
                ],
                "Every failed attempt through a proxy, retried on the next one or not.",
            ),
        ],
    ),
    (
        "Logins and token cache",
        [
            (
                "timeseries",
                "Logins by outcome",
                "ops",
                [
                    (
                        f"sum by (family, outcome) (rate(tornadoproxy_logins_total{{{SEL}}}{RATE}))",
                        "{{family}} {{outcome}}",
                    )
                ],
                "ok (upstream login), cached, joined, failed, remembered, mfa, blocked, rate_limited, "
                "limited, challenge, error.",
            ),
            (
                "timeseries",
                "Upstream login duration p95",
                "s",
                [
                    (
                        "histogram_quantile(0.95, sum by (le, family) "
                        f"(rate(tornadoproxy_login_duration_seconds_bucket{{{SEL}}}{RATE})))",
                        "{{family}}",
                    )
                ],
                "All steps of a login flow (cache hits excluded).",
            ),
            (
                "stat",
                "Token cache hit ratio",
                "percentunit",
                [
                    (
                        f'sum(rate(tornadoproxy_token_cache_lookups_total{{{SEL}, result="hit"}}{RATE}))'
                        f" / sum(rate(tornadoproxy_token_cache_lookups_total{{{SEL}}}{RATE}))",
                        "hits",
                    )
                ],
                "Lookups answered from the cache.",
            ),
            (
                "timeseries",
                "Token cache",
                "short",
                [
                    (f"sum(tornadoproxy_token_cache_entries{{{SEL}}})", "entries"),
                    (
                        f"sum by (reason) (rate(tornadoproxy_token_cache_evictions_total{{{SEL}}}{RATE}))",
                        "evicted/s {{reason}}",
                    ),
                    (f"sum(rate(tornadoproxy_token_store_errors_total{{{SEL}}}{RATE}))", "store errors/s"),
                ],
                "Cached logins held, evictions by reason, token store (Redis) errors.",
            ),
        ],
    ),
    (
        "Account pool",
        [
            (
                "table",
                "Pool accounts by state",
                "short",
                [(f"max by (account, state) (tornadoproxy_pool_account_state{{{SEL}}}) == 1", "{{account}}")],
                "The state of each account (ready, busy, cooling, logging_in, invalid); "
                "GET /accounts says why.",
            ),
            (
                "timeseries",
                "Pool answers by account and outcome",
                "ops",
                [
                    (
                        f"sum by (account, outcome) (rate(tornadoproxy_pool_requests_total{{{SEL}}}{RATE}))",
                        "{{account}} {{outcome}}",
                    )
                ],
                "Answers served by pool accounts: ok, rate_limited, challenge, blocked, unauthorized, "
                "transport, aborted.",
            ),
            (
                "timeseries",
                "Pool answers in flight",
                "short",
                [(f"sum by (account) (tornadoproxy_pool_account_in_flight{{{SEL}}})", "{{account}}")],
                "Answers each account is serving now (all instances and workers).",
            ),
            (
                "timeseries",
                "Pool queue",
                "short",
                [
                    (f"sum(tornadoproxy_pool_queue_length{{{SEL}}})", "waiting"),
                    (
                        f"sum by (reason) (rate(tornadoproxy_pool_queue_rejected_total{{{SEL}}}{RATE}))",
                        "429/s {{reason}}",
                    ),
                ],
                "Requests waiting for a free account; refused with 429 accounts_busy (queue full, timeout).",
            ),
            (
                "timeseries",
                "Pool queue wait",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(tornadoproxy_pool_queue_wait_seconds_bucket{{{SEL}}}{RATE})))",
                        f"p{int(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
                "Time requests waited for an account (0 when one was free).",
            ),
            (
                "timeseries",
                "Pool token lifetime left",
                "s",
                [
                    (
                        f"min by (account) (tornadoproxy_pool_account_token_expiry_seconds{{{SEL}}})",
                        "{{account}}",
                    )
                ],
                "Seconds until each account's accessToken expires (0: it has none).",
            ),
            (
                "timeseries",
                "Pool logins by outcome",
                "ops",
                [
                    (
                        "sum by (account, kind, outcome) "
                        f"(rate(tornadoproxy_pool_logins_total{{{SEL}}}{RATE}))",
                        "{{account}} {{kind}} {{outcome}}",
                    ),
                    (
                        f"max by (account) (tornadoproxy_pool_account_login_failures{{{SEL}}})",
                        "{{account}} failures in a row",
                    ),
                ],
                "Background logins (login: no usable token; refresh: ahead of expiry) and failures in a row.",
            ),
            (
                "stat",
                "Pool slots shared through Redis",
                "short",
                [(f"min(tornadoproxy_pool_shared_state_up{{{SEL}}})", "shared")],
                "1: slots, queue and cool-downs shared through Redis; 0: some process serves on its "
                "own slots.",
            ),
        ],
    ),
    (
        "Capacity and process",
        [
            (
                "timeseries",
                "Upstream slots (gate)",
                "short",
                [
                    (f"sum(tornadoproxy_gate_in_flight{{{SEL}}})", "in flight"),
                    (f"sum(tornadoproxy_gate_capacity{{{SEL}}})", "capacity"),
                    (f"sum(rate(tornadoproxy_gate_rejected_total{{{SEL}}}{RATE}))", "rejected/s"),
                ],
                "Upstream requests holding a slot of fetch.max_clients; rejected: answered 503.",
            ),
            (
                "timeseries",
                "Instances and workers",
                "short",
                [
                    (f"sum(up{{{SEL}}})", "instances up"),
                    (f"sum(tornadoproxy_workers{{{SEL}}})", "workers"),
                    (f"sum(increase(tornadoproxy_worker_restarts_total{{{SEL}}}{RATE}))", "worker restarts"),
                ],
                "Scrape targets up, worker processes serving, workers restarted after dying.",
            ),
            (
                "timeseries",
                "Memory (resident)",
                "bytes",
                [(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "{{instance}}")],
                "Resident memory of each instance (all its workers).",
            ),
            (
                "timeseries",
                "CPU",
                "percentunit",
                [(f"sum by (instance) (rate(process_cpu_seconds_total{{{SEL}}}{RATE}))", "{{instance}}")],
                "CPU time per second of each instance (1 = one core).",
            ),
            (
                "timeseries",
                "Open file descriptors",
                "short",
                [
                    (f"sum by (instance) (process_open_fds{{{SEL}}})", "{{instance}} open"),
                    (f"min by (instance) (process_max_fds{{{SEL}}})", "{{instance}} limit per process"),
                ],
                "Each stream holds two sockets; keep well under the limit (LimitNOFILE, ulimits).",
            ),
            (
                "stat",
                "Last configuration reload",
                "short",
                [(f"min(tornadoproxy_config_last_reload_successful{{{SEL}}})", "ok")],
                "1: the last SIGHUP reload succeeded (or none happened); 0: it failed.",
            ),
            (
                "table",
                "Versions",
                "short",
                [(f"tornadoproxy_build_info{{{SEL}}}", "{{instance}}")],
                "Gateway, Python, tornado and libcurl versions per instance.",
            ),
        ],
    ),
]


def panel(kind: str, title: str, unit: str, targets: list[tuple[str, str]], help: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": help,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
                "refId": chr(ord("A") + index),
                **({"instant": True, "format": "table"} if kind == "table" else {}),
            }
            for index, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        body["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        }
    return body


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        y += 1
        for index, spec in enumerate(row_panels):
            item = panel(*spec)
            item["gridPos"] = {"h": 8, "w": 8, "x": 8 * (index % 3), "y": y + 8 * (index // 3)}
            panels.append(item)
        y += 8 * ((len(row_panels) + 2) // 3)
    for number, item in enumerate(panels, start=1):
        item["id"] = number
    return {
        "uid": "tornadoproxy",
        "title": "tornadoproxy",
        "description": (
            "The gateway's traffic, latency, streams, upstreams, egress, logins, account pool and capacity."
        ),
        "tags": ["tornadoproxy"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {
                        "query": "label_values(tornadoproxy_build_info, instance)",
                        "refId": "instances",
                    },
                    "definition": "label_values(tornadoproxy_build_info, instance)",
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "hide": 0,
                    "sort": 1,
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=2))
