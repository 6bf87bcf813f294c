"""The soak report (bench/soak.py): minute rows, and descriptor floors that a leak would raise while
mid-load samples swing with whatever connections are open at that moment."""

from __future__ import annotations

from bench.soak import soak_report


def _samples(fds_by_second: dict[float, int]) -> list[dict[str, float]]:
    return [{"t_s": t, "rss_kb": 51200, "fds": fds} for t, fds in sorted(fds_by_second.items())]


def test_each_minute_reports_its_last_sample_and_its_fewest_descriptors() -> None:
    report = soak_report(_samples({30: 40, 55: 230, 65: 44, 119: 300}), 10, 2, 120)
    assert "| 1 | 50.0 | 230 | 40 |" in report
    assert "| 2 | 50.0 | 300 | 44 |" in report


def test_the_summary_compares_floors_so_a_busy_last_sample_is_not_read_as_a_leak() -> None:
    steady = soak_report(_samples({65: 46, 90: 46, 170: 46, 179: 299}), 10, 2, 180)
    assert "open fds 46 -> 299, fewest in a minute 46 -> 46." in steady
    leaking = soak_report(_samples({65: 46, 90: 46, 170: 90, 179: 299}), 10, 2, 180)
    assert "fewest in a minute 46 -> 90." in leaking
