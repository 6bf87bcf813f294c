"""One upstream request in flight, as libcurl hands it over: status and headers, then the body.

The exchange is the sink of its transfers (transport.Sink): it receives libcurl's own header and
body callbacks from whichever engine runs its profile, so data arrives in libcurl's order without an
IOLoop callback per piece, and the transfer pauses when the consumer falls behind. The consumer
(a handler, a login step, a probe) awaits `wait_headers()` and `read()`. A consumer may also take
the body straight from libcurl's write callback while it waits in `read()` (`take_body`): a relayed
stream's events then reach the client with no future, no queue and no loop pass per chunk. What to
do when a transfer ends (classify, fail over, release the gate slot) is the fetcher's.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from tornadoproxy.errors import Code, UpstreamError
from tornadoproxy.upstream.curl_errors import CurlFailure
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.transport import WRITE_ERROR, WRITE_PAUSE

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tornadoproxy.observability.metrics import Metrics
    from tornadoproxy.upstream.egress_pool import EgressPools
    from tornadoproxy.upstream.request import UpstreamRequest, UpstreamRoute
    from tornadoproxy.upstream.transport import Transport

# Pause the transfer when this much body waits for a slow client.
_HIGH_WATER = 256 * 1024
# A compressed answer is ended once it has decoded to more than fetch.max_decoded_size, or to more
# than RATIO_FROM bytes at over MAX_RATIO times its encoded size (gzip tops out near 1,030, brotli far
# higher; real JSON and SSE stay well below 100).
RATIO_FROM = 16 * 1024 * 1024
MAX_RATIO = 100


class Owner(Protocol):
    """What an exchange needs from the fetcher that started it."""

    metrics: Metrics
    egress: EgressPools

    def transfer_ended(self, exchange: Exchange, failure: CurlFailure | None) -> bool: ...


class Exchange:
    """One upstream request in flight: status and headers first, then the body as it arrives."""

    # Slotted: its thirty attributes outgrow an instance's shared-key dict, which then costs
    # ~1,650 bytes per exchange (a held stream keeps one) against ~280.
    __slots__ = (
        "request",
        "route",
        "gated",
        "proxy",
        "failed_attempts",
        "status",
        "reason",
        "headers",
        "header_lines",
        "headers_complete",
        "finished",
        "error",
        "aborted_reason",
        "started_at",
        "_last_activity",
        "keepalive",
        "_quiet_since",
        "_loop",
        "_owner",
        "_transport",
        "_handle",
        "_chunks",
        "_buffered",
        "_paused",
        "_waiter",
        "_taker",
        "_max_decoded",
        "_check_decoded_from",
        "_coded",
        "_decoded",
        "_encoded",
    )

    def __init__(
        self,
        owner: Owner,
        request: UpstreamRequest,
        route: UpstreamRoute,
        proxy: EgressProxy,
        gated: bool,
        max_decoded: int,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """`loop`: the running loop when the caller holds it (asking asyncio costs a getpid call)."""
        self.request = request
        self.route = route
        self.gated = gated
        self.proxy = proxy  # the egress proxy of the current attempt
        self.failed_attempts: list[tuple[EgressProxy, UpstreamError]] = []
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.header_lines: list[bytes] = []  # raw lines not yet read (see take_header_lines)
        self.headers_complete = False
        self.finished = False
        self.error: UpstreamError | None = None
        self.aborted_reason: str | None = None
        self.started_at = time.monotonic()
        self._last_activity = self.started_at
        # Seconds of upstream silence after which the consumer wants a nudge (0: never); the
        # fetcher's sweep does the nudging, so no timer is armed per read.
        self.keepalive = 0.0
        self._quiet_since = self.started_at
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._owner = owner
        self._transport: Transport | None = None  # the engine running the current attempt
        self._handle: object | None = None  # its handle for the attempt, while it runs
        self._chunks: list[bytes] = []  # a list, not a deque: 56 bytes against 600 per open stream
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None  # set while the consumer waits
        self._taker: Callable[[bytes], bool] | None = None  # see take_body()
        # libcurl decodes gzip and br itself; the write callback counts what it decoded, libcurl's
        # SIZE_DOWNLOAD what came over the wire. Checked in read(), where getinfo is allowed (pycurl
        # refuses it inside callbacks); the transfer pauses past _HIGH_WATER, so at most that much
        # more is decoded before a check.
        self._max_decoded = max_decoded
        self._check_decoded_from = min(RATIO_FROM, max_decoded)
        self._coded = False  # the answer has a Content-Encoding
        self._decoded = 0
        self._encoded = 0  # as read at the end of the transfer

    # -- the consumer side (handlers) -----------------------------------------------------------
    async def wait_headers(self) -> None:
        """Return once the final status and headers are in; raise UpstreamError if none will come."""
        while not self.headers_complete:
            if self.finished or self.aborted_reason is not None:
                if self.error is not None:
                    raise self._raised_error()
                name = self.route.name
                raise UpstreamError(f"the {name} upstream closed the connection without a response")
            await self._wait()

    async def read(self) -> bytes | None:
        """The body bytes received so far (waiting for some), b"" when a keep-alive is due (see
        `keepalive`) before any came, None at the end or once aborted. Raises UpstreamError if the
        transfer failed midway."""
        if not self._chunks and not self.finished and self.aborted_reason is None:
            # Awaited here, not through _wait(): a held stream is parked in read(), and a
            # coroutine frame fewer is ~200 bytes per stream (and a call fewer per wake-up).
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None  # also when the consumer was cancelled: it waits no more
        if self.aborted_reason is not None:
            if self.error is not None:
                raise self._raised_error()
            return None
        if self._coded and self._decoded > self._check_decoded_from:
            self._check_inflation()
        if self._chunks:
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks = []
            self._buffered = 0
            if self._paused:
                self._resume()
            return data
        if self.finished:
            if self.error is not None:
                raise self._raised_error()
            return None
        return b""

    def _check_inflation(self) -> None:
        """Abort a compressed answer that decodes to too much, and raise why."""
        encoded = self._encoded
        if self._transport is not None and self._handle is not None:
            encoded = self._transport.downloaded(self._handle)
        problem = inflation_problem(self._decoded, encoded, self._max_decoded)
        if problem is None:
            return
        name = self.route.name
        self._owner.metrics.count_upstream_error(name, "protocol")
        error = UpstreamError(
            f"the {name} upstream's compressed answer {problem}", code=Code.UPSTREAM_TOO_LARGE
        )
        log.warning("the %s upstream's compressed answer was cut: %s", name, problem)
        self._chunks = []
        if self.finished:
            self.error = error
        else:
            self.abort("too_large", error)
        raise self._raised_error()

    def _raised_error(self) -> UpstreamError:
        """A copy of `error` for the consumer to raise. Raising the stored exception itself would
        attach the consumer's traceback to it, and so its frames (handler, body, this exchange) to
        the exchange: a reference cycle that only a full garbage collection frees, rare with the
        gateway's collector thresholds (server.GC_THRESHOLDS)."""
        assert self.error is not None
        return copy.copy(self.error)

    def abort(self, reason: str, error: UpstreamError | None = None) -> None:
        """Stop the transfer at once (client gone, shutdown, idle): its connection is closed.
        With `error`, the consumer sees that error instead of the end of the body."""
        if not self.finished and self.aborted_reason is None:
            self.aborted_reason = reason
            self.error = error
            self._wake()
            if self._transport is not None and self._handle is not None:
                self._transport.cancel(self._handle)

    def release_body(self) -> None:
        """Drop the request body once the upstream has answered and libcurl has sent all of it: a
        stream would otherwise hold it for its whole life (a conversation's body is tens of KB,
        more than everything else a held stream keeps). Nothing sends it again by then: a retry
        needs an attempt that received nothing, and libcurl is given no redirect to follow and no
        authentication to negotiate. Kept while libcurl may still be sending (an early answer)."""
        body = self.request.body
        if body is None or not self.headers_complete:
            return
        if self._transport is not None and self._handle is not None:
            if not self._transport.release_body(self._handle, len(body)):
                return
        self.request = self.request.without_body()

    def take_body(self, taker: Callable[[bytes], bool] | None) -> None:
        """Hand body bytes to `taker` from libcurl's write callback while the consumer waits in
        `read()` with nothing queued and no size check due; None stops it (clear it at the end:
        the taker refers to its consumer). `taker(chunk)` returns True when it took the chunk, False
        to have it queued for `read()` as usual. It runs inside libcurl's callback, so it must not
        raise, abort or resume this exchange: it may `wake()` the consumer."""
        self._taker = taker

    def wake(self) -> None:
        """Wake the consumer with no data (its `read()` returns b""): the taker's way to hand back."""
        self._wake()

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None  # also when the consumer was cancelled: it waits no more

    def keepalive_due(self, now: float) -> bool:
        """Whether the consumer asked for keep-alives and has heard nothing for `keepalive` s."""
        return bool(self.keepalive) and self._waiter is not None and now - self._quiet_since >= self.keepalive

    def nudge(self, now: float) -> None:
        """Wake the consumer with no data: its read() returns b"" (time for a keep-alive)."""
        self._quiet_since = now
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def idle_for(self, now: float) -> float:
        """Seconds since the upstream last sent a byte (or since the attempt started)."""
        return now - self._last_activity

    def on_started(self, transport: Transport, handle: object) -> None:
        self._transport = transport
        self._handle = handle

    def on_header(self, raw: bytes) -> int:
        """HEADERFUNCTION: one header line, called by libcurl as it parses them."""
        self.header_lines.append(raw)
        self.take_header_lines()
        return len(raw)

    def take_header_lines(self) -> bool:
        """Read the header lines gathered in `header_lines` since the last call; True once the
        final head is complete. The pycurl engine makes that list's `append` its HEADERFUNCTION,
        so libcurl hands over a line without a Python call (about 6,000 instructions a line), and
        calls this after libcurl returns; `on_write` and `on_ended` call it first, so the lines are
        read before anything that needs them. A new status line starts a new block (1xx,
        redirect); lines after the final block's end (a chunked body's trailers) are kept too."""
        lines = self.header_lines
        if not lines:
            return self.headers_complete
        now = self._last_activity = time.monotonic()
        for raw in lines:
            line = raw.decode("latin-1")
            # Tested in the order of their frequency: a field, the block's end, a status line.
            name, colon, value = line.partition(":")
            if colon and not line.startswith("HTTP/"):
                if name and not name[0].isspace():
                    self.headers.append((name.strip(), value.strip()))
            elif line == "\r\n" or line == "\n":
                if self.status >= 200 and not self.headers_complete:
                    self._head_complete(now)
            elif line.startswith("HTTP/"):
                # The line ending off first: "HTTP/1.1 200" without a reason phrase is a 200.
                parts = line.rstrip("\r\n").split(" ", 2)
                self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdecimal() else 0
                self.reason = parts[2].strip() if len(parts) > 2 else ""
                self.headers = []
            elif name and not name[0].isspace():  # a line without a colon, kept as libcurl gave it
                self.headers.append((name.strip(), ""))
        lines.clear()  # in place: libcurl holds this list's append
        return self.headers_complete

    def _head_complete(self, now: float) -> None:
        self.headers_complete = True
        for field, content in self.headers:
            if field.lower() == "content-encoding" and content.lower() not in ("", "identity"):
                self._coded = True
        route = self.route.name
        self._owner.egress.mark_ok(route, self.proxy)
        self._owner.metrics.observe_first_byte(route, now - self.started_at)
        self._wake()

    def on_write(self, chunk: bytes) -> int:
        """WRITEFUNCTION: body bytes as libcurl receives them.

        Over the high-water mark the chunk is refused with WRITE_PAUSE: libcurl keeps it, stops
        reading the socket, and hands it over again once `read()` resumes the transfer. A slow
        client thereby slows its upstream instead of growing our memory. An abort makes the write
        fail at once (a silent upstream is covered by the progress callback)."""
        if self.header_lines:
            self.take_header_lines()
        if self.aborted_reason is not None:
            return WRITE_ERROR
        if self._buffered >= _HIGH_WATER:
            self._paused = True
            return WRITE_PAUSE
        self._last_activity = self._quiet_since = time.monotonic()
        self._decoded += len(chunk)
        taker = self._taker
        if (
            taker is not None
            and self._waiter is not None
            and not self._chunks
            and not (self._coded and self._decoded > self._check_decoded_from)
            and taker(chunk)
        ):
            return len(chunk)
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()
        return len(chunk)

    def _resume(self) -> None:
        self._paused = False
        if self._transport is not None and self._handle is not None:
            self._transport.resume(self._handle)  # may call on_write() at once with what was held

    def on_ended(self, failure: CurlFailure | None) -> None:
        """libcurl is done with this attempt (None: completed; a non-2xx answer is data)."""
        if self.header_lines:
            self.take_header_lines()
        if self._coded and self._transport is not None and self._handle is not None:
            self._encoded = self._transport.downloaded(self._handle)  # still valid here
        self._handle = None  # the handle is reset and reused from now on
        self._paused = False
        if self._owner.transfer_ended(self, failure if self.aborted_reason is None else None):
            return  # sent again: through the next egress proxy, or after a failed connect
        self.finished = True
        self._wake()

    def close_unsent(self) -> None:
        """End an exchange whose next attempt was never started (aborted while waiting to retry)."""
        self.finished = True
        self._wake()

    def next_attempt(self, proxy: EgressProxy) -> None:
        """Forget the failed attempt (it sent nothing to the upstream) and go through `proxy`."""
        self.proxy = proxy
        self.status = 0
        self.reason = ""
        self.headers = []
        self.header_lines.clear()
        self._last_activity = time.monotonic()

    @property
    def received_nothing(self) -> bool:
        return not self.headers_complete and not self._chunks


def inflation_problem(decoded: int, encoded: int, ceiling: int) -> str | None:
    """Why an answer that decoded `decoded` bytes from `encoded` must end, or None."""
    if decoded > ceiling:
        return f"decodes to more than {ceiling} bytes (fetch.max_decoded_size)"
    if decoded > RATIO_FROM and decoded > MAX_RATIO * max(encoded, 1):
        return f"expands more than {MAX_RATIO} times (over {decoded} bytes from {encoded})"
    return None
