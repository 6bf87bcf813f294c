"""The real browsers Debian ships, captured on the same endpoint as our profiles: has a shipped
profile fallen behind the browser it imitates?

Debian's `chromium` and `firefox-esr` (installed by scripts/test) load a page from the loopback TLS
endpoint, headless, and `fetch()` a POST with credentials from it. Their JA4, where they put GREASE,
Akamai string and header order are compared with what the `chrome` and `firefox` profiles send
through the fetcher.
A difference is reported as an expected failure naming every field that differs, not as a red
run: Debian updates its browsers on its own schedule, and a new browser version is a reason to
upgrade a profile deliberately (shipped_profiles.py), not a broken build. A browser that cannot
be captured at all is a real failure. Neither browser is allowed off loopback: both are pointed at
a proxy on a closed loopback port for everything but the endpoint, with background services off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.egress_fixtures import fetch_through
from tests.fingerprints import grease_places
from tests.harness import Simulator
from tests.proxies import closed_port
from tests.tls_endpoint import Request, TlsEndpoint, Visit, make_ca

PAGE = """<!doctype html><title>probe</title><script>
fetch("/probe", {method: "POST", headers: {"Authorization": "Bearer x", "Content-Type": "application/json"},
                 body: JSON.stringify({"hello": "world"})}).then(r => r.text()).then(t => document.title = t);
</script>"""
FIREFOX_PREFS = {
    # Everything but localhost through a closed loopback port: nothing leaves the machine.
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.no_proxies_on": "localhost",
    "network.proxy.allow_hijacking_localhost": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "app.update.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "extensions.update.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def endpoint(certificates: tuple[Path, Path, Path]) -> Iterator[TlsEndpoint]:
    server = TlsEndpoint(certificates[1], certificates[2], http2=True, keep_alive=True, page=PAGE)
    yield server
    server.close()


def chromium(url: str, profile: Path, _ca: Path, proxy_port: int) -> list[str]:
    return [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--ignore-certificate-errors",
        f"--proxy-server=127.0.0.1:{proxy_port}", f"--user-data-dir={profile}", url,
    ]  # fmt: skip


def firefox(url: str, profile: Path, ca: Path, proxy_port: int) -> list[str]:
    profile.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{profile}", "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-n", "tp-test-ca", "-t", "C,,", "-i", str(ca), "-d", f"sql:{profile}"], check=True
    )
    prefs = {**FIREFOX_PREFS, "network.proxy.http_port": proxy_port, "network.proxy.ssl_port": proxy_port}
    lines = [f"user_pref({_js(name)}, {_js(value)});" for name, value in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    return ["firefox-esr", "--headless", "--no-remote", "--profile", str(profile), url]


def _js(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else f'"{value}"'


BROWSERS = {"chrome": ("chromium", chromium), "firefox": ("firefox-esr", firefox)}


def capture(endpoint: TlsEndpoint, command: list[str], tmp_path: Path) -> tuple[Visit, Request]:
    """Run the browser until its fetch() reached the endpoint; the visit that carried it."""
    log = open(tmp_path / "browser.log", "wb")
    browser = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for visit in list(endpoint.visits):
                for request in list(visit.requests):
                    if request.path == "/probe":
                        return visit, request
            if browser.poll() is not None:
                break
            time.sleep(0.1)  # polling the endpoint's record with a deadline
        raise AssertionError(
            f"the browser never fetched /probe: {(tmp_path / 'browser.log').read_text()[-2000:]}"
        )
    finally:
        os.killpg(browser.pid, signal.SIGKILL)  # the browser's own process group, which we started
        browser.wait(10)
        log.close()


def ours(name: str, endpoint: TlsEndpoint, ca: Path, sim: Simulator, tmp_path: Path) -> Visit:
    url = endpoint.named_url
    config = {
        "upstreams": {"platform": url, "chatgpt": url, "auth": url, "platform_web": url},
        "fetch": {"ca_file": str(ca), "max_clients": 1},
        "profiles": {"chatgpt": name, "auth": name},
    }
    before = len(endpoint.visits)
    headers = [("Authorization", "Bearer x"), ("Content-Type", "application/json")]
    calls = [("chatgpt", "/probe")]
    outcomes, _ = fetch_through(sim, tmp_path, config, calls, body=b'{"hello":"world"}', headers=headers)
    assert outcomes[0].status == 200, outcomes[0].error
    return endpoint.visits[before]


@pytest.mark.parametrize("name", sorted(BROWSERS))
def test_shipped_profile_against_the_real_browser(
    name: str, sim: Simulator, endpoint: TlsEndpoint, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    program, command = BROWSERS[name]
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (scripts/test installs it from Debian)")
    version = subprocess.run([program, "--version"], capture_output=True, text=True).stdout.strip()
    real, fetched = capture(
        endpoint,
        command(endpoint.named_url + "/", tmp_path / "profile", certificates[0], closed_port()),
        tmp_path,
    )
    mine = ours(name, endpoint, certificates[0], sim, tmp_path)
    differences = []
    if real.ja4 != mine.ja4:
        differences.append(f"JA4 {real.ja4} (ours {mine.ja4})")
    theirs, ours_ = ", ".join(grease_places(real.hello)), ", ".join(grease_places(mine.hello))
    if theirs != ours_:
        differences.append(f"GREASE in {theirs} (ours in {ours_})")
    if real.akamai != mine.akamai:
        differences.append(f"HTTP/2 {real.akamai} (ours {mine.akamai})")
    sent = mine.requests[0].header_names  # the same POST as the page's fetch()
    if sent != fetched.header_names:
        differences.append(f"headers {', '.join(fetched.header_names)} (ours {', '.join(sent)})")
    if differences:
        pytest.xfail(f"the {name} profile has fallen behind {version}: " + "; ".join(differences))
