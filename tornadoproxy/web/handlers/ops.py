"""Operational endpoints: /healthz, /metrics, and the JSON 404 for every unknown path."""

from __future__ import annotations

import json

from tornadoproxy.errors import Code, NotFound
from tornadoproxy.pool.report import readiness_report
from tornadoproxy.web.handlers.base import BaseHandler
from tornadoproxy.web.handlers.routing import Route


class HealthHandler(BaseHandler):
    """The process is alive and its event loop turns."""

    open_access = True

    def get(self) -> None:
        self.check_request()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"status": "ok"}))

    head = get


class ReadyHandler(BaseHandler):
    """The last upstream probe results, keyed by upstream name (and the account pool's state under
    "pool" when accounts are configured); 503 only while starting or draining."""

    def get(self) -> None:
        self.check_request()
        readiness = self.services.readiness
        starting = not readiness.first_round_done
        self.set_status(503 if starting or self.services.lifecycle.draining else 200)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        report: dict[str, object] = dict(readiness.report())
        if self.services.pool is not None:
            report["pool"] = readiness_report(self.services.pool)
        self.finish(json.dumps(report))


class MetricsHandler(BaseHandler):
    """Prometheus exposition (text format, or OpenMetrics when the scraper asks for it)."""

    def get(self) -> None:
        self.check_request()
        body, content_type = self.services.metrics.render(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)


class NotFoundHandler(BaseHandler):
    """Any path no route claims: 404 JSON (or 400 if the path itself is malformed)."""

    def _not_found(self, *_args: str) -> None:
        self.check_request()
        raise NotFound.of(Code.NOT_FOUND)

    get = post = put = patch = delete = head = _not_found


ROUTES: list[Route] = [
    Route("/healthz", HealthHandler),
    Route("/readyz", ReadyHandler),
    Route("/metrics", MetricsHandler),
]
