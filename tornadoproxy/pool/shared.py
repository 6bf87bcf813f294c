"""The pool's state shared through Redis (with `tokens.store: redis`): slots, the wait queue across
gateway processes, cool-downs and egress bindings, through the scripts of scripts.py.

Each process has an id, a heartbeat (which renews its slots' leases, re-asserts its cool-downs and
bindings, picks up grants it missed, and reads back every account's slots and cool-down) and a
channel on which other processes announce the slots they hand to its waiting tickets. Any Redis
failure switches the process to its own slots (`available` False, the pool is told); it then tries
Redis again every `RETRY_INTERVAL` and, once it answers, re-registers what it holds and awaits
(`resync`) before it says it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from tornadoproxy.auth.tokenstore import StoreUnavailable
from tornadoproxy.pool import scripts

log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0  # seconds between two tries to reach Redis again
_TIMEOUT = 2.0  # seconds one Redis call may take before Redis counts as unreachable
# Connections to Redis at most (one is the channel's); calls beyond wait for one. A script call takes a
# fraction of a millisecond, so a few connections carry thousands of calls a second.
_CONNECTIONS = 16
# Seconds a call may wait for one of them: a burst of thousands of requests queues here for a second or
# so, which says nothing about Redis (an unreachable Redis fails the calls holding connections instead).
_QUEUE_TIMEOUT = 10.0

Pairs = Sequence[tuple[str, str | int | float]]


class SharedPeer(Protocol):
    """What the pool tells the shared state and hears from it."""

    def heartbeat_state(self) -> HeartbeatState: ...
    def waiting_tickets(self) -> list[tuple[str, float, str]]: ...
    def take_stale(self) -> tuple[list[tuple[str, str]], list[str]]: ...
    def take_back_stale(self, leases: list[tuple[str, str]], tickets: list[str]) -> None: ...
    def deliver(self, ticket: str, account: str) -> None: ...
    def observe(self, view: dict[str, tuple[int, float]], queued: int) -> None: ...
    def shared_changed(self, available: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class HeartbeatState:
    usable: str  # "|a|b|"
    leases: list[tuple[str, str]]  # (account, lease id) held by this process
    cooldowns: list[tuple[str, int]]  # (account, end in epoch ms) this process knows of
    bindings: list[tuple[str, str]]  # (account, proxy label)
    accounts: list[tuple[str, int]]  # (account, concurrency): every account


@dataclass(frozen=True, slots=True)
class Acquired:
    """ACQUIRE's answer: `account` granted (or None), whether the ticket was queued, and the seconds
    until the first cooling candidate is back (None when none cools)."""

    account: str | None
    queued: bool
    cooling_for: float | None


class SharedSlots:
    """One process's side of the shared pool. Used on the IOLoop only."""

    def __init__(self, url: str, prefix: str, lease: float) -> None:
        # A bounded pool that makes callers wait for a connection: redis-py's default pool raises
        # MaxConnectionsError past 100 calls at once, which a burst of requests reaches. One retry on
        # a broken connection: after a Redis restart every pooled connection is dead, and each would
        # otherwise fail once and flip the pool back to its own slots.
        connections = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=_CONNECTIONS,
            timeout=_QUEUE_TIMEOUT,
            socket_timeout=_TIMEOUT,
            socket_connect_timeout=_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[ConnectionError],
        )
        self._redis = aioredis.Redis(connection_pool=connections)
        self._prefix = prefix
        self.proc = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.lease_ms = int(lease * 1000)
        self.interval = min(1.0, lease / 4)
        self._alive_ms = int(max(3 * self.interval, 2.0) * 1000)
        self._scripts = {
            name: self._redis.register_script(getattr(scripts, name))
            for name in ("ACQUIRE", "RELEASE", "DISPATCH", "WITHDRAW", "HEARTBEAT", "RESYNC")
        }
        self.available = False
        self._peer: SharedPeer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._warned = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, peer: SharedPeer) -> None:
        """Join in the background: the pool serves with its own slots until Redis answers."""
        self._peer = peer
        self._tasks.append(asyncio.get_running_loop().create_task(self._run()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._key("alive:" + self.proc), self._key("u:" + self.proc))
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    async def _run(self) -> None:
        while True:
            if not self.available:
                await self._rejoin()
            else:
                await self._heartbeat()
            await asyncio.sleep(self.interval if self.available else RETRY_INTERVAL)

    async def _rejoin(self) -> None:
        assert self._peer is not None
        try:
            await self._redis.ping()
            await self.resync()
            await self._heartbeat_call()
            self._pubsub = self._redis.pubsub()
            await self._pubsub.subscribe(self._key("ch:" + self.proc))
        except (RedisError, OSError, StoreUnavailable) as error:
            if not self._warned:
                self._warned = True
                log.warning("the shared pool state (Redis) is unreachable: %s", type(error).__name__)
            return
        self.available = True
        self._warned = False
        self._tasks = [task for task in self._tasks if not task.done()]  # earlier channels' readers
        self._tasks.append(asyncio.get_running_loop().create_task(self._listen(self._pubsub)))
        log.info("the account pool shares its slots through Redis")
        self._peer.shared_changed(True)

    def failed(self, error: BaseException) -> None:
        """A Redis call failed: serve with this process's own slots until Redis answers again."""
        if not self.available:
            return
        self.available = False
        log.warning(
            "the shared pool state (Redis) failed (%s): serving with this process's own slots",
            type(error).__name__,
        )
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            asyncio.get_running_loop().create_task(_close_quietly(pubsub))
        assert self._peer is not None
        self._peer.shared_changed(False)

    async def _listen(self, pubsub: Any) -> None:
        assert self._peer is not None
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                ticket, _, account = message["data"].decode().partition(" ")
                self._peer.deliver(ticket, account)
                self._background(self._redis.hdel(self._key("g:" + self.proc), ticket))
        except (RedisError, OSError) as error:
            if pubsub is self._pubsub:
                self.failed(error)

    def _background(self, call: Any) -> None:
        async def run() -> None:
            try:
                await call
            except (RedisError, OSError) as error:
                self.failed(error)

        asyncio.get_running_loop().create_task(run())

    # -- the scripts ------------------------------------------------------------------------------
    async def _call(self, name: str, args: list[Any]) -> Any:
        try:
            return await self._scripts[name](args=[self._prefix, *args])
        except (RedisError, OSError) as error:
            self.failed(error)
            raise StoreUnavailable(type(error).__name__) from None

    def script(self, source: str) -> Callable[[list[Any]], Awaitable[Any]]:
        """A Lua script of another part of the pool (affinity.py), run on these connections with the
        key prefix as ARGV[1]; a Redis failure counts as for the pool's own (StoreUnavailable)."""
        registered = self._redis.register_script(source)

        async def run(args: list[Any]) -> Any:
            try:
                return await registered(args=[self._prefix, *args])
            except (RedisError, OSError) as error:
                self.failed(error)
                raise StoreUnavailable(type(error).__name__) from None

        return run

    async def acquire(
        self, ticket: str, score: float, candidates: str, usable: Sequence[tuple[str, int]], enqueue: bool
    ) -> Acquired:
        args: list[Any] = [self.proc, ticket, f"{score:.0f}", self.lease_ms, int(enqueue), candidates]
        args += [len(usable), *_flat(usable)]
        status, account, soonest = await self._call("ACQUIRE", args)
        cooling_for = soonest / 1000 if soonest >= 0 else None
        granted = account.decode() if status == 1 else None
        return Acquired(granted, status == 0, cooling_for)

    async def release(
        self, lease: str, account: str, concurrency: int, effect: str, cool: float, base: float, cap: float
    ) -> tuple[float | None, list[tuple[str, str]]]:
        """Give the slot back with its effect; returns the cool-down end (epoch s) and the grants to
        this process's waiters the freed slot made."""
        args = [self.proc, lease, account, concurrency, self.lease_ms, effect]
        args += [int(cool * 1000), int(base * 1000), int(cap * 1000)]
        until_ms, grants = await self._call("RELEASE", args)
        return (until_ms / 1000 if until_ms > 0 else None), _pairs(grants)

    async def dispatch(self, accounts: Sequence[tuple[str, int]]) -> list[tuple[str, str]]:
        grants = await self._call("DISPATCH", [self.proc, self.lease_ms, len(accounts), *_flat(accounts)])
        return _pairs(grants)

    async def withdraw(self, ticket: str) -> str | None:
        granted = await self._call("WITHDRAW", [self.proc, ticket])
        return granted.decode() if granted else None

    async def set_usable(self, usable: str) -> None:
        try:
            await self._redis.set(self._key("u:" + self.proc), usable, px=self._alive_ms)
        except (RedisError, OSError) as error:
            self.failed(error)
            raise StoreUnavailable(type(error).__name__) from None

    async def bind(self, account: str, label: str) -> str:
        """Bind `account` to the proxy `label` unless another process bound it first; the binding."""
        try:
            old = await self._redis.set(self._key("bind:" + account), label, nx=True, get=True)
        except (RedisError, OSError) as error:
            self.failed(error)
            raise StoreUnavailable(type(error).__name__) from None
        return old.decode() if isinstance(old, bytes) else label

    async def resync(self) -> None:
        assert self._peer is not None
        leases, stale_tickets = self._peer.take_stale()
        tickets = self._peer.waiting_tickets()
        args: list[Any] = [len(leases), *_flat(leases), len(stale_tickets), *stale_tickets, len(tickets)]
        for ticket, score, candidates in tickets:
            args += [ticket, f"{score:.0f}", candidates]
        try:
            await self._scripts["RESYNC"](args=[self._prefix, *args])
        except (RedisError, OSError) as error:
            self._peer.take_back_stale(leases, stale_tickets)  # for the next try
            self.failed(error)
            raise StoreUnavailable(type(error).__name__) from None

    async def _heartbeat(self) -> None:
        try:
            existed = await self._heartbeat_call()
            if not existed:
                # Our heartbeat lapsed (a stall) or Redis lost its data (a restart): what we wait
                # for is queued again at its place.
                await self.resync()
        except StoreUnavailable:
            pass  # resync said so already
        except (RedisError, OSError) as error:
            self.failed(error)

    async def _heartbeat_call(self) -> bool:
        assert self._peer is not None
        state = self._peer.heartbeat_state()
        args: list[Any] = [self.proc, self._alive_ms, self.lease_ms, state.usable]
        for pairs in (state.leases, state.cooldowns, state.bindings, state.accounts):
            args += [len(pairs), *_flat(pairs)]
        existed, pending, view, queued, grants = await self._scripts["HEARTBEAT"](args=[self._prefix, *args])
        for ticket, account in _pairs(pending) + _pairs(grants):
            self._peer.deliver(ticket, account)
        seen = {}
        for index, (account, _) in enumerate(state.accounts):
            seen[account] = (int(view[2 * index]), view[2 * index + 1] / 1000)
        self._peer.observe(seen, int(queued))
        return bool(existed)

    def _key(self, name: str) -> str:
        return self._prefix + name


def _flat(pairs: Pairs) -> list[str | int | float]:
    return [item for pair in pairs for item in pair]


def _pairs(flat: Sequence[Any]) -> list[tuple[str, str]]:
    items = [item.decode() if isinstance(item, bytes) else str(item) for item in flat]
    return list(zip(items[0::2], items[1::2], strict=True))


async def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(RedisError, OSError):
        await pubsub.aclose()
