"""Limits on failed logins: per username and per client address, over sliding windows.

Only attempts that would reach the upstream are counted (docs/gateway.md); the token cache
never consults a limiter for a cache hit or for a request that joins a login in flight. An attempt in
flight counts as a failure until it ends, so a burst of concurrent guesses cannot slip past the limit
before the first one fails. Pure bookkeeping on the event loop thread; memory is bounded per key.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from cachetools import TTLCache

_MAX_KEYS = 100_000


class AttemptLimiter:
    """At most `limit` failures per key within `window` seconds (0 means no limit)."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        # A key's failures all lie within the window, so the key can go once the window has passed
        # since its last failure: exactly what a TTL cache refreshed on every failure does.
        self._failures: TTLCache[str, deque[float]] = TTLCache(_MAX_KEYS, window, timer=clock)
        self._pending: dict[str, int] = {}

    def retry_after(self, key: str) -> int | None:
        """None if another attempt for `key` may go ahead now, else whole seconds to wait (>= 1)."""
        if self.limit <= 0:
            return None
        now = self._clock()
        failures = self._recent(key, now)
        pending = self._pending.get(key, 0)
        excess = len(failures) + pending - self.limit + 1
        if excess <= 0:
            return None
        if excess > len(failures):
            return 1  # attempts in flight hold the slots; they end within logins.timeout
        return max(1, math.ceil(failures[excess - 1] + self.window - now))

    def begin(self, key: str) -> None:
        self._pending[key] = self._pending.get(key, 0) + 1

    def end(self, key: str, failed: bool) -> None:
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)
        if failed:
            self.record(key)

    def record(self, key: str) -> None:
        if self.limit <= 0:
            return
        now = self._clock()
        failures = self._recent(key, now)
        failures.append(now)
        while len(failures) > self.limit:
            failures.popleft()  # older ones no longer decide anything
        self._failures[key] = failures  # refreshes the key's TTL

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures


class LoginLimits:
    """The two limits of the login routes, checked and updated together."""

    def __init__(
        self,
        per_user: tuple[int, float],
        per_address: tuple[int, float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.by_user = AttemptLimiter(*per_user, clock=clock)
        self.by_address = AttemptLimiter(*per_address, clock=clock)

    def retry_after(self, user: str, address: str) -> int | None:
        waits = [w for w in (self.by_user.retry_after(user), self.by_address.retry_after(address)) if w]
        return max(waits) if waits else None

    def begin(self, user: str, address: str) -> None:
        self.by_user.begin(user)
        self.by_address.begin(address)

    def end(self, user: str, address: str, outcome: str) -> None:
        """`outcome`: "failed" counts against both limits, "ok" clears the username's failures."""
        failed = outcome == "failed"
        self.by_user.end(user, failed)
        self.by_address.end(address, failed)
        if outcome == "ok":
            self.by_user.clear(user)

    def record_failure(self, user: str, address: str) -> None:
        self.by_user.record(user)
        self.by_address.record(address)
