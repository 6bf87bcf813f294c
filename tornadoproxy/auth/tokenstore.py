"""Where sealed logins live: this process's memory (optionally persisted to a file) or Redis
(redisstore.py, imported only when tokens.store is redis: redis-py costs about 6 MB per process).

Stores hold only `SealedRecord`s (sealing.py) and the cache secret; they never see a password or a
plaintext token. The file is rewritten atomically (temporary file, fsync, rename, mode 0600) shortly
after each change and at shutdown. Redis keeps each record under its key with a TTL equal to the
record's remaining life, so every gateway sharing it sees the same logins and the same evictions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from typing import Any, Protocol

from cachetools import TLRUCache

from tornadoproxy.auth.sealing import SealedRecord
from tornadoproxy.observability.metrics import Metrics

log = logging.getLogger(__name__)

_FILE_VERSION = 1


class StoreUnavailable(Exception):
    """The store cannot be reached now (Redis down); the cache then works as if it were empty."""


class TokenStore(Protocol):
    async def secret(self) -> bytes: ...
    async def get(self, key: str) -> SealedRecord | None: ...
    async def put(self, record: SealedRecord) -> None: ...
    async def forget_token(self, token_id: str) -> str | None: ...
    async def lock(self, key: str, seconds: float) -> str | None: ...
    async def unlock(self, key: str, holder: str) -> None: ...
    def entries(self) -> int | None: ...
    async def close(self) -> None: ...


class _Records(TLRUCache[str, SealedRecord]):
    """Sealed records expiring at their own `expires_at`; counts what leaves without being asked."""

    def __init__(self, maxsize: int, metrics: Metrics, on_drop: Any) -> None:
        super().__init__(maxsize, ttu=lambda _k, record, _now: record.expires_at, timer=time.time)
        self._metrics = metrics
        self._on_drop = on_drop

    def expire(self, time: float | None = None) -> list[tuple[str, SealedRecord]]:
        expired = list(super().expire(time))
        if expired:
            self._metrics.count_token_eviction("expired", len(expired))
            for _key, record in expired:
                self._on_drop(record)
        return expired

    def popitem(self) -> tuple[str, SealedRecord]:
        key, record = super().popitem()
        self._metrics.count_token_eviction("capacity")
        self._on_drop(record)
        return key, record


class MemoryStore:
    """Records in this process; with `path`, loaded from and saved to that file."""

    def __init__(self, max_entries: int, metrics: Metrics, secret: bytes | None, path: str = "") -> None:
        self._records = _Records(max_entries, metrics, self._dropped)
        self._by_token: dict[str, str] = {}
        self._metrics = metrics
        self._path = path
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        # A configured secret is never written to the file; a generated one is, so that a restart
        # finds the same keys.
        self._configured = secret is not None
        stored_secret, records = self._load() if path else (None, [])
        self._secret = secret or stored_secret or secrets.token_bytes(32)
        self._adopt(records)

    async def secret(self) -> bytes:
        return self._secret

    async def get(self, key: str) -> SealedRecord | None:
        return self._records.get(key)

    async def put(self, record: SealedRecord) -> None:
        old = self._records.get(record.key)
        if old is not None:
            self._by_token.pop(old.token_id, None)
        self._records[record.key] = record
        self._by_token[record.token_id] = record.key
        self._changed()

    async def forget_token(self, token_id: str) -> str | None:
        key = self._by_token.pop(token_id, None)
        record = self._records.get(key) if key is not None else None
        if key is None or record is None or record.token_id != token_id:
            return None
        del self._records[key]
        self._changed()
        return key

    async def lock(self, key: str, seconds: float) -> str | None:
        return "local"  # one process: the cache's own single-flight already serialises logins

    async def unlock(self, key: str, holder: str) -> None:
        return None

    def entries(self) -> int | None:
        self._records.expire()
        return len(self._records)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer
        if self._dirty:
            await self._save()

    def _dropped(self, record: SealedRecord) -> None:
        if self._by_token.get(record.token_id) == record.key:
            del self._by_token[record.token_id]

    # -- persistence ------------------------------------------------------------------------------
    def _load(self) -> tuple[bytes | None, list[tuple[str, SealedRecord]]]:
        """The generated secret and the records (with the id of the secret they were made under) of
        an earlier run; a missing or unreadable file gives nothing."""
        try:
            with open(self._path, encoding="utf-8") as stream:
                data = json.load(stream)
            if data.get("version") != _FILE_VERSION:
                raise ValueError("unknown version")
            stored = base64.b64decode(data["secret"], validate=True) if data.get("secret") else None
            made_under = str(data["secret_id"])
            records = [(made_under, SealedRecord.from_json(item)) for item in data["records"]]
        except FileNotFoundError:
            return None, []
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning(
                "token cache file %s not loaded (%s); starting empty", self._path, type(error).__name__
            )
            return None, []
        return stored, records

    def _adopt(self, records: list[tuple[str, SealedRecord]]) -> None:
        now = time.time()
        stale = 0
        for made_under, record in records:
            if made_under != _secret_id(self._secret):
                stale += 1  # keyed under another tokens.secret: no lookup could ever find it
            elif record.expires_at > now:
                self._records[record.key] = record
                self._by_token[record.token_id] = record.key
        if self._path and records:
            log.info("token cache file %s: %d logins loaded", self._path, len(self._records))
        if stale:
            log.warning(
                "token cache file %s: %d logins dropped (made under another tokens.secret)", self._path, stale
            )

    def _changed(self) -> None:
        if not self._path:
            return
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._save())

    async def _save(self) -> None:
        while self._dirty:
            self._dirty = False
            self._records.expire()
            document = {
                "version": _FILE_VERSION,
                "secret": None if self._configured else base64.b64encode(self._secret).decode(),
                "secret_id": _secret_id(self._secret),
                "records": [record.to_json() for record in self._records.values()],
            }
            data = json.dumps(document, separators=(",", ":")).encode()
            try:
                await asyncio.get_running_loop().run_in_executor(None, write_atomically, self._path, data)
            except OSError as error:
                log.error("cannot write the token cache file %s: %s", self._path, error.strerror)


def write_atomically(path: str, data: bytes) -> None:
    """Replace `path` by a file holding `data`, mode 0600, never leaving a partial file behind."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tokens-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)


def _secret_id(secret: bytes) -> str:
    """Names a secret without revealing it: which secret the records of a file were made under."""
    return hmac.new(secret, b"secret id", hashlib.sha256).hexdigest()[:16]


def secret_from_config(value: str) -> bytes | None:
    """The configured tokens.secret as HMAC key bytes (None when unset)."""
    if not value:
        return None
    return hmac.new(b"tornadoproxy tokens.secret", value.encode(), hashlib.sha256).digest()
