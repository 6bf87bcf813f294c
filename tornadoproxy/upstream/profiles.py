"""Client profiles ("HTTP impersonation") as data: header set and order, and how TLS and HTTP/2 look.

A profile runs on one of two libcurl engines, chosen by the profile alone (`engine`):
- `curl_cffi` (curl-impersonate on BoringSSL) when it names an impersonation `target` or gives a
  `ja3` (+ `akamai`) string: the browser's own ClientHello (GREASE, extension order and permutation,
  ALPS, certificate compression, ECH) and HTTP/2 opening (SETTINGS, window update, priority,
  pseudo-header order). Our header lines still say what is sent, in our order.
- `pycurl` (stock libcurl on OpenSSL) otherwise: the cipher list, TLS 1.3 suites, curves, signature
  algorithms, ALPN and minimum version can be set; extension order, GREASE and HTTP/2 SETTINGS cannot.
`pycurl_options()` is complete (defaults included) so a reused handle keeps nothing. The shipped
profiles are in shipped_profiles.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pycurl

CurlOption = tuple[int, Any]
HttpVersion = Literal["1.1", "2"]
TlsVersion = Literal["1.2", "1.3"]
Engine = Literal["pycurl", "curl_cffi"]

# libcurl's default TLS 1.3 suites; pycurl cannot reset TLS13_CIPHERS to "unset".
OPENSSL_TLS13_DEFAULT = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

_HTTP_VERSIONS = {"1.1": pycurl.CURL_HTTP_VERSION_1_1, "2": pycurl.CURL_HTTP_VERSION_2TLS}
_TLS_VERSIONS = {"1.2": pycurl.SSLVERSION_TLSv1_2, "1.3": pycurl.SSLVERSION_TLSv1_3}
# TLS knobs a pycurl build may lack (Debian's libcurl 7.88 has no SSL_SIGNATURE_ALGORITHMS, and
# pycurl then has no constant): (profile field, pycurl constant name). A profile that sets one the
# running pycurl lacks is refused at start-up; one that leaves it empty does not need it.
_OPTIONAL_TLS_KNOBS = (
    ("tls13_ciphers", "TLS13_CIPHERS"),
    ("curves", "SSL_EC_CURVES"),
    ("signature_algorithms", "SSL_SIGNATURE_ALGORITHMS"),
)
# The pycurl-only TLS fields: a profile on the curl_cffi engine takes all of them from its target.
PYCURL_TLS_FIELDS = (
    "http_version",
    "ciphers",
    "tls13_ciphers",
    "curves",
    "signature_algorithms",
    "alpn",
    "min_tls",
)

# Headers curl (or tornado: User-Agent) adds on its own unless the list names them; an empty
# "Name:" line suppresses one, so a profile sends exactly the headers it lists.
_CURL_DEFAULTS = ("user-agent", "accept", "accept-encoding", "content-type", "expect")


def supported_encodings(engine: Engine = "pycurl") -> tuple[str, ...]:
    """Content codings the engine's libcurl can decode; a profile never advertises any other.
    (curl_cffi's wheel bundles zlib, brotli and zstd; its version string names them.)"""
    if engine == "curl_cffi":
        from curl_cffi import Curl  # only where the engine is asked about

        version = Curl().version().decode()
        libraries = {"zlib/": ("gzip", "deflate"), "brotli/": ("br",), "zstd/": ("zstd",)}
        return tuple(c for lib, codings in libraries.items() if lib in version for c in codings)
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
    request takes (Authorization, Content-Type ...); it is sent only when the request has it; a
    `content-length` slot places libcurl's own Content-Length (curl_cffi engine). `{origin}` in a
    value stands for the upstream's scheme://host. `target`, `ja3` and `akamai` put the profile on
    the curl_cffi engine; the TLS fields before them are pycurl's."""

    name: str
    headers: tuple[tuple[str, str | None], ...]
    http_version: HttpVersion = "1.1"
    ciphers: str = ""
    tls13_ciphers: str = ""
    curves: str = ""
    signature_algorithms: str = ""
    alpn: bool = True
    min_tls: TlsVersion = "1.2"
    target: str = ""  # a curl-impersonate target (fingerprint_options.TARGETS), e.g. "chrome152"
    ja3: str = ""  # instead of a target: the ClientHello as a JA3 string (GREASE not expressible)
    akamai: str = ""  # with ja3: the HTTP/2 opening as an Akamai fingerprint string
    stream_weight: int = 0  # HTTP/2 priority weight of each request (1-256); 0: the target's
    _lowered: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # header_lines' work that is the same for every request, done once: each header's lowered name,
    # name and line as sent when the request does not supply it (None: a slot; str: it names the
    # origin), and the empty lines that keep libcurl's defaults out unless the request has them.
    _slots: tuple[tuple[str, str, bytes | str | None], ...] = field(default=(), repr=False, compare=False)
    _blanked: tuple[tuple[str, bytes], ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        lowered = tuple(name.lower() for name, _ in self.headers)
        object.__setattr__(self, "_lowered", lowered)
        object.__setattr__(
            self,
            "_slots",
            tuple(
                (low, name, _fixed_line(name, value))
                for (name, value), low in zip(self.headers, lowered, strict=True)
            ),
        )
        valued = {low for (_, value), low in zip(self.headers, lowered, strict=True) if value is not None}
        object.__setattr__(
            self,
            "_blanked",
            tuple((name, f"{name.title()}:".encode()) for name in _CURL_DEFAULTS if name not in valued),
        )

    @property
    def engine(self) -> Engine:
        return "curl_cffi" if self.target or self.ja3 else "pycurl"

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
        blanks = [line for lowered, line in self._blanked if lowered not in wanted]
        lines = []
        for lowered, name, fixed in self._slots:
            supplied = wanted.pop(lowered, None)
            if supplied is not None:
                lines.append(f"{name}: {supplied[1]}".encode("latin-1"))
            elif isinstance(fixed, str):
                lines.append(fixed.replace("{origin}", origin).encode("latin-1"))
            elif fixed is not None:
                lines.append(fixed)
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in wanted.values())
        lines.extend(blanks)
        return lines

    def pycurl_options(self) -> tuple[CurlOption, ...]:
        """Every option this profile owns on the pycurl engine, each set to the profile's value or
        to libcurl's default. An optional knob the running pycurl lacks is left out (profile_problem
        refuses a profile that sets it)."""
        # pycurl cannot reset TLS13_CIPHERS to "unset": its empty value is OpenSSL's default list.
        defaults = {"tls13_ciphers": OPENSSL_TLS13_DEFAULT}
        optional = tuple(
            (getattr(pycurl, constant), getattr(self, name) or defaults.get(name))
            for name, constant in _OPTIONAL_TLS_KNOBS
            if hasattr(pycurl, constant)
        )
        return (
            (pycurl.HTTP_VERSION, _HTTP_VERSIONS[self.http_version]),
            (pycurl.SSL_CIPHER_LIST, self.ciphers or None),
            *optional,
            (pycurl.SSL_ENABLE_ALPN, 1 if self.alpn else 0),
            (pycurl.SSLVERSION, _TLS_VERSIONS[self.min_tls] | pycurl.SSLVERSION_MAX_DEFAULT),
            # "" = accept and decode every coding this libcurl supports; the header says which.
            (pycurl.ACCEPT_ENCODING, ""),
        )


def _fixed_line(name: str, value: str | None) -> bytes | str | None:
    """A profile header's line when the request does not replace it: None for a slot, a str when
    the value names the origin (filled in per request), else the encoded line."""
    if value is None:
        return None
    line = f"{name}: {value}"
    return line if "{origin}" in value else line.encode("latin-1")


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
    """What is inconsistent in a profile (checked at start-up), or None. What its engine's libcurl
    refuses is checked by the engine (fetcher.engine_problem)."""
    if profile.engine == "pycurl":
        if profile.akamai:
            return "akamai needs ja3 (an HTTP/2 fingerprint runs on the curl_cffi engine)"
        if profile.http_version == "2" and not profile.alpn:
            return "http_version 2 needs alpn: true (HTTP/2 over TLS is chosen through ALPN)"
        for name, constant in _OPTIONAL_TLS_KNOBS:
            if getattr(profile, name) and not hasattr(pycurl, constant):
                return (
                    f"{name} cannot be applied: this pycurl ({pycurl.version}) has no "
                    f"CURLOPT_{constant} (its libcurl is too old); leave it empty or use a browser profile"
                )
    elif profile.target and profile.ja3:
        return "give either target or ja3, not both"
    return _encoding_problem(profile)


def _encoding_problem(profile: ClientProfile) -> str | None:
    for (name, value), lowered in zip(profile.headers, profile._lowered, strict=True):
        if lowered != "accept-encoding" or value is None:
            continue
        available = supported_encodings(profile.engine)
        for coding in value.split(","):
            coding = coding.split(";")[0].strip().lower()
            if coding not in available and coding not in ("identity", "*", ""):
                return (
                    f"{name} names {coding!r}, which this libcurl cannot decode "
                    f"(it decodes {', '.join(available)})"
                )
    return None
