"""Request bodies while they arrive: the buffer that holds one, and the clock of server.body_timeout.

A body is held whole (bounded by server.max_body_size) before it is relayed; the buffer is dropped the
moment its request ends, however it ends. A body that came in one piece (most do) is kept as tornado
gave it; a longer one grows in one bytearray, which the allocator maps on its own and unmaps when it is
freed (a list of 64 KiB pieces lives in the heap, which does not shrink once freed in the middle).

Tornado's own body timeout is turned off (server.py): it closes the socket without an answer, and the
way it waits (`tornado.gen.with_timeout`) keeps the failed read, whose traceback refers to the request's
handler, in a reference cycle that only a full garbage collection frees. `BodyDeadlines` instead has the
request answer 408 `body_timeout` itself: one sweep over the requests still receiving a body, every
twentieth of the timeout (at most every second, and only while there are any), costs less than a timer
per request; a timeout fires up to that much late.
"""

from __future__ import annotations

import time
from typing import Protocol

from tornado.ioloop import IOLoop


class BodyBuffer:
    """One request's body as it arrives, up to `limit` bytes."""

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data: bytes | bytearray = b""

    def __len__(self) -> int:
        return len(self._data)

    def add(self, chunk: bytes) -> bool:
        """Append `chunk`; False (and the buffer emptied) if the body would pass the limit."""
        if len(self._data) + len(chunk) > self.limit:
            self._data = b""
            return False
        if not self._data:
            self._data = chunk
        else:
            if isinstance(self._data, bytes):
                self._data = bytearray(self._data)
            self._data += chunk
        return True

    def value(self) -> bytes:
        """The whole body (once complete); the growing buffer is replaced by one bytes object."""
        if isinstance(self._data, bytearray):
            self._data = bytes(self._data)
        return self._data

    def clear(self) -> None:
        self._data = b""


class Receiving(Protocol):
    """A request whose body is still arriving."""

    def body_timed_out(self) -> None:
        """Answer 408 and close the connection (the body took longer than the timeout)."""


class BodyDeadlines:
    """The requests still receiving a body and when each began; built once by the composition root."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout  # the sweep reads it each time
        self._started: dict[Receiving, float] = {}
        self._sweeping: object | None = None  # the IOLoop timeout handle while requests are watched

    def reconfigure(self, timeout: float) -> None:
        """server.body_timeout after a reload: bodies still arriving are timed by the new value."""
        self.timeout = timeout

    def watch(self, request: Receiving) -> None:
        """Start `request`'s clock: its body must be complete within `timeout` seconds."""
        self._started[request] = time.monotonic()
        if self._sweeping is None:
            self._sweeping = IOLoop.current().call_later(self._interval(), self._sweep)

    def release(self, request: Receiving) -> None:
        """`request`'s body is complete, or the request ended: stop its clock."""
        self._started.pop(request, None)

    def stop(self) -> None:
        if self._sweeping is not None:
            IOLoop.current().remove_timeout(self._sweeping)
            self._sweeping = None

    def _interval(self) -> float:
        return min(1.0, self.timeout / 20)

    def _sweep(self) -> None:
        self._sweeping = None
        now = time.monotonic()
        late = [request for request, started in self._started.items() if now - started >= self.timeout]
        for request in late:
            del self._started[request]
        try:
            for request in late:
                request.body_timed_out()
        finally:
            if self._started and self._sweeping is None:
                self._sweeping = IOLoop.current().call_later(self._interval(), self._sweep)
