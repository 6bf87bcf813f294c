"""The pool's timing rules and the status page's small helpers."""

from __future__ import annotations

import pytest

from tornadoproxy.pool.pacing import backoff, cooldown_seconds, refresh_at, retry_after
from tornadoproxy.web.accounts_page import relative, render_accounts_page
from tornadoproxy.web.handlers.accounts import prefers_html


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(30, 300, n) for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]
    assert backoff(30, 300, 10_000) == 300  # no overflow however long the failures go on
    assert cooldown_seconds(7.5, 3, 30, 300) == 7.5  # what the upstream said wins
    assert cooldown_seconds(None, 3, 30, 300) == 120


def test_refresh_comes_before_expiry_but_never_before_halfway() -> None:
    assert refresh_at(expires_at=10_000, obtained_at=0, margin=3600) == 6400
    assert refresh_at(expires_at=100, obtained_at=0, margin=3600) == 50  # a short-lived token
    assert refresh_at(expires_at=100, obtained_at=0, margin=0) == 100


def test_retry_after_is_whole_seconds_and_bounded() -> None:
    assert retry_after(1030.2, 1000.0, 5, 2, 10.0, 60) == 31  # every candidate cools down
    assert retry_after(None, 0.0, 5, 2, 10.0, 60) == 30  # six ahead, two slots, 10 s each
    assert retry_after(None, 0.0, 500, 1, 10.0, 60) == 60  # never past the queue timeout
    assert retry_after(None, 0.0, 0, 4, 0.01, 60) == 1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (40, "in 40 s"),
        (-300, "5 min ago"),
        (3 * 3600, "in 3 h"),
        (10 * 86400, "in 10 days"),
        (-4e9, "127 years ago"),
    ],
)
def test_relative_times(seconds: float, text: str) -> None:
    assert relative(seconds) == text


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
        ("*/*", False),
        ("", False),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("text/*", True),
        ("text/html;q=0", False),
    ],
)
def test_who_gets_the_page(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_the_page_escapes_every_value() -> None:
    account = {
        "name": "<b>x</b>",
        "state": "ready",
        "in_flight": 0,
        "concurrency": 1,
        "token_expires_at": None,
        "cooldown_until": None,
        "proxy": None,
        "last_error": "<script>",
        "detail": "",
        "requests": {"ok": 2},
    }
    page = render_accounts_page({"queued": 0, "shared": "off", "accounts": [account]}, now=0)
    assert "<b>x</b>" not in page and "&lt;script&gt;" in page and "<script" not in page
    assert "ok 2" in page and "no accounts configured" not in page
    empty = render_accounts_page({"queued": 0, "shared": "off", "accounts": []}, now=0)
    assert "no accounts configured" in empty
