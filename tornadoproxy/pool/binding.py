"""Sticky egress: which proxy an account leaves through, for good.

An account with a proxy of its own always uses it. One without is bound, the first time it logs in (or
serves, for a fixed token), to one proxy of the chatgpt upstream's egress list (direct when there is
none): the one in rotation with the fewest accounts bound to it, so accounts spread over the exit
addresses. The binding is kept for the life of the process and, with Redis, shared: another gateway
with the same proxy list binds the account to the same proxy (its session belongs to that address).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tornadoproxy.auth.tokenstore import StoreUnavailable
from tornadoproxy.pool.account import Account
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.egress_pool import EgressPools

if TYPE_CHECKING:  # shared.py imports redis-py (6 MB): only a pool shared through Redis needs it
    from tornadoproxy.pool.shared import SharedSlots

log = logging.getLogger(__name__)

UPSTREAM = "chatgpt"


class EgressBinder:
    def __init__(self, egress: EgressPools, accounts: Sequence[Account], shared: SharedSlots | None) -> None:
        self._egress = egress
        self._accounts = accounts
        self._shared = shared
        for account in accounts:
            if account.own_proxy is not None:
                # Its failures (challenges counted against it) show beside the listed proxies'.
                for upstream in (UPSTREAM, "auth"):
                    egress.track(upstream, account.own_proxy)

    async def proxy_for(self, account: Account) -> EgressProxy:
        """The account's egress, binding it now if it has none yet."""
        proxy = account.proxy
        if proxy is not None:
            return proxy
        choice = self._least_bound()
        if self._shared is not None and self._shared.available and not choice.is_direct:
            try:
                label = await self._shared.bind(account.name, choice.label)
            except StoreUnavailable:
                label = choice.label
            if account.proxy is not None:  # bound by a concurrent caller meanwhile
                return account.proxy
            choice = self._by_label(label, account, choice)
        account.bound_proxy = choice
        log.info("account %s leaves through %s from now on", account.name, choice.label)
        return choice

    def bindings(self) -> list[tuple[str, str]]:
        """(account, proxy label) of every bound account, for the shared state's heartbeat."""
        return [(a.name, a.bound_proxy.label) for a in self._accounts if a.bound_proxy is not None]

    def _least_bound(self) -> EgressProxy:
        listed = self._egress.proxies(UPSTREAM)
        up = [proxy for proxy in listed if self._egress.is_up(UPSTREAM, proxy)] or list(listed)
        counts = {proxy: 0 for proxy in up}
        for other in self._accounts:
            if other.bound_proxy in counts:
                counts[other.bound_proxy] += 1
        return min(up, key=lambda proxy: counts[proxy])  # min keeps the list order among equals

    def _by_label(self, label: str, account: Account, fallback: EgressProxy) -> EgressProxy:
        for proxy in self._egress.proxies(UPSTREAM):
            if proxy.label == label:
                return proxy
        log.warning(
            "account %s is bound to %s by another gateway, which is not in this gateway's egress "
            "list; it leaves through %s here",
            account.name,
            label,
            fallback.label,
        )
        return fallback
