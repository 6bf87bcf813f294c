"""What handlers need, gathered by the composition root (server.py); no logic lives here.

`config` and `access` are replaced as a whole when the configuration is reloaded (SIGHUP); handlers
read them per request and never keep them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tornadoproxy.auth.logins import Logins
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.config.schema import Config
from tornadoproxy.imitate.service.completions import ImitateService
from tornadoproxy.observability.logs import AccessLog
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.relay.readiness import Readiness
from tornadoproxy.relay.service import Relay
from tornadoproxy.web.access import AccessPolicy
from tornadoproxy.web.body_intake import BodyDeadlines
from tornadoproxy.web.pooled_relay import PooledRelay


@dataclass(slots=True)
class Lifecycle:
    """Process state shared by handlers and the drain: whether the gateway is draining, and which
    worker process this is (None when the gateway runs as one process)."""

    draining: bool = False
    worker: int | None = None


@dataclass(slots=True)
class Services:
    config: Config
    access: AccessPolicy
    relay: Relay
    metrics: Metrics
    readiness: Readiness
    logins: Logins
    tokens: TokenCache
    access_log: AccessLog
    body_deadlines: BodyDeadlines
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    pool: AccountPool | None = None  # None without accounts
    imitate: ImitateService | None = None  # the /imitate service (set by the composition root)
    pooled: PooledRelay | None = None  # the relayed routes' side of the pool (None without accounts)
