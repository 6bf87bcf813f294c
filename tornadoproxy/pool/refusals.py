"""The two ways the pool refuses a request: busy (429 with Retry-After: wait and retry) and
unavailable (no account can serve it at all: the caller answers with its last upstream error, if it
has one, else with this).
"""

from __future__ import annotations

import time
from collections.abc import Collection

from tornadoproxy.errors import AccountsBusy, AccountsUnavailable
from tornadoproxy.pool.account import Account
from tornadoproxy.pool.pacing import retry_after
from tornadoproxy.pool.queue import Waiter


def unavailable(waiter: Waiter, accounts: Collection[Account]) -> AccountsUnavailable:
    allowed = [a for a in accounts if a.serves(waiter.model)]
    if not allowed:
        return AccountsUnavailable(
            f"no account of the pool may serve the model {waiter.model!r} (accounts[].models)",
            reason="model",
        )
    untried = [a for a in allowed if a.name not in waiter.exclude]
    if not untried:
        return AccountsUnavailable("every account of the pool was tried for this request", reason="tried")
    now = time.time()
    reasons = "; ".join(f"{a.name}: {a.detail(now)}" for a in untried)
    return AccountsUnavailable(f"no account of the pool can serve: {reasons}", reason="invalid")


def busy(
    waiter: Waiter, accounts: Collection[Account], why: str, queued: int, mean_hold: float, limit: float
) -> AccountsBusy:
    """429 accounts_busy; Retry-After is when the first account is back if every candidate cools
    down, else an estimate of how long the queue takes to drain."""
    now = time.time()
    candidates = waiter.candidates(accounts)
    cooling = [a.cooldown_until for a in candidates if a.usable(now) and a.cooling(now)]
    soonest = min(cooling) if cooling and len(cooling) == len(candidates) else None
    capacity = sum(a.concurrency for a in candidates)
    seconds = retry_after(soonest, now, queued, capacity, mean_hold, limit)
    return AccountsBusy(
        f"every account of the pool is busy: {why}; retry after {seconds} s", retry_after=seconds
    )
