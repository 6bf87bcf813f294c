"""The web layer's shortcuts give what tornado's own paths give: the fixed-path route lookup and the
lean handler's initial state."""

from __future__ import annotations

from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine, format_timestamp
from tornado.web import Application, RequestHandler

from tornadoproxy.web.app import _GatewayApplication, all_routes
from tornadoproxy.web.handlers.routing import route_specs
from tornadoproxy.web.lean_handler import LeanRequestHandler


def test_fixed_paths_find_the_handler_tornado_finds() -> None:
    services = object()
    app = _GatewayApplication(route_specs(all_routes(), services))
    fixed = [route.template for route in all_routes() if "{" not in route.template]
    assert "/platform/v1/chat/completions" in app._fixed
    for path in fixed + ["/platform/v1/other", "/nowhere"]:
        request = HTTPServerRequest(start_line=RequestStartLine("POST", path + "?a=1", "HTTP/1.0"))
        ours, tornados = app.find_handler(request), Application.find_handler(app, request)
        assert (ours.handler_class, ours.handler_kwargs) == (tornados.handler_class, tornados.handler_kwargs)
        assert (ours.path_args, ours.path_kwargs) == (tornados.path_args, tornados.path_kwargs)


class _Connection:
    def __init__(self) -> None:
        self.close_callback: object = None

    def set_close_callback(self, callback: object) -> None:
        self.close_callback = callback


def _state(handler: RequestHandler) -> dict[str, object]:
    headers = HTTPHeaders(handler._headers)
    for name in ("Server", "Date"):  # the lean handler sends no Server header; Date is checked apart
        headers.pop(name, None)
    names = ("_headers_written", "_finished", "_auto_finish", "_prepared_future", "_status_code", "_reason")
    return {"headers": list(headers.get_all()), "body": handler._write_buffer} | {
        name: getattr(handler, name) for name in names
    }


def test_the_lean_handler_starts_as_tornados_without_its_server_header() -> None:
    app = Application()
    request = HTTPServerRequest(start_line=RequestStartLine("GET", "/", "HTTP/1.0"), connection=_Connection())  # type: ignore[arg-type]
    tornados = RequestHandler(app, request)
    lean = LeanRequestHandler(app, request)
    assert request.connection.close_callback == lean.on_connection_close  # type: ignore[union-attr]
    assert _state(lean) == _state(tornados)
    assert lean._headers["Date"] in (tornados._headers["Date"], format_timestamp(__import__("time").time()))
    lean.set_status(404)
    lean.write(b"x")
    lean.clear()
    assert _state(lean)["_status_code"] == 200 and lean._write_buffer == []
