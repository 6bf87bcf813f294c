"""Client profiles ("HTTP impersonation") as data: header set and order, HTTP version, TLS knobs.

A profile fixes what stock libcurl lets us fix: the User-Agent and every header with its position,
Accept-Encoding (decoded by libcurl), the HTTP version, and the TLS cipher list, TLS 1.3 suites,
curves, signature algorithms, ALPN and minimum version. It cannot fix the order of TLS extensions,
GREASE values or HTTP/2 SETTINGS and window sizes: stock libcurl (OpenSSL) offers no knob for them.
`ClientProfile.curl_options()` is complete (defaults included) so a reused handle keeps nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pycurl

from tornadoproxy import __version__

CurlOption = tuple[int, Any]
HttpVersion = Literal["1.1", "2"]
TlsVersion = Literal["1.2", "1.3"]

# libcurl's default TLS 1.3 suites; pycurl cannot reset TLS13_CIPHERS to "unset".
OPENSSL_TLS13_DEFAULT = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

_HTTP_VERSIONS = {"1.1": pycurl.CURL_HTTP_VERSION_1_1, "2": pycurl.CURL_HTTP_VERSION_2TLS}
_TLS_VERSIONS = {"1.2": pycurl.SSLVERSION_TLSv1_2, "1.3": pycurl.SSLVERSION_TLSv1_3}

# Headers curl (or tornado: User-Agent) adds on its own unless the list names them; an empty
# "Name:" line suppresses one, so a profile sends exactly the headers it lists.
_CURL_DEFAULTS = ("user-agent", "accept", "accept-encoding", "content-type", "expect")


def supported_encodings() -> tuple[str, ...]:
    """Content codings the running libcurl can decode; a profile never advertises any other."""
    features = pycurl.version_info()[4]
    found = []
    if features & pycurl.VERSION_LIBZ:
        found += ["gzip", "deflate"]
    if features & pycurl.VERSION_BROTLI:
        found.append("br")
    if features & pycurl.VERSION_ZSTD:
        found.append("zstd")
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """A named client profile. In `headers`, a None value is a slot: the position a header from the
    request takes (Authorization, Content-Type ...); it is sent only when the request has it.
    `{origin}` in a value stands for the upstream's scheme://host."""

    name: str
    headers: tuple[tuple[str, str | None], ...]
    http_version: HttpVersion = "1.1"
    ciphers: str = ""
    tls13_ciphers: str = ""
    curves: str = ""
    signature_algorithms: str = ""
    alpn: bool = True
    min_tls: TlsVersion = "1.2"
    _lowered: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lowered", tuple(name.lower() for name, _ in self.headers))

    @property
    def user_agent(self) -> str:
        for (_, value), lowered in zip(self.headers, self._lowered, strict=True):
            if lowered == "user-agent" and value is not None:
                return value
        return ""

    def header_lines(self, request_headers: Sequence[tuple[str, str]], origin: str) -> list[bytes]:
        """The request's headers merged into this profile's set and order, encoded for HTTPHEADER.

        A request header replaces the profile's value at the profile's position; headers the profile
        does not name follow in request order. `request_headers` must be free of CR/LF.
        """
        wanted = {name.lower(): (name, value) for name, value in request_headers}
        lines = []
        for (name, value), lowered in zip(self.headers, self._lowered, strict=True):
            supplied = wanted.pop(lowered, None)
            if supplied is not None:
                lines.append(f"{name}: {supplied[1]}")
            elif value is not None:
                lines.append(f"{name}: {value.replace('{origin}', origin)}")
        lines.extend(f"{name}: {value}" for name, value in wanted.values())
        sent = {line.split(":", 1)[0].lower() for line in lines}
        lines.extend(f"{name.title()}:" for name in _CURL_DEFAULTS if name not in sent)
        return [line.encode("latin-1") for line in lines]

    def curl_options(self) -> tuple[CurlOption, ...]:
        """Every option this profile owns, each set to the profile's value or to libcurl's default."""
        return (
            (pycurl.HTTP_VERSION, _HTTP_VERSIONS[self.http_version]),
            (pycurl.SSL_CIPHER_LIST, self.ciphers or None),
            (pycurl.TLS13_CIPHERS, self.tls13_ciphers or OPENSSL_TLS13_DEFAULT),
            (pycurl.SSL_EC_CURVES, self.curves or None),
            (pycurl.SSL_SIGNATURE_ALGORITHMS, self.signature_algorithms or None),
            (pycurl.SSL_ENABLE_ALPN, 1 if self.alpn else 0),
            (pycurl.SSLVERSION, _TLS_VERSIONS[self.min_tls] | pycurl.SSLVERSION_MAX_DEFAULT),
            # "" = accept and decode every coding this libcurl supports; the header says which.
            (pycurl.ACCEPT_ENCODING, ""),
        )


def _accept_encoding(preferred: Iterable[str]) -> str:
    available = set(supported_encodings())
    return ", ".join(coding for coding in preferred if coding in available)


_CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
_FIREFOX_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"

_ECDHE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA"
)


def builtin_profiles() -> dict[str, ClientProfile]:
    """The shipped profiles: Chrome 131 and Firefox 133 on Windows, OkHttp 4 (Android), plain."""
    chrome = ClientProfile(
        name="chrome",
        headers=(
            ("sec-ch-ua", '"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"'),
            ("sec-ch-ua-mobile", "?0"),
            ("authorization", None),
            ("user-agent", _CHROME_UA),
            ("content-type", None),
            ("accept", "*/*"),
            ("sec-ch-ua-platform", '"Windows"'),
            ("origin", "{origin}"),
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
            ("referer", "{origin}/"),
            ("accept-encoding", _accept_encoding(("gzip", "deflate", "br", "zstd"))),
            ("accept-language", "en-US,en;q=0.9"),
            ("priority", "u=1, i"),
        ),
        http_version="2",
        ciphers=_ECDHE_CIPHERS,
        tls13_ciphers="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256",
        curves="X25519MLKEM768:X25519:P-256:P-384",
        signature_algorithms=(
            "ecdsa_secp256r1_sha256:rsa_pss_rsae_sha256:rsa_pkcs1_sha256:ecdsa_secp384r1_sha384:"
            "rsa_pss_rsae_sha384:rsa_pkcs1_sha384:rsa_pss_rsae_sha512:rsa_pkcs1_sha512"
        ),
    )
    firefox = ClientProfile(
        name="firefox",
        headers=(
            ("User-Agent", _FIREFOX_UA),
            ("Accept", "*/*"),
            ("Accept-Language", "en-US,en;q=0.5"),
            ("Accept-Encoding", _accept_encoding(("gzip", "deflate", "br", "zstd"))),
            ("Referer", "{origin}/"),
            ("Content-Type", None),
            ("Authorization", None),
            ("Origin", "{origin}"),
            ("Sec-Fetch-Dest", "empty"),
            ("Sec-Fetch-Mode", "cors"),
            ("Sec-Fetch-Site", "same-origin"),
            ("Priority", "u=4"),
        ),
        http_version="2",
        ciphers=(
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
            "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
            "ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:"
            "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA:AES256-SHA"
        ),
        tls13_ciphers="TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
        curves="X25519MLKEM768:X25519:P-256:P-384:P-521:ffdhe2048:ffdhe3072",
        signature_algorithms=(
            "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512:"
            "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:rsa_pkcs1_sha256:"
            "rsa_pkcs1_sha384:rsa_pkcs1_sha512"
        ),
    )
    okhttp = ClientProfile(
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
    plain = ClientProfile(
        name="plain",
        headers=(
            ("User-Agent", f"tornadoproxy/{__version__}"),
            ("Accept", "*/*"),
            ("Accept-Encoding", _accept_encoding(("gzip", "deflate", "br"))),
        ),
    )
    return {profile.name: profile for profile in (chrome, firefox, okhttp, plain)}


def profile_registry(custom: Mapping[str, ClientProfile] = {}) -> dict[str, ClientProfile]:
    """Built-in profiles overlaid with the operator's own (same name replaces)."""
    return {**builtin_profiles(), **custom}


def parse_header_lines(lines: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    """Configured header lines ("Name: value", or "Name:" for a slot) as profile headers."""
    parsed: list[tuple[str, str | None]] = []
    for line in lines:
        name, _, value = line.partition(":")
        parsed.append((name.strip(), value.strip() or None))
    return tuple(parsed)


def derive_profile(name: str, base: ClientProfile | None, changes: Mapping[str, Any]) -> ClientProfile:
    """A profile called `name`: `base` (or an empty plain profile) with the given fields replaced.
    `changes` holds ClientProfile field names; `headers` as configured lines."""
    start = base or ClientProfile(name=name, headers=())
    fields = dict(changes)
    if "headers" in fields:
        fields["headers"] = parse_header_lines(fields["headers"])
    return dataclasses.replace(start, name=name, **fields)


def profile_problem(profile: ClientProfile) -> str | None:
    """What is inconsistent in a profile (checked at start-up), or None."""
    if profile.http_version == "2" and not profile.alpn:
        return "http_version 2 needs alpn: true (HTTP/2 over TLS is chosen through ALPN)"
    for (name, value), lowered in zip(profile.headers, profile._lowered, strict=True):
        if lowered != "accept-encoding" or value is None:
            continue
        available = supported_encodings()
        for coding in value.split(","):
            coding = coding.split(";")[0].strip().lower()
            if coding not in available and coding not in ("identity", "*", ""):
                return (
                    f"{name} names {coding!r}, which this libcurl cannot decode "
                    f"(it decodes {', '.join(available)})"
                )
    return None
