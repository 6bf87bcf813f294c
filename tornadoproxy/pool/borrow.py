"""Borrowing an account without a slot: for requests that are not answers (a conversation list, a
conversation read, a rename, a title, the models), which the upstream lets an account serve while
its one answer streams.

A borrowed account carries what the request needs to go out as that account (token, sticky egress,
client profile, device id), takes nothing from the queue or the slots, and reports only what concerns
the account: a 401 starts its one fresh login (as after an answer), a challenge or block counts against
its egress proxy. Nothing of it cools the account down or counts as an answer. A named account, or
else the first usable one in configuration order (a stable choice: successive pages of a list come
from the same account), is waited for while it logs in, up to `pool.queue_timeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tornadoproxy.errors import AccountsBusy, AccountsUnavailable
from tornadoproxy.pool.account import Account
from tornadoproxy.pool.binding import UPSTREAM, EgressBinder
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.redact import Secret
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.egress_pool import EgressPools
from tornadoproxy.upstream.profiles import ClientProfile


@dataclass(eq=False, slots=True)
class Borrowed:
    account: str
    token: Secret
    proxy: EgressProxy
    profile: ClientProfile | None  # None: the route's own profile (profiles.chatgpt)
    device_id: str
    _on_report: Callable[[Borrowed, Outcome], None] = field(repr=False)

    @property
    def authorization(self) -> str:
        return "Bearer " + self.token.reveal()

    def report(self, outcome: Outcome) -> None:
        """How the request ended, for what concerns the account (unauthorized, challenge, blocked)."""
        self._on_report(self, outcome)


class Lender:
    def __init__(
        self,
        accounts: Mapping[str, Account],
        binder: EgressBinder,
        egress: EgressPools,
        unauthorized: Callable[[Account, Secret], None],
        timeout: float,
    ) -> None:
        self._accounts = accounts
        self._binder = binder
        self._egress = egress
        self._unauthorized = unauthorized
        self._timeout = timeout
        self._waiting: set[asyncio.Future[None]] = set()

    async def borrow(self, name: str | None = None) -> Borrowed:
        """Account `name` (None: the first usable one) once it has a token. AccountsUnavailable when it
        cannot have one (invalid; none of them can), AccountsBusy (Retry-After) when none has one
        within `pool.queue_timeout`. Cancelling the calling task stops the wait at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            account = self._lendable(name)
            if account is not None:
                proxy = await self._binder.proxy_for(account)
                token = account.token
                if token is not None and account.usable(time.time()):
                    return Borrowed(
                        account.name, token, proxy, account.profile, account.device_id, self._reported
                    )
                continue  # it lost its token while it was being bound
            left = deadline - loop.time()
            if left <= 0:
                raise self._busy(name)
            changed = loop.create_future()
            self._waiting.add(changed)
            try:
                await asyncio.wait_for(changed, left)
            except TimeoutError:
                pass
            finally:
                self._waiting.discard(changed)

    def changed(self) -> None:
        """An account got or lost its token, or turned invalid: the waiting borrowers look again."""
        for waiting in self._waiting:
            if not waiting.done():
                waiting.set_result(None)

    def _lendable(self, name: str | None) -> Account | None:
        """The account to lend now, None to wait for one; AccountsUnavailable when none will come."""
        now = time.time()
        if name is not None:
            account = self._accounts[name]
            if account.state(now) == "invalid":
                raise AccountsUnavailable(
                    f"the account {name} of the pool cannot serve: {account.detail(now)}", reason="invalid"
                )
            return account if account.usable(now) else None
        for account in self._accounts.values():
            if account.usable(now):
                return account
        if all(account.state(now) == "invalid" for account in self._accounts.values()):
            reasons = "; ".join(f"{a.name}: {a.detail(now)}" for a in self._accounts.values())
            raise AccountsUnavailable(f"no account of the pool can serve: {reasons}", reason="invalid")
        return None

    def _busy(self, name: str | None) -> AccountsBusy:
        now = time.time()
        waits = [a.login_retry_at - now for a in self._accounts.values() if a.login_retry_at > now]
        seconds = max(1, round(min(waits))) if waits else 1
        which = f"the account {name} has" if name is not None else "none of the pool's accounts has"
        return AccountsBusy(
            f"{which} a usable token yet after {self._timeout:g} s (logging in); retry after {seconds} s",
            retry_after=seconds,
        )

    def _reported(self, borrowed: Borrowed, outcome: Outcome) -> None:
        account = self._accounts[borrowed.account]
        if outcome.kind == "unauthorized":
            self._unauthorized(account, borrowed.token)
        elif outcome.kind in ("challenge", "blocked"):
            self._egress.mark_failed(UPSTREAM, borrowed.proxy, outcome.kind)
        else:
            return
        account.last_error = outcome.error_code
