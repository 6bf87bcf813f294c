"""The HTTP listener: tornado's HTTPServer, with its protocol-level refusals in the gateway's JSON shape.

Tornado answers a malformed HTTP message (bad request line, header syntax, lengths, chunked encoding)
with a bare `400 Bad Request` and no body, and closes a connection whose header block outgrows
`max_header_size` without a word. Both are gateway answers, so both get the one JSON error shape, from
an IOStream subclass given to each accepted connection. They never reach a handler, so `refused`
(the metrics' gateway error counter) counts them here.

The same subclass trims two costs tornado pays on every request: it reads each socket into a fresh
64 KiB bytearray (zeroed first: an eighth of a small relayed request's instructions, and done again
for the read that finds nothing), where one scratch buffer per process does, since a read is copied
out of it at once; and it turns Nagle's algorithm off after each response and back on for the next
request (two setsockopt calls per request), where it is simply off for the connection's life, as
nginx has it: an answer or an event goes out when it is written.
Each connection's requests are read by the loop in serving.py, not by tornado's HTTP1ServerConnection.
"""

from __future__ import annotations

import socket
from asyncio import Future
from collections.abc import Callable
from typing import Any

from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.iostream import IOStream, StreamBufferFullError, UnsatisfiableReadError
from tornado.log import gen_log

from tornadoproxy.errors import BadRequest, Code, GatewayError
from tornadoproxy.web.serving import IdleSweep, ServerConnection

_TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
# Every connection's socket is read into this one buffer and copied out at once (the loop is one
# thread, and nothing keeps a view of it past a read).
_SCRATCH = bytearray(64 * 1024)
_SCRATCH_VIEW = memoryview(_SCRATCH)


def _response(status_line: str, error: GatewayError) -> bytes:
    body = error.to_json()
    head = (
        f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


MALFORMED = _response(
    "400 Bad Request",
    BadRequest("the request is not valid HTTP/1.1 (request line, header syntax, length or chunked encoding)"),
)
HEADERS_TOO_LARGE = _response(
    "431 Request Header Fields Too Large",
    GatewayError.of(Code.HEADERS_TOO_LARGE),
)


def _uncounted(_code: str) -> None:
    return None


class GatewayHTTPServer(HTTPServer):
    # Called with the error code of each protocol-level refusal; set by the composition root.
    refused: Callable[[str], None] = staticmethod(_uncounted)

    # The idle deadlines' sweep over `_connections`, made with the first connection.
    _sweep: IdleSweep | None = None

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        # A class swap rather than wrapped methods: no closures kept per connection.
        stream.__class__ = _JsonErrorIOStream
        stream.refused = self.refused  # type: ignore[attr-defined]
        IOStream.set_nodelay(stream, True)  # for the connection's life (see the module docstring)
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        connection = ServerConnection(stream, self.conn_params, context, self)
        self._connections.add(connection)  # type: ignore[arg-type]
        if self._sweep is None:
            self._sweep = IdleSweep(self._connections)  # type: ignore[arg-type]
        self._sweep.watch(stream.io_loop.asyncio_loop)  # type: ignore[attr-defined]
        connection.start()


class _JsonErrorIOStream(IOStream):
    """An IOStream whose protocol-level refusals are the gateway's JSON errors."""

    refused: Callable[[str], None]
    # The code of the refusal written on this connection, if any: a handler whose request body was
    # refused this way (bad chunked framing) ends its request with it (handlers/base.py).
    answered: str | None = None

    def set_nodelay(self, value: bool) -> None:
        """tornado's HTTP/1 connection toggles this around each response; it stays on."""

    def _read_to_buffer(self) -> int | None:
        """Read what the socket holds (up to read_chunk_size) onto the read buffer: tornado's
        contract (bytes read; 0 for nothing or the end; None after a reset), through the scratch
        buffer."""
        if self._user_read_buffer or self.socket is None:
            return super()._read_to_buffer()
        try:
            received = self.socket.recv_into(_SCRATCH, min(self.read_chunk_size, len(_SCRATCH)))
        except BlockingIOError:
            return 0
        except OSError as error:
            self.close(exc_info=error)
            if self._is_connreset(error):
                return None  # a reset reads as the connection's end (error kept on the stream)
            raise
        if received == 0:
            self.close()
            return 0
        self._read_buffer += _SCRATCH_VIEW[:received]
        self._read_buffer_size += received
        if self._read_buffer_size > self.max_buffer_size:
            gen_log.error("Reached maximum read buffer size")  # as tornado's own read does
            full = StreamBufferFullError("Reached maximum read buffer size")
            self.close(exc_info=full)
            raise full
        return received

    def write(self, data: bytes | memoryview) -> Future[None]:
        if data == _TORNADO_BAD_REQUEST:
            self.refused("bad_request")
            self.answered = "bad_request"
            data = MALFORMED
        return super().write(data)

    def close(self, exc_info: Any = False) -> None:
        error = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if (
            isinstance(error, UnsatisfiableReadError)
            and self.socket is not None
            and not self._total_write_index
        ):
            # The stream is about to close on its own: a best-effort answer straight to the socket.
            self.refused("headers_too_large")
            try:
                self.socket.send(HEADERS_TOO_LARGE, socket.MSG_DONTWAIT)
            except OSError:
                pass
        super().close(exc_info)
        if self.error is not None:
            # tornado keeps the error that closed the stream (a reset, say); its traceback refers to
            # frames that refer to this stream: a cycle that would hold the connection's buffers
            # until a full garbage collection.
            self.error.__traceback__ = None
