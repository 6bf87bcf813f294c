"""Token lifecycle of the pool's accounts, in the background: never on a request's path.

A password account is logged in at start-up through the gateway's own login flow and token cache
(`TokenCache.obtain` with `Logins.login`, pinned to the account's egress and profile), and again
ahead of its token's expiry (pool.refresh_margin), one login at a time per account; a failed login is
tried again after a backoff, and wrong credentials (wrong password, MFA, deactivated) make the account
invalid. A 401 on the account's token drops it and starts one fresh login. A fixed token is invalid
once its JWT `exp` passes or the upstream refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from functools import partial

from tornadoproxy.auth.logins import Logins, jwt_expiry, token_expiry
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.config.accounts import PoolConfig
from tornadoproxy.errors import GatewayError, LoginError, UpstreamError
from tornadoproxy.pool.account import Account
from tornadoproxy.pool.binding import EgressBinder
from tornadoproxy.pool.metrics import PoolMetrics
from tornadoproxy.pool.pacing import backoff, refresh_at
from tornadoproxy.redact import Secret

log = logging.getLogger(__name__)

# Login outcomes that say the credentials themselves are wrong: trying again cannot help.
_REFUSED = ("failed", "mfa", "blocked")


class TokenKeeper:
    def __init__(
        self,
        config: PoolConfig,
        logins: Logins,
        tokens: TokenCache,
        binder: EgressBinder,
        metrics: PoolMetrics,
        changed: Callable[[Account], None],
    ) -> None:
        self._config = config
        self._logins = logins
        self._tokens = tokens
        self._binder = binder
        self._metrics = metrics
        self._changed = changed
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._wake: dict[str, asyncio.Event] = {}
        self._refused: dict[str, str] = {}  # account -> the token a 401 refused, to evict from the cache

    def start(self, accounts: Sequence[Account]) -> None:
        loop = asyncio.get_running_loop()
        for account in accounts:
            if account.logs_in:
                self._wake[account.name] = asyncio.Event()
                self._tasks.append(loop.create_task(self._keep(account)))
            else:
                self._watch_fixed(account)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    def unauthorized(self, account: Account, token: Secret) -> None:
        """The upstream answered 401 to `token`: a password account logs in afresh (once, however many
        requests saw the 401), a fixed-token account is invalid."""
        if account.token != token:
            return  # an older token: the account has moved on already
        if not account.logs_in:
            account.mark_invalid(
                f"the upstream refused the access_token (401); replace {account.config_path}.access_token"
            )
            log.warning("account %s is invalid: its access_token was refused", account.name)
            self._changed(account)
            return
        account.token = None
        self._refused[account.name] = token.reveal()
        log.info("account %s: its token was refused (401); logging in again", account.name)
        self._wake[account.name].set()
        self._changed(account)

    # -- fixed tokens -----------------------------------------------------------------------------
    def _watch_fixed(self, account: Account) -> None:
        assert account.fixed_token is not None
        expires = jwt_expiry(account.fixed_token.reveal())
        account.token_expires_at = expires
        if expires is None:
            return  # not a JWT: good until the upstream refuses it
        delay = expires - time.time()
        if delay <= 0:
            self._expire_fixed(account)
        else:
            self._timers.append(asyncio.get_running_loop().call_later(delay, self._expire_fixed, account))

    def _expire_fixed(self, account: Account) -> None:
        moment = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(account.token_expires_at or 0))
        account.mark_invalid(
            f"the access_token expired at {moment}; replace {account.config_path}.access_token"
        )
        log.warning("account %s is invalid: its access_token expired", account.name)
        self._changed(account)

    # -- password accounts ------------------------------------------------------------------------
    async def _keep(self, account: Account) -> None:
        wake = self._wake[account.name]
        while True:
            kind = "refresh" if account.usable(time.time()) else "login"
            account.login_active = True
            self._changed(account)
            try:
                token, expires = await self._log_in(account)
            except Exception as error:
                account.login_active = False
                if not isinstance(error, GatewayError):  # a fault of ours: logged, tried again later
                    log.exception("account %s: the login failed unexpectedly", account.name)
                    error = GatewayError("the login failed unexpectedly")
                if not self._failed(account, kind, error):
                    return
                await _sleep(wake, account.login_retry_at - time.time())
                continue
            obtained = time.time()
            account.token, account.token_expires_at = Secret(token), expires
            account.login_active, account.login_failures, account.login_retry_at = False, 0, 0.0
            self._metrics.count_login(account.name, kind, "ok")
            self._changed(account)
            delay = refresh_at(expires, obtained, self._config.refresh_margin) - obtained if expires else None
            await _sleep(wake, delay)

    async def _log_in(self, account: Account) -> tuple[str, float | None]:
        """One login (from the cache if it holds a token we have not had yet): (token, expiry)."""
        refused = self._refused.pop(account.name, None)
        if refused is not None:
            await self._tokens.forget_token("Bearer " + refused)
        previous = refused or (account.token.reveal() if account.token else None)
        token, expires = await self._obtain(account)
        if token == previous:
            # The cache still serves the token we are replacing (tokens.expiry_margin is shorter than
            # pool.refresh_margin): drop it there, and log in upstream.
            await self._tokens.forget_token("Bearer " + token, reason="refreshed")
            token, expires = await self._obtain(account)
        return token, expires

    async def _obtain(self, account: Account) -> tuple[str, float | None]:
        proxy = await self._binder.proxy_for(account)
        username, password = account.username.reveal(), account.password.reveal()
        login = partial(self._logins.login, "chatgpt", username, password, proxy, account.profile)
        body = await self._tokens.obtain("chatgpt", username, password, f"pool:{account.name}", login)
        try:
            session = json.loads(body)
            token = session["accessToken"]
        except (ValueError, TypeError, KeyError):
            raise UpstreamError("the login answer has no accessToken", kind="protocol") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError("the login answer has no accessToken", kind="protocol")
        return token, token_expiry(session)

    def _failed(self, account: Account, kind: str, error: GatewayError) -> bool:
        """Record a failed login; True if it is to be tried again (after `login_retry_at`)."""
        account.last_error = error.code
        if isinstance(error, LoginError) and error.outcome in _REFUSED:
            self._metrics.count_login(account.name, kind, "refused")
            account.mark_invalid(
                f"the login was refused ({error.code}); fix {account.config_path} and restart: "
                + error.message
            )
            log.warning("account %s is invalid: its login was refused (%s)", account.name, error.code)
            self._changed(account)
            return False
        self._metrics.count_login(account.name, kind, _outcome(error))
        account.login_failures += 1
        config = self._config
        delay = backoff(config.login_backoff, config.login_backoff_cap, account.login_failures)
        delay = max(delay, float(error.retry_after or 0))
        account.login_retry_at = time.time() + delay
        log.warning("account %s: login failed (%s), trying again in %.0f s", account.name, error.code, delay)
        self._changed(account)
        return True


def _outcome(error: GatewayError) -> str:
    if isinstance(error, UpstreamError) and error.kind in ("challenge", "blocked"):
        return "challenge"
    if error.status == 429:
        return "limited"
    return "error"


async def _sleep(wake: asyncio.Event, delay: float | None) -> None:
    """Wait `delay` seconds (None: until woken), or less if `wake` is set."""
    if delay is None or delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)
    wake.clear()
