"""Curl failures as gateway errors: the one table of libcurl error numbers, used by fetcher.py only.

Egress proxy failures are told apart with what libcurl itself reports, not by guessing from its text:
CURLINFO_HTTP_CONNECTCODE (an HTTP proxy's answer to CONNECT) and CURLINFO_PROXY_ERROR (a CURLPX_*
code for SOCKS). What libcurl 8.23 reports was measured with the real proxies of tests/proxies.py:
  proxy port closed             errno 7, CONNECT code 0              -> proxy_refused
  black hole (accepts, silent)  errno 28 "Connection timed out"      -> proxy_timeout
  SOCKS5 bad / no credentials   errno 97, CURLPX 33 / 12             -> proxy_auth
  tinyproxy bad / no creds      errno 7, CONNECT 401 / 407 (squid: 407 for both)  -> proxy_auth
  microsocks cannot resolve     errno 97, CURLPX 20 (reply 1)        -> proxy_dns (socks5h, name)
  socks5 cannot resolve here    errno 6 (libcurl resolves before the handshake) -> proxy_dns
  tinyproxy cannot resolve      errno 7, CONNECT 500 (same as refused: not told apart) -> proxy_error
  upstream refused behind it    errno 97 CURLPX 19 / CONNECT 500 (tinyproxy), 503 (squid) -> proxy_error
  HTTP proxy given a SOCKS one  errno 56 "Proxy CONNECT aborted"    -> proxy_error
Every egress failure happens before the tunnel to the upstream is open, so a retry is safe.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornadoproxy.errors import UpstreamError, egress_proxy_error, upstream_timeout
from tornadoproxy.upstream.egress import EgressProxy

# CURLPX_* (curl.h, CURLproxycode) that mean the SOCKS5 proxy did not accept our credentials.
_SOCKS_AUTH = {
    10: "password too long for SOCKS5",
    11: "user name too long for SOCKS5",
    12: "SOCKS5: no acceptable authentication method",
    14: "SOCKS5: authentication reply not received",
    28: "SOCKS5: authentication could not be sent",
    33: "SOCKS5: user name and password rejected",
}
_SOCKS_RESOLVE_HOST = 27  # the same from libcurl's SOCKS code (8.23 resolves earlier: errno 6)
# CURLPX_REPLY_* -> (SOCKS5 reply code of RFC 1928, its meaning)
_SOCKS_REPLIES = {
    20: (1, "general failure"),
    23: (2, "connection not allowed by its rules"),
    22: (3, "network unreachable"),
    21: (4, "host unreachable"),
    19: (5, "connection refused"),
    24: (6, "TTL expired"),
    18: (7, "command not supported"),
    17: (8, "address type not supported"),
}

# curl errno -> (kind, what happened) for failures on the way to the upstream itself.
_DIRECT_FAILURES = {
    1: ("protocol", "it answered with an unsupported protocol"),
    6: ("dns", "its host name could not be resolved"),
    7: ("unreachable", "the connection was refused"),
    8: ("protocol", "it sent a malformed response"),
    16: ("protocol", "an HTTP/2 framing error occurred"),
    18: ("reset", "it closed the connection before the body was complete"),
    35: ("tls", "the TLS handshake failed"),
    52: ("reset", "it closed the connection without answering"),
    55: ("reset", "sending the request failed (connection reset)"),
    56: ("reset", "the connection was reset"),
    59: ("tls", "libcurl rejected the client profile's cipher or curve list"),
    60: ("tls", "its TLS certificate was not trusted (see fetch.ca_file)"),
    61: ("protocol", "it sent a body in a content coding libcurl cannot decode"),
    77: ("tls", "the CA bundle could not be read (fetch.ca_file)"),
    92: ("protocol", "an HTTP/2 stream error occurred"),
}


@dataclass(frozen=True, slots=True)
class CurlFailure:
    """What libcurl said about a failed transfer."""

    errno: int
    message: str
    connect_code: int = 0  # CURLINFO_HTTP_CONNECTCODE
    proxy_code: int = 0  # CURLINFO_PROXY_ERROR


# CURLINFO_HTTP_CONNECTCODE and CURLINFO_PROXY_ERROR (curl.h): the same numbers in both engines.
_INFO_CONNECT_CODE = 0x200000 + 22
_INFO_PROXY_ERROR = 0x200000 + 59


def failure_of(errno: int, message: str, getinfo: Callable[[int], Any] | None = None) -> CurlFailure:
    """What libcurl said about a failed transfer; `getinfo` (the handle's, read before it is reset)
    adds what a proxy answered."""
    connect_code = proxy_code = 0
    if getinfo is not None:
        try:
            connect_code = int(getinfo(_INFO_CONNECT_CODE))
            proxy_code = int(getinfo(_INFO_PROXY_ERROR))
        except Exception:  # pycurl.error or curl_cffi's CurlError: nothing more to tell
            pass
    return CurlFailure(errno, message, connect_code, proxy_code)


def before_upstream(failure: CurlFailure, headers_complete: bool) -> bool:
    """Whether a direct transfer failed before its request could reach the upstream: the name did
    not resolve, the connection was refused, or connecting timed out."""
    if headers_complete:
        return False
    if failure.errno in (6, 7):
        return True
    return failure.errno == 28 and "connection timed out" in failure.message.lower()


def classify_failure(
    failure: CurlFailure,
    *,
    upstream: str,
    url: str,
    proxy: EgressProxy,
    headers_complete: bool,
    connect_timeout: float,
    idle_timeout: int,
) -> UpstreamError:
    """The gateway error for a failed transfer to `upstream` through `proxy`; egress proxy failures
    get code egress_proxy_error and a proxy_* kind, with the proxy named by its masked label."""
    if failure.errno == 28:
        return _timeout(failure, upstream, proxy, headers_complete, connect_timeout, idle_timeout)
    host = urlsplit(url).hostname or "the upstream host"
    found = None if proxy.is_direct or headers_complete else _proxy_failure(failure, proxy, host)
    if found is not None:
        kind, what = found
        return egress_proxy_error(
            f"the egress proxy {proxy.label} failed for the {upstream} upstream: {what}", kind, what
        )
    kind, what = _DIRECT_FAILURES.get(
        failure.errno, ("unreachable", f"the transfer failed (curl error {failure.errno})")
    )
    via = "" if proxy.is_direct else f" through the egress proxy {proxy.label}"
    return UpstreamError(f"the {upstream} upstream could not be reached{via}: {what}", kind=kind, detail=what)


def _timeout(
    failure: CurlFailure,
    upstream: str,
    proxy: EgressProxy,
    headers_complete: bool,
    connect_timeout: float,
    idle_timeout: int,
) -> UpstreamError:
    if headers_complete:
        return upstream_timeout(
            f"the {upstream} upstream sent nothing for {idle_timeout} s (fetch.idle_timeout)"
        )
    # libcurl says "Connection timed out" while connecting (the proxy handshake and CONNECT
    # included) and "Operation too slow" / "Operation timed out" once the request is out.
    if "connection timed out" not in failure.message.lower():
        return upstream_timeout(f"the {upstream} upstream did not answer in time")
    if proxy.is_direct:
        return upstream_timeout(
            f"the {upstream} upstream did not accept the connection within {connect_timeout:g} s "
            "(fetch.connect_timeout)"
        )
    what = (
        f"it did not complete the connection to the upstream within {connect_timeout:g} s "
        "(fetch.connect_timeout)"
    )
    return egress_proxy_error(
        f"the egress proxy {proxy.label} failed for the {upstream} upstream: {what}", "proxy_timeout", what
    )


def _proxy_failure(failure: CurlFailure, proxy: EgressProxy, host: str) -> tuple[str, str] | None:
    """(kind, what happened) for a failure at the egress proxy, or None if it happened beyond it."""
    if failure.errno == 5:
        return "proxy_dns", f"its own host name {proxy.host} could not be resolved"
    if failure.errno == 6 and proxy.scheme == "socks5" or failure.proxy_code == _SOCKS_RESOLVE_HOST:
        return "proxy_dns", (
            f"socks5:// resolves names on this host, and {host} could not be resolved here "
            "(socks5h:// lets the proxy resolve it)"
        )
    if failure.errno == 7:
        code = failure.connect_code
        if code == 0:
            return "proxy_refused", "could not connect to it (connection refused)"
        if code in (401, 407):
            return "proxy_auth", _auth_problem(proxy, f"CONNECT answered {code}")
        if code == 403:
            return "proxy_error", (
                f"it refused to open a tunnel to {host} (CONNECT answered 403; check its access rules, "
                "e.g. tinyproxy's ConnectPort)"
            )
        return "proxy_error", f"it could not open a tunnel to {host} (CONNECT answered {code})"
    if failure.errno == 56 and "proxy connect" in failure.message.lower():
        return "proxy_error", "it closed the connection during CONNECT (is it an HTTP proxy?)"
    if failure.errno == 97:
        return _socks_failure(failure.proxy_code, proxy, host)
    return None


def _socks_failure(code: int, proxy: EgressProxy, host: str) -> tuple[str, str]:
    if code in _SOCKS_AUTH:
        return "proxy_auth", _auth_problem(proxy, _SOCKS_AUTH[code])
    reply = _SOCKS_REPLIES.get(code)
    if reply is None:
        return "proxy_error", f"the SOCKS5 handshake failed (libcurl proxy error {code})"
    number, meaning = reply
    # microsocks answers a failed name lookup with reply 1, dante with 4: with socks5h and a host
    # name, those mean the proxy could not resolve it.
    if number in (1, 4) and proxy.scheme == "socks5h" and not _is_address(host):
        return "proxy_dns", f"it could not resolve {host} (SOCKS5 reply {number}: {meaning})"
    return "proxy_error", f"it could not connect to {host}: {meaning} (SOCKS5 reply {number})"


def _auth_problem(proxy: EgressProxy, evidence: str) -> str:
    if proxy.username is None:
        return f"it requires credentials and none are configured ({evidence})"
    return f"it rejected the proxy credentials ({evidence})"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
