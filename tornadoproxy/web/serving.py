"""The listener's request loop: each accepted connection's requests, one after another, read with
tornado's IOStream and HTTP/1 parsing (framing.py's rules) by a loop of ours.

Tornado's own loop pays per request for three coroutine frames, a `with_timeout` around each header
read (a future, a timer on the loop's heap, chained callbacks, a cancel), a loop pass after each
request and the stream's close callback set and cleared again. Here:
- one coroutine per connection reads each header block, and one per request
  (`RequestConnection.serve`) reads its body and, in the same task, runs the request method where
  the delegate offers it as `finish_inline` (lean_handler.py: no task per request), then waits for
  the answer's end;
- the idle timeout (`server.idle_connection_timeout`, tornado's header timeout: from the end of an
  answer, or the accept, to the end of the next header block) is a deadline on the connection that
  one sweep per listener checks once a second (`IdleSweep`): an overdue connection is closed, as
  tornado's timeout closes it, at most a second later than the deadline;
- after an answer the loop yields a pass only when the next request's bytes are already buffered
  (pipelining: other connections get their turn); otherwise the next read waits on the socket;
- the stream's close callback is set once, for the connection's life; it reaches the request
  that waits for its answer, as tornado's does.
Everything else is tornado's HTTP1Connection: limits, 100-continue, keep-alive rules, writes.
Limits: no `detach()` after the headers (no websockets here).
"""

from __future__ import annotations

import asyncio
import time
from asyncio import Future
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado import gen
from tornado.http1connection import HTTP1ConnectionParameters, _GzipMessageDelegate
from tornado.httputil import (
    HTTPHeaders,
    HTTPInputError,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    parse_request_start_line,
)
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.log import app_log, gen_log

from tornadoproxy.web.framing import StrictHTTP1Connection

# A header block. Empty lines before a request line are ignored (RFC 9112 2.2): tornado's pattern,
# `\r?\n\r?\n`, ends a block at the first empty line, so two of them (or CRLF after a body, then one)
# read as an empty request; this block starts at its first other byte (what comes before is stripped
# by the parser). Anchored, and line by line: `[^\n]*+` runs to each line end at once, where a lazy
# `[\s\S]*?` tried the empty-line pattern at every byte (a ninth of the cost, same ends:
# tests/unit/test_lean_web.py).
HEADER_END = rb"\A[\r\n]*[^\r\n](?:[^\n]*+\n)+?\r?\n"
_CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
SWEEP_INTERVAL = 1.0  # seconds between two checks of the connections' idle deadlines


class _Logged(Exception):
    """A delegate's failure, already logged: the connection closes without an answer (as tornado)."""


def _tell(method: Callable[..., Any], *args: Any) -> Any:
    """Call a delegate's method and return what it returns; a failure other than a malformed message
    is logged, then ends the connection (`_Logged`), as tornado treats its delegates' failures."""
    try:
        return method(*args)
    except HTTPInputError:
        raise
    except Exception as error:
        app_log.error("Uncaught exception", exc_info=True)
        raise _Logged from error


class RequestConnection(StrictHTTP1Connection):
    """One request's HTTP/1 connection: its header block read by the ServerConnection, the rest by
    `serve`."""

    def _clear_callbacks(self) -> None:
        # The stream's close callback is the ServerConnection's, for the connection's life.
        self._write_callback = None
        self._write_future = None
        self._close_callback = None

    async def serve(self, delegate: HTTPMessageDelegate, header: bytes, owner: ServerConnection) -> bool:
        """The request of `header` to `delegate`: headers, body, then the wait for the answer.
        Whether the connection stays open for another request."""
        told = False  # the delegate has the request: it hears of its end
        try:
            try:
                text, headers = self._parse_headers(header)
                start_line = parse_request_start_line(text)
                self._request_start_line = start_line
                self._request_headers = headers
                self._disconnect_on_finish = not self._can_keep_alive(start_line, headers)
                told = True
                try:
                    pending = delegate.headers_received(start_line, headers)
                    if pending is not None:
                        await pending  # a failure while waiting on it is the delegate's too
                except HTTPInputError:
                    raise
                except Exception as error:
                    app_log.error("Uncaught exception", exc_info=True)
                    raise _Logged from error
                stream = self.stream
                if stream is None:  # detached
                    told = False
                    return False
                if headers.get("Expect") == "100-continue" and not self._write_finished:
                    stream.write(_CONTINUE)
                taken = self._buffered_body(headers, delegate)
                if taken is False:
                    body = self._read_body(0, headers, delegate)
                    if body is not None and not await self._body_read(body):
                        return False
                elif taken is not True:
                    await taken
                self._read_finished = True
                owner.waiting = self
                if not self._write_finished:
                    inline = getattr(delegate, "finish_inline", None)
                    method = _tell(delegate.finish if inline is None else inline)
                    told = False
                    if method is not None:
                        await method  # it answers every failure of its own
                if not self._finish_future.done() and self.stream is not None and not stream.closed():
                    await self._finish_future
                owner.waiting = None
                return self.stream is not None
            except HTTPInputError as error:
                gen_log.info("Malformed HTTP message from %s: %s", self.context, error)
                await self.stream.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                self.close()
                return False
            finally:
                if told:
                    _tell(delegate.on_connection_close)
                self._clear_callbacks()
        except _Logged:
            self.close()
            return False

    def _buffered_body(self, headers: HTTPHeaders, delegate: HTTPMessageDelegate) -> bool | Awaitable[None]:
        """Deliver a body of a plain Content-Length that the stream has already buffered whole, in
        one piece of at most chunk_size (as tornado's body reading delivers it), without that
        reading's two coroutines: True, or what the delegate's data_received returned to await;
        False for any other body (left to tornado's reading, which checks and refuses)."""
        length = headers.get("Content-Length")
        if length is None or "Transfer-Encoding" in headers or not (length.isascii() and length.isdigit()):
            return False
        size = int(length)
        if size > self._max_body_size or size > self.params.chunk_size:
            return False
        stream = self.stream
        if size > stream._read_buffer_size:
            return False
        if size:
            data = cast("Future[bytes]", stream.read_bytes(size)).result()
            if not self._write_finished:
                pending = _tell(delegate.data_received, data)
                if pending is not None:
                    return pending
        return True

    async def _body_read(self, body: Any) -> bool:
        """Await the body's reading, within the connection's body timeout if it has one; False when
        that ran out (the stream is closed)."""
        if self._body_timeout is None:
            await body
            return True
        try:
            deadline = self.stream.io_loop.time() + self._body_timeout
            await gen.with_timeout(deadline, body, quiet_exceptions=StreamClosedError)
        except TimeoutError:
            gen_log.info("Timeout reading body from %s", self.context)
            self.stream.close()
            return False
        return True


class ServerConnection:
    """An accepted connection's request loop (see the module docstring). `close()` and the
    `server.on_close(self)` at its end are what tornado's HTTPServer expects of its connections."""

    __slots__ = ("stream", "params", "context", "server", "header_deadline", "waiting", "_task")

    def __init__(
        self,
        stream: IOStream,
        params: HTTP1ConnectionParameters,
        context: object,
        server: HTTPServerConnectionDelegate,
    ) -> None:
        self.stream = stream
        self.params = params
        self.context = context
        self.server = server
        # When the header block being read is overdue (monotonic seconds); None when not reading one.
        self.header_deadline: float | None = None
        # The request waiting for its answer, told when the stream closes.
        self.waiting: RequestConnection | None = None
        self._task: asyncio.Task[None] | None = None
        stream.set_close_callback(self._stream_closed)

    def start(self) -> None:
        self._task = self.stream.io_loop.asyncio_loop.create_task(self._serve())  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Close the connection; return once its loop has ended."""
        self.stream.close()
        if self._task is not None:
            try:
                await self._task
            except Exception:  # noqa: BLE001 - ended either way
                pass

    def _stream_closed(self) -> None:
        request = self.waiting
        if request is not None:
            request._on_connection_close()

    async def _serve(self) -> None:
        stream, params = self.stream, self.params
        reading: Future[bytes] | None = None
        try:
            while True:
                reading = cast(
                    "Future[bytes]", stream.read_until_regex(HEADER_END, max_bytes=params.max_header_size)
                )
                timeout = params.header_timeout  # read each time: a reload may change it
                if timeout is not None and not reading.done():
                    self.header_deadline = time.monotonic() + timeout
                header = await reading
                self.header_deadline = None
                request = RequestConnection(stream, False, params, self.context)
                delegate = self.server.start_request(self, request)
                if params.decompress:
                    delegate = _GzipMessageDelegate(delegate, params.chunk_size, request._max_body_size)
                if not await request.serve(delegate, header, self):
                    return
                # Nothing of the request is kept while the connection waits for the next one.
                reading = request = delegate = None  # type: ignore[assignment]
                if stream._read_buffer_size:
                    await asyncio.sleep(0)  # a pipelined request: other connections' turn first
        except (StreamClosedError, UnsatisfiableReadError, asyncio.CancelledError):
            return
        except Exception:
            gen_log.error("Uncaught exception", exc_info=True)
            stream.close()
            return
        finally:
            # A failed read's future holds its exception, whose traceback holds this frame: a cycle.
            reading = None
            self.server.on_close(self)


class IdleSweep:
    """Once a second, closes each connection of `connections` whose header block is overdue; runs
    while there are connections (`watch()` starts it again)."""

    def __init__(self, connections: set[ServerConnection]) -> None:
        self._connections = connections
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(SWEEP_INTERVAL, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        overdue = [c for c in self._connections if c.header_deadline is not None and c.header_deadline <= now]
        for connection in overdue:
            connection.stream.close()
        self._timer = loop.call_later(SWEEP_INTERVAL, self._sweep, loop) if self._connections else None
