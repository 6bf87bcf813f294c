"""The login-token cache: one upstream login per user per token lifetime, whatever clients do.

`TokenCache.obtain()` answers a login from the cache when the username's sealed record opens with the
password given (sealing.py), joins an identical login in flight (single-flight), answers a recently
failed username and password again from memory, applies the attempt limits (limits.py), and only
then runs the upstream login it is handed, sealing the answer for later. A wrong password never
opens a cached login and never reaches the upstream while one is cached. Runs on the IOLoop only
(cachetools is not thread-safe); scrypt runs on a one-thread executor.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache, TTLCache

from tornadoproxy.auth.families import FLOW_NAMES
from tornadoproxy.auth.limits import LoginLimits
from tornadoproxy.auth.sealing import (
    SALT_BYTES,
    SealedRecord,
    derive_key,
    fingerprint,
    seal,
    token_id,
    unseal,
    user_key,
)
from tornadoproxy.auth.tokenstore import StoreUnavailable, TokenStore
from tornadoproxy.config.schema import LoginsConfig, TokensConfig
from tornadoproxy.errors import Code, GatewayError, LoginError, UpstreamError
from tornadoproxy.observability.metrics import Metrics

log = logging.getLogger(__name__)

# Outcomes that say something about the credentials: remembered for logins.failure_memory.
_REMEMBERED = ("failed", "mfa", "blocked")
_WARN_EVERY = 10.0  # seconds between two warnings about an unreachable store
_TURN_POLL = 0.1  # seconds between two looks for another gateway's login of the same user


class LoginAnswer(Protocol):
    """What an upstream login returns (logins.LoginResult)."""

    @property
    def body(self) -> bytes: ...
    @property
    def token(self) -> str: ...
    @property
    def expires_at(self) -> float | None: ...


Login = Callable[[], Awaitable[LoginAnswer]]


@dataclass(frozen=True, slots=True)
class _Opened:
    """A record this process has opened (or sealed): its plaintext answer and who opened it."""

    nonce: bytes
    fingerprint: bytes
    body: bytes
    expires_at: int


class TokenCache:
    """Built once by the composition root around one store."""

    def __init__(
        self, config: TokensConfig, logins: LoginsConfig, store: TokenStore, metrics: Metrics
    ) -> None:
        self.config = config
        self._store = store
        self._metrics = metrics
        self._process_key = os.urandom(32)
        self._opened: TLRUCache[str, _Opened] = TLRUCache(
            config.max_entries, ttu=lambda _k, item, _now: item.expires_at, timer=time.time
        )
        self._flights: dict[bytes, asyncio.Future[bytes | GatewayError]] = {}
        self._failures: TTLCache[bytes, GatewayError] | None = None
        if logins.failure_memory > 0:
            self._failures = TTLCache(100_000, logins.failure_memory)
        self._limits = LoginLimits(
            (logins.max_failures_per_username, logins.username_window),
            (logins.max_failures_per_address, logins.address_window),
        )
        # Another gateway's login may take the whole login timeout, plus sealing.
        self._turn_seconds = logins.timeout + 10
        self._kdf = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokens-scrypt")
        self._warned_at = 0.0
        metrics.watch_token_entries(self._entries)

    async def obtain(self, family: str, username: str, password: str, client: str, login: Login) -> bytes:
        """The login answer for these credentials: cached, joined, or from `login()` (run once)."""
        secret = await self._secret()
        key = user_key(secret or self._process_key, family, username)
        attempt = fingerprint(self._process_key, key, password)
        flight = self._flights.get(attempt)
        if flight is not None:
            self._metrics.count_login(family, "joined")
            outcome = await asyncio.shield(flight)
            if isinstance(outcome, GatewayError):
                raise copy.copy(outcome)
            return outcome
        flight = asyncio.get_running_loop().create_future()
        self._flights[attempt] = flight
        try:
            body = await self._obtain(family, key, attempt, password, client, login, secret is not None)
        except BaseException as error:
            # The joiners get a copy to raise, never this error: its traceback holds this request's
            # frames, and an exception kept in a future that such frames refer to is a reference
            # cycle, which would hold the request until a full garbage collection.
            flight.set_result(copy.copy(error) if isinstance(error, GatewayError) else _interrupted(family))
            raise
        else:
            flight.set_result(body)
            return body
        finally:
            del self._flights[attempt]

    async def forget_token(self, authorization: str, reason: str = "unauthorized") -> None:
        """An upstream answered 401 to this credential (or the account pool replaces it before it
        expires: reason "refreshed"): drop the cached login that issued it, if any."""
        token = authorization[7:] if authorization[:7].lower() == "bearer " else authorization
        secret = await self._secret()
        if secret is None or not token:
            return
        try:
            key = await self._store.forget_token(token_id(secret, token))
        except StoreUnavailable as error:
            self._warn("cannot evict a refused token", error)
            return
        if key is not None:
            self._opened.pop(key, None)
            self._metrics.count_token_eviction(reason)
            if reason == "unauthorized":
                log.info("a cached login was refused upstream (401) and evicted")

    async def close(self) -> None:
        await self._store.close()
        self._kdf.shutdown(wait=False, cancel_futures=True)

    # -- one attempt, alone -----------------------------------------------------------------------
    async def _obtain(
        self,
        family: str,
        key: str,
        attempt: bytes,
        password: str,
        client: str,
        login: Login,
        cache_usable: bool,
    ) -> bytes:
        holder = None
        if cache_usable:
            found: bytes | str | None = await self._lookup(family, key, attempt, password)
            outcome = "cached"
            if found == "miss":
                holder, found = await self._take_turn(family, key, attempt, password)
                outcome = "joined"  # the answer, if any, comes from another gateway's login
            if isinstance(found, bytes):
                self._metrics.count_login(family, outcome)
                return found
            if found == "mismatch":
                self._refuse(family, key, attempt, client)
        try:
            return await self._login_upstream(family, key, attempt, password, client, login, cache_usable)
        finally:
            if holder is not None:
                await self._release(key, holder)

    async def _login_upstream(
        self,
        family: str,
        key: str,
        attempt: bytes,
        password: str,
        client: str,
        login: Login,
        cache_usable: bool,
    ) -> bytes:
        self._replay_failure(family, attempt)
        self._check_limits(family, key, client)
        self._limits.begin(key, client)
        outcome = "error"
        try:
            answer = await login()
            outcome = "ok"
        except LoginError as error:
            outcome = error.outcome
            self._remember(attempt, error, outcome)
            log.info("%s ended with %s; %s", FLOW_NAMES[family], error.code, error.message)
            raise
        except UpstreamError as error:
            outcome = "challenge" if error.kind in ("challenge", "blocked") else "error"
            log.warning("%s ended with %s; %s", FLOW_NAMES[family], error.code, error.message)
            raise
        finally:
            self._limits.end(key, client, outcome)
            self._metrics.count_login(family, outcome)
        if cache_usable:
            await self._keep(family, key, attempt, password, answer)
        return answer.body

    async def _take_turn(
        self, family: str, key: str, attempt: bytes, password: str
    ) -> tuple[str | None, bytes | str | None]:
        """Across gateways sharing a store: wait while another one logs this user in.

        Returns (lock holder, None) when it is this gateway's turn to log in, or (None, what the other
        login left: its answer, or "mismatch" when it does not open with this password). Gives up
        waiting after logins.timeout (the lock expires by then) and logs in itself."""
        deadline = time.monotonic() + self._turn_seconds
        announced = False
        while True:
            try:
                holder = await self._store.lock(key, self._turn_seconds)
                if holder is not None:
                    return holder, None
                if not announced:
                    announced = True
                    log.info("waiting for another gateway's %s of the same user", FLOW_NAMES[family])
                if time.monotonic() > deadline:
                    return None, None
                await asyncio.sleep(_TURN_POLL)
                record = await self._store.get(key)
            except StoreUnavailable as error:
                self._warn("token cache unavailable, logging in upstream", error)
                return None, None
            if record is not None:
                found = await self._lookup(family, key, attempt, password)
                if found != "miss":
                    return None, found

    async def _release(self, key: str, holder: str) -> None:
        try:
            await self._store.unlock(key, holder)
        except StoreUnavailable as error:
            self._warn("cannot release a login lock (it expires by itself)", error)

    async def _lookup(self, family: str, key: str, attempt: bytes, password: str) -> bytes | str:
        """The cached answer if the record opens with `password`, else "miss" or "mismatch"."""
        try:
            record = await self._store.get(key)
        except StoreUnavailable as error:
            self._warn("token cache unavailable, logging in upstream", error)
            record = None
        if record is None or record.family != family:
            self._opened.pop(key, None)
            self._metrics.count_token_lookup(family, "miss")
            return "miss"
        opened = self._opened.get(key)
        if opened is not None and opened.nonce == record.nonce:
            # Opened before in this process: a keyed hash decides, no scrypt needed.
            if hmac.compare_digest(opened.fingerprint, attempt):
                self._metrics.count_token_lookup(family, "hit")
                return opened.body
            self._metrics.count_token_lookup(family, "mismatch")
            return "mismatch"
        body = await self._open(record, password)
        if body is None:
            self._metrics.count_token_lookup(family, "mismatch")
            return "mismatch"
        self._opened[key] = _Opened(record.nonce, attempt, body, record.expires_at)
        self._metrics.count_token_lookup(family, "hit")
        return body

    def _refuse(self, family: str, key: str, attempt: bytes, client: str) -> None:
        """A password that does not open the cached login: fail without reaching the upstream."""
        self._replay_failure(family, attempt)
        self._check_limits(family, key, client)
        self._limits.record_failure(key, client)
        error = LoginError(
            f"the {FLOW_NAMES[family]} failed: the password does not match the cached login of this "
            "username (nothing was sent upstream); if the password was changed, the cached login ends "
            "when its token expires or is refused upstream",
        )
        self._remember(attempt, error, "failed")
        self._metrics.count_login(family, "failed")
        raise error

    def _replay_failure(self, family: str, attempt: bytes) -> None:
        remembered = self._failures.get(attempt) if self._failures is not None else None
        if remembered is not None:
            self._metrics.count_login(family, "remembered")
            raise copy.copy(remembered)

    def _remember(self, attempt: bytes, error: LoginError, outcome: str) -> None:
        if self._failures is not None and outcome in _REMEMBERED:
            # A copy: the error itself carries the traceback, and so this request, for its memory.
            self._failures[attempt] = copy.copy(error)

    def _check_limits(self, family: str, key: str, client: str) -> None:
        wait = self._limits.retry_after(key, client)
        if wait is not None:
            self._metrics.count_login(family, "limited")
            raise LoginError(
                f"too many failed {FLOW_NAMES[family]}s for this username or from this address; retry "
                f"after {wait} s (logins.max_failures_per_username, logins.max_failures_per_address)",
                outcome="limited",
                code=Code.LOGIN_RATE_LIMITED,
                retry_after=wait,
            )

    # -- sealing ----------------------------------------------------------------------------------
    async def _keep(self, family: str, key: str, attempt: bytes, password: str, answer: LoginAnswer) -> None:
        deadline = cache_deadline(
            family, answer.expires_at, time.time(), self.config.expiry_margin, self.config.session_key_ttl
        )
        secret = await self._secret()
        if deadline is None or secret is None:
            return
        salt = os.urandom(SALT_BYTES)
        cost = self.config.kdf_cost
        derived = await asyncio.get_running_loop().run_in_executor(
            self._kdf, derive_key, password, salt, cost
        )
        tid = token_id(secret, answer.token)
        record = seal(derived, salt, cost, key, family, deadline, tid, answer.body)
        try:
            await self._store.put(record)
        except StoreUnavailable as error:
            self._warn("cannot store a login in the token cache", error)
            return
        self._opened[key] = _Opened(record.nonce, attempt, answer.body, deadline)

    async def _open(self, record: SealedRecord, password: str) -> bytes | None:
        derived = await asyncio.get_running_loop().run_in_executor(
            self._kdf, derive_key, password, record.salt, record.cost
        )
        return unseal(record, derived)

    async def _secret(self) -> bytes | None:
        try:
            return await self._store.secret()
        except StoreUnavailable as error:
            self._warn("token cache unavailable, logging in upstream", error)
            return None

    def _entries(self) -> float:
        count = self._store.entries()
        if count is None:
            self._opened.expire()
            count = len(self._opened)
        return float(count)

    def _warn(self, what: str, error: StoreUnavailable) -> None:
        self._metrics.token_store_errors.inc()
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY:
            self._warned_at = now
            log.warning("%s: %s", what, error)


def cache_deadline(
    family: str, expires_at: float | None, now: float, margin: float, session_key_ttl: float
) -> int | None:
    """Until when (epoch seconds) a fresh login may be served from cache, or None not to cache it:
    an accessToken until its own expiry minus `margin` (not at all when its expiry is unknown or
    too close), a sessionKey (no expiry of its own) for `session_key_ttl`."""
    if family == "platform":
        return int(now + session_key_ttl)
    if expires_at is None:
        return None
    deadline = int(expires_at - margin)
    return deadline if deadline > now else None


def _interrupted(family: str) -> GatewayError:
    return GatewayError.of(Code.LOGIN_INTERRUPTED, flow=FLOW_NAMES[family])
