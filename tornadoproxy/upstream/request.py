"""What a request to an upstream is: the route it takes, the request itself, a login's cookie jar.

Values only; the fetcher sends them. A route is how one upstream is reached: its origin, the egress
proxies tried in order, and the client profile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.profiles import ClientProfile


@dataclass(frozen=True, slots=True)
class UpstreamRoute:
    """How requests to one upstream leave the host: its origin, egress proxies (tried in order;
    `(DIRECT,)` for none) and client profile."""

    name: str
    origin: str
    proxies: tuple[EgressProxy, ...]
    profile: ClientProfile


class CookieJar:
    """One login's cookies, kept by libcurl's own cookie engine in a share of the cookie data.

    libcurl treats loopback as a secure context (RFC 6265bis), so `Secure` and `__Host-` cookies work
    against the plain-http simulator as against the real https hosts; Python's http.cookiejar does
    not. A jar is never shared between logins and never attached to relayed requests.

    Each engine keeps cookies in its own libcurl, so the jar holds one share per engine, made by
    the engine on first use; a login's upstreams all run on one engine (wiring.py checks)."""

    __slots__ = ("_shares",)

    def __init__(self) -> None:
        self._shares: dict[str, object] = {}

    def share(self, engine: str, create: Callable[[], object]) -> object:
        """This login's share of cookie data in `engine`'s libcurl."""
        found = self._shares.get(engine)
        if found is None:
            found = self._shares[engine] = create()
        return found


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to send; `headers` are the client's headers to merge into the profile.
    `cookies` is the login's jar (None for every relayed request: no cookie engine at all).
    `proxy` pins the egress of this one request (an account of the pool leaves through its own
    proxy, and never fails over to another); `profile` replaces the route's client profile."""

    upstream: str
    method: str
    url: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    cookies: CookieJar | None = None
    proxy: EgressProxy | None = None
    profile: ClientProfile | None = None

    def without_body(self) -> UpstreamRequest:
        """The same request once its body was sent (dataclasses.replace costs twice as much)."""
        return UpstreamRequest(
            self.upstream, self.method, self.url, self.headers, None, self.cookies, self.proxy, self.profile
        )
