"""/imitate/v1/...: ChatGPT web accounts answering as the OpenAI API (docs/imitate.md).

`POST /imitate/v1/chat/completions` reads the request (every refusal a 400 naming its `param`,
before anything goes upstream) and hands it to the completions service (imitate/service/); the
models routes answer from the model map. Who pays is decided first (web/imitate_access.py). The
service runs as a task of its own, cancelled when the client disconnects (tornado does not cancel a
handler's coroutine): that takes the request out of the pool's queue, or ends its web request, at
once.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote

from tornadoproxy.errors import Code, GatewayBusy
from tornadoproxy.imitate.models import model_not_found
from tornadoproxy.imitate.output import model_list, model_object
from tornadoproxy.imitate.request import read_chat_request
from tornadoproxy.imitate.service.completions import CompletionRecord, ImitateService
from tornadoproxy.imitate.service.seats import Payer
from tornadoproxy.relay.client import ClientGone
from tornadoproxy.web.credentials import HEADERS
from tornadoproxy.web.handlers.base import BaseHandler
from tornadoproxy.web.handlers.routing import Route
from tornadoproxy.web.imitate_access import imitate_payer
from tornadoproxy.web.services import Services

_MODELS = "/imitate/v1/models/"


def payer_of(handler: BaseHandler, service: ImitateService) -> Payer:
    """Who pays for this request, or the 401 invalid_api_key (403 for an address not allowed)."""
    headers = handler.request.headers
    policy = handler.services.access
    return imitate_payer(
        policy,
        handler.client_address,
        headers.get(policy.key_header),
        [headers.get_list(name) for name in HEADERS],
        service.access_tokens,
    )


def service_of(handler: BaseHandler) -> ImitateService:
    service = handler.services.imitate
    assert service is not None  # built by the composition root of every serving process
    return service


class ChatCompletionsHandler(BaseHandler):
    # The credential check is this route's own (web/imitate_access.py): OpenAI clients send their
    # key as the bearer, and every refusal here is invalid_api_key.
    open_access = True

    def initialize(
        self, services: Services, route: str = "(unmatched)", trusted_listener: bool = False
    ) -> None:
        super().initialize(services, route, trusted_listener)
        self._record = CompletionRecord()
        self._task: asyncio.Task[None] | None = None

    async def post(self) -> None:
        self.check_request()
        service = service_of(self)
        payer = payer_of(self, service)
        chat = read_chat_request(self.body)
        service.slug_for(chat.model)  # 404 model_not_found before anything else happens
        if self.services.lifecycle.draining:
            raise GatewayBusy(Code.SHUTTING_DOWN.message, retry_after=1)
        task = asyncio.ensure_future(service.complete(chat, payer, self, self._record))
        self._task = task
        try:
            await task
        except (asyncio.CancelledError, ClientGone):
            if not self.gone:
                raise
            self._client_left()

    def log_fields(self) -> dict[str, object]:
        return self._record.fields()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _client_left(self) -> None:
        """End a request whose client left: 499 for the access log, or the stream's end."""
        if self._finished:
            return
        if not self._headers_written:
            self.clear()
            self.set_status(499, "Client Closed Request")  # nginx's code: nobody to answer
        self.finish()


class ModelsHandler(BaseHandler):
    open_access = True

    def get(self) -> None:
        self.check_request()
        service = service_of(self)
        payer_of(self, service)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model_list(service.models.listed())))


class ModelHandler(BaseHandler):
    """A model the map names exactly or by a prefix (not the default's catch-all)."""

    open_access = True

    def get(self) -> None:
        self.check_request()
        service = service_of(self)
        payer_of(self, service)
        name = unquote(self.request.path[len(_MODELS) :])
        if service.models.mapped(name) is None:
            raise model_not_found(name)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model_object(name)))


ROUTES: list[Route] = [
    Route("/imitate/v1/chat/completions", ChatCompletionsHandler),
    Route("/imitate/v1/models", ModelsHandler),
    Route("/imitate/v1/models/{id}", ModelHandler),
]
