"""The shipped client profiles: three browsers on curl-impersonate targets, OkHttp and plain on pycurl.

Each browser profile pins one curl-impersonate target (its TLS ClientHello and HTTP/2 opening) and
lists, in that browser's own order, the headers its `fetch()` sends from a page of the upstream's
origin, with a User-Agent and client hints of the target's version. Upgrading a browser means
changing target, version and header lines together (and the fingerprint table of
tests/e2e/test_fingerprints.py); the README names the versions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tornadoproxy import __version__
from tornadoproxy.upstream.profiles import ClientProfile, supported_encodings

CHROME_VERSION = 152
FIREFOX_VERSION = 153
SAFARI_VERSION = "27.0"


def chrome_brands(major: int, brand: str = "Google Chrome") -> str:
    """`sec-ch-ua` as Chrome builds it: its brand, Chromium and a GREASE brand, whose characters,
    version and place all follow from the major version (Chromium's user-agent GREASE algorithm)."""
    grease_chars = [" ", "(", ":", "-", ".", "/", ")", ";", "=", "?", "_"]
    grease_versions = ["8", "99", "24"]
    grease = f"Not{grease_chars[major % 11]}A{grease_chars[(major + 1) % 11]}Brand"
    entries = [(grease, grease_versions[major % 3]), ("Chromium", str(major)), (brand, str(major))]
    orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    placed: list[tuple[str, str]] = [("", "")] * 3
    for entry, place in zip(entries, orders[major % 6], strict=True):
        placed[place] = entry
    return ", ".join(f'"{name}";v="{version}"' for name, version in placed)


def _accept_encoding(preferred: Iterable[str], engine: str = "pycurl") -> str:
    available = set(supported_encodings("curl_cffi" if engine == "curl_cffi" else "pycurl"))
    return ", ".join(coding for coding in preferred if coding in available)


_BROWSER_CODINGS = ("gzip", "deflate", "br", "zstd")


def chrome() -> ClientProfile:
    """Chrome on Windows; the order of a Chromium `fetch()` with credentials from the page's origin
    (captured from Debian's Chromium 156: Content-Length first, when there is a body)."""
    return ClientProfile(
        name="chrome",
        target=f"chrome{CHROME_VERSION}",
        # A real Chrome's fetch() asks for priority u=1 (HTTP/2 weight 220); curl-impersonate's
        # chrome targets send 256, the weight of a page navigation.
        stream_weight=220,
        headers=(
            ("content-length", None),
            ("sec-ch-ua-platform", '"Windows"'),
            ("authorization", None),
            (
                "user-agent",
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{CHROME_VERSION}.0.0.0 Safari/537.36",
            ),
            ("sec-ch-ua", chrome_brands(CHROME_VERSION)),
            ("content-type", None),
            ("sec-ch-ua-mobile", "?0"),
            ("accept", "*/*"),
            ("origin", "{origin}"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
            ("referer", "{origin}/"),
            ("accept-encoding", _accept_encoding(_BROWSER_CODINGS, "curl_cffi")),
            ("accept-language", "en-US,en;q=0.9"),
            ("priority", "u=1, i"),
        ),
    )


def firefox() -> ClientProfile:
    """Firefox ESR on Windows; the order of a Firefox `fetch()` from the page's origin (captured from
    Debian's firefox-esr 153: the page's own headers, then Content-Length)."""
    return ClientProfile(
        name="firefox",
        target=f"firefox{FIREFOX_VERSION}",
        headers=(
            (
                "user-agent",
                f"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{FIREFOX_VERSION}.0) Gecko/20100101 "
                f"Firefox/{FIREFOX_VERSION}.0",
            ),
            ("accept", "*/*"),
            ("accept-language", "en-US,en;q=0.5"),
            ("accept-encoding", _accept_encoding(_BROWSER_CODINGS, "curl_cffi")),
            ("referer", "{origin}/"),
            ("authorization", None),
            ("content-type", None),
            ("content-length", None),
            ("origin", "{origin}"),
            ("sec-fetch-dest", "empty"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-site", "same-origin"),
            ("priority", "u=4"),
            ("te", "trailers"),
        ),
    )


def safari() -> ClientProfile:
    """Safari on macOS; WebKit's `fetch()` order (no Safari runs on Debian to check it against)."""
    return ClientProfile(
        name="safari",
        target="safari" + SAFARI_VERSION.replace(".", ""),
        headers=(
            ("content-type", None),
            ("accept", "*/*"),
            ("authorization", None),
            ("sec-fetch-site", "same-origin"),
            ("origin", "{origin}"),
            ("sec-fetch-mode", "cors"),
            (
                "user-agent",
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                f"Version/{SAFARI_VERSION} Safari/605.1.15",
            ),
            ("referer", "{origin}/"),
            ("sec-fetch-dest", "empty"),
            ("accept-language", "en-US,en;q=0.9"),
            ("priority", "u=3, i"),
            ("accept-encoding", _accept_encoding(_BROWSER_CODINGS, "curl_cffi")),
        ),
    )


_ECDHE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA"
)


def okhttp() -> ClientProfile:
    """OkHttp 4 (Android apps): its headers, and its ConnectionSpec's ciphers and groups on stock
    libcurl. No curl-impersonate target exists for it; the README says how close this comes."""
    return ClientProfile(
        name="okhttp",
        headers=(
            ("Authorization", None),
            ("Content-Type", None),
            ("Accept", None),
            ("Connection", "Keep-Alive"),
            ("Accept-Encoding", _accept_encoding(("gzip",))),
            ("User-Agent", "okhttp/4.12.0"),
        ),
        http_version="2",
        ciphers=_ECDHE_CIPHERS,
        tls13_ciphers="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        curves="X25519:P-256:P-384",
    )


def plain() -> ClientProfile:
    """The gateway as itself, for APIs that expect a program (the Platform API)."""
    return ClientProfile(
        name="plain",
        headers=(
            ("User-Agent", f"tornadoproxy/{__version__}"),
            ("Accept", "*/*"),
            ("Accept-Encoding", _accept_encoding(("gzip", "deflate", "br"))),
        ),
    )


def builtin_profiles() -> dict[str, ClientProfile]:
    """The shipped profiles by name."""
    return {profile.name: profile for profile in (chrome(), firefox(), safari(), okhttp(), plain())}


def profile_registry(custom: Mapping[str, ClientProfile] = {}) -> dict[str, ClientProfile]:
    """Built-in profiles overlaid with the operator's own (same name replaces)."""
    return {**builtin_profiles(), **custom}
