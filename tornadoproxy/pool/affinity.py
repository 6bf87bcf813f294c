"""Which account a request must go to because of what it continues: a conversation one account made
(its id learned from the conversation stream), or a sentinel chat-requirements token issued to one.

Entries live in this process, at most `pool.conversation_map_size` of them (the least recently
learned go first), a conversation for `pool.conversation_ttl` seconds after its last answer, a
sentinel token for `SENTINEL_TTL`. With a shared pool they are also kept in Redis, with the same
bounds, so that every gateway sharing it sends a conversation to its account; a lookup asks this
process first. Learning never waits for Redis; while Redis is unreachable each process knows only
what it learned itself. Sentinel tokens are kept as digests, never as they are. Used on the IOLoop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cachetools import TLRUCache

from tornadoproxy.auth.tokenstore import StoreUnavailable

if TYPE_CHECKING:  # shared.py imports redis-py (6 MB): only a pool shared through Redis needs it
    from tornadoproxy.pool.shared import SharedSlots

log = logging.getLogger(__name__)

# Seconds a chat-requirements token binds its conversation to the account it was issued to: the
# upstream lets a token serve one conversation for a few minutes.
SENTINEL_TTL = 600.0
_CLOSE_WAIT = 2.0  # seconds the Redis writes under way may take at shutdown

# Keys (under the pool's prefix P): aff, a hash key -> account; aff:t, a sorted set key -> expiry (epoch
# ms, the writer's clock). ARGV: P, key, account, expires_ms, now_ms, size. Writing drops what expired
# (a bounded batch) and, past `size` entries, those that expire soonest.
_REMEMBER = """
local P = ARGV[1]
local h, z = P .. 'aff', P .. 'aff:t'
redis.call('HSET', h, ARGV[2], ARGV[3])
redis.call('ZADD', z, ARGV[4], ARGV[2])
for _, key in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[5], 'LIMIT', 0, 100)) do
  redis.call('HDEL', h, key)
  redis.call('ZREM', z, key)
end
local extra = redis.call('ZCARD', z) - tonumber(ARGV[6])
if extra > 0 then
  local popped = redis.call('ZPOPMIN', z, extra)
  for i = 1, #popped, 2 do redis.call('HDEL', h, popped[i]) end
end
return 1
"""
# ARGV: P, key, now_ms -> {account, expires_ms}, or nil when unknown or expired.
_RECALL = """
local P = ARGV[1]
local expires = redis.call('ZSCORE', P .. 'aff:t', ARGV[2])
if not expires or tonumber(expires) <= tonumber(ARGV[3]) then return false end
local account = redis.call('HGET', P .. 'aff', ARGV[2])
if not account then return false end
return {account, expires}
"""


class AffinityMap:
    def __init__(
        self,
        size: int,
        conversation_ttl: float,
        shared: SharedSlots | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conversation_ttl = conversation_ttl
        self._size = size
        self._clock = clock
        # key -> (account, expiry in epoch seconds); each entry leaves at its own expiry.
        self._local: TLRUCache[str, tuple[str, float]] = TLRUCache(maxsize=size, ttu=_expiry, timer=clock)
        self._shared = shared
        self._remember = shared.script(_REMEMBER) if shared is not None else None
        self._recall = shared.script(_RECALL) if shared is not None else None
        self._writes: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._local)

    # -- conversations ----------------------------------------------------------------------------
    def learn_conversation(self, conversation: str, account: str) -> None:
        """`account` answered in `conversation` (its stream named it): it is that account's from now on,
        for `pool.conversation_ttl` seconds more."""
        self._learn("c:" + conversation, account, self._conversation_ttl)

    async def conversation_account(self, conversation: str) -> str | None:
        """The account that made `conversation`, if known here or (shared pool) in Redis."""
        return await self._lookup("c:" + conversation)

    # -- sentinel tokens --------------------------------------------------------------------------
    def learn_sentinel(self, token: str, account: str) -> None:
        """The chat-requirements token `token` was issued to `account`."""
        self._learn(_sentinel_key(token), account, SENTINEL_TTL)

    async def sentinel_account(self, token: str) -> str | None:
        return await self._lookup(_sentinel_key(token))

    # -- both -------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Let the Redis writes under way finish, briefly."""
        if self._writes:
            _, late = await asyncio.wait(set(self._writes), timeout=_CLOSE_WAIT)
            for task in late:
                task.cancel()

    def _learn(self, key: str, account: str, ttl: float) -> None:
        now = self._clock()
        self._local[key] = (account, now + ttl)
        if self._remember is None or self._shared is None or not self._shared.available:
            return
        args = [key, account, int((now + ttl) * 1000), int(now * 1000), self._size]
        task = asyncio.get_running_loop().create_task(self._write(self._remember, args))
        self._writes.add(task)  # a strong reference until it is done
        task.add_done_callback(self._writes.discard)

    async def _write(self, script: Callable[[list[Any]], Any], args: list[Any]) -> None:
        try:
            await script(args)
        except StoreUnavailable:
            pass  # the shared state said so, and serves from each process's own map meanwhile

    async def _lookup(self, key: str) -> str | None:
        found = self._local.get(key)
        if found is not None:
            return found[0]
        if self._recall is None or self._shared is None or not self._shared.available:
            return None
        try:
            answer = await self._recall([key, int(self._clock() * 1000)])
        except StoreUnavailable:
            return None
        if not answer:
            return None
        account, expires_ms = answer[0].decode(), float(answer[1]) / 1000
        self._local[key] = (account, expires_ms)
        return account


def _expiry(_key: str, value: tuple[str, float], _now: float) -> float:
    return value[1]


def _sentinel_key(token: str) -> str:
    return "s:" + hashlib.sha256(token.encode()).hexdigest()[:32]
