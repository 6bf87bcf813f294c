"""The gateway's own errors: the one catalogue of codes, the error classes, and their one JSON shape
(docs/gateway.md, "Responses").

Every code is declared once in `Code`, with its HTTP status, its `type`, the label it is counted under
in its own metric family (`kind`: the upstream error kind, or the login outcome) and the message it
carries unless the raiser says more. The metric label set of `tornadoproxy_gateway_errors_total` and
the README's table of errors are checked against this catalogue; code branches on the error classes
or on `Code` members, never on strings. Upstream HTTP errors are data and never pass through here.
Messages must never contain anything a client sent as a credential.
"""

from __future__ import annotations

import json
from enum import StrEnum

INVALID_REQUEST = "invalid_request_error"
GATEWAY = "gateway_error"
UPSTREAM = "upstream_error"
LOGIN = "login_error"
RATE_LIMIT = "rate_limit_error"


class Code(StrEnum):
    """Every error code the gateway answers with. A member is its code string (JSON, logs, metric
    labels) and carries `status`, `type`, `kind` and `message`; `{name}` fields in a message are
    filled by `GatewayError.of()`."""

    status: int
    type: str
    kind: str
    message: str

    def __new__(cls, value: str, status: int, type_: str, kind: str, message: str) -> Code:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status, member.type, member.kind, member.message = status, type_, kind, message
        return member

    # -- the request ------------------------------------------------------------------------------
    BAD_REQUEST = ("bad_request", 400, INVALID_REQUEST, "", "the request was not accepted")
    HEADERS_TOO_LARGE = (
        "headers_too_large",
        431,
        GATEWAY,
        "",
        "the request header block is larger than server.max_header_size",
    )
    MISSING_AUTHORIZATION = (
        "missing_authorization",
        401,
        INVALID_REQUEST,
        "",
        "no Authorization or X-Authorization header",
    )
    GATEWAY_KEY_REQUIRED = (
        "gateway_key_required",
        401,
        GATEWAY,
        "",
        "this gateway requires a client key in the {header} header",
    )
    GATEWAY_KEY_INVALID = (
        "gateway_key_invalid",
        401,
        GATEWAY,
        "",
        "the client key in the {header} header is not valid",
    )
    CLIENT_NOT_ALLOWED = (
        "client_not_allowed",
        403,
        GATEWAY,
        "",
        "this client address is not allowed to use the gateway (access.allowed_networks)",
    )
    NOT_FOUND = (
        "not_found",
        404,
        INVALID_REQUEST,
        "",
        "no route matches this path; see the README for the routes",
    )
    METHOD_NOT_ALLOWED = (
        "method_not_allowed",
        405,
        GATEWAY,
        "",
        "this method is not supported on this route",
    )
    BODY_TIMEOUT = (
        "body_timeout",
        408,
        GATEWAY,
        "",
        "the request body did not arrive within {timeout:g} s (server.body_timeout)",
    )
    PAYLOAD_TOO_LARGE = (
        "payload_too_large",
        413,
        INVALID_REQUEST,
        "",
        "the request body is larger than {limit} bytes (server.max_body_size)",
    )
    # -- the gateway's capacity -------------------------------------------------------------------
    GATEWAY_BUSY = (
        "gateway_busy",
        503,
        GATEWAY,
        "",
        "the gateway is handling as many upstream requests as it is configured for "
        "(fetch.max_clients); retry shortly",
    )
    SHUTTING_DOWN = ("shutting_down", 503, GATEWAY, "", "the gateway is shutting down")
    INTERNAL_ERROR = (
        "internal_error",
        500,
        GATEWAY,
        "",
        "the gateway failed to handle this request; see its log",
    )
    # -- the upstream (kind: the tornadoproxy_upstream_errors_total label) ------------------------
    UPSTREAM_UNREACHABLE = (
        "upstream_unreachable",
        502,
        UPSTREAM,
        "unreachable",
        "the {upstream} upstream closed the connection without a response",
    )
    UPSTREAM_TIMEOUT = (
        "upstream_timeout",
        504,
        UPSTREAM,
        "timeout",
        "the {upstream} upstream sent nothing for {idle:g} s (fetch.idle_timeout)",
    )
    EGRESS_PROXY_ERROR = (
        "egress_proxy_error",
        502,
        UPSTREAM,
        "proxy_error",
        "the egress proxy failed for the {upstream} upstream",
    )
    UPSTREAM_CHALLENGE = (
        "upstream_challenge",
        403,
        UPSTREAM,
        "challenge",
        "the {upstream} upstream answered with a Cloudflare challenge page",
    )
    UPSTREAM_BLOCKED = (
        "upstream_blocked",
        403,
        UPSTREAM,
        "blocked",
        "the {upstream} upstream refused the egress IP",
    )
    # Its status is the upstream's own when that is a 5xx (502 otherwise).
    UPSTREAM_ERROR_PAGE = (
        "upstream_error_page",
        502,
        UPSTREAM,
        "protocol",
        "the {upstream} upstream answered {status} with an HTML page instead of an API response "
        "(an outage or maintenance page)",
    )
    UPSTREAM_BAD_STREAM = (
        "upstream_bad_stream",
        502,
        UPSTREAM,
        "protocol",
        "the {upstream} upstream {problem} (streams.max_event_size)",
    )
    UPSTREAM_TOO_LARGE = (
        "upstream_too_large",
        502,
        UPSTREAM,
        "protocol",
        "the {upstream} upstream's compressed answer {problem}",
    )
    # -- logins (kind: the tornadoproxy_logins_total outcome) -------------------------------------
    LOGIN_FAILED = ("login_failed", 401, LOGIN, "failed", "wrong e-mail or password")
    LOGIN_MFA_UNSUPPORTED = (
        "login_mfa_unsupported",
        400,
        LOGIN,
        "mfa",
        "the account uses two-factor authentication, which the gateway cannot complete",
    )
    LOGIN_ACCOUNT_BLOCKED = (
        "login_account_blocked",
        403,
        LOGIN,
        "blocked",
        "the upstream refused the account",
    )
    LOGIN_RATE_LIMITED = (
        "login_rate_limited",
        429,
        LOGIN,
        "rate_limited",
        "the upstream is limiting logins for this account or address",
    )
    LOGIN_UPSTREAM_ERROR = (
        "login_upstream_error",
        502,
        LOGIN,
        "error",
        "a login step answered something the flow does not expect",
    )
    LOGIN_INTERRUPTED = (
        "login_interrupted",
        503,
        GATEWAY,
        "",
        "the {flow} was interrupted; retry",
    )
    # -- the account pool -------------------------------------------------------------------------
    ACCOUNTS_BUSY = (
        "accounts_busy",
        429,
        RATE_LIMIT,
        "",
        "every account that could serve this request stayed busy",
    )
    ACCOUNTS_UNAVAILABLE = (
        "accounts_unavailable",
        503,
        GATEWAY,
        "",
        "no account of the pool can serve this request",
    )
    ACCOUNTS_FORBIDDEN = (
        "accounts_forbidden",
        403,
        GATEWAY,
        "",
        "/accounts on the main listener needs a client key, and none is configured "
        "(access.client_keys); use the ops listener (server.ops_port)",
    )
    # -- /imitate: OpenAI's own codes where OpenAI clients act on them -----------------------------
    # OpenAI's own code and type for a refused key: SDKs raise their authentication error on it.
    INVALID_API_KEY = (
        "invalid_api_key",
        401,
        INVALID_REQUEST,
        "",
        "the ChatGPT upstream refused the accessToken, or it has expired",
    )
    MODEL_NOT_FOUND = (
        "model_not_found",
        404,
        INVALID_REQUEST,
        "",
        "The model `{model}` does not exist or this gateway does not map it to a ChatGPT model.",
    )
    RATE_LIMIT_EXCEEDED = (
        "rate_limit_exceeded",
        429,
        UPSTREAM,
        "rate_limited",
        "the ChatGPT upstream is rate limiting this account",
    )
    UPSTREAM_VERIFICATION_REQUIRED = (
        "upstream_verification_required",
        403,
        UPSTREAM,
        "verification_required",
        "the ChatGPT upstream asks this account to pass a {which} check, which the gateway does not "
        "solve; open ChatGPT in a browser with this account, or use another account",
    )
    UPSTREAM_UNAUTHORIZED = (
        "upstream_unauthorized",
        502,
        UPSTREAM,
        "unauthorized",
        "the ChatGPT upstream refused the account's accessToken",
    )
    UPSTREAM_PROOF_OF_WORK_FAILED = (
        "upstream_proof_of_work_failed",
        502,
        UPSTREAM,
        "proof_of_work",
        "no proof of work within the limits",
    )
    UPSTREAM_ERROR = (
        "upstream_error",
        502,
        UPSTREAM,
        "protocol",
        "the ChatGPT upstream's answer failed",
    )


class GatewayError(Exception):
    """An error answered by the gateway itself: status, stable code, human message.

    The status and type are the code's (`Code`); only a code whose status varies passes `status`
    (`upstream_error_page` carries the upstream's 5xx, `bad_request` tornado's own 4xx)."""

    default: Code = Code.INTERNAL_ERROR
    # The request field at fault (OpenAI's `param`, e.g. "messages[0].role"), or None.
    param: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code: Code = code or self.default
        self.status: int = status if status is not None else self.code.status
        self.retry_after = retry_after
        if param is not None:
            self.param = param

    @classmethod
    def of(cls, code: Code, **fields: object) -> GatewayError:
        """The error of `code` with its catalogue message, `{name}` fields filled from `fields`."""
        return cls(code.message.format(**fields), code=code)

    @property
    def type(self) -> str:
        return self.code.type

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
    default = Code.BAD_REQUEST


class MissingAuthorization(GatewayError):
    default = Code.MISSING_AUTHORIZATION


class NotFound(GatewayError):
    default = Code.NOT_FOUND


class PayloadTooLarge(GatewayError):
    default = Code.PAYLOAD_TOO_LARGE


class GatewayBusy(GatewayError):
    """The gateway is at its configured capacity or shutting down; the client may retry."""

    default = Code.GATEWAY_BUSY


class UpstreamError(GatewayError):
    """The upstream (or the egress path to it) failed; `kind` is the bounded metrics label (the
    code's own unless the failure says more: an egress proxy failure names how the proxy failed)."""

    default = Code.UPSTREAM_UNREACHABLE

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        kind: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message, code=code, status=status, retry_after=retry_after)
        self.kind = kind or self.code.kind
        self.detail = detail or message  # what happened, without the "the X upstream ..." frame


def upstream_timeout(message: str) -> UpstreamError:
    return UpstreamError(message, code=Code.UPSTREAM_TIMEOUT)


def egress_proxy_error(message: str, kind: str, detail: str = "") -> UpstreamError:
    return UpstreamError(message, code=Code.EGRESS_PROXY_ERROR, kind=kind, detail=detail)


class LoginError(GatewayError):
    """A login the gateway could not complete (docs/gateway.md): `login_failed` (401),
    `login_mfa_unsupported` (400), `login_account_blocked` (403), `login_rate_limited` (429 with
    Retry-After) or `login_upstream_error` (502: an upstream step answered something unexpected).
    `outcome` is the bounded metrics label (the code's own unless given: the gateway's own attempt
    limits count as "limited"). Messages name the step, never what the client sent."""

    default = Code.LOGIN_FAILED

    def __init__(
        self,
        message: str,
        *,
        code: Code | None = None,
        outcome: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.outcome = outcome or self.code.kind


class AccountsBusy(GatewayError):
    """Every account of the pool that could serve the request stayed busy: the wait queue was full, or
    the request waited `pool.queue_timeout`. Always carries Retry-After (whole seconds)."""

    default = Code.ACCOUNTS_BUSY


class AccountsUnavailable(GatewayError):
    """No account of the pool can serve the request at all: none is allowed the model, every one was
    already tried for this request, or the only ones left are invalid. `reason` says which
    ("model", "tried", "invalid"); a caller that already has an upstream error answers with that."""

    default = Code.ACCOUNTS_UNAVAILABLE

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
