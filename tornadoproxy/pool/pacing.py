"""The pool's timing rules as pure functions: cool-downs, login backoff, when to refresh a token,
and the Retry-After a refused request is told.
"""

from __future__ import annotations

import math


def backoff(base: float, cap: float, failures: int) -> float:
    """`base` doubled for each failure in a row after the first, never over `cap` (failures >= 1)."""
    return min(cap, base * 2 ** min(max(failures, 1) - 1, 62))


def cooldown_seconds(clears_in: float | None, failures: int, base: float, cap: float) -> float:
    """How long an account rests: what the upstream said (`clears_in`), else the backoff."""
    if clears_in is not None and clears_in > 0:
        return clears_in
    return backoff(base, cap, failures)


def refresh_at(expires_at: float, obtained_at: float, margin: float) -> float:
    """When to log in again for a token valid until `expires_at`: `margin` seconds before, but not
    before halfway through its life (a margin longer than the life would log in again and again)."""
    life = max(expires_at - obtained_at, 0.0)
    return expires_at - min(margin, life / 2)


def retry_after(
    soonest_cooldown_end: float | None, now: float, queued: int, capacity: int, mean_hold: float, limit: float
) -> int:
    """Whole seconds a refused client should wait: until the first cooling account is back when every
    candidate cools down; else the time the queue ahead of it takes to drain at the mean time an
    account is held (at least 1, at most `limit`, the queue timeout)."""
    if soonest_cooldown_end is not None:
        return max(1, math.ceil(soonest_cooldown_end - now))
    estimate = mean_hold * (queued + 1) / max(capacity, 1)
    return max(1, math.ceil(min(estimate, max(limit, 1.0))))
