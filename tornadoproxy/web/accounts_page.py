"""The account pool's status page: the `/accounts` document as one HTML table a person reads at a
glance (states coloured, times as "in 3 h"). Self-contained: inline CSS, no script, no external
asset; it reloads itself every 10 seconds. Every value is escaped (names are the operator's own).
"""

from __future__ import annotations

import html
import time
from datetime import datetime
from typing import Any

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1d2430;background:#fafbfc}
h1{font-size:20px;margin:0 0 .3em}
.summary{color:#56606e;margin:0 0 1em}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.45em .8em;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.state{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600;color:#fff}
.ready{background:#1a7f37}.busy{background:#0969da}.cooling{background:#bf8700}
.logging_in{background:#8250df}.invalid{background:#cf222e}
.detail{color:#56606e;font-size:12px}
.empty{color:#56606e;font-style:italic}
"""
_COLUMNS = ("Account", "State", "In flight", "Token expires", "Cool-down ends", "Proxy", "Last error")


def render_accounts_page(report: dict[str, Any], now: float | None = None) -> str:
    """The page for a `pool_report()` document."""
    now = time.time() if now is None else now
    rows = "".join(_row(account, now) for account in report["accounts"])
    if not rows:
        rows = f'<tr><td colspan="{len(_COLUMNS) + 1}" class="empty">no accounts configured</td></tr>'
    head = "".join(f"<th>{name}</th>" for name in (*_COLUMNS, "Requests"))
    shared = {
        "redis": "shared through Redis",
        "unavailable": "Redis unreachable: own slots",
        "off": "this process",
    }
    summary = (
        f'<span id="queued">{int(report["queued"])}</span> waiting · slots: '
        f"{_e(shared.get(report['shared'], report['shared']))} · as of "
        f"{time.strftime('%H:%M:%S UTC', time.gmtime(now))}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="10"><meta name="viewport" content="width=device-width">'
        f"<title>tornadoproxy accounts</title><style>{_STYLE}</style></head><body>"
        f'<h1>Accounts</h1><p class="summary">{summary}</p>'
        f'<table id="accounts"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        "</body></html>"
    )


def _row(account: dict[str, Any], now: float) -> str:
    state = str(account["state"])
    detail = f'<div class="detail">{_e(account["detail"])}</div>' if account.get("detail") else ""
    cells = [
        f'<td class="name">{_e(account["name"])}</td>',
        f'<td><span class="state {_e(state)}">{_e(state.replace("_", " "))}</span>{detail}</td>',
        f'<td class="num">{int(account["in_flight"])} / {int(account["concurrency"])}</td>',
        f"<td>{_moment(account['token_expires_at'], now, 'none')}</td>",
        f"<td>{_moment(account['cooldown_until'], now, '—')}</td>",
        f"<td>{_e(account['proxy'] or 'not bound yet')}</td>",
        f"<td>{_e(account['last_error'] or '—')}</td>",
        f"<td>{_requests(account['requests'])}</td>",
    ]
    return f'<tr data-account="{_e(account["name"])}" data-state="{_e(state)}">{"".join(cells)}</tr>'


def _moment(iso: str | None, now: float, missing: str) -> str:
    if iso is None:
        return _e(missing)
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return f'<time datetime="{_e(iso)}" title="{_e(iso)}">{_e(relative(moment - now))}</time>'


def relative(seconds: float) -> str:
    """ "in 3 h", "in 12 min", "in 40 s", "5 min ago"."""
    size = abs(seconds)
    if size < 90:
        amount = f"{size:.0f} s"
    elif size < 90 * 60:
        amount = f"{size / 60:.0f} min"
    elif size < 48 * 3600:
        amount = f"{size / 3600:.0f} h"
    elif size < 730 * 86400:
        amount = f"{size / 86400:.0f} days"
    else:
        amount = f"{size / (365.25 * 86400):.0f} years"
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def _requests(counts: dict[str, int]) -> str:
    shown = [f"{_e(outcome)} {int(count)}" for outcome, count in counts.items() if count]
    return " · ".join(shown) if shown else '<span class="empty">none yet</span>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
