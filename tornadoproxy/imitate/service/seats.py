"""Who pays for one attempt of a completion: an account of the pool, or the client's own accessToken.

A seat is the account one attempt runs as: its Authorization, egress proxy and client profile
(pinned for a pool account, the route's otherwise), its stable `Oai-Device-Id`, and the pool lease
to give back with the attempt's outcome. `outcome_for` turns the gateway error an attempt ended
with into what the pool does about the account (cool down, log in again, nothing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field

from tornadoproxy.errors import AccountsUnavailable, Code, GatewayError
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.profiles import ClientProfile

# Device ids of clients' own accessTokens: a UUID derived from the account the token names.
_DEVICE_NAMESPACE = uuid.UUID("7c0a4f1e-2b8d-4c55-9e3a-61d2f0b7a9c4")
OWN_TOKEN = "(own token)"  # the seat's name in logs when the client brought its accessToken


@dataclass(frozen=True, slots=True)
class PoolPayer:
    """The request carries a client key: an account of the pool answers."""


@dataclass(frozen=True, slots=True)
class TokenPayer:
    """The request carries its own accessToken: that account answers, without the pool."""

    authorization: str = field(repr=False)  # "Bearer eyJ..."


Payer = PoolPayer | TokenPayer


@dataclass(slots=True)
class Seat:
    name: str  # the pool account's name, or OWN_TOKEN
    authorization: str = field(repr=False)
    proxy: EgressProxy | None  # pinned for a pool account; None: the chatgpt route's egress
    profile: ClientProfile | None  # None: profiles.chatgpt
    device_id: str
    lease: Lease | None = None

    @property
    def pooled(self) -> bool:
        return self.lease is not None

    def release(self, outcome: Outcome) -> None:
        """Give a pool account back (once; later calls do nothing). Nothing to do for a token."""
        if self.lease is not None:
            self.lease.release(outcome)


def own_device_id(authorization: str) -> str:
    """A stable device id for the account an accessToken belongs to: from its JWT `sub` (the same
    across the account's tokens), else from the token itself. Nothing of the token can be read back."""
    token = authorization.removeprefix("Bearer ")
    subject = _jwt_subject(token)
    basis = "sub:" + subject if subject else "token:" + token
    return str(uuid.uuid5(_DEVICE_NAMESPACE, hashlib.sha256(basis.encode()).hexdigest()))


def _jwt_subject(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


async def take_seat(
    payer: Payer,
    pool: AccountPool | None,
    slug: str,
    tried: Collection[str],
    last_error: GatewayError | None,
) -> Seat:
    """The seat of the next attempt. A pool account not in `tried`, waiting in the pool's queue
    (cancelling the caller leaves it); when no account is left, `last_error` if there is one (the
    client hears what went wrong, not that the pool ran out), else AccountsUnavailable/Busy."""
    if isinstance(payer, TokenPayer):
        return Seat(OWN_TOKEN, payer.authorization, None, None, own_device_id(payer.authorization))
    if pool is None:
        raise AccountsUnavailable(
            "this gateway has no account pool (accounts); a client key cannot be served here",
            reason="invalid",
        )
    try:
        lease = await pool.acquire(model=slug, exclude=tried)
    except AccountsUnavailable:
        if last_error is not None:
            raise last_error from None
        raise
    return Seat(lease.account, lease.authorization, lease.proxy, lease.profile, lease.device_id, lease)


def outcome_for(error: GatewayError) -> Outcome:
    """What a failed attempt says about its account. A challenge or block (a page, or the
    sentinel's "unusual activity"), a human check or a proof of work out of reach rest the account
    and count against its proxy; limits rest it for `clears_in`; a refused token starts a fresh
    login (or marks a fixed token invalid); no answer at all rests it (transport)."""
    code = error.code
    if code is Code.UPSTREAM_CHALLENGE or code is Code.UPSTREAM_VERIFICATION_REQUIRED:
        return Outcome.challenge(code)
    if code is Code.UPSTREAM_BLOCKED or code is Code.UPSTREAM_PROOF_OF_WORK_FAILED:
        return Outcome.blocked(code)
    if code is Code.RATE_LIMIT_EXCEEDED:
        return Outcome.rate_limited(error.retry_after, code)
    if code is Code.UPSTREAM_UNAUTHORIZED or code is Code.INVALID_API_KEY:
        return Outcome.unauthorized(code)
    return Outcome.transport(code)
