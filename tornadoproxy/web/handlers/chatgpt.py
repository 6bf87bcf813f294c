"""/chatgpt/...: the ChatGPT web backend relay (docs/upstream-chatgpt.md).

Each route maps to `<upstreams.chatgpt>/backend-api/...`. Bodies go upstream as sent; the only rewrite
is a missing `messages[].author.role` on conversation create, filled with "user". `POST` is accepted
as an alias of `PATCH` on the two PATCH routes, for clients that cannot send PATCH. With
`pool.serve_chatgpt`, a request with a client key and no accessToken is served by a pool account
(BaseHandler.relay; a conversation create takes a slot of it).
"""

from __future__ import annotations

from urllib.parse import urlencode

from tornadoproxy.errors import BadRequest
from tornadoproxy.formats.bodies import fill_author_roles
from tornadoproxy.relay.forwarding import upstream_url
from tornadoproxy.web.handlers.base import BaseHandler
from tornadoproxy.web.handlers.routing import Route

_PREFIX = "/chatgpt"
_BACKEND = "/backend-api"
MAX_LIMIT = 100


def backend_url(handler: BaseHandler, query: str | None = None) -> str:
    """The upstream URL for this request: /chatgpt/x and /chatgpt/backend-api/x -> <chatgpt>/backend-api/x."""
    rest = handler.request.path[len(_PREFIX) :]
    if not rest.startswith(_BACKEND + "/"):
        rest = _BACKEND + rest
    base = handler.services.config.upstreams.chatgpt
    return upstream_url(base, rest, handler.request.query if query is None else query)


def _body(handler: BaseHandler) -> bytes | None:
    return None if handler.request.method in ("GET", "HEAD") else handler.body


class ConversationsHandler(BaseHandler):
    """GET lists conversations (offset, limit validated); PATCH (or POST) hides them all."""

    pool_route = True

    async def get(self) -> None:
        self.check_request()
        offset = _integer(self, "offset", 0, 0, None)
        limit = _integer(self, "limit", 20, 1, MAX_LIMIT)
        others = [
            (k, v.decode())
            for k, vs in self.request.query_arguments.items()
            for v in vs
            if k not in ("offset", "limit")
        ]
        query = urlencode([("offset", offset), ("limit", limit), *others])
        await self.relay("chatgpt", backend_url(self, query))

    async def patch(self) -> None:
        self.check_request()
        await self.relay("chatgpt", backend_url(self), self.body, method="PATCH")

    post = patch


class ConversationHandler(BaseHandler):
    """GET one conversation; PATCH (or POST) renames or hides it."""

    pool_route = True

    async def get(self) -> None:
        self.check_request()
        await self.relay("chatgpt", backend_url(self))

    async def patch(self) -> None:
        self.check_request()
        await self.relay("chatgpt", backend_url(self), self.body, method="PATCH")

    post = patch


class ConversationCreateHandler(BaseHandler):
    """POST a message: the answer streams back as SSE, event by event."""

    pool_route = True

    async def post(self) -> None:
        self.check_request()
        if not self.served_by_pool:
            self.authorization()  # no credentials, no parsing: 401 before anything else
        await self.relay("chatgpt", backend_url(self), fill_author_roles(self.body), answer=True)


class BackendHandler(BaseHandler):
    """The named routes without special handling, and any other /chatgpt/backend-api/<path>."""

    pool_route = True

    async def _relay(self, *_args: str) -> None:
        self.check_request()
        await self.relay("chatgpt", backend_url(self), _body(self))

    get = post = patch = delete = _relay


class ReadOnlyBackendHandler(BaseHandler):
    """GET-only routes (models, accounts/check)."""

    pool_route = True

    async def get(self) -> None:
        self.check_request()
        await self.relay("chatgpt", backend_url(self))


def _integer(handler: BaseHandler, name: str, default: int, low: int, high: int | None) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None or raw == "":
        return default
    value = int(raw) if raw.isdigit() and len(raw) < 10 else -1
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"query parameter {name!r} must be an integer {bounds}")
    return value


ROUTES: list[Route] = [
    Route("/chatgpt/conversations", ConversationsHandler),
    Route("/chatgpt/conversation", ConversationCreateHandler),
    Route("/chatgpt/conversation/gen_title/{id}", BackendHandler),
    Route("/chatgpt/conversation/message_feedback", BackendHandler),
    Route("/chatgpt/conversation/{id}", ConversationHandler),
    Route("/chatgpt/models", ReadOnlyBackendHandler),
    Route("/chatgpt/accounts/check", ReadOnlyBackendHandler),
    Route("/chatgpt/backend-api/{path}", BackendHandler),
]
