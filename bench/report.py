"""Turns the bench's raw records into the markdown summary: every figure as an absolute value and as
a ratio to `direct`, `nginx` and the `naive` relay of the same run (medians when there are several
repetitions). Also condenses a py-spy raw profile into its top functions.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BASELINES = ("direct", "nginx", "naive")
SHOWN = ("direct", "nginx", "naive", "gateway", "gateway-chrome", "gateway-base")
Record = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    test: str
    get: Callable[[Record], float | None]
    digits: int = 1
    better: str = "lower"  # or "higher"


def _lat(name: str) -> Callable[[Record], float | None]:
    return lambda r: r[name] / 1000 if r.get(name) is not None else None


def _sse(group: str, q: str) -> Callable[[Record], float | None]:
    return lambda r: (r.get(group) or {}).get(q)


def _per_event_us(r: Record) -> float | None:
    return r["sut_cpu_s"] * 1e6 / r["events"] if r.get("events") else None


def _cpus_sut(r: Record) -> float | None:
    return r["sut_cpu_s"] / r["wall_s"] if r.get("wall_s") else None


def _cpus_rest(r: Record) -> float | None:
    """Busy CPUs besides the system under test: with `--workers 2` the system shares cpu 1 with wrk
    and the upstream, so what they take is what two workers cannot have."""
    if not r.get("wall_s") or not r.get("cpu_busy"):
        return None
    return max(0.0, sum(r["cpu_busy"].values()) - r["sut_cpu_s"] / r["wall_s"])


def _kb_per_stream(r: Record) -> float | None:
    """RSS growth over the streams offered (the hold test's streams are all open at once: see
    `SSE hold: SUT open fds at peak`, two per stream for a relay, one for the upstream)."""
    return (r["sut_rss_peak_kb"] - r["sut_rss_before_kb"]) / r["c"] if r.get("c") else None


METRICS = (
    Metric("rps", "non-streaming req/s @64 conns", "wrk", lambda r: r["rps"], 0, "higher"),
    Metric("p50", "latency p50 @64 (ms)", "wrk", _lat("lat_p50_us"), 2),
    Metric("p99", "latency p99 @64 (ms)", "wrk", _lat("lat_p99_us"), 2),
    Metric("cpu_req", "SUT CPU ms per request", "wrk", lambda r: r["sut_cpu_s"] * 1000 / r["requests"], 3),
    Metric(
        "capacity",
        "capacity per core from CPU cost (1000 ÷ CPU ms/req)",
        "wrk",
        lambda r: r["requests"] / (r["sut_cpu_s"] * 1000) * 1000 if r["sut_cpu_s"] else None,
        0,
        "higher",
    ),
    Metric("cpus_sut", "CPUs the system used under wrk @64 (its CPU s ÷ wall s)", "wrk", _cpus_sut, 2),
    Metric("cpus_rest", "CPUs the rest used under wrk @64 (load, interrupts, others)", "wrk", _cpus_rest, 2),
    Metric("err", "wrk errors (non-2xx + socket)", "wrk", lambda r: _wrk_errors(r), 0),
    Metric("rss_idle", "RSS idle (MB)", "wrk", lambda r: r["sut_rss_start_kb"] / 1024, 0),
    Metric("rss_wrk", "RSS peak under wrk @64 (MB)", "wrk", lambda r: r["sut_rss_peak_kb"] / 1024, 0),
    Metric("p50_1", "latency p50 @1 conn (ms)", "wrk1", _lat("lat_p50_us"), 3),
    Metric("p99_1", "latency p99 @1 conn (ms)", "wrk1", _lat("lat_p99_us"), 3),
    Metric("added_1", "added latency p50 @1 conn vs direct (ms)", "wrk1", _lat("lat_p50_us"), 3),
    Metric("burst_ok", "SSE burst: streams ok", "burst", lambda r: r["ok"], 0, "higher"),
    Metric("burst_ttfb50", "SSE burst: TTFB p50 (ms)", "burst", _sse("ttfb_ms", "p50"), 1),
    Metric("burst_ttfb99", "SSE burst: TTFB p99 (ms)", "burst", _sse("ttfb_ms", "p99"), 1),
    Metric("event_cpu", "SSE: SUT CPU µs per relayed event", "events", _per_event_us, 1),
    Metric("events_ok", "SSE events test: streams ok", "events", lambda r: r["ok"], 0, "higher"),
    Metric("hold_ok", "SSE hold: streams ok", "hold", lambda r: r["ok"], 0, "higher"),
    Metric("hold_peak", "SSE hold: streams open at once (client)", "hold", lambda r: r["peak_open"], 0),
    Metric("hold_ttfb50", "SSE hold: TTFB p50 (ms)", "hold", _sse("ttfb_ms", "p50"), 1),
    Metric("hold_ttfb99", "SSE hold: TTFB p99 (ms)", "hold", _sse("ttfb_ms", "p99"), 1),
    Metric("hold_rss", "SSE hold: RSS before -> peak (MB)", "hold", lambda r: r["sut_rss_peak_kb"] / 1024, 0),
    Metric("hold_kb", "SSE hold: KB of RSS per stream", "hold", _kb_per_stream, 1),
    Metric("hold_fds", "SSE hold: SUT open fds at peak", "hold", lambda r: r.get("sut_fds_peak"), 0),
)


def _wrk_errors(r: Record) -> float:
    keys = ("errors_connect", "errors_read", "errors_write", "errors_status", "errors_timeout")
    return float(sum(r.get(k, 0) for k in keys))


def values(records: list[Record]) -> dict[str, dict[str, float | None]]:
    """system -> metric key -> median over repetitions."""
    table: dict[str, dict[str, float | None]] = {}
    for system in {r["system"] for r in records}:
        row: dict[str, float | None] = {}
        for metric in METRICS:
            found = [metric.get(r) for r in records if r["system"] == system and r["test"] == metric.test]
            numbers = [v for v in found if v is not None]
            row[metric.key] = statistics.median(numbers) if numbers else None
        table[system] = row
    direct_p50 = table.get("direct", {}).get("added_1")
    for row in table.values():
        if row.get("added_1") is not None and direct_p50 is not None:
            row["added_1"] = row["added_1"] - direct_p50  # type: ignore[operator]
        else:
            row["added_1"] = None
    return table


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "–"
    ratio = value / base
    if abs(ratio) >= 100:
        return f"{ratio:,.0f}×"
    return f"{ratio:.3g}×"


def _cell(metric: Metric, row: dict[str, float | None], records: list[Record], system: str) -> str:
    value = _fmt(row.get(metric.key), metric.digits)
    if metric.key == "hold_rss":
        before = [
            r["sut_rss_before_kb"] / 1024 for r in records if r["system"] == system and r["test"] == "hold"
        ]
        if before and row.get(metric.key) is not None:
            value = f"{statistics.median(before):.0f} -> {value}"
    if metric.key in ("burst_ok", "hold_ok", "events_ok"):
        offered = [r["c"] for r in records if r["system"] == system and r["test"] == metric.test]
        if offered and row.get(metric.key) is not None:
            value = f"{value} of {statistics.median(offered):.0f}"
    return value


def headline(records: list[Record]) -> str:
    table = values(records)
    systems = [s for s in SHOWN if s in table]
    head = "| metric | " + " | ".join(systems) + " | gateway ÷ direct | gateway ÷ nginx | gateway ÷ naive |"
    lines = [head, "|---" * (len(systems) + 4) + "|"]
    gateway = table.get("gateway", {})
    for metric in METRICS:
        cells = [_cell(metric, table[s], records, s) for s in systems]
        ratios = [_ratio(gateway.get(metric.key), table.get(b, {}).get(metric.key)) for b in BASELINES]
        lines.append(f"| {metric.label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def engines(records: list[Record]) -> str:
    """The curl_cffi engine (gateway-chrome) against the pycurl engine (gateway), same run."""
    return _side_by_side(
        records,
        ("gateway", "gateway-chrome"),
        "| metric | pycurl (plain) | curl_cffi (chrome) | curl_cffi ÷ pycurl |",
        "(run both `gateway` and `gateway-chrome` for this table)",
        invert=True,
    )


def against_base(records: list[Record]) -> str:
    """This checkout's gateway against another commit's (gateway-base, `--base`), same run."""
    return _side_by_side(
        records,
        ("gateway", "gateway-base"),
        "| metric | gateway (this checkout) | gateway-base | this ÷ base |",
        "(run both `gateway` and `gateway-base` (--base DIR) for this table)",
    )


def _side_by_side(
    records: list[Record], systems: tuple[str, str], header: str, missing: str, invert: bool = False
) -> str:
    """Two systems of one run, metric by metric, with first ÷ second (second ÷ first if `invert`)."""
    table = values(records)
    first, second = (table.get(system, {}) for system in systems)
    if not first or not second:
        return missing
    lines = [header, "|---|---|---|---|"]
    for metric in METRICS:
        if first.get(metric.key) is None and second.get(metric.key) is None:
            continue
        rows = zip((first, second), systems, strict=True)
        cells = [_cell(metric, row, records, name) for row, name in rows]
        top, bottom = (second, first) if invert else (first, second)
        ratio = _ratio(top.get(metric.key), bottom.get(metric.key))
        lines.append(f"| {metric.label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def every_system(records: list[Record]) -> str:
    table = values(records)
    systems = [s for s in ("upstream-alone", *SHOWN) if s in table]
    lines = ["| metric | system | value | ÷ direct | ÷ nginx | ÷ naive |", "|---|---|---|---|---|---|"]
    for metric in METRICS:
        for system in systems:
            row = table[system]
            if row.get(metric.key) is None:
                continue
            ratios = [_ratio(row.get(metric.key), table.get(b, {}).get(metric.key)) for b in BASELINES]
            value = _cell(metric, row, records, system)
            lines.append(f"| {metric.label} | {system} | {value} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def notes(records: list[Record], hold_cap: int) -> list[str]:
    table = values(records)
    found = []
    alone_rps = table.get("upstream-alone", {}).get("rps")
    alone_cpu = table.get("upstream-alone", {}).get("cpu_req")
    gateway_rps = table.get("gateway", {}).get("rps")
    if alone_rps and alone_cpu and gateway_rps:
        found.append(
            f"The fake upstream alone on cpu 0 served {alone_rps:,.0f} req/s at {alone_cpu:.3f} CPU-ms "
            f"per request: {alone_rps / gateway_rps:.0f}× the gateway's rate, so it is not the bottleneck "
            "of the Python relays. `direct` puts wrk and the upstream on cpu 1 together: the ceiling of "
            "this set-up, not a relay. For nginx the load side (cpu 1) saturates first, so its req/s is a "
            "lower bound: compare `capacity per core` (1000 ÷ CPU-ms per request) instead."
        )
    for system in ("direct", "nginx"):
        runs = [r for r in records if r["system"] == system and r["test"] in ("burst", "events", "hold")]
        if runs:
            parts = [
                f"{r['test']} C={r['c']}: {r['ok']} ok, client CPU {r['client_cpu_s']:.1f} s in "
                f"{r['wall_s']:.1f} s, loop lag p99 {(r.get('client_loop_lag_ms') or {}).get('p99')} ms"
                for r in runs
            ]
            found.append(f"SSE client (one process on cpu 1) against {system}: " + "; ".join(parts) + ".")
    for record in records:
        if record["test"] == "checks":
            found.append(
                f"Gateway had metrics and access log on: /metrics counted "
                f"{record['metrics_requests_total']:,.0f} requests, the access log has "
                f"{record['access_log_lines']:,} lines ({record['log_bytes'] / 1e6:.1f} MB), streams_active "
                f"after the run: {record['metrics_streams_active']}."
            )
    failures = [r for r in records if r.get("failures")]
    for record in failures:
        found.append(f"Failures, {record['system']} {record['test']}: {record['failures']}.")
    found.append(
        f"Streams held at once are capped at {hold_cap:,}: a one-process relay needs two descriptors per "
        "stream and this machine's hard RLIMIT_NOFILE cannot be raised."
        if hold_cap < 10000
        else "Streams held at once: up to 10,000."
    )
    noisy = [r for r in records if (r.get("others_cpu") or 0) >= 0.05]
    measured = [r["others_cpu"] for r in records if r.get("others_cpu") is not None]
    if measured:
        found.append(
            f"Shared machine: processes outside the bench used {statistics.median(measured):.2f} CPUs' worth "
            f"at the median test and {max(measured):.2f} at most; tests with 0.05 or more: "
            + (", ".join(f"{r['system']} {r['test']} {r['others_cpu']:.2f}" for r in noisy) or "none")
            + "."
        )
    irq = [r["irq_cpu"] for r in records if r.get("irq_cpu") is not None]
    steal = [r["steal_cpu"] for r in records if r.get("steal_cpu") is not None]
    if irq and steal:
        found.append(
            f"Interrupt time (mostly the bench's own loopback traffic, not in any process's CPU time): "
            f"{statistics.median(irq):.2f} CPUs' worth at the median test; hypervisor steal: "
            f"{statistics.median(steal):.2f} median, {max(steal):.2f} at most."
        )
    return found


def summary(
    records: list[Record], settings: Any, facts: dict[str, Any], hold_cap: int, argv: list[str]
) -> str:
    s = settings
    command = "./bench/run " + " ".join(argv)
    parts = [
        f"# tornadoproxy bench: {s.mode} run",
        "",
        f"Command: `{command.strip()}`. Machine: {facts.get('cpus')} CPUs, kernel {facts.get('kernel')}, "
        f"load average at start {facts.get('loadavg_at_start')}, nofile {facts.get('nofile')}; "
        f"{facts.get('gateway_stack')}; {facts.get('nginx')}; {facts.get('wrk')}; git {facts.get('git')}.",
        "",
        f"Each system on cpu {'0' if s.workers == 1 else '0,1'} ({s.workers} worker(s)); fake upstream, "
        "wrk and the SSE client on cpu 1. The machine is shared with other work: see the CPU-busy notes. "
        f"wrk: -t1 -c{s.conns} -d{s.wrk_s}s and -c1 -d{s.wrk1_s}s, POST JSON with Authorization. "
        f"SSE burst: {s.burst_c} streams opened at once, model `{s.burst_model}`; events test: "
        f"{s.events_c} streams of `{s.events_model}`; hold: {min(s.hold_c, hold_cap)} streams of "
        f"`{s.hold_model}` opened over {s.hold_ramp_s:g} s. Medians of {s.reps} repetition(s). "
        "Ratios are value ÷ baseline (for req/s and ok counts higher is better, for the rest lower is "
        "better). RSS of `direct` is the upstream's own.",
        "",
        "## Gateway against the baselines",
        "",
        headline(records),
        "",
        "## Engines: curl_cffi (browser profile) against pycurl (plain), both gateways",
        "",
        engines(records),
        "",
        "## This checkout against the base commit (`--base`), both plain gateways",
        "",
        against_base(records),
        "",
        "## Every system",
        "",
        every_system(records),
        "",
        "## Notes",
        "",
        *[f"- {note}" for note in notes(records, hold_cap)],
        "",
    ]
    return "\n".join(parts)


def one_line(record: Record) -> str:
    """A progress line for the console."""
    head = f"{record['system']} {record['test']}:"
    if record["test"].startswith("wrk"):
        return (
            f"{head} {record['rps']:,.0f} req/s, p50 {record['lat_p50_us'] / 1000:.2f} ms, "
            f"p99 {record['lat_p99_us'] / 1000:.2f} ms, errors {_wrk_errors(record):.0f}, "
            f"CPU {record['sut_cpu_s']:.2f} s, RSS peak {record['sut_rss_peak_kb'] / 1024:.0f} MB"
        )
    return (
        f"{head} {record['ok']}/{record['c']} ok, TTFB p50/p99 {record['ttfb_ms']['p50']}/"
        f"{record['ttfb_ms']['p99']} ms, events {record['events']}, CPU {record['sut_cpu_s']:.2f} s, "
        f"RSS {record['sut_rss_before_kb'] / 1024:.0f}->{record['sut_rss_peak_kb'] / 1024:.0f} MB, "
        f"failures {record['failures'] or 0}, client CPU {record['client_cpu_s']} s"
    )


# -- py-spy --------------------------------------------------------------------------------------
_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["path"]
    for marker in ("site-packages/", "lib/python3.11/", "/wt-bench/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['name']} ({path})"


_COMPONENTS = (
    ("tornadoproxy/", "gateway code (tornadoproxy/)"),
    ("bench/", "naive relay code (bench/)"),
    ("tornado/curl_httpclient", "tornado curl_httpclient"),
    ("tornado/http1connection", "tornado HTTP/1 server"),
    ("tornado/httputil", "tornado HTTP/1 server"),
    ("tornado/iostream", "tornado iostream"),
    ("tornado/web", "tornado web (RequestHandler)"),
    ("tornado/routing", "tornado web (RequestHandler)"),
    ("tornado/", "tornado other (ioloop, gen, platform)"),
    ("asyncio/", "asyncio event loop"),
    ("selectors", "asyncio event loop"),
    ("prometheus_client/", "prometheus_client"),
    ("logging/", "logging"),
    ("json/", "json"),
)


def _component(frame: str) -> str:
    for marker, name in _COMPONENTS:
        if f"({marker}" in frame or f"/{marker}" in frame:
            return name
    return "other (stdlib, <frozen ...>)"


def profile_top(raw: str, limit: int = 25) -> str:
    """Top functions of a py-spy `--format raw` profile by own time and by inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "(no samples)\n"
    by_component: Counter[str] = Counter()
    for frame, count in own.items():
        by_component[_component(frame)] += count
    out = [f"{total} samples (active CPU only).", "", "| own % | component (file of the sampled frame) |"]
    out += ["|---|---|"] + [f"| {100 * n / total:.1f} | {c} |" for c, n in by_component.most_common()]
    out += ["", "| own % | function |", "|---|---|"]
    out += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in own.most_common(limit)]
    out += ["", "| inclusive % | function |", "|---|---|"]
    out += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in inclusive.most_common(limit)]
    return "\n".join(out) + "\n"
