"""AccountPool: requests take a slot of an account (waiting in a FIFO queue when none is free) and give
it back with the outcome of their answer.

The choice is the free account idle longest, among those the request may use (model, accounts it
already tried) that are not cooling, invalid or without a token. A freed slot goes to the oldest
waiter that may use it; logins that complete, cool-downs that end and accounts that turn invalid
wake the queue. With `tokens.store: redis` the slots, the queue order and the cool-downs are those
kept in Redis (shared.py, sync.py), for every gateway process; while Redis is unreachable each
process serves with its own slots. Used on the IOLoop only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from tornadoproxy.auth.logins import Logins
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.auth.tokenstore import StoreUnavailable
from tornadoproxy.config.accounts import PoolConfig
from tornadoproxy.errors import AccountsBusy, GatewayBusy
from tornadoproxy.pool import refusals
from tornadoproxy.pool.account import Account
from tornadoproxy.pool.affinity import AffinityMap
from tornadoproxy.pool.binding import UPSTREAM, EgressBinder
from tornadoproxy.pool.borrow import Borrowed, Lender
from tornadoproxy.pool.keeper import TokenKeeper
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.metrics import PoolMetrics
from tornadoproxy.pool.outcome import BACKOFF_KINDS, Outcome
from tornadoproxy.pool.pacing import backoff
from tornadoproxy.pool.queue import Grant, Waiter, WaitQueue
from tornadoproxy.upstream.egress_pool import EgressPools

if TYPE_CHECKING:  # they import redis-py (6 MB): only a pool shared through Redis needs it
    from tornadoproxy.pool.shared import SharedSlots
    from tornadoproxy.pool.sync import PoolSync

_FIRST_HOLD_GUESS = 30.0  # seconds an answer holds an account, until answers have been timed


@dataclass(slots=True)
class _Hold:
    account: str
    shared: bool  # registered in Redis


class AccountPool:
    def __init__(
        self,
        config: PoolConfig,
        accounts: Sequence[Account],
        metrics: PoolMetrics,
        egress: EgressPools,
        logins: Logins,
        tokens: TokenCache,
        shared: SharedSlots | None,
    ) -> None:
        self.config = config
        self.accounts = {account.name: account for account in accounts}
        self._metrics = metrics
        self._egress = egress
        self.binder = EgressBinder(egress, accounts, shared)
        self._keeper = TokenKeeper(config, logins, tokens, self.binder, metrics, self.account_changed)
        self._sync: PoolSync | None = None
        if shared is not None:
            from tornadoproxy.pool.sync import PoolSync

            self._sync = PoolSync(self, shared)
        self._lender = Lender(
            self.accounts, self.binder, egress, self._keeper.unauthorized, config.queue_timeout
        )
        # Which account a conversation (or a sentinel token) belongs to: the relayed routes' affinity.
        self.affinity = AffinityMap(config.conversation_map_size, config.conversation_ttl, shared)
        self._queue = WaitQueue(self._expired, metrics.queue_length.set)
        self.pending: dict[str, Waiter] = {}  # waiters between two Redis calls, out of the queue
        self._holds: dict[str, _Hold] = {}
        self._ids = itertools.count(1)
        self._proc = shared.proc if shared is not None else "local"
        self._cooldown_timers: dict[str, asyncio.TimerHandle] = {}
        self._mean_hold = _FIRST_HOLD_GUESS
        for account in accounts:
            metrics.watch_account(
                account.name,
                account.state,
                partial(_held, account),
                partial(_token_seconds_left, account),
                partial(_login_failures, account),
            )

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Background logins and the shared state start; nothing here waits for either."""
        self._keeper.start(list(self.accounts.values()))
        if self._sync is not None:
            self._sync.shared.start(self._sync)

    async def close(self) -> None:
        for waiter in list(self._queue):
            self._queue.remove(waiter)
            _fail(waiter, GatewayBusy("the gateway is shutting down", retry_after=1))
        self._queue.close()
        for timer in self._cooldown_timers.values():
            timer.cancel()
        await self._keeper.close()
        await self.affinity.close()
        if self._sync is not None:
            await self._sync.close()

    @property
    def shared_state(self) -> str:
        """ "redis" (shared), "unavailable" (Redis configured, unreachable: own slots) or "off"."""
        if self._sync is None:
            return "off"
        return "redis" if self._sync.on else "unavailable"

    @property
    def queued(self) -> int:
        """Requests waiting: in every process sharing Redis, else in this one."""
        if self._sync is not None and self._sync.on:
            return max(self._sync.queued, len(self._queue))
        return len(self._queue)

    # -- an account without a slot ---------------------------------------------------------------
    async def borrow(self, name: str | None = None) -> Borrowed:
        """Account `name` (None: the first usable one) for a request that is not an answer (borrow.py):
        no slot, no queue; waits while it logs in. Cancelling the calling task stops the wait."""
        return await self._lender.borrow(name)

    # -- taking a slot ----------------------------------------------------------------------------
    async def acquire(self, model: str | None = None, exclude: Collection[str] = ()) -> Lease:
        """A slot of an account that may serve web model `model` and is not in `exclude` (the accounts
        this request already tried). Waits in the queue; raises AccountsBusy (429, Retry-After) when
        the queue is full or the wait times out, AccountsUnavailable when no account can serve at all.
        Cancelling the calling task takes the request out of the queue at once."""
        ticket = f"{self._proc}|{next(self._ids)}"
        waiter = Waiter(ticket, model, frozenset(exclude), self.config.queue_timeout, time.time() * 1e6)
        if not waiter.candidates(self.accounts.values()):
            raise refusals.unavailable(waiter, self.accounts.values())
        room = len(self._queue) < self.config.queue_size
        grant = await self._try_now(waiter, room)
        if grant is None and not waiter.future.done():
            if not room:
                self._metrics.observe_wait(0.0)
                self._metrics.count_rejected("full")
                raise self._busy(waiter, "the wait queue is full (pool.queue_size)")
            if not waiter.queued:
                self._queue.add(waiter)
        return await self._wait(waiter) if grant is None else await self._lease(grant, waiter)

    async def _try_now(self, waiter: Waiter, enqueue: bool) -> Grant | None:
        """A slot at once if one is free for this request; in shared mode the ticket is queued in the
        same Redis call when none is."""
        now = time.time()
        candidates = waiter.candidates(self.accounts.values())
        if self._sync is not None and self._sync.on:
            usable = [(a.name, a.concurrency) for a in candidates if a.usable(now)]
            names = "|" + "".join(a.name + "|" for a in candidates)
            self.pending[waiter.ticket] = waiter
            try:
                answer = await self._sync.shared.acquire(waiter.ticket, waiter.score, names, usable, enqueue)
            except StoreUnavailable:
                answer = None  # served with this process's own slots below
            finally:
                self.pending.pop(waiter.ticket, None)
            if waiter.future.done():  # granted by a message that overtook the script's answer
                return None
            if answer is not None:
                if answer.account is not None:
                    return self.hold(answer.account, waiter.ticket, shared=True)
                if answer.queued:
                    waiter.shared = True
                    self._queue.add(waiter)
                return None
        free = [a for a in candidates if a.free_here(now)]
        if not free:
            return None
        chosen = min(free, key=lambda a: a.idle_since)
        return self.hold(chosen.name, waiter.ticket, shared=False)

    async def _wait(self, waiter: Waiter) -> Lease:
        try:
            grant = await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        return await self._lease(grant, waiter)

    async def _lease(self, grant: Grant, waiter: Waiter) -> Lease:
        account = self.accounts[grant.account]
        try:
            proxy = await self.binder.proxy_for(account)
        except asyncio.CancelledError:
            self._free(grant.lease_id, Outcome.aborted())
            raise
        token = account.token
        if token is None or not account.usable(time.time()):
            # It lost its token between the grant and now (a 401 on another request): wait again.
            self._free(grant.lease_id, Outcome.aborted())
            return await self.acquire(waiter.model, waiter.exclude)
        waited = time.monotonic() - waiter.arrived
        self._metrics.observe_wait(waited)
        return Lease(
            grant.lease_id,
            account.name,
            token,
            proxy,
            account.profile,
            account.device_id,
            waited,
            grant.shared,
            self._released,
        )

    def hold(self, name: str, lease_id: str, shared: bool) -> Grant:
        """Count a slot of `name` as held by this process under `lease_id`."""
        account = self.accounts[name]
        account.held += 1
        account.idle_since = time.monotonic()
        self._holds[lease_id] = _Hold(name, shared)
        return Grant(name, lease_id, shared)

    def holds(self, lease_id: str) -> bool:
        return lease_id in self._holds

    def _grant(self, waiter: Waiter, name: str, lease_id: str, shared: bool) -> None:
        self._queue.remove(waiter)
        self.pending.pop(waiter.ticket, None)
        waiter.future.set_result(self.hold(name, lease_id, shared))

    def _abandon(self, waiter: Waiter) -> None:
        """The waiting request went away: out of the queue now; a slot granted meanwhile goes back."""
        self._queue.remove(waiter)
        self._metrics.observe_wait(time.monotonic() - waiter.arrived)
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            self._free(future.result().lease_id, Outcome.aborted())
        if waiter.shared and self._sync is not None:
            self._sync.withdraw(waiter, then=None)

    def _expired(self, waiter: Waiter) -> None:
        """The waiter's queue_timeout passed (it is out of the queue already)."""

        def refuse() -> None:
            if not waiter.future.done():
                self._metrics.observe_wait(time.monotonic() - waiter.arrived)
                self._metrics.count_rejected("timeout")
                timeout = self.config.queue_timeout
                _fail(
                    waiter, self._busy(waiter, f"none became free within {timeout:g} s (pool.queue_timeout)")
                )

        if waiter.shared and self._sync is not None:
            self._sync.withdraw(waiter, then=refuse)
        else:
            refuse()

    # -- giving it back ---------------------------------------------------------------------------
    def _released(self, lease: Lease, outcome: Outcome) -> None:
        account = self.accounts[lease.account]
        self._mean_hold = 0.8 * self._mean_hold + 0.2 * (time.monotonic() - lease.taken_at)
        account.requests[outcome.kind] += 1
        self._metrics.count_request(account.name, outcome.kind)
        if outcome.error_code is not None:
            account.last_error = outcome.error_code
        if outcome.kind in ("challenge", "blocked"):
            # Counted against its egress too (egress health and metrics), as a relayed page would be.
            self._egress.mark_failed(UPSTREAM, lease.proxy, outcome.kind)
        if outcome.kind == "unauthorized":
            self._keeper.unauthorized(account, lease.token)
        self._free(lease.id, outcome)

    def _free(self, lease_id: str, outcome: Outcome) -> None:
        hold = self._holds.pop(lease_id, None)
        if hold is None:
            return
        account = self.accounts[hold.account]
        account.held -= 1
        account.idle_since = time.monotonic()
        effect, cool = self._local_effect(account, outcome)
        if hold.shared and self._sync is not None:
            self._sync.release(lease_id, account.name, outcome, effect, cool)
            return
        self.wake_at_cooldown_end(account)
        self.dispatch()

    def _local_effect(self, account: Account, outcome: Outcome) -> tuple[str, float]:
        """This process's own reckoning of the outcome (Redis makes its own when it is shared):
        the effect's name for the RELEASE script and the cool-down the upstream asked for."""
        now = time.time()
        if outcome.kind == "ok":
            account.failures = 0
            return "ok", 0.0
        if outcome.kind == "rate_limited" and outcome.clears_in:
            account.cooldown_until = max(account.cooldown_until, now + outcome.clears_in)
            return "cool", outcome.clears_in
        if outcome.kind in BACKOFF_KINDS:
            account.failures += 1
            wait = backoff(self.config.cooldown_base, self.config.cooldown_cap, account.failures)
            account.cooldown_until = max(account.cooldown_until, now + wait)
            return "backoff", 0.0
        return "none", 0.0

    # -- waking the queue -------------------------------------------------------------------------
    def account_changed(self, account: Account) -> None:
        """A login completed or failed, a token was refused, an account turned invalid."""
        self._lender.changed()
        if account.state() == "invalid":
            self._fail_hopeless()
        if self._sync is not None and self._sync.on:
            self._sync.share_usable()
        else:
            self.dispatch()

    def dispatch(self) -> None:
        """Give free slots to the oldest waiters that may use them (shared: Redis decides)."""
        if self._sync is not None and self._sync.on:
            self._sync.dispatch()
            return
        now = time.time()
        while len(self._queue):
            free = sorted((a for a in self.accounts.values() if a.free_here(now)), key=lambda a: a.idle_since)
            for account in free:
                waiter = self._queue.first_for(account)
                if waiter is not None:
                    self._grant(waiter, account.name, waiter.ticket, shared=False)
                    break
            else:
                return

    def deliver(self, ticket: str, account: str) -> bool:
        """Redis handed `account` to our ticket; False if no request waits for it (any more)."""
        waiter = self._queue.get(ticket) or self.pending.get(ticket)
        if waiter is None or waiter.future.done():
            return False
        self._grant(waiter, account, ticket, shared=True)
        return True

    def _fail_hopeless(self) -> None:
        for waiter in list(self._queue):
            if not waiter.candidates(self.accounts.values()):
                self._queue.remove(waiter)
                if waiter.shared and self._sync is not None:
                    self._sync.withdraw(waiter, then=None)
                _fail(waiter, refusals.unavailable(waiter, self.accounts.values()))

    def wake_at_cooldown_end(self, account: Account) -> None:
        delay = account.cooldown_until - time.time()
        if delay <= 0:
            return
        loop = asyncio.get_running_loop()
        timer = self._cooldown_timers.get(account.name)
        if timer is not None:
            if timer.when() <= loop.time() + delay + 0.01:
                return  # one is set for then already (or earlier: it will look again)
            timer.cancel()
        self._cooldown_timers[account.name] = loop.call_later(
            delay + 0.001, self._cooldown_over, account.name
        )

    def _cooldown_over(self, name: str) -> None:
        self._cooldown_timers.pop(name, None)
        self.wake_at_cooldown_end(self.accounts[name])  # extended meanwhile
        self.dispatch()

    def shared_changed(self, available: bool) -> None:
        if self._metrics.shared_up is not None:
            self._metrics.shared_up.set(1 if available else 0)
        if available:
            for hold in self._holds.values():
                hold.shared = True  # the heartbeat registered every slot this process holds
            return
        for account in self.accounts.values():
            account.shared_in_flight = 0
        self.dispatch()

    # -- what others read -------------------------------------------------------------------------
    def waiters(self) -> Iterator[Waiter]:
        return iter(self._queue)

    def held_leases(self) -> list[tuple[str, str]]:
        return [(hold.account, lease_id) for lease_id, hold in self._holds.items()]

    def every_account(self) -> list[tuple[str, int]]:
        return [(a.name, a.concurrency) for a in self.accounts.values()]

    def usable_names(self) -> str:
        now = time.time()
        return "|" + "".join(a.name + "|" for a in self.accounts.values() if a.usable(now))

    def _busy(self, waiter: Waiter, why: str) -> AccountsBusy:
        return refusals.busy(
            waiter, self.accounts.values(), why, self.queued, self._mean_hold, self.config.queue_timeout
        )


def _fail(waiter: Waiter, error: Exception) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(error)


def _held(account: Account) -> float:
    return float(account.held)


def _login_failures(account: Account) -> float:
    return float(account.login_failures)


def _token_seconds_left(account: Account) -> float:
    now = time.time()
    if not account.usable(now):
        return 0.0
    return max(0.0, (account.token_expires_at or now) - now)
