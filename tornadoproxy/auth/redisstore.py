"""Sealed logins in Redis, shared by every gateway that uses the same URL and prefix.

Redis keeps each record under its key with a TTL equal to the record's remaining life, so every
gateway sharing it sees the same logins and the same evictions. A module of its own so that redis-py
(about 6 MB of RSS per process, measured) is imported only by a configuration that uses Redis.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tornadoproxy.auth.sealing import SealedRecord
from tornadoproxy.auth.tokenstore import StoreUnavailable

# Compare-and-delete: drop a user's record only if it still holds the token that got the 401.
_FORGET_SCRIPT = """
local key = redis.call('GET', KEYS[1])
if not key then return 0 end
redis.call('DEL', KEYS[1])
local record = redis.call('GET', ARGV[1] .. key)
if record and string.find(record, ARGV[2], 1, true) then
  redis.call('DEL', ARGV[1] .. key)
  return 1
end
return 0
"""


_UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """Records in Redis, shared by every gateway that uses the same URL and prefix."""

    def __init__(self, url: str, prefix: str, secret: bytes | None, timeout: float = 2.0) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._prefix = prefix
        self._secret = secret
        self._forget = self._redis.register_script(_FORGET_SCRIPT)
        self._unlock = self._redis.register_script(_UNLOCK_SCRIPT)

    async def secret(self) -> bytes:
        """The configured secret, else the one the first gateway stored in Redis (SET NX)."""
        if self._secret is None:
            name = self._prefix + "secret"
            candidate = base64.b64encode(secrets.token_bytes(32))
            try:
                await self._redis.set(name, candidate, nx=True)
                stored = await self._redis.get(name)
            except (RedisError, OSError) as error:
                raise StoreUnavailable(type(error).__name__) from None
            if not stored:
                raise StoreUnavailable("no secret")
            self._secret = base64.b64decode(stored)
        return self._secret

    async def get(self, key: str) -> SealedRecord | None:
        try:
            raw = await self._redis.get(self._prefix + "u:" + key)
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        if raw is None:
            return None
        try:
            return SealedRecord.from_json(json.loads(raw))
        except ValueError:
            return None

    async def put(self, record: SealedRecord) -> None:
        ttl = math.ceil(record.expires_at - time.time())
        if ttl <= 0:
            return
        data = json.dumps(record.to_json(), separators=(",", ":"))
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._prefix + "u:" + record.key, data, ex=ttl)
                pipe.set(self._prefix + "t:" + record.token_id, record.key, ex=ttl)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    async def forget_token(self, token_id: str) -> str | None:
        try:
            key = await self._redis.get(self._prefix + "t:" + token_id)
            if key is None:
                return None
            dropped = await self._forget(
                keys=[self._prefix + "t:" + token_id], args=[self._prefix + "u:", token_id]
            )
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        if not dropped:
            return None
        return key.decode() if isinstance(key, bytes) else str(key)

    async def lock(self, key: str, seconds: float) -> str | None:
        """Take the right to log this user in upstream for `seconds`, or None if another gateway has it."""
        holder = secrets.token_hex(16)
        try:
            taken = await self._redis.set(self._prefix + "l:" + key, holder, nx=True, px=int(seconds * 1000))
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None
        return holder if taken else None

    async def unlock(self, key: str, holder: str) -> None:
        try:
            await self._unlock(keys=[self._prefix + "l:" + key], args=[holder])
        except (RedisError, OSError) as error:
            raise StoreUnavailable(type(error).__name__) from None

    def entries(self) -> int | None:
        return None  # the shared count lives in Redis; the cache reports what this process holds

    async def close(self) -> None:
        await self._redis.aclose()
