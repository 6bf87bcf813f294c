"""A browser profile as curl-impersonate options: what follows `impersonate()`, or replaces it.

A profile with a `target` takes TLS and HTTP/2 from curl-impersonate's definition of that browser;
only the HTTP/2 stream weight may be ours. A profile with `ja3` (and `akamai`) is built from the
strings instead: JA3's cipher suites, extension order and groups, Akamai's SETTINGS, window update,
PRIORITY frames and pseudo-header order. An extension BoringSSL sends only on request is turned on
when the JA3 lists it, with the contents browsers send. What JA3 cannot say (GREASE, signature
algorithms, key shares) stays BoringSSL's default, so a JA3 profile is never as close as a target.
Checked once at start-up by `impersonation_problem`, never on a request.
"""

from __future__ import annotations

from typing import Any

from curl_cffi import BrowserType, CurlOpt
from curl_cffi.const import CurlHttpVersion, CurlSslVersion

from tornadoproxy.upstream.profiles import ClientProfile

# The targets curl_cffi 0.17 offers (chrome152, firefox153, safari270, ...).
TARGETS = frozenset(browser.value for browser in BrowserType)
_TLS_VERSIONS = {769: CurlSslVersion.TLSv1_0, 770: CurlSslVersion.TLSv1_1, 771: CurlSslVersion.TLSv1_2}
_PSEUDO_HEADERS = {"m", "a", "s", "p"}
# Extensions BoringSSL sends only when asked: a JA3 that lists one turns it on, with the contents
# browsers send (JA3 names an extension, not what is in it).
_EXTENSION_SWITCHES: dict[int, tuple[tuple[int, Any], ...]] = {
    5: ((CurlOpt.TLS_STATUS_REQUEST, 1),),
    18: ((CurlOpt.TLS_SIGNED_CERT_TIMESTAMPS, 1),),
    27: ((CurlOpt.SSL_CERT_COMPRESSION, "brotli"),),
    28: ((CurlOpt.TLS_RECORD_SIZE_LIMIT, 0x4001),),
    34: (
        (
            CurlOpt.TLS_DELEGATED_CREDENTIALS,
            "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512:ecdsa_sha1",
        ),
    ),
    17513: ((CurlOpt.SSL_ENABLE_ALPS, 1),),  # ALPS, old code point
    17613: ((CurlOpt.SSL_ENABLE_ALPS, 1), (CurlOpt.TLS_USE_NEW_ALPS_CODEPOINT, 1)),
    65037: ((CurlOpt.ECH, "grease"),),  # encrypted ClientHello, GREASE'd as browsers do
}


def profile_options(profile: ClientProfile) -> tuple[tuple[int, Any], ...]:
    """The options set after `impersonate()` (target profiles) or instead of it (JA3 profiles)."""
    options: list[tuple[int, Any]] = []
    if profile.ja3:
        options += _ja3_options(profile.ja3)
    if profile.akamai:
        options += _akamai_options(profile.akamai)
    if profile.stream_weight:
        options.append((CurlOpt.STREAM_WEIGHT, profile.stream_weight))
    return tuple(options)


def impersonation_problem(profile: ClientProfile) -> str | None:
    """What is wrong with a curl_cffi profile's target, JA3 or Akamai string, or None."""
    if profile.target and profile.target not in TARGETS:
        return f"target {profile.target!r} is not one curl_cffi offers (e.g. {_examples()})"
    if profile.stream_weight and not 1 <= profile.stream_weight <= 256:
        return "stream_weight must be between 1 and 256"
    try:
        profile_options(profile)
    except ValueError as error:
        return str(error)
    return None


def _examples() -> str:
    return ", ".join(t for t in ("chrome152", "firefox153", "safari270") if t in TARGETS)


def _ja3_options(ja3: str) -> list[tuple[int, Any]]:
    """JA3 "version,ciphers,extensions,groups,point formats" (decimal, '-'-separated) as options."""
    from curl_cffi.requests.impersonate import TLS_CIPHER_NAME_MAP, TLS_EC_CURVES_MAP

    parts = ja3.split(",")
    if len(parts) != 5:
        raise ValueError(
            "ja3 must have five comma-separated fields (version,ciphers,extensions,groups,formats)"
        )
    version, ciphers, extensions, groups, formats = (_numbers(part, "ja3") for part in parts)
    if len(version) != 1 or version[0] not in _TLS_VERSIONS:
        raise ValueError("ja3: the first field must be a TLS version (769-771; 771 for TLS 1.2 and 1.3)")
    if formats not in ([], [0]):
        raise ValueError("ja3: only the uncompressed point format (0) can be sent")
    unknown = [c for c in ciphers if c not in TLS_CIPHER_NAME_MAP]
    if unknown:
        raise ValueError(f"ja3: cipher suite {unknown[0]} is not one BoringSSL offers")
    unknown = [g for g in groups if g not in TLS_EC_CURVES_MAP]
    if unknown:
        raise ValueError(f"ja3: group {unknown[0]} is not one BoringSSL offers")
    # Extension 21 (padding) is BoringSSL's to add or not, by the ClientHello's length.
    order = "-".join(str(e) for e in extensions if e != 21)
    switches = [option for e in extensions for option in _EXTENSION_SWITCHES.get(e, ())]
    return [
        (CurlOpt.SSLVERSION, _TLS_VERSIONS[version[0]] | CurlSslVersion.MAX_DEFAULT),
        (CurlOpt.SSL_CIPHER_LIST, ":".join(TLS_CIPHER_NAME_MAP[c] for c in ciphers)),
        (CurlOpt.SSL_EC_CURVES, ":".join(TLS_EC_CURVES_MAP[g] for g in groups)),
        *switches,
        (CurlOpt.TLS_EXTENSION_ORDER, order),
    ]


def _akamai_options(akamai: str) -> list[tuple[int, Any]]:
    """Akamai "SETTINGS|WINDOW_UPDATE|PRIORITY|pseudo-headers", e.g.
    1:65536;2:0;4:6291456;6:262144|15663105|0|m,a,s,p, as options."""
    parts = akamai.split("|")
    if len(parts) != 4:
        raise ValueError("akamai must have four '|'-separated fields (settings|window|priority|headers)")
    settings, window, priority, pseudo = parts
    pairs = [pair.split(":") for pair in settings.replace(",", ";").split(";") if pair]
    if not pairs or any(len(pair) != 2 or not all(x.isdigit() for x in pair) for pair in pairs):
        raise ValueError("akamai: SETTINGS must be id:value pairs separated by ';'")
    if not window.isdigit():
        raise ValueError("akamai: the window update must be a number (0 for none)")
    letters = pseudo.split(",")
    if sorted(letters) != sorted(_PSEUDO_HEADERS):
        raise ValueError("akamai: the pseudo-header order must name m, a, s and p once each")
    options: list[tuple[int, Any]] = [
        (CurlOpt.HTTP_VERSION, CurlHttpVersion.V2TLS),
        (CurlOpt.HTTP2_SETTINGS, ";".join(":".join(pair) for pair in pairs)),
        (CurlOpt.HTTP2_WINDOW_UPDATE, int(window)),
        (CurlOpt.HTTP2_PSEUDO_HEADERS_ORDER, "".join(letters)),
    ]
    if priority != "0":
        options.append((CurlOpt.HTTP2_STREAMS, priority))
    return options


def _numbers(field: str, what: str) -> list[int]:
    if not field:
        return []
    values = field.split("-")
    if not all(value.isdigit() for value in values):
        raise ValueError(f"{what}: {field!r} is not a '-'-separated list of numbers")
    return [int(value) for value in values]
