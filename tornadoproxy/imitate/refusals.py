"""Upstream JSON refusals of a conversation, as the OpenAI-shaped errors `/imitate` answers with.

401 (token refused or expired), the sentinel's 403 "Unusual activity", 429 "Only one message at a
time" and message caps (with `clears_in`, which becomes Retry-After). HTML pages (Cloudflare
challenges and blocks) are not read here: the upstream diagnosis recognises those. `kind` is the
bounded label a pool can act on: `blocked` (cool down, count against the proxy), `rate_limited` (cool
down for `retry_after` when given), `unauthorized` (log in again, or mark the account invalid).
"""

from __future__ import annotations

import json
import math

from tornadoproxy.errors import Code, UpstreamError

_UNUSUAL = "unusual activity"
_ONE_AT_A_TIME = "only one message at a time"


def refusal(status: int, body: bytes, *, own_token: bool) -> UpstreamError | None:
    """The error for a refused sentinel or conversation call; None for an answer not known here.

    `own_token`: the client brought its own accessToken (a 401 is then its key being refused).
    """
    detail = _detail(body)
    if detail is None:
        return None
    text = detail if isinstance(detail, str) else str(detail.get("message", ""))
    if status == 401:
        return _unauthorized(own_token)
    if status == 403 and _UNUSUAL in text.lower():
        return UpstreamError(
            "the ChatGPT upstream refused the conversation: unusual activity detected from this "
            "device (a sentinel token or proof of work it did not accept, or an account it distrusts)",
            code=Code.UPSTREAM_BLOCKED,
        )
    if status == 429:
        return _rate_limited(text, detail)
    return None


def _detail(body: bytes) -> str | dict[str, object] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    detail = value.get("detail") if isinstance(value, dict) else None
    return detail if isinstance(detail, (str, dict)) else None


def _unauthorized(own_token: bool) -> UpstreamError:
    if own_token:
        return UpstreamError(
            "the ChatGPT upstream refused the accessToken, or it has expired",
            code=Code.INVALID_API_KEY,
            kind="unauthorized",  # counted as the upstream's refusal, whoever's token it was
        )
    return UpstreamError(
        "the ChatGPT upstream refused the account's accessToken",
        code=Code.UPSTREAM_UNAUTHORIZED,
    )


def _rate_limited(text: str, detail: str | dict[str, object]) -> UpstreamError:
    clears_in = detail.get("clears_in") if isinstance(detail, dict) else None
    retry_after = None
    if isinstance(clears_in, (int, float)) and not isinstance(clears_in, bool) and clears_in >= 0:
        retry_after = max(1, math.ceil(clears_in))
    if _ONE_AT_A_TIME in text.lower():
        what = "this account is already answering another message"
    elif isinstance(detail, dict) and detail.get("code") == "model_cap_exceeded":
        what = "this account reached its message cap"
    else:
        what = "the ChatGPT upstream is rate limiting this account"
    when = f"; it clears in {retry_after} s" if retry_after is not None else ""
    return UpstreamError(f"{what}{when}", code=Code.RATE_LIMIT_EXCEEDED, retry_after=retry_after)
