"""A lease: one slot of one account, held by one request until it is released with its outcome.

It carries what the consumer needs to send as that account: the token, the egress proxy and client
profile to pin on its `UpstreamRequest`s, and the account's stable `Oai-Device-Id`. Releasing is
synchronous and happens once (later calls do nothing), so a `finally` can always call it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.redact import Secret
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.profiles import ClientProfile


@dataclass(eq=False, slots=True)
class Lease:
    id: str
    account: str
    token: Secret
    proxy: EgressProxy
    profile: ClientProfile | None  # None: the route's own profile (profiles.chatgpt)
    device_id: str
    waited: float  # seconds the request waited for it
    shared: bool  # registered in Redis (released there too)
    _on_release: Callable[[Lease, Outcome], None] = field(repr=False)
    taken_at: float = field(default_factory=time.monotonic)
    released: bool = False

    @property
    def authorization(self) -> str:
        """The Authorization header value for the account's requests."""
        return "Bearer " + self.token.reveal()

    def release(self, outcome: Outcome | None = None) -> None:
        """Give the slot back, saying how the answer ended (default: ok). Idempotent."""
        if self.released:
            return
        self.released = True
        self._on_release(self, outcome or Outcome.ok())
