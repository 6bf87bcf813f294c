"""Which engine runs a profile, and the one transport per profile that the fetcher sends through.

The engine is the profile's (`ClientProfile.engine`): this table is the only place that maps it to
an implementation. A transport is made per profile value on first use, so two profiles never share
a libcurl multi handle, hence never a connection or a TLS session; egress proxies are kept apart by
libcurl itself (a connection is reused only through the same proxy with the same credentials).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from tornadoproxy.upstream.curl_client import CurlClient, tls_settings_problem
from tornadoproxy.upstream.fingerprint_options import impersonation_problem
from tornadoproxy.upstream.impersonation import ImpersonationClient
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.transport import Transport

log = logging.getLogger(__name__)


# An engine makes the transport of one profile, with room for `capacity` transfers.
Engine = Callable[[ClientProfile, int], Transport]

ENGINES: dict[str, Engine] = {
    "pycurl": CurlClient,
    "curl_cffi": ImpersonationClient,
}


def engine_problem(profile: ClientProfile) -> str | None:
    """What the profile's engine refuses in it (checked at start-up and reload), or None."""
    if profile.engine == "curl_cffi":
        return impersonation_problem(profile)
    return tls_settings_problem(profile.pycurl_options())


class Transports:
    """The transports of the profiles in use, each with room for `capacity` transfers, made by the
    engine each profile names (`engines`: the shipped two, or a test's own)."""

    def __init__(self, capacity: int, engines: Mapping[str, Engine] = ENGINES) -> None:
        self._capacity = capacity
        self._engines = engines
        self._by_profile: dict[ClientProfile, Transport] = {}

    def get(self, profile: ClientProfile) -> Transport:
        transport = self._by_profile.get(profile)
        if transport is None:
            transport = self._by_profile[profile] = self._engines[profile.engine](profile, self._capacity)
            log.info("client profile %s runs on %s%s", profile.name, profile.engine, _target(profile))
        return transport

    def retire(self, in_use: Iterable[ClientProfile]) -> None:
        """Close the idle transports of profiles no route uses any more (after a reload)."""
        keep = set(in_use)
        for profile, transport in list(self._by_profile.items()):
            if profile not in keep and not transport.active:
                transport.close()
                del self._by_profile[profile]

    def close(self) -> None:
        for transport in self._by_profile.values():
            transport.close()
        self._by_profile.clear()


def _target(profile: ClientProfile) -> str:
    if profile.target:
        return f" (curl-impersonate target {profile.target})"
    return " (JA3 and Akamai strings)" if profile.ja3 else ""
