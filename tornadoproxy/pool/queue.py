"""The wait queue of one process: requests waiting for an account, in order of arrival.

A waiter is a future plus what it may use (model, accounts excluded). Every waiter waits the same
`pool.queue_timeout`, so deadlines come in arrival order and one timer, set for the oldest waiter,
serves the whole queue (a timer per waiter costs a heap entry each, for thousands of them). A waiter
leaves the queue the moment it is granted, expires or its request is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from tornadoproxy.pool.account import Account


class Grant(NamedTuple):
    """A slot given to a waiter: the account, the lease id, and whether Redis holds it."""

    account: str
    lease_id: str
    shared: bool


class Waiter:
    """One request waiting; `ticket` names it here and in Redis."""

    __slots__ = ("ticket", "model", "exclude", "future", "arrived", "deadline", "score", "queued", "shared")

    def __init__(
        self, ticket: str, model: str | None, exclude: frozenset[str], timeout: float, score: float
    ) -> None:
        self.ticket = ticket
        self.model = model
        self.exclude = exclude
        self.future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout
        self.score = score  # arrival as epoch microseconds: its place in the queue shared through Redis
        self.queued = False
        self.shared = False  # it has a ticket in Redis (to withdraw when it leaves)

    def may_use(self, account: Account) -> bool:
        return account.name not in self.exclude and account.serves(self.model)

    def candidates(self, accounts: Collection[Account]) -> list[Account]:
        """The accounts this request may be served by, invalid ones left out."""
        return [a for a in accounts if self.may_use(a) and a.state() != "invalid"]


class WaitQueue:
    """Waiters in arrival order; `on_expire` is called for each one whose deadline passes."""

    def __init__(self, on_expire: Callable[[Waiter], None], on_length: Callable[[int], None]) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._on_expire = on_expire
        self._on_length = on_length
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self._waiters.values()))

    def get(self, ticket: str) -> Waiter | None:
        return self._waiters.get(ticket)

    def add(self, waiter: Waiter) -> None:
        waiter.queued = True
        self._waiters[waiter.ticket] = waiter
        self._on_length(len(self._waiters))
        if self._timer is None:
            self._arm()

    def remove(self, waiter: Waiter) -> bool:
        """Take `waiter` out of the queue; False if it was not in it (any more)."""
        if self._waiters.pop(waiter.ticket, None) is None:
            return False
        waiter.queued = False
        self._on_length(len(self._waiters))
        if not self._waiters and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return True

    def first_for(self, account: Account) -> Waiter | None:
        """The oldest waiter that may use `account`."""
        for waiter in self._waiters.values():
            if waiter.may_use(account):
                return waiter
        return None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        head = next(iter(self._waiters.values()), None)
        self._timer = None
        if head is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, head.deadline - time.monotonic())
            self._timer = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._waiters:
            head = next(iter(self._waiters.values()))
            if head.deadline > now:
                break
            self.remove(head)
            self._on_expire(head)
        if self._waiters and self._timer is None:
            self._arm()
