"""What handlers need, gathered by the composition root (server.py); no logic lives here."""

from __future__ import annotations

from dataclasses import dataclass, field

from tornadoproxy.config import Config
from tornadoproxy.fetcher import Fetcher
from tornadoproxy.logins import Logins
from tornadoproxy.metrics import Metrics
from tornadoproxy.tokens import TokenCache


@dataclass(slots=True)
class Lifecycle:
    """Process state that handlers read: whether the gateway is draining."""

    draining: bool = False


@dataclass(frozen=True, slots=True)
class Services:
    config: Config
    fetcher: Fetcher
    metrics: Metrics
    logins: Logins
    tokens: TokenCache
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
