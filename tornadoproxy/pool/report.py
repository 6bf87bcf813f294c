"""What the pool shows: the `/accounts` document and the pool's part of `/readyz`.

Names, states, counts, times, masked proxy labels and error codes only: never a token, password or
e-mail address (the names are the operator's own labels).
"""

from __future__ import annotations

import time
from typing import Any

from tornadoproxy.pool.account import STATES, Account
from tornadoproxy.pool.pool import AccountPool


def pool_report(pool: AccountPool | None) -> dict[str, Any]:
    """`{"queued", "shared", "accounts": [...]}`; a gateway without accounts shows an empty pool."""
    if pool is None:
        return {"queued": 0, "shared": "off", "accounts": []}
    now = time.time()
    return {
        "queued": pool.queued,
        "shared": pool.shared_state,
        "accounts": [account_report(account, now) for account in pool.accounts.values()],
    }


def account_report(account: Account, now: float) -> dict[str, Any]:
    proxy = account.proxy
    shows_expiry = account.token is not None or not account.logs_in
    return {
        "name": account.name,
        "state": account.state(now),
        "in_flight": account.in_flight,
        "concurrency": account.concurrency,
        "token_expires_at": iso_time(account.token_expires_at) if shows_expiry else None,
        "cooldown_until": iso_time(account.cooldown_until) if account.cooldown_until > now else None,
        "proxy": proxy.label if proxy is not None else None,
        "last_error": account.last_error,
        "detail": account.detail(now),
        "requests": dict(account.requests),
    }


def readiness_report(pool: AccountPool) -> dict[str, Any]:
    """The pool's entry in /readyz: how many accounts are in each state and whether it is shared."""
    now = time.time()
    counts = dict.fromkeys(STATES, 0)
    for account in pool.accounts.values():
        counts[account.state(now)] += 1
    shared = pool.shared_state
    detail = {
        "off": "each gateway process has its own slots (tokens.store is not redis)",
        "redis": "slots, queue and cool-downs shared through Redis",
        "unavailable": "Redis is unreachable: this process serves with its own slots until it is back",
    }[shared]
    return {"shared": shared, "detail": detail, "accounts": counts, "queued": pool.queued}


def iso_time(moment: float | None) -> str | None:
    if moment is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
