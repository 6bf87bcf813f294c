"""BaseHandler: request intake and checks, JSON errors, CORS, credentials, and the client side of
the relay.

Every handler subclasses BaseHandler directly. Bodies are received in streaming mode so that the
size limit is checked from Content-Length before a byte of the body is read (a 2 GB upload gets 413,
not tornado's 400). What a relayed answer does (stream or buffer, diagnosis, keep-alives, errors
midway) is the relay's (relay/service.py); the handler writes what the relay hands it
(relay/client.py: status and headers, bytes, a flush bounded by server.client_stall_timeout). On a
route the account pool may serve (`pool_route`), a request with a client key and no accessToken of
its own goes to the pool's relay instead (web/pooled_relay.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, stream_request_body

from tornadoproxy.errors import (
    BadRequest,
    Code,
    GatewayBusy,
    GatewayError,
    MissingAuthorization,
    PayloadTooLarge,
)
from tornadoproxy.relay.client import ClientGone
from tornadoproxy.relay.forwarding import check_raw_path, check_raw_query, forwarded_request_headers
from tornadoproxy.upstream.exchange import Exchange
from tornadoproxy.upstream.request import UpstreamRequest
from tornadoproxy.web.body_intake import BodyBuffer
from tornadoproxy.web.cors import is_preflight, origin_headers, preflight_headers
from tornadoproxy.web.credentials import HEADERS, client_address, upstream_authorization
from tornadoproxy.web.lean_handler import LeanRequestHandler
from tornadoproxy.web.pooled_relay import ACCOUNT_HEADER, PooledCall
from tornadoproxy.web.response_head import add_relayed_headers, relayed_reason
from tornadoproxy.web.services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")

RELAY_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# A refused request with a body up to this size is read before the answer (see prepare()).
_EARLY_ANSWER_BODY = 64 * 1024
_TORNADO_CODES = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED, 400: Code.BAD_REQUEST}


@stream_request_body
class BaseHandler(LeanRequestHandler):
    SUPPORTED_METHODS = RELAY_METHODS + ("OPTIONS",)

    # Handlers any client may reach whatever the access policy (liveness carries no information).
    open_access = False
    # Routes the account pool may serve in place of the client's own credential (pool.serve_chatgpt).
    pool_route = False

    def initialize(
        self, services: Services, route: str = "(unmatched)", trusted_listener: bool = False
    ) -> None:
        self.services = services
        self.route = route
        self.trusted_listener = trusted_listener
        self.upstream_status: int | None = None
        self.bytes_out = 0
        self.streamed = False
        self.stream_end: str | None = None
        self.error_code: str | None = None  # the code of the gateway error this request ended with
        self.error_counted = False  # True when the listener already counted error_code
        self._body = BodyBuffer(services.config.server.max_body_size)
        self._deferred: GatewayError | None = None
        self._exchange: Exchange | None = None
        self._waiting: asyncio.Future[Any] | None = None
        self.gone = False
        self.pool_account: str | None = None  # the pool account that served this request, if one did

    # -- request intake ---------------------------------------------------------------------------
    def prepare(self) -> None:
        self._apply_cors()
        refusal = self._refusal()
        length = self.request.headers.get("Content-Length", "0")
        chunked = "Transfer-Encoding" in self.request.headers
        if refusal is not None:
            large = not length.isdigit() or int(length) > _EARLY_ANSWER_BODY or chunked
            if large or isinstance(refusal, PayloadTooLarge):
                # Answered before the body is read; tornado then closes the connection.
                self.set_header("Connection", "close")
                self.fail(refusal)
                return
            # Answered once the small body is read: answering early can reset the client's socket.
            self._deferred = refusal
        if chunked or length != "0":
            self.services.body_deadlines.watch(self)  # released by check_request() or the end

    def _refusal(self) -> GatewayError | None:
        """Why this request is refused before it is read: access, size, then the raw path."""
        policy = self.services.access
        if not policy.open and not self.open_access and not self.trusted_listener:
            headers = self.request.headers
            try:
                preflight = is_preflight(self.request.method, headers)
                key = headers.get(policy.key_header) or self._bearer_client_key()
                policy.check(self.client_address, key, needs_key=not preflight)
            except GatewayError as error:
                return error
        limit = self.services.config.server.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            return PayloadTooLarge.of(Code.PAYLOAD_TOO_LARGE, limit=limit)
        try:
            check_raw_path(self.request.path)
            check_raw_query(self.request.query)
        except GatewayError as error:
            return error
        return None

    def data_received(self, chunk: bytes) -> None:
        if self._deferred is not None or self._finished:
            return
        if not self._body.add(chunk):
            limit = self._body.limit
            self.set_header("Connection", "close")
            self.fail(PayloadTooLarge.of(Code.PAYLOAD_TOO_LARGE, limit=limit))

    @property
    def body(self) -> bytes:
        return self._body.value()

    def body_timed_out(self) -> None:
        """The body is still incomplete after server.body_timeout seconds (body_intake.py)."""
        self._body.clear()
        self.set_header("Connection", "close")
        timeout = self.services.config.server.body_timeout
        self.fail(GatewayError.of(Code.BODY_TIMEOUT, timeout=timeout))

    def check_request(self) -> None:
        """Raise the error found while the request arrived, if any; every method calls this first
        (the body is complete by then)."""
        self.services.body_deadlines.release(self)
        if self._deferred is not None:
            raise self._deferred

    def compute_etag(self) -> None:
        return None  # relayed bodies are the upstream's; hashing them would only cost time

    # -- responses --------------------------------------------------------------------------------
    def set_default_headers(self) -> None:
        # Also called from the handler's constructor, before initialize() has given us services.
        if hasattr(self, "services"):
            self._apply_cors()

    def _apply_cors(self) -> None:
        origins = self.services.config.server.cors_origins
        if origins:
            for name, value in origin_headers(origins, self.request.headers.get("Origin")):
                self.set_header(name, value)

    def options(self, *_args: str) -> None:
        """CORS preflight, answered by the gateway for every route (cors.py)."""
        self.check_request()
        self.set_status(204)
        if self.services.config.server.cors_origins:
            requested = self.request.headers.get("Access-Control-Request-Headers")
            key_header = self.services.access.key_header
            for name, value in preflight_headers(self.SUPPORTED_METHODS, requested, key_header):
                varies = self._headers.get("Vary") if name == "Vary" else None
                self.set_header(name, f"{varies}, {value}" if varies else value)
        self.finish()

    def fail(self, error: GatewayError) -> None:
        """Answer with the gateway error JSON (if nothing was sent yet)."""
        if self._finished:
            return
        if self._headers_written:
            self.cut()
            return
        self.clear()
        self._answer_error(error)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """tornado's error path (a raised GatewayError, or its own HTTPError): already cleared."""
        self._answer_error(_as_gateway_error(status_code, kwargs.get("exc_info")))

    def _answer_error(self, error: GatewayError) -> None:
        """The one rendering of a gateway error: its status, headers and JSON."""
        self.error_code = error.code
        self.set_status(error.status)
        for name, value in error.headers():
            self.set_header(name, value)
        if self.pool_account is not None:
            self.set_header(ACCOUNT_HEADER, self.pool_account)
        self.set_header("Content-Type", "application/json")
        self.finish(error.to_json())

    def on_finish(self) -> None:
        self.services.body_deadlines.release(self)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, GatewayError):
            return  # an answer, not a fault: the access log has the status
        if isinstance(value, HTTPError) and value.status_code < 500:
            return
        # Not tornado's own line: it carries the raw URI and the request's repr (the Host header).
        method = self.request.method if self.request.method in self.SUPPORTED_METHODS else "other"
        log.error("unexpected failure on %s %s", method, self.route, exc_info=(typ, value, tb))

    def on_connection_close(self) -> None:
        """The client connection closed before this request finished: while its body arrived (the
        client left, the body was malformed or too slow, or the drain closed it) or later."""
        body_complete = self.request._body_future.done()
        if not body_complete:
            # tornado fails this future, and raises its error into its own frame, which refers to
            # this handler: a cycle (handler -> request -> future -> error -> traceback -> frame ->
            # handler) unless the request stops referring to the failed future.
            super().on_connection_close()  # tornado stops waiting for the body and leaves the handler
            self.request._body_future = _completed_future()
        self.gone = True
        self._body.clear()
        self.services.body_deadlines.release(self)
        if self._exchange is not None:
            self._exchange.abort("client_gone")
        if self._waiting is not None:
            self._waiting.cancel()  # tornado leaves the handler's coroutine running: stop its wait
        if not body_complete and not self._finished:
            self._end_without_body()

    def _end_without_body(self) -> None:
        """End, once, a request whose body never fully arrived; tornado would leave it waiting until
        shutdown, holding what it had read. Nobody can be answered any more (a malformed body was
        answered 400 by the listener already): the status is for the access log and metrics."""
        stream = getattr(self.request.connection, "stream", None)
        answered = getattr(stream, "answered", None)
        if answered is not None:
            status, reason, self.error_code, self.error_counted = 400, None, answered, True
        elif self.services.lifecycle.draining:
            status, reason, self.error_code = 503, None, "shutting_down"
        else:
            status, reason = 499, "Client Closed Request"  # nginx's code: the client left
        self.clear()
        self.set_status(status, reason)
        self.finish()

    def log_fields(self) -> dict[str, object]:
        """Fields of this route's own for the access log line (read when the request ends)."""
        return {}

    # -- credentials and client -------------------------------------------------------------------
    def authorization(self) -> str:
        """The client's upstream credential as `Bearer ...` (credentials.py)."""
        headers = self.request.headers
        return upstream_authorization([headers.get_list(name) for name in HEADERS])

    def _pool_may_serve(self) -> bool:
        """A route the pool may serve (`pool_route`), on a gateway whose pool serves it
        (pool.serve_chatgpt, which needs client keys)."""
        services = self.services
        return (
            self.pool_route
            and services.pooled is not None
            and services.config.pool.serve_chatgpt
            and bool(services.access.digests)
        )

    def _bearer_client_key(self) -> str | None:
        """The client key sent as the bearer (`Authorization: Bearer <key>`, where a ChatGPT client
        puts its token) on a route the pool serves; None for anything else, which then goes upstream
        or is refused as before."""
        if not self._pool_may_serve():
            return None
        try:
            credential = self.authorization()
        except (BadRequest, MissingAuthorization):
            return None
        key = credential[len("Bearer ") :]
        return key if self.services.access.key_valid(key) else None

    @property
    def served_by_pool(self) -> bool:
        """Whether a pool account serves this request: a route the pool serves, and a client key
        (checked by prepare) with no accessToken of its own: the key header alone, or the key as the
        bearer."""
        if not self._pool_may_serve():
            return False
        try:
            self.authorization()
        except MissingAuthorization:
            return True
        except BadRequest:
            return False  # refused when its credential is read
        return self._bearer_client_key() is not None

    async def unless_gone(self, waiting: Awaitable[T]) -> T:
        """Await `waiting` (a wait for the account pool) as a task of its own, cancelled the moment the
        client leaves: tornado does not cancel the handler's coroutine on a disconnect. ClientGone
        then."""
        if self.gone:
            raise ClientGone()
        task = asyncio.ensure_future(waiting)
        self._waiting = task
        try:
            return await task
        except asyncio.CancelledError:
            if self.gone and task.cancelled():
                raise ClientGone() from None
            raise
        finally:
            self._waiting = None

    @property
    def client_address(self) -> str:
        """The client's IP; X-Forwarded-For is believed only from server.trusted_proxies."""
        forwarded = self.request.headers.get("X-Forwarded-For")
        return client_address(
            self.request.remote_ip or "", forwarded, self.services.config.server.trusted_proxies
        )

    # -- the relay --------------------------------------------------------------------------------
    async def relay(
        self,
        upstream: str,
        url: str,
        body: bytes | None = None,
        method: str | None = None,
        answer: bool = False,
    ) -> None:
        """Send this request (or `method` instead of the client's) to `url` on `upstream` and relay
        the answer to the client (relay/service.py); this handler is the relay's client side. When a
        pool account serves it (`served_by_pool`), `answer` says it is a conversation, which takes a
        slot of the account."""
        if self.services.lifecycle.draining:
            # gateway_busy, as every request refused while draining (README "Limits ... shutdown").
            raise GatewayBusy(Code.SHUTTING_DOWN.message, retry_after=1)
        headers = forwarded_request_headers(self.request.headers.get_all())
        pooled = self.services.pooled
        if pooled is not None and self.served_by_pool:
            path = url[len(self.services.config.upstreams.chatgpt) :].split("?", 1)[0]
            account = self.request.headers.get(ACCOUNT_HEADER) or None
            call = PooledCall(
                method or self.request.method or "GET", url, path, headers, body, answer, account
            )
            await pooled.relay(self, call)
            return
        authorization = self.authorization()
        headers = [(n, authorization if n.lower() == "authorization" else v) for n, v in headers]
        if not any(n.lower() == "authorization" for n, _ in headers):
            headers.append(("Authorization", authorization))
        request = UpstreamRequest(upstream, method or self.request.method or "GET", url, headers, body)
        # From here on only the relay's request holds the body, so that it can let go of it once
        # sent (Exchange.release_body): not this handler, nor this frame while the relay runs.
        del body
        self._body.clear()
        relaying = self.services.relay.relay(request, self, authorization)
        del request
        await relaying

    # -- the client side of the relay (relay/client.py) -------------------------------------------
    def attach(self, exchange: Exchange) -> None:
        self._exchange = exchange
        if self.gone:
            exchange.abort("client_gone")

    def start(self, status: int, reason: str, headers: Sequence[tuple[str, str]]) -> None:
        self.set_status(status, relayed_reason(status, reason))
        self.clear_header("Content-Type")
        add_relayed_headers(self._headers, headers, self.add_header)
        if self.pool_account is not None:
            self.set_header(ACCOUNT_HEADER, self.pool_account)

    def send(self, chunk: bytes) -> bool:
        """Write `chunk` as one chunk of the chunked body straight to the socket when nothing waits
        before it: none of tornado's futures and callbacks per write (two futures, a loop callback).
        Otherwise, and for a body tornado does not chunk or a socket that is not a plain one (TLS
        would need its own retries), queued for `deliver()`."""
        if not chunk:
            return True  # an empty chunk would end the chunked body
        connection = self.request.connection
        stream = connection.stream  # type: ignore[union-attr]
        if (
            self._write_buffer
            or not self._headers_written
            or not getattr(connection, "_chunking_output", False)  # tornado's own flag
            or stream.writing()
            or stream.closed()
            or type(stream.socket) is not socket.socket
        ):
            self.write(chunk)
            return False
        framed = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        try:
            sent = stream.socket.send(framed)
        except BlockingIOError:
            sent = 0
        except OSError as error:
            stream.close(exc_info=error)  # tornado calls on_connection_close a loop pass later
            return False
        if sent == len(framed):
            return True
        stream.write(framed[sent:])  # tornado sends the rest once the socket takes it
        return False

    async def deliver(self) -> None:
        """Wait until the client has taken what was written; drop a client that stalls too long.

        While we wait, the exchange stops reading from the upstream once it holds a few hundred KB,
        so a slow client slows its upstream transfer instead of growing our memory."""
        head_sent = self._headers_written
        future = self.flush()
        if not head_sent:
            # The response head is on the wire now; tornado reads these headers no more, and a
            # stream would keep them for its whole life.
            self._headers._as_list.clear()
            self._headers._combined_cache.clear()  # else get() would still answer from it
        if future.done():
            return
        timeout = self.services.config.server.client_stall_timeout
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except StreamClosedError:
            raise ClientGone() from None
        except TimeoutError:
            log.info("dropping a client that accepted nothing for %g s on %s", timeout, self.route)
            self.request.connection.stream.close()  # type: ignore[union-attr]
            self.on_connection_close()
            raise ClientGone() from None

    async def finish_stream(self) -> None:
        if not self._finished:
            try:
                # Awaited, so that a drain closes the connection only once the last event is out.
                await self.finish()
            except StreamClosedError:
                pass

    def cut(self) -> None:
        self.request.connection.stream.close()  # type: ignore[union-attr]


def _completed_future() -> asyncio.Future[None]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _as_gateway_error(status_code: int, exc_info: Any) -> GatewayError:
    error = exc_info[1] if exc_info else None
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, HTTPError) and error.status_code < 500:
        code = _TORNADO_CODES.get(error.status_code, Code.BAD_REQUEST)
        message = error.log_message or error.reason or code.message
        if code is Code.METHOD_NOT_ALLOWED:
            message = code.message
        return GatewayError(message, status=error.status_code, code=code)
    if status_code < 500:
        return BadRequest("the request was not accepted", status=status_code)
    return GatewayError.of(Code.INTERNAL_ERROR)
