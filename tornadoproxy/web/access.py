"""Who may use the gateway: client keys (stored as digests) and allowed client networks.

Client keys travel in a header of their own (`access.key_header`, default `X-Gateway-Key`) so that
`Authorization` stays the upstream credential. The configuration holds only SHA-256 digests of the
keys; a presented key is hashed and compared with every digest in constant time. Keys are meant to
be long random strings (e.g. `openssl rand -hex 32`), for which a fast hash is the right tool.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from tornadoproxy.errors import Code, GatewayError

DIGEST_PREFIX = "sha256:"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def key_digest(key: str) -> str:
    """The form in which a client key is written into the configuration."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The checks that come before anything else a request does."""

    digests: tuple[bytes, ...]
    networks: tuple[IPNetwork, ...]
    key_header: str

    @classmethod
    def build(cls, digests: tuple[str, ...], networks: tuple[str, ...], key_header: str) -> AccessPolicy:
        return cls(
            tuple(bytes.fromhex(d[len(DIGEST_PREFIX) :]) for d in digests),
            tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            key_header,
        )

    @property
    def open(self) -> bool:
        return not self.digests and not self.networks

    def check(self, client_address: str, presented_key: str | None, needs_key: bool = True) -> None:
        """Raise the gateway error that refuses this client, or return. `needs_key` False: only the
        network is checked (a CORS preflight, which never carries credentials)."""
        if self.networks and not self._address_allowed(client_address):
            raise GatewayError.of(Code.CLIENT_NOT_ALLOWED)
        if not self.digests or not needs_key:
            return
        if not presented_key:
            raise GatewayError.of(Code.GATEWAY_KEY_REQUIRED, header=self.key_header)
        if not self.key_valid(presented_key):
            raise GatewayError.of(Code.GATEWAY_KEY_INVALID, header=self.key_header)

    def key_valid(self, presented_key: str) -> bool:
        """Whether `presented_key` is one of the client keys."""
        presented = hashlib.sha256(presented_key.encode()).digest()
        # Compare against every digest, without stopping early, so timing says nothing.
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched

    def _address_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)
