"""GET /accounts (and /accounts.html): what the account pool is doing, for operators.

JSON (pool/report.py), or the status page when the client prefers text/html (a browser) or asks for
/accounts.html. Served on the ops listener as is; on the main listener only to a request carrying a
client key (in the key header, or as the bearer as OpenAI clients send it): a gateway without client
keys shows its accounts on the ops listener only.
"""

from __future__ import annotations

import json

from tornadoproxy.errors import Code, GatewayError
from tornadoproxy.pool.report import pool_report
from tornadoproxy.web.accounts_page import render_accounts_page
from tornadoproxy.web.handlers.base import BaseHandler
from tornadoproxy.web.handlers.routing import Route

_PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class AccountsHandler(BaseHandler):
    # The access policy is applied in get(): this route also takes the client key as the bearer,
    # and needs one even where the policy would let anyone in.
    open_access = True

    def get(self) -> None:
        self.check_request()
        self._check_client_key()
        report = pool_report(self.services.pool)
        self.set_header("Cache-Control", "no-store")
        if self.route.endswith(".html") or prefers_html(self.request.headers.get("Accept", "")):
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.set_header("Content-Security-Policy", _PAGE_POLICY)
            self.set_header("X-Content-Type-Options", "nosniff")
            self.finish(render_accounts_page(report))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(report))

    def _check_client_key(self) -> None:
        if self.trusted_listener:
            return
        policy = self.services.access
        if not policy.digests:
            raise GatewayError.of(Code.ACCOUNTS_FORBIDDEN)
        key = self.request.headers.get(policy.key_header)
        if not key:
            bearer = self.request.headers.get("Authorization", "")
            key = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
        policy.check(self.client_address, key)


def prefers_html(accept: str) -> bool:
    """Whether an Accept header ranks text/html above application/json (a tie means JSON)."""
    ranks: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranks[media.lower()] = max(quality, ranks.get(media.lower(), 0.0))

    def rank(media: str) -> float:
        kind = media.split("/")[0] + "/*"
        return ranks.get(media, ranks.get(kind, ranks.get("*/*", 0.0)))

    return rank("text/html") > rank("application/json")


ROUTES: list[Route] = [
    Route("/accounts", AccountsHandler),
    Route("/accounts.html", AccountsHandler),
]
