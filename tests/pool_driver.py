"""A process that runs the gateway's account pool, built from a config file as the gateway builds it,
and takes and gives back slots on request: a consumer the cross-process tests control step by step
(several pool processes sharing Redis, one killed holding a slot), which real traffic cannot do
precisely. `python -m tests.pool_driver CONFIG PORT`
prints one line once it listens on 127.0.0.1:PORT.

  POST /acquire?model=&exclude=a,b  -> {"lease", "account"} once a slot is free (or the pool's error)
  POST /release/<lease>?outcome=ok&clears_in=  -> {}
  GET /accounts, GET /metrics      -> as the gateway's
"""

from __future__ import annotations

import asyncio
import json
import sys

from prometheus_client import CollectorRegistry
from tornado.web import Application, RequestHandler

from tornadoproxy.auth.logins import Logins
from tornadoproxy.auth.tokens import TokenCache
from tornadoproxy.errors import GatewayError
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.observability.sharedmetrics import prepare_process
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.pool.report import pool_report
from tornadoproxy.process.server import build_pool, build_upstream_side
from tornadoproxy.process.wiring import build_store, load


class Driven(RequestHandler):
    def initialize(self, pool: AccountPool, metrics: Metrics, leases: dict[str, Lease]) -> None:
        self.pool = pool
        self.metrics = metrics
        self.leases = leases

    def reply(self, payload: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))


class Acquire(Driven):
    async def post(self) -> None:
        exclude = [name for name in self.get_argument("exclude", "").split(",") if name]
        try:
            lease = await self.pool.acquire(self.get_argument("model", None), exclude)
        except GatewayError as error:
            retry = {"retry_after": error.retry_after} if error.retry_after else {}
            self.reply({"error": error.code, "message": error.message, **retry}, error.status)
            return
        self.leases[lease.id] = lease
        self.reply({"lease": lease.id, "account": lease.account})


class Release(Driven):
    def post(self, lease_id: str) -> None:
        kind = self.get_argument("outcome", "ok")
        clears_in = self.get_argument("clears_in", None)
        outcome = Outcome(kind, float(clears_in) if clears_in else None, "" if kind == "ok" else kind)  # type: ignore[arg-type]
        self.leases.pop(lease_id).release(outcome)
        self.reply({})


class Accounts(Driven):
    def get(self) -> None:
        self.reply(pool_report(self.pool))


class Exposition(Driven):
    def get(self) -> None:
        body, content_type = self.metrics.render(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)


async def main(config_path: str, port: int) -> None:
    prepare_process(None)
    config, routes, _ = load(config_path, {})
    metrics = Metrics(CollectorRegistry(), tuple(routes))
    upstream = build_upstream_side(config, routes, metrics)
    egress = upstream.egress
    logins = Logins(config.logins, config.upstreams, upstream.relay, metrics)
    tokens = TokenCache(config.tokens, config.logins, build_store(config, metrics), metrics)
    pool = build_pool(config, metrics, egress, logins, tokens)
    assert pool is not None
    pool.start()
    state = {"pool": pool, "metrics": metrics, "leases": {}}
    app = Application(
        [
            (r"/acquire", Acquire, state),
            (r"/release/(.+)", Release, state),
            (r"/accounts", Accounts, state),
            (r"/metrics", Exposition, state),
        ]
    )
    app.listen(port, "127.0.0.1")
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
