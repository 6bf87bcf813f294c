"""One account of the pool as this process knows it: what the configuration gives (credentials,
egress, profile, concurrency, models) and what happens to it (token, cool-down, logins, counters).

State is derived, never stored: `invalid` (a reason is set), `logging_in` / `cooling` (no usable
token: a login runs, or waits for its backoff), `cooling` (resting after a failure), `busy` (every
slot taken), else `ready`. Times are epoch seconds. Used on the IOLoop only.
"""

from __future__ import annotations

import fnmatch
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from tornadoproxy.config.accounts import AccountConfig
from tornadoproxy.pool.outcome import OUTCOMES
from tornadoproxy.redact import Secret
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.profiles import ClientProfile

AccountState = Literal["ready", "busy", "cooling", "logging_in", "invalid"]
STATES: tuple[AccountState, ...] = ("ready", "busy", "cooling", "logging_in", "invalid")
# Oai-Device-Id values are UUIDs; one per account name, the same in every gateway and after restarts.
_DEVICE_NAMESPACE = uuid.UUID("6b1f3c2e-4a57-4d0b-9a8e-2f5c7d9e1b3a")


@dataclass(eq=False, slots=True)
class Account:
    name: str
    username: Secret
    password: Secret
    concurrency: int
    models: tuple[str, ...]
    own_proxy: EgressProxy | None
    profile: ClientProfile | None
    config_path: str  # "accounts[2]", for messages that tell the operator what to change
    fixed_token: Secret | None = None
    device_id: str = ""
    # -- what happens to it --
    token: Secret | None = None
    token_expires_at: float | None = None
    bound_proxy: EgressProxy | None = None
    invalid_reason: str | None = None
    cooldown_until: float = 0.0
    failures: int = 0  # upstream failures in a row (this process's count, for its own backoff)
    login_active: bool = False
    login_retry_at: float = 0.0
    login_failures: int = 0
    held: int = 0  # slots this process holds
    shared_in_flight: int = 0  # slots every process holds, as Redis said at the last heartbeat
    idle_since: float = 0.0  # monotonic time the account was last taken or given back
    last_error: str | None = None
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))

    @classmethod
    def from_config(
        cls, config: AccountConfig, index: int, own_proxy: EgressProxy | None, profile: ClientProfile | None
    ) -> Account:
        account = cls(
            name=config.name,
            username=config.username,
            password=config.password,
            concurrency=config.concurrency,
            models=config.models,
            own_proxy=own_proxy,
            profile=profile,
            config_path=f"accounts[{index}]",
            fixed_token=None if config.logs_in else config.access_token,
            device_id=str(uuid.uuid5(_DEVICE_NAMESPACE, config.name)),
        )
        if account.fixed_token is not None:
            account.token = account.fixed_token
        return account

    @property
    def logs_in(self) -> bool:
        return self.fixed_token is None

    @property
    def proxy(self) -> EgressProxy | None:
        """The egress the account leaves through: its own, else the one it is bound to (None: not yet)."""
        return self.own_proxy or self.bound_proxy

    def serves(self, model: str | None) -> bool:
        """Whether the account may answer for this web model slug (None: any model)."""
        if model is None or not self.models:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def usable(self, now: float) -> bool:
        """It has a token that is not known to have expired, and is not invalid."""
        if self.invalid_reason is not None or self.token is None:
            return False
        return self.token_expires_at is None or self.token_expires_at > now

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now

    @property
    def in_flight(self) -> int:
        return max(self.held, self.shared_in_flight)

    def free_here(self, now: float) -> bool:
        """Usable, not cooling, and a slot free by this process's own count (the local pool's rule)."""
        return self.usable(now) and not self.cooling(now) and self.held < self.concurrency

    def state(self, now: float | None = None) -> AccountState:
        now = time.time() if now is None else now
        if self.invalid_reason is not None or (not self.logs_in and not self.usable(now)):
            return "invalid"  # a fixed token past its expiry, even before the keeper says so
        if not self.usable(now):
            return "cooling" if not self.login_active and self.login_retry_at > now else "logging_in"
        if self.cooling(now):
            return "cooling"
        return "busy" if self.in_flight >= self.concurrency else "ready"

    def detail(self, now: float) -> str:
        """A few words on why the account is in its state (the reason it is invalid, above all)."""
        state = self.state(now)
        if state == "invalid":
            return self.invalid_reason or f"the access_token of {self.config_path} has expired"
        if state == "logging_in":
            return "logging in" if self.login_active else "waiting for its first login"
        if state == "cooling" and not self.usable(now):
            return f"its last {self.login_failures} login attempt(s) failed; next one soon"
        if state == "cooling":
            return f"resting after {self.last_error or 'an upstream failure'}"
        return ""

    def mark_invalid(self, reason: str) -> None:
        self.invalid_reason = reason
        self.token = None
