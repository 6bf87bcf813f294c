"""Who pays for an /imitate request (docs/imitate.md, "Which credential pays").

A client key (as the bearer, where OpenAI clients put their key, or in `access.key_header`): an
account of the pool. A client's own accessToken as the bearer (`eyJ...`, a JWT): that account,
unless `imitate.access_tokens` is off; where client keys are configured they are checked first, as
on every route, so such a client sends a key in the key header too. Anything else: 401
`invalid_api_key`, the code OpenAI SDKs raise their authentication error on, for every refusal on
these routes (a missing or wrong client key included); the message says what to send, never what
was sent. The client address is checked against `access.allowed_networks` before anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

from tornadoproxy.errors import BadRequest, Code, GatewayError, MissingAuthorization
from tornadoproxy.imitate.service.seats import Payer, PoolPayer, TokenPayer
from tornadoproxy.web.access import AccessPolicy
from tornadoproxy.web.credentials import upstream_authorization


def refused(message: str) -> GatewayError:
    return GatewayError(message, code=Code.INVALID_API_KEY)


def is_access_token(token: str) -> bool:
    """A JWT, as ChatGPT accessTokens are: three dot-separated parts, the first `eyJ` (`{"`)."""
    return token.startswith("eyJ") and token.count(".") == 2


def imitate_payer(
    policy: AccessPolicy,
    client_address: str,
    key_header: str | None,
    authorization: Sequence[Sequence[str]],
    access_tokens: bool,
) -> Payer:
    """The payer of a request from `client_address` carrying `key_header` (the value of
    access.key_header) and `authorization` (the values of each of credentials.HEADERS)."""
    policy.check(client_address, None, needs_key=False)
    bearer = _bearer(authorization)
    key = (key_header or "").strip() or None
    if policy.digests:
        return _with_client_keys(policy, key, bearer, access_tokens)
    if bearer is None:
        raise refused(
            "send an accessToken as the bearer (Authorization: Bearer eyJ...); this gateway has no "
            "client keys, so its account pool cannot be used"
        )
    if is_access_token(bearer):
        return _own(bearer, access_tokens)
    raise refused(
        "the bearer is not an accessToken, and this gateway has no client keys (so no account pool)"
    )


def _with_client_keys(
    policy: AccessPolicy, key: str | None, bearer: str | None, access_tokens: bool
) -> Payer:
    header = policy.key_header
    if key is not None:
        if not policy.key_valid(key):
            raise refused(f"the client key in the {header} header is not valid")
        if bearer is None or policy.key_valid(bearer):
            return PoolPayer()
        if is_access_token(bearer):
            return _own(bearer, access_tokens)
        raise refused("the bearer is neither a client key of this gateway nor an accessToken")
    if bearer is None:
        raise refused(
            f"this gateway needs a client key: as the bearer (Authorization: Bearer <key>) or in {header}"
        )
    if policy.key_valid(bearer):
        return PoolPayer()
    if is_access_token(bearer):
        raise refused(f"this gateway needs a client key in the {header} header beside an accessToken")
    raise refused("the client key is not valid")


def _own(bearer: str, access_tokens: bool) -> TokenPayer:
    if not access_tokens:
        raise refused(
            "this gateway does not accept accessTokens on /imitate (imitate.access_tokens); use a client key"
        )
    return TokenPayer("Bearer " + bearer)


def _bearer(authorization: Sequence[Sequence[str]]) -> str | None:
    """The bearer token, None when there is none; a malformed header is refused as a credential."""
    try:
        return upstream_authorization(authorization).removeprefix("Bearer ")
    except MissingAuthorization as error:
        if not any(value.strip() for values in authorization for value in values):
            return None
        raise refused(error.message) from None
    except BadRequest as error:
        raise refused(error.message) from None
