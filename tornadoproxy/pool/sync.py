"""The pool's side of the shared state: what it tells Redis (shared.py) and what it does with the
answers. Every Redis call runs in the background; a failure makes the pool serve with its own slots
(the slot given back or the ticket withdrawn meanwhile is remembered, and forgotten in Redis when it
answers again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from tornadoproxy.auth.tokenstore import StoreUnavailable
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.pool.queue import Waiter
from tornadoproxy.pool.shared import HeartbeatState, SharedSlots

if TYPE_CHECKING:
    from tornadoproxy.pool.pool import AccountPool

_CLOSE_WAIT = 2.0  # seconds the calls under way may take at shutdown


class PoolSync:
    """Implements shared.SharedPeer for one AccountPool."""

    def __init__(self, pool: AccountPool, shared: SharedSlots) -> None:
        self._pool = pool
        self.shared = shared
        self.queued = 0  # tickets waiting in Redis, at the last heartbeat
        self._stale_leases: list[tuple[str, str]] = []
        self._stale_tickets: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def on(self) -> bool:
        return self.shared.available

    async def close(self) -> None:
        """Let the Redis calls under way finish (slots given back, tickets withdrawn), briefly."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=_CLOSE_WAIT)
            for task in late:
                task.cancel()
        await self.shared.close()

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    # -- the pool asks ----------------------------------------------------------------------------
    def release(self, lease_id: str, name: str, outcome: Outcome, effect: str, cool: float) -> None:
        pool, account = self._pool, self._pool.accounts[name]
        if not self.on:
            self._stale_leases.append((name, lease_id))
            pool.dispatch()
            return

        async def release() -> None:
            try:
                until, grants = await self.shared.release(
                    lease_id,
                    name,
                    account.concurrency,
                    effect,
                    cool,
                    pool.config.cooldown_base,
                    pool.config.cooldown_cap,
                )
            except StoreUnavailable:
                self._stale_leases.append((name, lease_id))
                pool.dispatch()
                return
            if until is not None:
                account.cooldown_until = until
                pool.wake_at_cooldown_end(account)
            for ticket, granted in grants:
                self.deliver(ticket, granted)

        self.background(release())

    def withdraw(self, waiter: Waiter, then: Callable[[], None] | None) -> None:
        """Take the waiter's ticket out of Redis; a slot granted to it meanwhile is given to it if it
        still waits, else back. `then` runs afterwards."""
        if not self.on:
            self._stale_tickets.append(waiter.ticket)
            if then is not None:
                then()
            return
        pool = self._pool
        pool.pending[waiter.ticket] = waiter  # a grant on its way is still taken

        async def withdraw() -> None:
            try:
                granted = await self.shared.withdraw(waiter.ticket)
            except StoreUnavailable:
                self._stale_tickets.append(waiter.ticket)
                granted = None
            pool.pending.pop(waiter.ticket, None)
            if granted is not None:
                if not waiter.future.done():
                    waiter.future.set_result(pool.hold(granted, waiter.ticket, shared=True))
                elif not pool.holds(waiter.ticket):  # not delivered to it meanwhile: give it back
                    self.release(waiter.ticket, granted, Outcome.aborted(), "none", 0.0)
            if then is not None:
                then()

        self.background(withdraw())

    def dispatch(self) -> None:
        async def dispatch() -> None:
            try:
                grants = await self.shared.dispatch(self._pool.every_account())
            except StoreUnavailable:
                self._pool.dispatch()
                return
            for ticket, account in grants:
                self.deliver(ticket, account)

        self.background(dispatch())

    def share_usable(self) -> None:
        async def share() -> None:
            try:
                await self.shared.set_usable(self._pool.usable_names())
            except StoreUnavailable:
                self._pool.dispatch()
                return
            self.dispatch()

        self.background(share())

    # -- shared.SharedPeer ------------------------------------------------------------------------
    def heartbeat_state(self) -> HeartbeatState:
        pool, now = self._pool, time.time()
        accounts = pool.accounts.values()
        return HeartbeatState(
            usable=pool.usable_names(),
            leases=pool.held_leases(),
            cooldowns=[(a.name, int(a.cooldown_until * 1000)) for a in accounts if a.cooldown_until > now],
            bindings=pool.binder.bindings(),
            accounts=pool.every_account(),
        )

    def waiting_tickets(self) -> list[tuple[str, float, str]]:
        tickets = []
        for waiter in self._pool.waiters():
            waiter.shared = True
            names = "|" + "".join(a.name + "|" for a in waiter.candidates(self._pool.accounts.values()))
            tickets.append((waiter.ticket, waiter.score, names))
        return tickets

    def take_stale(self) -> tuple[list[tuple[str, str]], list[str]]:
        leases, tickets = self._stale_leases, self._stale_tickets
        self._stale_leases, self._stale_tickets = [], []
        return leases, tickets

    def take_back_stale(self, leases: list[tuple[str, str]], tickets: list[str]) -> None:
        self._stale_leases += leases
        self._stale_tickets += tickets

    def deliver(self, ticket: str, account: str) -> None:
        """Redis handed `account` to our ticket."""
        if not self._pool.deliver(ticket, account) and not self._pool.holds(ticket):
            self.release(ticket, account, Outcome.aborted(), "none", 0.0)  # nobody waits for it now

    def observe(self, view: dict[str, tuple[int, float]], queued: int) -> None:
        self.queued = queued
        for name, (taken, cooling_until) in view.items():
            account = self._pool.accounts[name]
            account.shared_in_flight = taken
            account.cooldown_until = cooling_until
            self._pool.wake_at_cooldown_end(account)

    def shared_changed(self, available: bool) -> None:
        self._pool.shared_changed(available)
        if not available:
            return

        async def rejoin() -> None:
            try:
                await self.shared.resync()  # waiters that arrived while it was rejoining
            except StoreUnavailable:
                return
            self.dispatch()

        self.background(rejoin())
