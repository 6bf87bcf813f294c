"""BaseHandler: request checks, JSON errors, CORS, credentials and the upstream relay pump.

Every handler subclasses BaseHandler directly. Bodies are received in streaming mode so that the
size limit is checked from Content-Length before a byte of the body is read (a 2 GB upload gets 413,
not tornado's 400). Relays send status and headers first; SSE is written event by event with a
flush after each, anything else is sent with a Content-Length when it fits `fetch.buffer_size`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.web import HTTPError, RequestHandler, stream_request_body

from tornadoproxy.errors import (
    BadRequest,
    Code,
    GatewayBusy,
    GatewayError,
    PayloadTooLarge,
    UpstreamError,
)
from tornadoproxy.formats.sse import EventSplitter, EventTooLarge, encode_comment, encode_event
from tornadoproxy.relay.forwarding import (
    check_raw_path,
    check_raw_query,
    forwarded_request_headers,
    is_event_stream,
    relayed_response_headers,
)
from tornadoproxy.upstream.diagnosis import diagnose
from tornadoproxy.upstream.exchange import Exchange
from tornadoproxy.upstream.request import UpstreamRequest
from tornadoproxy.web.body_intake import BodyBuffer
from tornadoproxy.web.cors import is_preflight, origin_headers, preflight_headers
from tornadoproxy.web.credentials import HEADERS, client_address, upstream_authorization
from tornadoproxy.web.services import Services

log = logging.getLogger(__name__)

RELAY_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# A refused request with a body up to this size is read before the answer (see prepare()).
_EARLY_ANSWER_BODY = 64 * 1024
_TORNADO_CODES = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED, 400: Code.BAD_REQUEST}


@stream_request_body
class BaseHandler(RequestHandler):
    SUPPORTED_METHODS = RELAY_METHODS + ("OPTIONS",)

    # Handlers any client may reach whatever the access policy (liveness carries no information).
    open_access = False

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
        self.client_gone = False

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
                policy.check(self.client_address, headers.get(policy.key_header), needs_key=not preflight)
            except GatewayError as error:
                return error
        limit = self.services.config.server.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            return PayloadTooLarge(f"the request body is larger than {limit} bytes (server.max_body_size)")
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
            self.fail(
                PayloadTooLarge(f"the request body is larger than {limit} bytes (server.max_body_size)")
            )

    @property
    def body(self) -> bytes:
        return self._body.value()

    def body_timed_out(self) -> None:
        """The body is still incomplete after server.body_timeout seconds (body_intake.py)."""
        self._body.clear()
        self.set_header("Connection", "close")
        timeout = self.services.config.server.body_timeout
        self.fail(
            GatewayError(
                f"the request body did not arrive within {timeout:g} s (server.body_timeout)",
                code=Code.BODY_TIMEOUT,
            )
        )

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
        self.clear_header("Server")
        # Also called from RequestHandler.__init__, before initialize() has given us services.
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
            self.request.connection.stream.close()  # type: ignore[union-attr]
            return
        self.clear()
        self.error_code = error.code
        self.set_status(error.status)
        for name, value in error.headers():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(error.to_json())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = _as_gateway_error(status_code, kwargs.get("exc_info"))
        self.error_code = error.code
        self.set_status(error.status)
        for name, value in error.headers():
            self.set_header(name, value)
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
        self.client_gone = True
        self._body.clear()
        self.services.body_deadlines.release(self)
        if self._exchange is not None:
            self._exchange.abort("client_gone")
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

    # -- credentials and client -------------------------------------------------------------------
    def authorization(self) -> str:
        """The client's upstream credential as `Bearer ...` (credentials.py)."""
        headers = self.request.headers
        return upstream_authorization([headers.get_list(name) for name in HEADERS])

    @property
    def client_address(self) -> str:
        """The client's IP; X-Forwarded-For is believed only from server.trusted_proxies."""
        forwarded = self.request.headers.get("X-Forwarded-For")
        return client_address(
            self.request.remote_ip or "", forwarded, self.services.config.server.trusted_proxies
        )

    # -- the relay --------------------------------------------------------------------------------
    async def relay(
        self, upstream: str, url: str, body: bytes | None = None, method: str | None = None
    ) -> None:
        """Send this request (or `method` instead of the client's) to `url` on `upstream` and relay
        the answer to the client."""
        if self.services.lifecycle.draining:
            raise GatewayBusy("the gateway is shutting down", retry_after=1)
        headers = forwarded_request_headers(self.request.headers.get_all())
        authorization = self.authorization()
        headers = [(n, authorization if n.lower() == "authorization" else v) for n, v in headers]
        if not any(n.lower() == "authorization" for n, _ in headers):
            headers.append(("Authorization", authorization))
        request = UpstreamRequest(upstream, method or self.request.method or "GET", url, headers, body)
        exchange = await self.services.fetcher.open(request)
        self._exchange = exchange
        if self.client_gone:
            exchange.abort("client_gone")
        lifecycle = self.services.lifecycle
        lifecycle.relays += 1
        try:
            try:
                await exchange.wait_headers()
            except UpstreamError:
                if not self.client_gone:
                    raise
                self.set_status(499, "Client Closed Request")  # nginx's code: nobody to answer
                self.finish()
                return
            self.upstream_status = exchange.status
            if exchange.status == 401:
                # The credential is dead upstream; if the token cache issued it, stop serving it.
                await self.services.tokens.forget_token(authorization)
            if is_event_stream(exchange.headers):
                await self._relay_stream(exchange)
            else:
                await self._relay_body(exchange)
        finally:
            lifecycle.relays -= 1
            exchange.abort("client_gone" if self.client_gone else "done")

    def _start_response(self, exchange: Exchange) -> None:
        self.set_status(exchange.status, exchange.reason or None)
        self.clear_header("Content-Type")
        for name, value in relayed_response_headers(exchange.headers):
            self.add_header(name, value)

    async def _relay_body(self, exchange: Exchange) -> None:
        parts: list[bytes] = []
        size = 0
        limit = self.services.config.fetch.buffer_size
        while (chunk := await exchange.read()) is not None:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                self._refuse_unusable_answer(exchange, parts[0])
                await self._relay_large_body(exchange, parts)
                return
        body = b"".join(parts)
        self._refuse_unusable_answer(exchange, body)
        self._start_response(exchange)
        self.bytes_out = len(body)
        if self.request.method == "HEAD" or exchange.status in (204, 304):
            self.finish()
        else:
            self.finish(body)

    def _refuse_unusable_answer(self, exchange: Exchange, body: bytes) -> None:
        """Raise the gateway error that replaces a challenge, block or HTML error page."""
        problem = diagnose(exchange.route.name, exchange.status, exchange.headers, body)
        if problem is not None:
            self.services.metrics.count_upstream_error(exchange.route.name, problem.kind)
            if problem.kind in ("challenge", "blocked"):
                # The next request goes out through another egress proxy, if there is one.
                self.services.fetcher.egress.mark_failed(exchange.route.name, exchange.proxy, problem.kind)
            log.warning("%s answered %d: %s", exchange.route.name, exchange.status, problem.code)
            raise problem

    async def _relay_large_body(self, exchange: Exchange, parts: list[bytes]) -> None:
        """A body too big to hold: relayed as it arrives; a failure midway cuts the connection."""
        self._start_response(exchange)
        chunk: bytes | None = b"".join(parts)
        try:
            while chunk is not None:
                if chunk:
                    self.write(chunk)
                    self.bytes_out += len(chunk)
                    await self._flush_to_client()
                chunk = await exchange.read()
        except UpstreamError:
            self.request.connection.stream.close()  # type: ignore[union-attr]
            return
        except StreamClosedError:
            return
        self.finish()

    async def _relay_stream(self, exchange: Exchange) -> None:
        self._start_response(exchange)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.streamed = True
        metrics = self.services.metrics
        metrics.streams_active.inc()
        reason = "done"
        try:
            reason = await self._pump_events(exchange)
        except StreamClosedError:
            reason = "client_gone"
        finally:
            metrics.streams_active.dec()
            metrics.count_stream_end(reason)
            self.stream_end = reason
        if not self._finished:
            try:
                # Awaited, so that a drain closes the connection only once the last event is out.
                await self.finish()
            except StreamClosedError:
                pass

    async def _pump_events(self, exchange: Exchange) -> str:
        """Relay whole events as they complete; return why the stream ended."""
        splitter = EventSplitter(self.services.config.streams.max_event_size)
        keepalive = self.services.config.streams.keepalive_interval
        if keepalive:
            self.services.fetcher.keep_alive(exchange, keepalive)
        await self._flush_to_client()  # status and headers go out before the first event
        while True:
            try:
                chunk = await exchange.read()
                if chunk is None:
                    break
                events = splitter.feed(chunk) if chunk else b""
            except UpstreamError as error:
                self._write_final_error(error)
                return "idle_timeout" if error.code is Code.UPSTREAM_TIMEOUT else "upstream_error"
            except EventTooLarge as error:
                self.services.metrics.count_upstream_error(exchange.route.name, "protocol")
                self._write_final_error(
                    UpstreamError(
                        f"the {exchange.route.name} upstream {error} (streams.max_event_size)",
                        code=Code.UPSTREAM_BAD_STREAM,
                    )
                )
                return "upstream_error"
            if events:
                self.write(events)
                self.bytes_out += len(events)
            elif not chunk and not splitter.pending:
                self.write(encode_comment("keep-alive"))
            else:
                continue
            await self._flush_to_client()
        if self.client_gone:
            return "client_gone"
        if exchange.aborted_reason == "shutdown":
            self._write_final_error(GatewayBusy("the gateway is shutting down", code=Code.SHUTTING_DOWN))
            return "shutdown"
        if splitter.pending:
            self.write(splitter.pending)  # the upstream's last bytes, passed on as they are
            self.bytes_out += len(splitter.pending)
        return "done"

    def _write_final_error(self, error: GatewayError) -> None:
        """End a stream that failed midway with an `event: error` carrying the gateway error JSON."""
        log.warning("stream on %s ended early: %s", self.route, error.code)
        self.error_code = error.code
        self.write(encode_event(error.to_json().decode(), event="error"))

    async def _flush_to_client(self) -> None:
        """Wait until the client has taken what was written; drop a client that stalls too long.

        While we wait, the exchange stops reading from the upstream once it holds a few hundred KB,
        so a slow client slows its upstream transfer instead of growing our memory."""
        future = self.flush()
        if future.done():
            return
        timeout = self.services.config.server.client_stall_timeout
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            log.info("dropping a client that accepted nothing for %g s on %s", timeout, self.route)
            self.request.connection.stream.close()  # type: ignore[union-attr]
            self.on_connection_close()
            raise StreamClosedError() from None


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
