"""TLS and HTTP/2 client fingerprints computed from what a client sent: JA3, JA3N, JA4, Akamai.

Pure functions over a parsed ClientHello (tests/tls_endpoint.py) and over HTTP/2 frames, by the
public definitions:
- JA3 (Salesforce): "version,ciphers,extensions,groups,point formats", decimal, '-'-joined, GREASE
  values left out; JA3N is the same with the extensions sorted (Chrome permutes them per connection).
- JA4 (FoxIO, JA4 Technical Details): t<version><d|i><ciphers:02><extensions:02><alpn first+last>,
  then the first 12 hex digits of SHA-256 over the sorted cipher list, and over the sorted extension
  list (SNI and ALPN left out) + "_" + the signature algorithms in order.
- Akamai HTTP/2 (Shuster, Black Hat EU 2017): SETTINGS "id:value;..." | connection WINDOW_UPDATE
  increment | PRIORITY frames "stream:exclusive:depends:weight,..." or 0 | pseudo-header order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA.
GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
_SNI, _ALPN = 0x0000, 0x0010
_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


@dataclass(frozen=True)
class Hello:
    """The ClientHello fields fingerprints are made of, in the order sent (GREASE included)."""

    legacy_version: int
    ciphers: tuple[int, ...]
    extensions: tuple[int, ...]
    groups: tuple[int, ...]
    point_formats: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    versions: tuple[int, ...]
    alpn: tuple[str, ...] | None
    server_name: str | None


def _clean(values: Iterable[int]) -> list[int]:
    return [value for value in values if value not in GREASE]


def ja3_string(hello: Hello, sort_extensions: bool = False) -> str:
    extensions = _clean(hello.extensions)
    if sort_extensions:
        extensions.sort()
    fields = [
        [hello.legacy_version],
        _clean(hello.ciphers),
        extensions,
        _clean(hello.groups),
        list(hello.point_formats),
    ]
    return ",".join("-".join(str(value) for value in field) for field in fields)


def ja3(hello: Hello) -> str:
    return hashlib.md5(ja3_string(hello).encode()).hexdigest()


def ja3n(hello: Hello) -> str:
    return hashlib.md5(ja3_string(hello, sort_extensions=True).encode()).hexdigest()


def grease_places(hello: Hello) -> tuple[str, ...]:
    """The ClientHello lists that carry a GREASE value (a client that sends none is no browser)."""
    lists = {
        "ciphers": hello.ciphers,
        "extensions": hello.extensions,
        "groups": hello.groups,
        "signature_algorithms": hello.signature_algorithms,
        "versions": hello.versions,
    }
    return tuple(name for name, values in lists.items() if GREASE & set(values))


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def ja4(hello: Hello) -> str:
    versions = _clean(hello.versions)
    version = _VERSIONS.get(max(versions) if versions else hello.legacy_version, "00")
    ciphers = _clean(hello.ciphers)
    extensions = _clean(hello.extensions)
    alpn = "00"
    if hello.alpn:
        first = hello.alpn[0]
        alpn = first[0] + first[-1] if first[0].isalnum() and first[-1].isalnum() else first[:2]
    head = (
        f"t{version}{'d' if hello.server_name else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn}"
    )
    cipher_list = ",".join(f"{c:04x}" for c in sorted(ciphers))
    counted = ",".join(f"{e:04x}" for e in sorted(extensions) if e not in (_SNI, _ALPN))
    # GREASE left out here too: Chromium 156 puts a random one among its signature algorithms.
    algorithms = ",".join(f"{a:04x}" for a in _clean(hello.signature_algorithms))
    extension_text = f"{counted}_{algorithms}" if algorithms else counted
    return f"{head}_{_sha12(cipher_list)}_{_sha12(extension_text)}"


@dataclass(frozen=True)
class Http2Opening:
    """What an HTTP/2 client sent before and with its first request."""

    settings: tuple[tuple[int, int], ...]
    window_update: int  # the connection-level increment, 0 if none came before the first HEADERS
    priority_frames: tuple[tuple[int, int, int, int], ...]  # (stream, exclusive, depends on, weight)
    pseudo_headers: tuple[str, ...]  # ":method", ":authority", ...


def akamai(opening: Http2Opening) -> str:
    settings = ";".join(f"{key}:{value}" for key, value in opening.settings)
    priority = ",".join(":".join(str(v) for v in frame) for frame in opening.priority_frames) or "0"
    pseudo = ",".join(name[1] for name in opening.pseudo_headers)
    return f"{settings}|{opening.window_update}|{priority}|{pseudo}"
