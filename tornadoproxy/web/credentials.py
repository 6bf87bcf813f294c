"""Who a request speaks for: the upstream credential it carries, and the client's own address.

The credential is the client's `Authorization` header (or `X-Authorization`), relayed as
`Bearer <token>`: a bare token gets the `Bearer ` prefix, the one scheme the upstreams accept. Anything
that is not one Bearer credential is refused, never rewritten: two such headers (tornado would join them
as `Bearer a,Bearer b`), a list, another scheme (`Basic ...` must not become `Bearer Basic ...`), or the
scheme without a token. The client address is the peer's, or the last X-Forwarded-For hop that is not
one of `server.trusted_proxies`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from tornadoproxy.errors import BadRequest, MissingAuthorization

HEADERS = ("Authorization", "X-Authorization")


def upstream_authorization(values: Sequence[Sequence[str]]) -> str:
    """`Bearer <token>` from the values of each of HEADERS in turn (the first header present wins);
    BadRequest or MissingAuthorization say what is wrong, never what was sent."""
    for name, all_given in zip(HEADERS, values, strict=True):
        given = [value for value in all_given if value.strip()]
        if not given:
            continue
        if len(given) > 1:
            raise BadRequest(f"the request has more than one {name} header; send one credential")
        return _bearer(name, given[0])
    raise MissingAuthorization("this route needs an Authorization header (Bearer <token or key>)")


def _bearer(name: str, value: str) -> str:
    if "," in value:
        raise BadRequest(f"the {name} header holds more than one credential; send one")
    parts = value.split()
    if not parts:
        raise MissingAuthorization(f"the {name} header is empty; it needs Bearer <token or key>")
    if len(parts) == 1:
        if parts[0].lower() == "bearer":
            raise MissingAuthorization(f"the {name} header names the Bearer scheme but no token")
        return "Bearer " + parts[0]
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return "Bearer " + parts[1]
    if len(parts) == 2:
        raise BadRequest(
            f"the {name} header must be a Bearer credential or a bare token: the upstreams accept no "
            "other scheme"
        )
    raise BadRequest(f"the {name} header is not one credential (Bearer <token or key>)")


def client_address(remote: str, forwarded: str | None, trusted: Sequence[str]) -> str:
    """The client's IP: `remote`, unless that is a trusted proxy, in which case the last hop of
    X-Forwarded-For (`forwarded`) that is not one."""
    if not trusted or not forwarded or not _in_networks(remote, trusted):
        return remote
    for hop in reversed([part.strip() for part in forwarded.split(",")]):
        if not _in_networks(hop, trusted):
            return hop
    return remote


def _in_networks(address: str, networks: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)
