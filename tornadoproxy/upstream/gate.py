"""The bounded gate in front of the upstream client: at most N requests at once, a bounded wait.

tornado's curl client queues requests beyond max_clients without any timeout (docs/pitfalls.md):
the gate answers 503 with Retry-After instead, after at most `fetch.queue_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import collections

from tornadoproxy.errors import Code, GatewayBusy
from tornadoproxy.observability.metrics import Metrics


class Gate:
    """At most `capacity` upstream requests at once; a request waits at most `wait` seconds."""

    def __init__(self, capacity: int, wait: float, metrics: Metrics) -> None:
        self._free = capacity
        self.wait = wait
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._metrics = metrics
        metrics.gate_capacity.set(capacity)

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._metrics.gate_in_flight.inc()
            return
        if self.wait <= 0:
            self._reject()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # granted just as the wait ran out: keep the slot
            waiter.cancel()
            self._reject()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            waiter.cancel()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1
        self._metrics.gate_in_flight.dec()

    def _reject(self) -> None:
        self._metrics.gate_rejected.inc()
        raise GatewayBusy(Code.GATEWAY_BUSY.message, retry_after=1)
