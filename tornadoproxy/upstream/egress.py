"""Egress proxies as values: parsed once from a URL, credentials split out and masked.

`EgressProxy.curl_options()` returns the complete list of proxy options for a curl handle, resets
included, so that a reused handle never keeps the previous request's proxy (docs/pitfalls.md).
Credentials go to PROXYUSERNAME / PROXYPASSWORD, never into the PROXY URL, because libcurl echoes a
URL it cannot parse in its error text. Health and failover live in egress_pool.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pycurl

from tornadoproxy.redact import Secret

# pycurl 7.49 lacks constants for these libcurl values.
CURLPROXY_HTTPS = 2
CURLOPT_SUPPRESS_CONNECT_HEADERS = 265

_PROXY_TYPES = {
    "http": pycurl.PROXYTYPE_HTTP,
    "https": CURLPROXY_HTTPS,
    "socks5": pycurl.PROXYTYPE_SOCKS5,  # names resolved on this host
    "socks5h": pycurl.PROXYTYPE_SOCKS5_HOSTNAME,  # names resolved by the proxy
}

CurlOption = tuple[int, Any]


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """One proxy (or the direct route, `scheme == "direct"`)."""

    scheme: str
    host: str = ""
    port: int = 0
    username: Secret | None = None
    password: Secret | None = None

    @classmethod
    def parse(cls, url: str) -> EgressProxy:
        """Parse a proxy URL already checked by option_checks.proxy_url_problem; "" and "direct" mean none."""
        if url in ("", "direct"):
            return DIRECT
        parts = urlsplit(url)
        if parts.scheme not in _PROXY_TYPES or not parts.hostname or parts.port is None:
            raise ValueError("not a proxy URL: " + masked_url(url))
        username = Secret(unquote(parts.username)) if parts.username is not None else None
        password = Secret(unquote(parts.password)) if parts.password is not None else None
        return cls(parts.scheme, parts.hostname, parts.port, username, password)

    @property
    def is_direct(self) -> bool:
        return self.scheme == "direct"

    @property
    def label(self) -> str:
        """Scheme, host and port with credentials masked: fit for logs, errors and metric labels."""
        if self.is_direct:
            return "direct"
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = "***@" if self.username is not None else ""
        return f"{self.scheme}://{auth}{host}:{self.port}"

    def __repr__(self) -> str:
        return f"EgressProxy({self.label})"

    def curl_options(self) -> tuple[CurlOption, ...]:
        """Every proxy-related curl option, for this proxy or for none."""
        if self.is_direct:
            # An empty PROXY also stops libcurl from reading http_proxy / ALL_PROXY from the environment.
            return (
                (pycurl.PROXY, ""),
                (pycurl.PROXYUSERNAME, None),
                (pycurl.PROXYPASSWORD, None),
                (pycurl.HTTPPROXYTUNNEL, 0),
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            (pycurl.PROXY, f"{host}:{self.port}"),
            (pycurl.PROXYTYPE, _PROXY_TYPES[self.scheme]),
            # None (not ""): with an empty user name libcurl would still offer SOCKS5 user/password
            # authentication, and a proxy that needs credentials would say "rejected", not "missing".
            (pycurl.PROXYUSERNAME, self.username.reveal() if self.username is not None else None),
            (pycurl.PROXYPASSWORD, self.password.reveal() if self.password is not None else None),
            (pycurl.PROXYAUTH, pycurl.HTTPAUTH_BASIC),
            (pycurl.NOPROXY, ""),
            # Always CONNECT through HTTP proxies, also to http:// upstreams, so a proxy never sees
            # (or caches) a request in the clear and tests exercise the production path.
            (pycurl.HTTPPROXYTUNNEL, 1),
            (CURLOPT_SUPPRESS_CONNECT_HEADERS, 1),
        )


DIRECT = EgressProxy("direct")


def parse_proxies(setting: str | tuple[str, ...]) -> tuple[EgressProxy, ...]:
    """An egress setting (validated by option_checks.proxy_list_problem) as the proxies to try, in order;
    `(DIRECT,)` when there is none."""
    urls = (setting,) if isinstance(setting, str) else setting
    return tuple(EgressProxy.parse(url) for url in urls) or (DIRECT,)


def proxy_secrets(proxies: tuple[EgressProxy, ...]) -> set[str]:
    """The user names and passwords of `proxies`, for the log redaction filter."""
    found = set()
    for proxy in proxies:
        for secret in (proxy.username, proxy.password):
            if secret is not None and secret.reveal():
                found.add(secret.reveal())
    return found


def masked_url(url: str) -> str:
    """`url` with any user:password part replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"
