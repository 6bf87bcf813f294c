"""Browser profiles on the wire: each shipped browser profile sends the published fingerprint of its
curl-impersonate target (JA4, JA3N, Akamai HTTP/2), its own header lines in order, a User-Agent of
the target's version; connections and TLS sessions are kept per profile. The loopback endpoint
(tests/tls_endpoint.py) speaks HTTP/2 when ALPN picks it and computes every fingerprint itself."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.egress_fixtures import fetch_through
from tests.fingerprints import ja3_string
from tests.harness import Simulator
from tests.tls_endpoint import TlsEndpoint, Visit, make_ca
from tornadoproxy.upstream.shipped_profiles import CHROME_VERSION, FIREFOX_VERSION, builtin_profiles


@dataclass(frozen=True)
class Published:
    target: str
    ja4: str
    ja3n: str
    akamai: str
    weight: int  # HTTP/2 priority weight of the request (HEADERS frame)
    ja3_varies: bool  # the browser permutes its TLS extensions on every connection


# The fingerprint of each target on a first connection to a host name (SNI), no session to resume.
# Sources: what curl-impersonate's definition of the target sends (libcurl-impersonate 8.23 in
# curl_cffi 0.17), checked against the real browser where Debian has it: test_real_browsers.py
# captures Debian's chromium and firefox-esr on the same endpoint (on 2026-12-01: Chromium 156 and
# Firefox ESR 153 had exactly these JA4 and Akamai strings, as issue 14's table records).
PUBLISHED = {
    # Chrome 152 (chrome152). The JA4 cipher part 8daaf6152771 is Chrome's since TLS 1.3 (FoxIO's JA4
    # README uses it for Chrome); the Akamai string is Chrome's since 117 (as tls.peet.ws shows it).
    # Weight 220: a fetch() at Chromium's MEDIUM priority (u=1); the target alone would send 256.
    "chrome": Published(
        target="chrome152",
        ja4="t13d1517h2_8daaf6152771_cb7bf5808d99",
        ja3n="bd4930bd9b000ee684830e44bab76fdf",
        akamai="1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p",
        weight=220,
        ja3_varies=True,
    ),
    # Firefox ESR 153 (firefox153), JA3 byte-equal to Debian's firefox-esr 153; Firefox sends the
    # RFC 7540 priority flag with weight 22 on its requests.
    "firefox": Published(
        target="firefox153",
        ja4="t13d1617h2_86a278354501_3cbfd9057e0d",
        ja3n="8099457c290ccfe8c6d958826c26b023",
        akamai="1:65536;2:0;4:131072;5:16384|12517377|0|m,p,a,s",
        weight=22,
        ja3_varies=False,
    ),
    # Safari 27 on macOS (safari270, the same as safari2601): SETTINGS 9:1 (no RFC 7540 priorities,
    # so no weight). No Safari runs on Debian to compare with.
    "safari": Published(
        target="safari270",
        ja4="t13d2013h2_a09f3c656075_7f0f34a4126d",
        ja3n="63eaa93caec132011d68ceb96955c1ee",
        akamai="2:0;3:100;4:2097152;9:1|10420225|0|m,s,a,p",
        weight=0,
        ja3_varies=False,
    ),
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca(tmp_path_factory.mktemp("tls"))


def open_endpoint(certificates: tuple[Path, Path, Path], keep_alive: bool = False) -> TlsEndpoint:
    return TlsEndpoint(certificates[1], certificates[2], http2=True, keep_alive=keep_alive)


@pytest.fixture
def endpoint(certificates: tuple[Path, Path, Path]) -> Iterator[TlsEndpoint]:
    server = open_endpoint(certificates)
    yield server
    server.close()


def config_for(endpoint: TlsEndpoint, ca: Path, **profiles: object) -> dict[str, object]:
    url = endpoint.named_url
    return {
        "upstreams": {"platform": url, "chatgpt": url, "auth": url, "platform_web": url},
        "fetch": {"ca_file": str(ca), "max_clients": 1},
        "profiles": profiles,
    }


def wanted_names(name: str) -> list[str]:
    """The header names the profile sends for a request carrying Authorization, in its order."""
    lines = builtin_profiles()[name].header_lines([("Authorization", "Bearer x")], "https://localhost")
    return [line.split(b":")[0].decode().lower() for line in lines if not line.endswith(b":")]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_browser_profile_sends_its_targets_published_fingerprint(
    name: str, sim: Simulator, endpoint: TlsEndpoint, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    published = PUBLISHED[name]
    profile = builtin_profiles()[name]
    assert profile.engine == "curl_cffi" and profile.target == published.target
    config = config_for(endpoint, certificates[0], chatgpt=name, auth=name)
    outcomes, _ = fetch_through(sim, tmp_path, config, [("chatgpt", "/backend-api/me")] * 3)
    assert [o.status for o in outcomes] == [200] * 3, [o.error for o in outcomes]
    first, *later = endpoint.visits
    assert first.alpn == "h2" and not first.resumed and first.hello.server_name == "localhost"
    assert (first.ja4, first.ja3n, first.akamai) == (published.ja4, published.ja3n, published.akamai)
    for visit in [first, *later]:
        (sent,) = visit.requests
        assert sent.weight == published.weight, (name, sent.weight)
        assert sent.header_names == wanted_names(name), (name, sent.header_names)
        assert sent.headers["authorization"] == "Bearer egress-test"
        assert visit.akamai == published.akamai  # HTTP/2 is the same on a resumed connection
    # Chrome permutes its extensions on every connection (JA3 varies, JA3N does not); others do not.
    # Compared between the two resumed connections: resuming adds the pre_shared_key extension.
    assert all(visit.resumed for visit in later)
    ja3s = {visit.ja3 for visit in later}
    assert (len(ja3s) > 1) == published.ja3_varies, ja3s


def test_user_agent_and_client_hints_say_the_targets_version() -> None:
    chrome, firefox = builtin_profiles()["chrome"], builtin_profiles()["firefox"]
    assert CHROME_VERSION >= 150 and chrome.target == f"chrome{CHROME_VERSION}"
    headers = dict(chrome.headers)
    assert f"Chrome/{CHROME_VERSION}.0.0.0 " in chrome.user_agent
    # Chromium's own GREASE brand for 152, as curl-impersonate's chrome152 sends it.
    assert headers["sec-ch-ua"] == '"Chromium";v="152", "Not?A_Brand";v="24", "Google Chrome";v="152"'
    assert (
        firefox.target == f"firefox{FIREFOX_VERSION}" and f"Firefox/{FIREFOX_VERSION}.0" in firefox.user_agent
    )


def first_headers(visit: Visit) -> dict[str, str]:
    return visit.requests[0].headers


def test_connections_and_tls_sessions_are_kept_per_profile(
    sim: Simulator, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ca = certificates[0]
    german = {"base": "chrome", "headers": [_german(line) for line in _lines("chrome")]}
    calls = [("chatgpt", "/backend-api/me"), ("auth", "/api/accounts/x"), ("platform", "/v1/models")] * 2
    # Connections kept open: each profile reuses its own connection and never another's.
    reused = open_endpoint(certificates, keep_alive=True)
    try:
        config = config_for(
            reused, ca, chatgpt="chrome", auth="german", platform="plain", custom={"german": german}
        )
        outcomes, _ = fetch_through(sim, tmp_path, config, calls)
        assert [o.status for o in outcomes] == [200] * 6, [o.error for o in outcomes]
        assert len(reused.visits) == 3, [len(v.requests) for v in reused.visits]
        for visit in reused.visits:
            assert len(visit.requests) == 2
            assert (
                len({(r.headers.get("user-agent"), r.headers.get("accept-language")) for r in visit.requests})
                == 1
            )
    finally:
        reused.close()
    # Each connection closed after one answer: a profile resumes its own TLS session only.
    closing = open_endpoint(certificates)
    try:
        outcomes, _ = fetch_through(sim, tmp_path, config_for(closing, ca, **_profiles(german)), calls)
        assert [o.status for o in outcomes] == [200] * 6, [o.error for o in outcomes]
        firsts, seconds = closing.visits[:3], closing.visits[3:]
        assert [v.resumed for v in firsts] == [False] * 3  # no profile offers another's session
        assert not any(41 in v.hello.extensions for v in firsts)
        assert [v.resumed for v in seconds] == [True] * 3
        for before, again in zip(firsts, seconds, strict=True):
            assert first_headers(before) == first_headers(again)
            assert again.akamai == before.akamai
    finally:
        closing.close()


def _lines(name: str) -> list[str]:
    profile = builtin_profiles()[name]
    return [f"{header}: {value}" if value is not None else f"{header}:" for header, value in profile.headers]


def _german(line: str) -> str:
    return "accept-language: de-DE,de;q=0.9" if line.startswith("accept-language") else line


def _profiles(german: object) -> dict[str, object]:
    return {"chatgpt": "chrome", "auth": "german", "platform": "plain", "custom": {"german": german}}


# Firefox 153's JA3 and Akamai strings, as its target sends them (measured on this endpoint).
FIREFOX_JA3 = (
    "771,4865-4867-4866-49195-49199-52393-52392-49196-49200-49162-49171-49172-156-157-47-53,"
    "0-23-65281-10-11-35-16-5-34-18-51-43-13-45-28-27-65037,4588-29-23-24-25-256-257,0"
)


def test_a_profile_given_as_ja3_and_akamai_strings_sends_them(
    sim: Simulator, endpoint: TlsEndpoint, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    strings = {"base": "firefox", "ja3": FIREFOX_JA3, "akamai": PUBLISHED["firefox"].akamai}
    custom = {"strings": strings}
    config = config_for(endpoint, certificates[0], chatgpt="strings", auth="strings", custom=custom)
    outcomes, _ = fetch_through(sim, tmp_path, config, [("chatgpt", "/backend-api/me")])
    assert outcomes[0].status == 200, outcomes[0].error
    (visit,) = endpoint.visits
    assert ja3_string(visit.hello) == FIREFOX_JA3
    assert visit.akamai == PUBLISHED["firefox"].akamai
    assert visit.requests[0].header_names == wanted_names("firefox")


# The headers of a page's fetch() POST with Authorization and a JSON body, as Debian's Chromium 156 and
# firefox-esr 153 sent them to this endpoint (test_real_browsers.py compares with the installed ones).
BROWSER_POSTS = {
    "chrome": "content-length sec-ch-ua-platform authorization user-agent sec-ch-ua content-type "
    "sec-ch-ua-mobile accept origin sec-fetch-site sec-fetch-mode sec-fetch-dest referer accept-encoding "
    "accept-language priority",
    "firefox": "user-agent accept accept-language accept-encoding referer authorization content-type "
    "content-length origin sec-fetch-dest sec-fetch-mode sec-fetch-site priority te",
}


@pytest.mark.parametrize("name", sorted(BROWSER_POSTS))
def test_a_post_puts_content_length_where_the_browser_does(
    name: str, sim: Simulator, endpoint: TlsEndpoint, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    config = config_for(endpoint, certificates[0], chatgpt=name, auth=name)
    headers = [("Authorization", "Bearer x"), ("Content-Type", "application/json")]
    calls = [("chatgpt", "/backend-api/conversation")] * 2  # the second on the reused handle
    outcomes, _ = fetch_through(sim, tmp_path, config, calls, body=b'{"hello":"world"}', headers=headers)
    assert [o.status for o in outcomes] == [200, 200], [o.error for o in outcomes]
    for visit in endpoint.visits:
        (sent,) = visit.requests
        assert sent.method == "POST" and sent.header_names == BROWSER_POSTS[name].split()
        assert sent.headers["content-length"] == "17"
