"""LeanRequestHandler: tornado's RequestHandler without the per-request work the gateway never uses.

Every request builds a handler, and tornado's constructor pays for features no handler here has:
a template namespace (`ui`, with its module namespace object) and, in `clear()`, a header map
built through the validating `update()` path, a `Server` header that our handlers remove again,
and a `Date` header formatted afresh each time. The lean versions set the same state (the same
headers, in the same order, the same status) at a fraction of the cost: the `Date` text is
formatted once per second.

LeanHandlerDelegate takes the place of tornado's _HandlerDelegate for these handlers (streamed
bodies, as all the gateway's are): tornado runs the whole request as one task, which starts a loop
pass after the headers, makes the connection wait for prepare() another pass, and waits for the body
a third. Here the handler is built and prepared as the headers arrive (prepare() must not be a
coroutine), the body is delivered as it comes, and once it is complete the method runs in the
connection's own task when the loop is not busy (`finish_inline`: serving.py's request loop awaits
it): no task, no loop pass of its own, and a request whose answer is there by its first suspension
none at all. Where a wrapper between the connection and this delegate hides `finish_inline`
(tornado's own server, as some tests use), `finish()` runs the method as a task whose first step
runs at once when the loop has nothing else queued (`start_task_now`, as Python 3.12's eager tasks).
Errors take tornado's path (`_handle_request_exception`: log_exception, send_error, write_error), an
unsupported method is 405, a handler finished by prepare() runs no method, and a body that never
completes runs none either (on_connection_close ends the request).

`start_task_now` relies on asyncio's own loop (3.11's `_ready` queue, `_enter_task`/`_leave_task`);
on any other loop the step is left scheduled, as before.

LeanServerRequest is tornado's HTTPServerRequest for a request with one Host field and no query string
(every relayed request of an OpenAI client): the Host value's check and split are remembered for the
values seen (a bounded map), and the argument maps start empty instead of parsed from an empty query
and deep-copied (about 2.5 of tornado's 4.8 µs). Any other request is built by tornado's constructor,
which accepts or refuses it as before.

Limits: no template rendering (`render()`, `self.ui`) and none of tornado's template or static-file
cache resets per request, which no handler of the gateway uses. The private names used here are
those of tornado 6.6's RequestHandler, _HandlerDelegate and HTTPHeaders (setup.py pins tornado to
6.6.x); tests/unit/test_lean_web.py compares the state with tornado's own and checks the order of
the delegate's calls on a real server.
"""

from __future__ import annotations

import asyncio
import time
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine
from typing import Any

from tornado.concurrent import future_set_result_unless_cancelled
from tornado.httputil import (
    HTTPHeaders,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
    format_timestamp,
)
from tornado.log import app_log
from tornado.web import Application, HTTPError, RequestHandler, _HandlerDelegate

from tornadoproxy.upstream import loop_pass

# The Content-Type tornado gives every response until a handler sets its own.
_DEFAULT_CONTENT_TYPE = "text/html; charset=UTF-8"


class _HttpDate:
    """The HTTP `Date` value of the current second, formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second, self.text = second, format_timestamp(now)
        return self.text


_DATE = _HttpDate()


# Host values already checked, with their host name; at most this many are remembered.
MAX_HOSTS = 256
_host_names: dict[str, str] = {}


class LeanServerRequest(HTTPServerRequest):
    """HTTPServerRequest with the shortcut above for a request with one Host field and no query."""

    def __init__(
        self, connection: Any, server_connection: object, start_line: RequestStartLine, headers: HTTPHeaders
    ) -> None:
        hosts = headers._as_list.get("Host")
        host = hosts[0] if hosts is not None and len(hosts) == 1 else None
        host_name = _host_names.get(host) if host is not None else None
        if host is None or host_name is None or "?" in start_line.path:
            super().__init__(
                connection=connection,
                server_connection=server_connection,
                start_line=start_line,
                headers=headers,
            )
            if host is not None and host_name is None and len(_host_names) < MAX_HOSTS:
                _host_names[host] = self.host_name  # tornado's constructor accepted it
            return
        self.method, self.uri, self.version = start_line
        self.headers = headers
        self.body = b""
        context = getattr(connection, "context", None)
        self.remote_ip = getattr(context, "remote_ip", None)
        self.protocol = getattr(context, "protocol", "http")
        self.host = host
        self.host_name = host_name
        self.files = {}
        self.connection = connection
        self.server_connection = server_connection
        self._start_time = time.time()
        self._finish_time = None
        self.path, self.query = start_line.path, ""
        self.arguments = {}
        self.query_arguments = {}
        self.body_arguments = {}


class LeanRequestHandler(RequestHandler):
    """RequestHandler with a constructor and `clear()` that skip what the gateway never uses (see the
    module docstring); everything else is tornado's."""

    def __init__(self, application: Application, request: HTTPServerRequest, **kwargs: Any) -> None:
        # tornado's constructor, minus the template namespace.
        self.application = application
        self.request = request
        self._headers_written = False
        self._finished = False
        self._auto_finish = True
        self._prepared_future = None
        self.clear()
        request.connection.set_close_callback(self.on_connection_close)  # type: ignore[union-attr]
        self.initialize(**kwargs)

    def clear(self) -> None:
        """Reset headers and body as tornado does, without its `Server` header (never sent here)."""
        headers = HTTPHeaders()
        headers._as_list = {"Content-Type": [_DEFAULT_CONTENT_TYPE], "Date": [_DATE.now()]}
        self._headers = headers
        self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"

    def _start(self, transforms: list[Any], path_args: list[bytes], path_kwargs: dict[str, bytes]) -> None:
        """What tornado's request task does before the body: the method check, the path arguments,
        its cross-origin checks and prepare(); errors answered as tornado answers them."""
        self._transforms = transforms
        try:
            if self.request.method not in self.SUPPORTED_METHODS:
                raise HTTPError(405)
            self.path_args = [self.decode_argument(arg) for arg in path_args]
            self.path_kwargs = {k: self.decode_argument(v, name=k) for (k, v) in path_kwargs.items()}
            self._cross_origin_protection()
            if self.prepare() is not None:
                raise TypeError("a LeanRequestHandler's prepare() must not be a coroutine")
        except Exception as error:  # noqa: BLE001 - every failure is answered, as tornado does
            self._answer_failure(error)

    async def _run_method(self) -> None:
        """The request method, once the body is complete, then finish() unless the method did."""
        try:
            method = getattr(self, (self.request.method or "GET").lower())
            result = method(*self.path_args, **self.path_kwargs)
            if result is not None:
                await result
            if self._auto_finish and not self._finished:
                self.finish()
        except (Exception, asyncio.CancelledError) as error:
            task = asyncio.current_task()
            if isinstance(error, asyncio.CancelledError) and task is not None and task.cancelling():
                if not self._finished:  # the task itself was cancelled (shutdown): as tornado
                    try:
                        self.send_error(500)
                    except Exception:
                        app_log.error("Exception in exception handler", exc_info=True)
                raise
            self._answer_failure(error)

    def _answer_failure(self, error: BaseException) -> None:
        try:
            self._handle_request_exception(error)
        except Exception:
            app_log.error("Exception in exception handler", exc_info=True)


class LeanHandlerDelegate(_HandlerDelegate):
    """tornado's _HandlerDelegate for a LeanRequestHandler with a streamed body, in one loop pass
    (see the module docstring)."""

    handler: LeanRequestHandler

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> None:
        self.request._body_future = self.request.connection.stream.io_loop.asyncio_loop.create_future()  # type: ignore[union-attr]
        self.handler = self.handler_class(self.application, self.request, **self.handler_kwargs)  # type: ignore[assignment]
        transforms = [transform(self.request) for transform in self.application.transforms]
        self.handler._start(transforms, self.path_args, self.path_kwargs)

    def finish_inline(self) -> Coroutine[Any, Any, None] | None:
        """The body is complete: the request method, as a coroutine for the connection's own task
        to await (serving.py), instead of a task of its own, unless the pass is busy (then finish());
        None when there is nothing to await."""
        loop = self.request.connection.stream.io_loop.asyncio_loop  # type: ignore[union-attr]
        if loop_pass.busy(loop):
            self.finish()
            return None
        return self._method_due()

    def finish(self) -> None:
        method = self._method_due()
        if method is not None:
            loop = self.request.connection.stream.io_loop.asyncio_loop  # type: ignore[union-attr]
            task = start_task_now(method, loop)
            if not task.done() or task.cancelled() or task.exception() is not None:
                task.add_done_callback(_surface_failure)

    def _method_due(self) -> Coroutine[Any, Any, None] | None:
        """The body is complete: the request method to run, or None when prepare() answered."""
        future_set_result_unless_cancelled(self.request._body_future, None)
        if self.handler._finished:
            return None
        return self.handler._run_method()


def start_task_now(coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
    """A task for `coro` whose first step runs at once, in the caller's loop pass, as Python 3.12's
    eager tasks do; 3.11's Task schedules it for the next pass. A buffered relay then sends its
    request now, and one whose upstream answers while libcurl sends it ends without a pass of its
    own. The step runs as the task's own (asyncio.current_task() is this task, cancellation and
    contextvars as for any task): the caller's task, if any, is left for that time and entered
    again after. Only when nothing else waits in the loop's ready queue: under load (64
    connections) running steps ahead of the pass's other callbacks cost 3-14 % more CPU per request
    natively, although fewer instructions; cause not found. On a loop whose ready queue is not
    asyncio's, the step stays scheduled."""
    ready = getattr(loop, "_ready", None)
    queued = len(ready) if ready is not None else -1
    task = asyncio.Task(coro, loop=loop)  # with its loop: no getpid in 3.11's get_event_loop()
    if ready is None or queued != 0 or len(ready) != 1:
        return task  # a busy pass (other callbacks wait): the step waits its turn, as before
    step = ready.pop()  # the Task constructor's call_soon(step)
    caller = asyncio.current_task(loop)
    if caller is not None:
        _leave_task(loop, caller)
    try:
        step._run()  # as the loop runs it: failures go to the task, or to the exception handler
    finally:
        if caller is not None:
            _enter_task(loop, caller)
    return task


def _surface_failure(done: asyncio.Task[None]) -> None:
    """What escaped a request method's task (not an answered failure): raised into the loop's
    exception handler, which logs it."""
    if not done.cancelled():
        done.result()
