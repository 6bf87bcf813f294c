"""What operators see of the pool through a real gateway: GET /accounts (JSON, or the page in a real
headless Chromium), who may ask for it on which listener, the pool in /readyz and /metrics, and that
none of it (nor the log) ever shows a token, a password, an e-mail address or a proxy credential."""

from __future__ import annotations

import re
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import pytest

from tests.harness import Gateway, Simulator, free_port, request, wait_for
from tests.pool_fixtures import jwt
from tests.secrets_used import ACCESS_TOKEN, CLIENT_KEY, LOGIN_PASSWORD, PROXY_PASSWORD
from tornadoproxy.web.access import key_digest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPIRED = jwt(ttl=-3600, note="expired-pool-token")


class Status:
    def __init__(self, gateway: Gateway, ops: str, email: str) -> None:
        self.gateway, self.ops, self.email = gateway, ops, email

    def report(self) -> dict[str, Any]:
        return dict(request("GET", self.ops + "/accounts").json())


@pytest.fixture
def status(make_gateway: Any, sim: Simulator) -> Status:
    email = f"alice+{uuid.uuid4().hex[:8]}@example.com"
    sim.add_account(email, LOGIN_PASSWORD)
    ops = free_port()
    dead_proxy = f"socks5h://pool-user:{quote(PROXY_PASSWORD)}@127.0.0.1:{free_port()}"
    accounts = [
        {"name": "alice", "username": email, "password": LOGIN_PASSWORD},
        {"name": "bob", "access_token": ACCESS_TOKEN, "proxy": dead_proxy, "concurrency": 2},
        {"name": "carol", "access_token": EXPIRED},
    ]
    gw = make_gateway(
        {
            "accounts": accounts,
            "server": {"ops_port": ops},
            "access": {"client_keys": [key_digest(CLIENT_KEY)]},
            "tokens": {"kdf_cost": 10},
        },
        ready=False,
    )
    gw.wait_ready(headers={"X-Gateway-Key": CLIENT_KEY})
    result = Status(gw, f"http://127.0.0.1:{ops}", email)
    wait_for(lambda: result.report()["accounts"][0]["state"] == "ready", what="alice's login")
    return result


def quote(text: str) -> str:
    return url_quote(text, safe="")


def test_accounts_report_the_pool_in_the_documented_shape(status: Status) -> None:
    report = status.report()
    assert set(report) == {"queued", "shared", "accounts"} and report["queued"] == 0
    by_name = {account["name"]: account for account in report["accounts"]}
    assert list(by_name) == ["alice", "bob", "carol"]
    keys = {
        "name", "state", "in_flight", "concurrency", "token_expires_at", "cooldown_until", "proxy",
        "last_error", "detail", "requests",
    }  # fmt: skip
    assert all(set(account) == keys for account in by_name.values())
    alice, bob, carol = by_name["alice"], by_name["bob"], by_name["carol"]
    assert alice["state"] == "ready" and alice["proxy"] == "direct" and alice["in_flight"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", alice["token_expires_at"])
    assert bob["state"] == "ready" and bob["concurrency"] == 2 and bob["token_expires_at"].startswith("2100-")
    assert bob["proxy"].startswith("socks5h://***@127.0.0.1:")
    assert carol["state"] == "invalid" and "access_token expired" in carol["detail"]
    assert carol["requests"] == dict.fromkeys(
        ("ok", "rate_limited", "challenge", "blocked", "unauthorized", "transport", "aborted"), 0
    )
    ready = request("GET", status.gateway.url + "/readyz", headers={"X-Gateway-Key": CLIENT_KEY}).json()
    assert ready["pool"]["accounts"] == {"ready": 2, "busy": 0, "cooling": 0, "logging_in": 0, "invalid": 1}


def test_the_main_listener_shows_accounts_only_with_a_client_key(status: Status, gateway: Gateway) -> None:
    url = status.gateway.url + "/accounts"
    assert request("GET", url).json()["error"]["code"] == "gateway_key_required"
    assert request("GET", url, headers={"X-Gateway-Key": "wrong"}).status == 401
    assert request("GET", url, headers={"X-Gateway-Key": CLIENT_KEY}).status == 200
    as_bearer = request("GET", url, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert as_bearer.status == 200 and as_bearer.json()["accounts"][0]["name"] == "alice"
    # A gateway without client keys shows its accounts on the ops listener only.
    refused = request("GET", gateway.url + "/accounts")
    assert refused.status == 403 and refused.json()["error"]["code"] == "accounts_forbidden"


def test_browsers_get_the_page(status: Status) -> None:
    page = request("GET", status.ops + "/accounts", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status == 200 and (page.header("Content-Type") or "").startswith("text/html")
    assert "default-src 'none'" in (page.header("Content-Security-Policy") or "")
    assert b"<script" not in page.body and b"http" not in page.body.split(b"<body>")[1]
    assert request("GET", status.ops + "/accounts.html").body.startswith(b"<!DOCTYPE html>")
    assert request("GET", status.ops + "/accounts", headers={"Accept": "*/*"}).body.startswith(b"{")


def test_no_secret_in_accounts_metrics_readiness_or_the_log(status: Status, sim: Simulator) -> None:
    ops, main = status.ops, status.gateway.url
    key = {"X-Gateway-Key": CLIENT_KEY}
    bodies = [
        request("GET", ops + "/accounts").body,
        request("GET", ops + "/accounts.html").body,
        request("GET", main + "/accounts", headers=key).body,
        request("GET", ops + "/metrics").body,
        request("GET", ops + "/readyz").body,
    ]
    issued = sim.issued_tokens()
    assert issued  # alice's token, which the pool holds
    secrets = [LOGIN_PASSWORD, status.email, ACCESS_TOKEN, EXPIRED, PROXY_PASSWORD, quote(PROXY_PASSWORD)]
    secrets += [CLIENT_KEY, "pool-user", *issued]
    text = b"\n".join(bodies).decode() + status.gateway.log_text()
    leaked = [secret[:8] for secret in secrets if secret in text]
    assert not leaked, leaked
    assert 'tornadoproxy_pool_account_state{account="alice",state="ready"} 1.0' in bodies[3].decode()


class _Table(HTMLParser):
    """The rows of table#accounts in a DOM dump: (data-account, data-state, cell texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, list[str]]] = []
        self._cells: list[str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and "data-account" in found:
            self.rows.append((found["data-account"] or "", found["data-state"] or "", []))
            self._cells = self.rows[-1][2]
        elif tag == "td":
            self._text = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cells is not None:
            self._cells.append(self._text.strip())
        elif tag == "tr":
            self._cells = None

    def handle_data(self, data: str) -> None:
        self._text += data


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"chromium-profile-{uuid.uuid4().hex[:6]}"
    command = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_page_in_headless_chromium(status: Status, tmp_path: Path) -> None:
    url = status.ops + "/accounts.html"
    dumped = chromium(tmp_path, "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    table = _Table()
    table.feed(dumped.stdout)
    rows = {name: (state, cells) for name, state, cells in table.rows}
    assert {name: state for name, (state, _) in rows.items()} == {
        "alice": "ready",
        "bob": "ready",
        "carol": "invalid",
    }
    alice = rows["alice"][1]
    assert alice[0] == "alice" and alice[1].startswith("ready") and alice[2] == "0 / 1"
    assert re.fullmatch(r"in \d+ days", alice[3]), alice[3]  # the simulator's tokens live 10 days
    assert "expired" in rows["carol"][1][1] and rows["carol"][1][3].endswith("ago")
    assert "socks5h://***@127.0.0.1:" in rows["bob"][1][5]
    screenshot = tmp_path / "accounts.png"  # kept with the test's artifacts (pytest's tmp_path)
    taken = chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,420", url)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 5000
