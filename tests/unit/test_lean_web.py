"""The web layer's shortcuts give what tornado's own paths give: the header block parser, the fixed-path
route lookup and the lean handler's initial state."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.httputil import (
    HTTPHeaders,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
    format_timestamp,
)
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from tornadoproxy.web.app import _GatewayApplication, all_routes
from tornadoproxy.web.framing import StrictHTTP1Connection, _has_bare_lf
from tornadoproxy.web.handlers.routing import route_specs
from tornadoproxy.web.lean_handler import LeanRequestHandler, LeanServerRequest
from tornadoproxy.web.serving import HEADER_END as _HEADER_END


def _parsed(parse: Any, data: bytes) -> tuple[str, object]:
    connection = StrictHTTP1Connection.__new__(StrictHTTP1Connection)  # parsing uses no state
    try:
        start_line, headers = parse(connection, data)
    except Exception as error:  # noqa: BLE001 - the kind of refusal is what is compared
        return "refused", type(error).__name__
    looked_up = {name: headers.get(name, "-") for name in ("Host", "x-a", "X-Absent", "set-cookie")}
    return start_line, (list(headers.get_all()), {name: headers[name] for name in headers}, looked_up)


_FIELD_TEXT = st.text(alphabet='aZ-_:; \t\r\x7f\x80\xe9\xff!~,="', max_size=12)
_FIELD_LINE = st.one_of(
    st.builds(
        lambda n, v: f"{n}:{v}",
        st.sampled_from(["Host", "x-a", "X-A", "Set-Cookie", "A b", "", " Host", "\tx", "\x01"]),
        _FIELD_TEXT,
    ),
    _FIELD_TEXT,
)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(_FIELD_LINE, max_size=6),
    leading=st.sampled_from(["", "\r\n", "\r\n\r\n"]),
    start=st.sampled_from(
        ["POST /platform/v1/chat/completions HTTP/1.1", "GET / HTTP/1.0", "GET / HTTP/1.1\r"]
    ),
)
def test_header_blocks_parse_as_tornado_parses_them(lines: list[str], leading: str, start: str) -> None:
    block = leading + start + "\r\n" + "".join(f"{x}\r\n" for x in lines) + "\r\n"
    data = block.encode("latin-1")
    assert _parsed(StrictHTTP1Connection._parse_headers, data) == _parsed(
        HTTP1Connection._parse_headers, data
    )


class _WriteStream:
    """Enough of an IOStream for write_headers: what was written, and a write that completes."""

    max_buffer_size = 65536

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def closed(self) -> bool:
        return False

    def set_close_callback(self, callback: object) -> None:
        pass

    def write(self, data: bytes) -> asyncio.Future[None]:
        self.written.append(data)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _written_head(
    connection_class: type[HTTP1Connection],
    request: tuple[str, str, str],
    fields: list[tuple[str, Any]],
    code: int,
    disconnect: bool,
    chunk: bytes,
) -> tuple[object, ...]:
    async def write() -> tuple[object, ...]:
        connection = connection_class(_WriteStream(), is_client=False)  # type: ignore[arg-type]
        connection._request_start_line = RequestStartLine(*request)
        keep_alive = {"Connection": "keep-alive"} if request[2] == "HTTP/1.0" else {}
        connection._request_headers = HTTPHeaders(keep_alive)
        connection._disconnect_on_finish = disconnect
        headers = HTTPHeaders()
        for name, value in fields:
            headers._as_list.setdefault(name, []).append(value)  # as the handler's header map holds them
        try:
            connection.write_headers(ResponseStartLine("", code, "OK"), headers, chunk)
        except Exception as error:  # noqa: BLE001 - the kind of refusal is what is compared
            return ("refused", type(error).__name__)
        return (
            connection.stream.written,  # type: ignore[attr-defined]
            list(headers.get_all()),
            connection._chunking_output,
            connection._expected_content_remaining,
        )

    return asyncio.run(write())


_HEAD_VALUE = st.one_of(
    st.text(alphabet="aZ0 ;=,\r\n\xe9\xff\u20ac", max_size=8), st.binary(max_size=4), st.integers(0, 9)
)


@settings(max_examples=400, deadline=None)
@given(
    request=st.sampled_from(
        [("POST", "/v1/x", "HTTP/1.1"), ("HEAD", "/v1/x", "HTTP/1.1"), ("GET", "/", "HTTP/1.0")]
    ),
    fields=st.lists(
        st.tuples(st.sampled_from(["Content-Type", "Content-Length", "X-A", "Connection"]), _HEAD_VALUE),
        max_size=5,
    ),
    code=st.sampled_from([200, 101, 204, 304, 404, 502]),
    disconnect=st.booleans(),
    chunk=st.sampled_from([b"", b"{}", b"body"]),
)
def test_response_heads_are_written_as_tornado_writes_them(
    request: tuple[str, str, str], fields: list[tuple[str, Any]], code: int, disconnect: bool, chunk: bytes
) -> None:
    ours = _written_head(StrictHTTP1Connection, request, fields, code, disconnect, chunk)
    assert ours == _written_head(HTTP1Connection, request, fields, code, disconnect, chunk)


def test_a_relayed_answers_head_is_written_in_one_piece() -> None:
    fields = [("Content-Type", "application/json"), ("Content-Length", "2"), ("X-Request-Id", "r1")]
    written = _written_head(StrictHTTP1Connection, ("POST", "/v1/x", "HTTP/1.1"), fields, 200, False, b"{}")
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nX-Request-Id: r1\r\n\r\n"
    )
    assert written == ([head + b"{}"], fields, False, 0)


class _Context:
    remote_ip, protocol = "192.0.2.7", "https"


class _ServedConnection:
    context = _Context()


def _request_state(build: Any, start_line: RequestStartLine, hosts: list[str]) -> object:
    headers = HTTPHeaders()
    for host in hosts:
        headers.add("Host", host)
    try:
        request = build(
            connection=_ServedConnection(), server_connection=None, start_line=start_line, headers=headers
        )
    except Exception as error:  # noqa: BLE001 - the kind of refusal is what is compared
        return "refused", type(error).__name__
    state = dict(vars(request))
    state["headers"] = list(state["headers"].get_all())
    state["argument maps shared"] = request.arguments is request.query_arguments
    del state["connection"], state["_start_time"]
    return state


@settings(max_examples=300, deadline=None)
@given(
    hosts=st.lists(
        st.sampled_from(["127.0.0.1:8080", "Example.COM", "[::1]:80", "a,b", "", "x y", "é"]), max_size=2
    ),
    uri=st.sampled_from(["/platform/v1/chat/completions", "/p?a=1&b=&a=2", "/p?", "/p?%zz"]),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
)
def test_lean_requests_are_built_as_tornado_builds_them(hosts: list[str], uri: str, version: str) -> None:
    start_line = RequestStartLine("POST", uri, version)
    tornados = _request_state(HTTPServerRequest, start_line, hosts)
    for _ in range(2):  # the second time from the remembered Host value, if the first accepted it
        assert _request_state(LeanServerRequest, start_line, hosts) == tornados


# The listener's header-end pattern as it was first written: lazy, one byte at a time.
_HEADER_END_BYTEWISE = re.compile(rb"\A[\r\n]*[^\r\n][\s\S]*?\r?\n\r?\n")
_CRLF_SOUP = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" ", b":", b"Host: x", b"\xff"]), max_size=30
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(data=_CRLF_SOUP)
def test_the_header_end_and_bare_lf_checks_find_what_the_bytewise_patterns_find(data: bytes) -> None:
    ours, bytewise = re.search(_HEADER_END, data), _HEADER_END_BYTEWISE.search(data)
    assert (ours and ours.end()) == (bytewise and bytewise.end())
    assert _has_bare_lf(data) == bool(re.search(rb"(?<!\r)\n", data))


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


@stream_request_body
class _Recorder(LeanRequestHandler):
    """Records the order in which the lean delegate calls it."""

    SUPPORTED_METHODS = ("POST",)
    calls: list[str] = []

    def initialize(self, route: str) -> None:
        self.route = route

    def prepare(self) -> None:
        self.calls.append("prepare")
        if self.request.headers.get("X-Refuse"):
            self.set_status(403)
            self.finish(b"refused")

    def data_received(self, chunk: bytes) -> None:
        self.calls.append(f"data {len(chunk)}")

    async def post(self) -> None:
        self.calls.append("post")
        await asyncio.sleep(0)
        if self.request.headers.get("X-Fail"):
            raise HTTPError(418)
        self.write(b"posted")


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_the_lean_delegate_prepares_at_the_headers_and_runs_the_method_after_the_body() -> None:
    async def run() -> list[tuple[bytes, list[str]]]:
        app = _GatewayApplication([("/x", _Recorder, {"route": "/x"})])
        [sock] = bind_sockets(0, "127.0.0.1")
        server = HTTPServer(app)
        server.add_sockets([sock])
        port = sock.getsockname()[1]
        seen = []
        head = b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 3\r\n"
        for extra in (b"", b"X-Refuse: 1\r\n", b"X-Fail: 1\r\n"):
            _Recorder.calls = []
            answer = await asyncio.get_running_loop().run_in_executor(
                None, _exchange, port, head + extra + b"\r\nabc"
            )
            status, body = answer.split(b"\r\n", 1)[0], answer.rsplit(b"\r\n", 1)[-1]
            seen.append((status + b" " + body[-7:].lstrip(b">"), _Recorder.calls))
        first = _Recorder.calls = []
        answer = await asyncio.get_running_loop().run_in_executor(
            None, _exchange, port, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        seen.append((answer.split(b"\r\n", 1)[0], first))
        server.stop()
        return seen

    assert asyncio.run(run()) == [
        (b"HTTP/1.1 200 OK posted", ["prepare", "data 3", "post"]),
        (b"HTTP/1.1 403 Forbidden refused", ["prepare"]),  # finished by prepare(): no method
        (b"HTTP/1.1 418 I'm a Teapot </html>", ["prepare", "data 3", "post"]),  # tornado's error page
        (b"HTTP/1.1 405 Method Not Allowed", []),  # refused before prepare(), as tornado does
    ]
