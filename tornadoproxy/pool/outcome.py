"""How an answer served by a pool account ended, as the consumer reports it when it releases the
account: the pool turns it into a cool-down, a fresh login, an invalid account or nothing.

`OUTCOMES` is the bounded label set of the metrics and of the per-account counters in /accounts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutcomeKind = Literal["ok", "rate_limited", "challenge", "blocked", "unauthorized", "transport", "aborted"]
OUTCOMES: tuple[OutcomeKind, ...] = (
    "ok",
    "rate_limited",
    "challenge",
    "blocked",
    "unauthorized",
    "transport",
    "aborted",
)
# Outcomes that say the account (or its egress) failed: they cool it down with exponential backoff.
BACKOFF_KINDS = frozenset({"rate_limited", "challenge", "blocked", "transport"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """`kind`: ok; rate_limited (upstream 429, `clears_in` seconds when it said); challenge or blocked
    (a challenge or block page, or the sentinel's "unusual activity"); unauthorized (401 on the
    account's token); transport (no answer: refused, reset, timed out, egress proxy failed); aborted
    (the client went away, or the gateway gave up for a reason of its own: no effect on the account).
    `code` is the error code shown as the account's last error."""

    kind: OutcomeKind
    clears_in: float | None = None
    code: str = ""

    @classmethod
    def ok(cls) -> Outcome:
        return cls("ok")

    @classmethod
    def rate_limited(cls, clears_in: float | None = None, code: str = "rate_limit_exceeded") -> Outcome:
        return cls("rate_limited", clears_in, code)

    @classmethod
    def challenge(cls, code: str = "upstream_challenge") -> Outcome:
        return cls("challenge", None, code)

    @classmethod
    def blocked(cls, code: str = "upstream_blocked") -> Outcome:
        return cls("blocked", None, code)

    @classmethod
    def unauthorized(cls, code: str = "invalid_api_key") -> Outcome:
        return cls("unauthorized", None, code)

    @classmethod
    def transport(cls, code: str = "upstream_unreachable") -> Outcome:
        return cls("transport", None, code)

    @classmethod
    def aborted(cls) -> Outcome:
        return cls("aborted")

    @property
    def error_code(self) -> str | None:
        """What /accounts shows as `last_error`, or None when this outcome is no error."""
        if self.kind in ("ok", "aborted"):
            return None
        return self.code or self.kind
