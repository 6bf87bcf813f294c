"""The pure parts of the bench's instruction counts (bench/instructions.py): reading callgrind's and
strace's output, and the figures per unit of work. valgrind itself runs only in `bench/run`."""

from __future__ import annotations

import pytest

from bench.instructions import callgrind_total, figures, strace_counts, summary

# The head and tail of a dump asked for with `callgrind_control --zero` then `--dump` (callgrind 3.19).
DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
cmd:  /x/.venv/bin/python -m tornadoproxy --config /x/gateway.yaml
desc: Trigger: dump request

positions: line
events: Ir
summary: 0


ob=(2) ???
fn=(1180) 0x0000000004936730
0 21014
calls=21014 3281
0 4409589

totals: 662473306
"""

VALGRIND_LOG = """==308== Events    : Ir
==308== Collected : 662473306
==308==
==308== I   refs:      662,473,306
"""

STRACE = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 37.37    0.046975           9      5008           getpid
 14.96    0.018804          11      1688       688 recvfrom
  0.00    0.000002           2         1           ioctl
------ ----------- ----------- --------- --------- ----------------
100.00    0.125711          10     11953       689 total
"""


def test_a_dump_counts_its_closing_totals_not_the_zeroed_summary() -> None:
    assert callgrind_total(DUMP) == 662473306
    assert callgrind_total(DUMP.replace("totals: 662473306", "")) == 0  # an older dump: summary only


def test_valgrinds_log_counts_when_there_is_no_dump() -> None:
    assert callgrind_total(VALGRIND_LOG) == 662473306


def test_output_without_a_total_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError):
        callgrind_total("==308== Callgrind, a call-graph generating cache profiler\n")


def test_strace_counts_calls_per_syscall_with_or_without_errors_and_the_total() -> None:
    assert strace_counts(STRACE) == {"getpid": 5008, "recvfrom": 1688, "ioctl": 1, "total": 11953}


def test_figures_are_per_unit_and_an_event_is_the_difference_of_two_streams_over_their_events() -> None:
    totals = {"request": 2000000, "stream50": 1000000, "stream1": 20000, "imitate200": 2000, "imitate1": 10}
    units = {"request": 2, "stream50": 10, "stream1": 10, "imitate200": 1, "imitate1": 1}
    per = figures(totals, units)
    assert per["request"] == 1000000
    assert per["event"] == (100000 - 2000) / 49
    assert per["imitate_event"] == 10
    assert "event" not in figures({"request": 4}, {"request": 2})


def test_the_summary_shows_medians_their_spread_and_the_ratio_of_the_two_systems() -> None:
    records = [
        {"system": "gateway", "rep": 1, "figures": {"request": 990.0}},
        {"system": "gateway", "rep": 2, "figures": {"request": 1010.0}},
        {"system": "gateway-base", "rep": 1, "figures": {"request": 2000.0}},
    ]
    text = summary(records, ["--instructions"], {"loadavg_at_start": [0.1]})
    assert "| instructions per relayed request | 1,000 (±1.00 %) | 2,000 | 0.5000 |" in text
    assert "per relayed event" not in text  # no figure, no row
    assert "a read of their own" not in text


def test_the_summary_says_when_web_deltas_came_together() -> None:
    record = {"system": "gateway", "rep": 1, "figures": {"imitate_event": 5.0}}
    record |= {"events": {"imitate200": 2 * 199 + 2 * 2}, "units": {"imitate200": 2}}
    text = summary([record], ["--instructions"], {})
    assert "Web deltas that came in a read of their own, of 200 per stream: gateway rep 1: 199.0" in text
