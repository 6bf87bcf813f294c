"""/platform/...: the OpenAI Platform API relay (docs/upstream-platform.md).

Every route relays to the same path under `upstreams.platform`; the seed's routes are listed one by
one so that metrics and logs carry their templates, and any other `/platform/v1/<path>` or
`/platform/dashboard/<path>` is relayed the same way under a catch-all template.
"""

from __future__ import annotations

from tornadoproxy.relay.forwarding import upstream_url
from tornadoproxy.web.handlers.base import BaseHandler
from tornadoproxy.web.handlers.routing import Route

_PREFIX = "/platform"


class PlatformRelayHandler(BaseHandler):
    """Relays method, query, headers that matter and the raw body to the same path upstream."""

    async def _relay(self, *_args: str) -> None:
        self.check_request()
        base = self.services.config.upstreams.platform
        url = upstream_url(base, self.request.path[len(_PREFIX) :], self.request.query)
        method = self.request.method or "GET"
        await self.relay("platform", url, self.body if method not in ("GET", "HEAD") else None)

    get = post = put = patch = delete = head = _relay


ROUTES: list[Route] = [
    Route("/platform/v1/models", PlatformRelayHandler),
    Route("/platform/v1/models/{model}", PlatformRelayHandler),
    Route("/platform/v1/completions", PlatformRelayHandler),
    Route("/platform/v1/chat/completions", PlatformRelayHandler),
    Route("/platform/v1/edits", PlatformRelayHandler),
    Route("/platform/v1/images/generations", PlatformRelayHandler),
    Route("/platform/v1/embeddings", PlatformRelayHandler),
    Route("/platform/v1/moderations", PlatformRelayHandler),
    Route("/platform/v1/files", PlatformRelayHandler),
    Route("/platform/v1/files/{file_id}", PlatformRelayHandler),
    Route("/platform/dashboard/billing/credit_grants", PlatformRelayHandler),
    Route("/platform/dashboard/billing/subscription", PlatformRelayHandler),
    Route("/platform/dashboard/user/api_keys", PlatformRelayHandler),
    Route("/platform/v1/{path}", PlatformRelayHandler),
    Route("/platform/dashboard/{path}", PlatformRelayHandler),
]
