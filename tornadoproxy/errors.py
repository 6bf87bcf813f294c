"""The gateway's own errors and their one JSON shape (docs/gateway.md, "Responses").

Every error the gateway produces is a `GatewayError` rendered by `to_json()`; upstream HTTP errors are
data and never pass through here. Messages must never contain anything a client sent as a credential.
"""

from __future__ import annotations

import json


class GatewayError(Exception):
    """An error answered by the gateway itself: status, stable code, human message."""

    status: int = 500
    code: str = "internal_error"
    type: str = "gateway_error"
    # The request field at fault (OpenAI's `param`, e.g. "messages[0].role"), or None.
    param: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        if param is not None:
            self.param = param

    def to_dict(self) -> dict[str, object]:
        return {
            "error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param},
            # errorMessage keeps clients of the original Go gateway working.
            "errorMessage": self.message,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers this error carries (Retry-After)."""
        if self.retry_after is None:
            return []
        return [("Retry-After", str(self.retry_after))]


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    type = "invalid_request_error"


class MissingAuthorization(GatewayError):
    status = 401
    code = "missing_authorization"
    type = "invalid_request_error"


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "payload_too_large"
    type = "invalid_request_error"


class GatewayBusy(GatewayError):
    """The gateway is at its configured capacity or shutting down; the client may retry."""

    status = 503
    code = "gateway_busy"
    type = "gateway_error"


class UpstreamError(GatewayError):
    """The upstream (or the egress path to it) failed; `kind` is the bounded metrics label."""

    status = 502
    code = "upstream_unreachable"
    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        kind: str = "unreachable",
        status: int | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message, status=status, code=code, retry_after=retry_after)
        self.kind = kind
        self.detail = detail or message  # what happened, without the "the X upstream ..." frame


def upstream_unreachable(message: str, kind: str = "unreachable") -> UpstreamError:
    return UpstreamError(message, kind=kind)


def upstream_timeout(message: str) -> UpstreamError:
    return UpstreamError(message, kind="timeout", status=504, code="upstream_timeout")


def egress_proxy_error(message: str, kind: str, detail: str = "") -> UpstreamError:
    return UpstreamError(message, kind=kind, status=502, code="egress_proxy_error", detail=detail)


class LoginError(GatewayError):
    """A login the gateway could not complete (docs/gateway.md): `login_failed` (401),
    `login_mfa_unsupported` (400), `login_account_blocked` (403), `login_rate_limited` (429 with
    Retry-After) or `login_upstream_error` (502: an upstream step answered something unexpected).
    `outcome` is the bounded metrics label. Messages name the step, never what the client sent."""

    status = 401
    code = "login_failed"
    type = "login_error"

    def __init__(
        self,
        message: str,
        *,
        outcome: str = "failed",
        status: int | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, retry_after=retry_after)
        self.outcome = outcome


class AccountsBusy(GatewayError):
    """Every account of the pool that could serve the request stayed busy: the wait queue was full, or
    the request waited `pool.queue_timeout`. Always carries Retry-After (whole seconds)."""

    status = 429
    code = "accounts_busy"
    type = "rate_limit_error"


class AccountsUnavailable(GatewayError):
    """No account of the pool can serve the request at all: none is allowed the model, every one was
    already tried for this request, or the only ones left are invalid. `reason` says which
    ("model", "tried", "invalid"); a caller that already has an upstream error answers with that."""

    status = 503
    code = "accounts_unavailable"
    type = "gateway_error"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
