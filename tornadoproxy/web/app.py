"""make_app: every family's ROUTES in one tornado Application, with the per-request record.

`record_request` is the application's log_function, the one place where each request is counted,
timed and written to the access log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.log import app_log
from tornado.routing import _DefaultMessageDelegate, _RoutingDelegate
from tornado.web import Application, RequestHandler, _HandlerDelegate, _has_stream_request_body

from tornadoproxy.web.handlers import accounts, chatgpt, imitate, logins, ops, platform
from tornadoproxy.web.handlers.base import RELAY_METHODS, BaseHandler
from tornadoproxy.web.handlers.ops import NotFoundHandler
from tornadoproxy.web.handlers.routing import Route, fixed_paths, route_specs
from tornadoproxy.web.lean_handler import LeanHandlerDelegate, LeanRequestHandler, LeanServerRequest
from tornadoproxy.web.services import Services

_KNOWN_METHODS = frozenset(RELAY_METHODS + ("OPTIONS",))


def all_routes() -> list[Route]:
    """Every route the gateway serves, in matching order. tornado tries the routes one regex after
    the other, so the busiest family comes first; no two families' patterns overlap."""
    return platform.ROUTES + chatgpt.ROUTES + imitate.ROUTES + logins.ROUTES + ops.ROUTES + accounts.ROUTES


class _GatewayApplication(Application):
    """tornado's Application, with the routes of a fixed path found by one dict lookup: tornado
    tries each route's pattern in turn, and the busiest routes (/platform/v1/chat/completions)
    have fixed paths. Every handler of the gateway is served by LeanHandlerDelegate
    (lean_handler.py)."""

    def __init__(self, specs: list[tuple[str, type[RequestHandler], dict[str, Any]]], **settings: Any):
        super().__init__(specs, **settings)
        self._fixed = fixed_paths(specs)

    def get_handler_delegate(
        self,
        request: HTTPServerRequest,
        target_class: type[RequestHandler],
        target_kwargs: dict[str, Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> _HandlerDelegate:
        if issubclass(target_class, LeanRequestHandler) and _has_stream_request_body(target_class):
            return LeanHandlerDelegate(self, request, target_class, target_kwargs, path_args, path_kwargs)
        return super().get_handler_delegate(request, target_class, target_kwargs, path_args, path_kwargs)

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return _InlineRouting(self, server_conn, request_conn)

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> _HandlerDelegate:
        target = self._fixed.get(request.path)
        if target is not None:
            return self.get_handler_delegate(request, target[0], target[1])
        return super().find_handler(request, **kwargs)


class _InlineRouting(_RoutingDelegate):
    """tornado's routing delegate, with the request built as a LeanServerRequest (lean_handler.py),
    passing on the handler delegate's `finish_inline` (serving.py runs the request method in the
    connection's task)."""

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, RequestStartLine)
        request = LeanServerRequest(self.request_conn, self.server_conn, start_line, headers)
        self.delegate = self.router.find_handler(request)
        if self.delegate is None:
            app_log.debug("Delegate for %s %s request not found", start_line.method, start_line.path)
            self.delegate = _DefaultMessageDelegate(self.request_conn)
        return self.delegate.headers_received(start_line, headers)

    def finish_inline(self) -> Coroutine[Any, Any, None] | None:
        delegate = self.delegate
        inline = getattr(delegate, "finish_inline", None)
        if inline is None:
            delegate.finish()  # type: ignore[union-attr]
            return None
        return inline()


def make_app(services: Services) -> Application:
    def record_request(handler: RequestHandler) -> None:
        _record(services, handler)

    return _GatewayApplication(
        route_specs(all_routes(), services),
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services},
        log_function=record_request,
        compress_response=False,
    )


def make_ops_app(services: Services) -> Application:
    """The ops listener: /healthz, /readyz, /metrics and /accounts without access checks, for a
    private address."""

    def record_request(handler: RequestHandler) -> None:
        _record(services, handler)

    return _GatewayApplication(
        route_specs(ops.ROUTES + accounts.ROUTES, services, trusted_listener=True),
        default_handler_class=NotFoundHandler,
        default_handler_args={"services": services, "trusted_listener": True},
        log_function=record_request,
        compress_response=False,
    )


def _record(services: Services, handler: RequestHandler) -> None:
    status = handler.get_status()
    seconds = handler.request.request_time()
    method = handler.request.method if handler.request.method in _KNOWN_METHODS else "other"
    route = getattr(handler, "route", "(unmatched)")
    metrics = services.metrics
    metrics.observe_request(route, method or "other", status, seconds)
    error = getattr(handler, "error_code", None)
    if error is not None and not getattr(handler, "error_counted", False):
        metrics.count_gateway_error(error)
    if not services.access_log.enabled:
        return
    fields: dict[str, object] = {
        "route": route,
        "method": method,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "client": handler.client_address if isinstance(handler, BaseHandler) else handler.request.remote_ip,
    }
    if isinstance(handler, BaseHandler):
        fields["upstream_status"] = handler.upstream_status
        if handler.pool_account is not None:  # the pool account that served a relayed request
            fields["account"] = handler.pool_account
        fields["bytes"] = handler.bytes_out
        fields["stream"] = handler.streamed
        if handler.stream_end is not None:
            fields["stream_end"] = handler.stream_end
        fields.update(handler.log_fields())
    if error is not None:
        fields["error"] = error
    services.access_log.write(fields)
