"""Upstream probes behind /readyz: cheap periodic requests whose last result is reported, not enforced.

Each upstream gets a request without credentials (docs/gateway.md, "Routes"): for the
ChatGPT backend `GET backend-api/accounts/check` and for the Platform API `GET v1/models`, where a 401
means reachable; for the login hosts `GET /`, where any answer does. A challenge or block page makes
the upstream `challenged` or `blocked`; no answer makes it `unreachable`. The gateway serves whatever
the probes say: the original slept forever when its start-up check failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tornadoproxy.config.schema import ReadinessConfig
from tornadoproxy.errors import Code, UpstreamError
from tornadoproxy.observability.metrics import UPSTREAM_STATES, Metrics
from tornadoproxy.relay.service import Relay
from tornadoproxy.upstream.diagnosis import diagnose
from tornadoproxy.upstream.request import UpstreamRequest

log = logging.getLogger(__name__)

PROBE_PATHS = {
    "chatgpt": "/backend-api/accounts/check",
    "platform": "/v1/models",
    "auth": "/",
    "platform_web": "/",
}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    state: str  # one of metrics.UPSTREAM_STATES
    detail: str
    status: int | None = None
    checked_at: float | None = None
    latency_ms: float | None = None

    def to_json(self) -> dict[str, object]:
        checked = (
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.checked_at)) if self.checked_at else None
        )
        return {
            "state": self.state,
            "status": self.status,
            "detail": self.detail,
            "checked_at": checked,
            "latency_ms": self.latency_ms,
        }


class Readiness:
    """Runs the probes in the background and keeps the last result per upstream."""

    def __init__(
        self, config: ReadinessConfig, urls: Mapping[str, str], relay: Relay, metrics: Metrics
    ) -> None:
        self._config = config
        self._urls = dict(urls)
        self._relay = relay
        self._metrics = metrics
        self._results = {name: ProbeResult("pending", "not probed yet") for name in self._urls}
        self._task: asyncio.Task[None] | None = None
        self.first_round_done = False

    def reconfigure(self, config: ReadinessConfig, urls: Mapping[str, str]) -> None:
        """Take effect from the next probe round (switching probes on or off from now)."""
        self._config = config
        self._urls = dict(urls)
        if not config.enabled:
            self.stop()
            self._disable()
        elif self._task is None or self._task.done():
            self.start()

    def start(self) -> None:
        if not self._config.enabled:
            self._disable()
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _disable(self) -> None:
        for name in self._urls:
            self._results[name] = ProbeResult("disabled", "probes are off (readiness.enabled)")
            self._metrics.set_upstream_state(name, "disabled")
        self.first_round_done = True

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def report(self) -> dict[str, dict[str, object]]:
        return {name: result.to_json() for name, result in self._results.items()}

    async def _run(self) -> None:
        while True:
            await self.probe_all()
            self.first_round_done = True
            if self._config.interval <= 0:
                return
            await asyncio.sleep(self._config.interval)

    async def probe_all(self) -> None:
        results = await asyncio.gather(*(self._probe(name) for name in self._urls))
        for name, result in zip(self._urls, results, strict=True):
            if result.state != self._results[name].state:
                log.info("upstream %s is %s: %s", name, result.state, result.detail)
            self._results[name] = result
            self._metrics.set_upstream_state(name, result.state)

    async def _probe(self, name: str) -> ProbeResult:
        request = UpstreamRequest(name, "GET", self._urls[name] + PROBE_PATHS.get(name, "/"))
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.timeout):  # no extra task (see logins.login)
                answer = await self._relay.fetch(request, gated=False)
        except TimeoutError:
            return self._result("unreachable", f"no answer within {self._config.timeout:g} s", None, started)
        except UpstreamError as error:
            return self._result("unreachable", error.message, None, started)
        problem = diagnose(name, answer.status, answer.headers, answer.body)
        if problem is not None and problem.code in (Code.UPSTREAM_CHALLENGE, Code.UPSTREAM_BLOCKED):
            state = "challenged" if problem.code is Code.UPSTREAM_CHALLENGE else "blocked"
            return self._result(state, problem.message, answer.status, started)
        if answer.status >= 500:
            return self._result("unreachable", f"answered {answer.status}", answer.status, started)
        return self._result("reachable", f"answered {answer.status}", answer.status, started)

    @staticmethod
    def _result(state: str, detail: str, status: int | None, started: float) -> ProbeResult:
        assert state in UPSTREAM_STATES
        latency = round((time.monotonic() - started) * 1000, 1)
        return ProbeResult(state, detail, status, time.time(), latency)
