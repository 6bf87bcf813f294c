"""The relay: what one request against an upstream does between its caller and the transport.

`Relay.relay()` sends a client's request and writes the answer to its client side (client.py):
status and headers first, an event stream event by event with a flush after each (keep-alive
comments while the upstream is silent, a final `event: error` when it fails midway), any other body
buffered up to `fetch.buffer_size` and sent with a Content-Length, or passed on as it arrives when
larger. Before a byte goes out, a challenge, block or HTML error page becomes the gateway error that
says so (diagnosis.py), counted, and a challenge or block takes the egress proxy out of rotation;
a 401 makes the token cache forget the credential if it issued it. A request pinned to an egress
proxy (an account of the pool) leaves that judgement to its owner, and a `Watch` may see what is
relayed (the pool learns which account a conversation belongs to). `Relay.fetch()` is the same
service for the gateway's own bounded requests (logins, probes): the whole answer at once.

The hot path is a stream's events: while the client keeps up they go from libcurl's write
callback straight to the client's connection (`_DirectEvents`, through `Exchange.take_body` and
`ClientSide.send`), with no future, queue or loop pass per chunk, and `_pump_woken()` stays parked in
`Exchange.read()`. Whatever else happens (the client's connection holds unsent bytes, an event too
large, a keep-alive due, the end, a failure, a size check) wakes `_pump_woken()`, which handles it as one
`read()`, write and `deliver()` (bounded by the stall timeout) per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tornadoproxy.config.schema import FetchConfig, StreamsConfig
from tornadoproxy.errors import Code, GatewayBusy, GatewayError, UpstreamError
from tornadoproxy.formats.sse import EventSplitter, EventTooLarge, encode_comment, encode_event
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.relay.client import ClientGone, ClientSide
from tornadoproxy.relay.forwarding import is_event_stream, relayed_response_headers
from tornadoproxy.upstream.diagnosis import diagnose
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.exchange import Exchange
from tornadoproxy.upstream.fetcher import Fetcher
from tornadoproxy.upstream.request import UpstreamRequest

log = logging.getLogger(__name__)

# Buffered fetches (logins, probes) never hold more than this.
MAX_FETCHED = 16 * 1024 * 1024
_STREAM_HEADERS = (("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"))
# Diagnoses after which the next request should leave through another egress proxy.
_EGRESS_PROBLEMS = ("challenge", "blocked")

ForgetToken = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole upstream answer, for the gateway's own requests: status, headers, body, and the
    egress proxy it came through."""

    upstream: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    proxy: EgressProxy


class Watch(Protocol):
    """Sees what a relay passes on to its client, without changing it."""

    def body(self, status: int, body: bytes) -> None:
        """A buffered answer, whole, as it is about to be sent (not a larger one passed on as it arrives,
        nor one replaced by a gateway error)."""
        ...

    def events(self, events: bytes) -> None:
        """Whole events of a stream, as they are about to be sent."""
        ...


async def _never_issued(_authorization: str) -> None:
    return None


class Relay:
    """The process's relay; built once by the composition root around the fetcher.

    `forget_token(authorization)` is the token cache's: called when the upstream refuses a
    credential (401), so that a token the cache issued is not served again."""

    def __init__(
        self,
        fetcher: Fetcher,
        metrics: Metrics,
        fetch: FetchConfig,
        streams: StreamsConfig,
        forget_token: ForgetToken | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._metrics = metrics
        self._forget_token = forget_token or _never_issued
        self.active = 0  # relays still writing to their clients (the drain waits for them)
        self.reconfigure(fetch, streams)

    def reconfigure(self, fetch: FetchConfig, streams: StreamsConfig) -> None:
        """Buffer size, event size limit and keep-alive interval for relays started from now on."""
        self._buffer_size = fetch.buffer_size
        self._max_event_size = streams.max_event_size
        self._keepalive = streams.keepalive_interval

    # -- the gateway's own requests ---------------------------------------------------------------
    async def fetch(self, request: UpstreamRequest, gated: bool = True) -> Answer:
        """Send `request` and read its whole (bounded) answer: for logins and probes, not relays.
        Only the gateway's own bounded background requests may pass `gated=False`."""
        exchange = await self._fetcher.open(request, gated)
        try:
            await exchange.wait_headers()
            parts = []
            size = 0
            while (chunk := await exchange.read()) is not None:
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_FETCHED:
                    raise UpstreamError(
                        f"the {request.upstream} upstream sent a body over {MAX_FETCHED} bytes",
                        kind="protocol",
                    )
            body = b"".join(parts)
            return Answer(request.upstream, exchange.status, list(exchange.headers), body, exchange.proxy)
        finally:
            exchange.abort("done")

    async def refused_credential(self, authorization: str) -> None:
        """The upstream answered 401 to `authorization` on a request the relay did not send itself
        (an /imitate conversation): a token the cache issued is not served again."""
        await self._forget_token(authorization)

    def unusable(self, upstream: str, proxy: EgressProxy, kind: str) -> None:
        """An answer was a challenge, block or error page (`kind`): count it, and after a challenge
        or block send the next request to `upstream` through another egress proxy, if any."""
        self._metrics.count_upstream_error(upstream, kind)
        if kind in _EGRESS_PROBLEMS:
            self._fetcher.egress.mark_failed(upstream, proxy, kind)

    # -- client relays ----------------------------------------------------------------------------
    async def relay(
        self,
        request: UpstreamRequest,
        client: ClientSide,
        authorization: str = "",
        watch: Watch | None = None,
    ) -> None:
        """Send `request` and relay its answer to `client`; raise the GatewayError that replaces an
        answer when nothing was sent yet. `authorization` is the credential sent (for eviction);
        `watch` sees the answer go by."""
        exchange = await self._fetcher.open(request)
        head = request.method == "HEAD"
        del request  # the exchange holds it, and lets go of its body once sent (release_body)
        client.attach(exchange)
        self.active += 1
        try:
            try:
                await exchange.wait_headers()
            except UpstreamError:
                if not client.gone:
                    raise
                client.start(499, "Client Closed Request", ())  # nginx's code: nobody to answer
                client.finish()
                return
            client.upstream_status = exchange.status
            if exchange.status == 401 and authorization:
                # The credential is dead upstream; if the token cache issued it, stop serving it.
                await self._forget_token(authorization)
            if is_event_stream(exchange.headers):
                await self._relay_stream(exchange, client, watch)
            else:
                await self._relay_body(exchange, client, head, watch)
        finally:
            self.active -= 1
            exchange.abort("client_gone" if client.gone else "done")

    def _start(self, exchange: Exchange, client: ClientSide, own: tuple[tuple[str, str], ...] = ()) -> None:
        """Status and the upstream headers a client may see; `own` headers replace the upstream's."""
        headers = relayed_response_headers(exchange.headers)
        if own:
            replaced = {name.lower() for name, _ in own}
            headers = [header for header in headers if header[0].lower() not in replaced] + list(own)
        client.start(exchange.status, exchange.reason, headers)

    async def _relay_body(
        self, exchange: Exchange, client: ClientSide, head: bool, watch: Watch | None
    ) -> None:
        parts: list[bytes] = []
        size = 0
        while (chunk := await exchange.read()) is not None:
            parts.append(chunk)
            size += len(chunk)
            if size > self._buffer_size:
                self._refuse_unusable(exchange, parts[0])
                await self._relay_large_body(exchange, client, parts)
                return
        body = b"".join(parts)
        self._refuse_unusable(exchange, body)
        if watch is not None:
            watch.body(exchange.status, body)
        self._start(exchange, client)
        client.bytes_out = len(body)
        if head or exchange.status in (204, 304):
            client.finish()
        else:
            client.finish(body)

    def _refuse_unusable(self, exchange: Exchange, body: bytes) -> None:
        """Raise the gateway error that replaces a challenge, block or HTML error page."""
        name = exchange.route.name
        problem = diagnose(name, exchange.status, exchange.headers, body)
        if problem is not None:
            if exchange.request.proxy is None:
                self.unusable(name, exchange.proxy, problem.kind)
            else:  # a pinned proxy is an account's: the pool judges it when it hears the outcome
                self._metrics.count_upstream_error(name, problem.kind)
            log.warning("%s answered %d: %s", name, exchange.status, problem.code)
            raise problem

    async def _relay_large_body(self, exchange: Exchange, client: ClientSide, parts: list[bytes]) -> None:
        """A body too big to hold: relayed as it arrives; a failure midway cuts the connection."""
        exchange.release_body()
        self._start(exchange, client)
        chunk: bytes | None = b"".join(parts)
        try:
            while chunk is not None:
                if chunk:
                    client.write(chunk)
                    client.bytes_out += len(chunk)
                    await client.deliver()
                chunk = await exchange.read()
        except UpstreamError:
            client.cut()
            return
        except ClientGone:
            return
        client.finish()

    async def _relay_stream(self, exchange: Exchange, client: ClientSide, watch: Watch | None) -> None:
        exchange.release_body()  # a stream may last minutes: its request body is not kept as long
        self._start(exchange, client, _STREAM_HEADERS)
        exchange.headers = []  # nor the upstream's headers, once passed on (~1 KB)
        client.streamed = True
        metrics = self._metrics
        metrics.streams_active.inc()
        reason = "done"
        # Relay whole events as they complete. Set up here rather than in a coroutine of its own:
        # a held stream is parked in this chain, and each frame of it is ~300 bytes per stream.
        splitter = EventSplitter(self._max_event_size)
        if self._keepalive:
            self._fetcher.keep_alive(exchange, self._keepalive)
        try:
            await client.deliver()  # status and headers go out before the first event
            direct = _DirectEvents(exchange, client, splitter, watch)
            exchange.take_body(direct.take)
            reason = await self._pump_woken(exchange, client, splitter, watch, direct)
        except ClientGone:
            reason = "client_gone"
        finally:
            exchange.take_body(None)  # the taker refers to the client: no cycle left behind
            metrics.streams_active.dec()
            metrics.count_stream_end(reason)
            client.stream_end = reason
        await client.finish_stream()

    async def _pump_woken(
        self,
        exchange: Exchange,
        client: ClientSide,
        splitter: EventSplitter,
        watch: Watch | None,
        direct: _DirectEvents,
    ) -> str:
        """What `_DirectEvents` hands back: chunks it did not take, keep-alives, the end."""
        while True:
            try:
                chunk = await exchange.read()
                if direct.too_large is not None:
                    return self._end_bad_stream(client, exchange, direct.too_large)
                if chunk is None:
                    break
                behind, direct.behind = direct.behind, False
                events = splitter.feed(chunk) if chunk else b""
            except UpstreamError as error:
                _end_with_error(client, exchange, error)
                return "idle_timeout" if error.code is Code.UPSTREAM_TIMEOUT else "upstream_error"
            except EventTooLarge as error:
                return self._end_bad_stream(client, exchange, error)
            if events:
                if watch is not None:
                    watch.events(events)
                client.bytes_out += len(events)
                if client.send(events):
                    continue
            elif behind:
                pass  # the direct path left bytes unsent: wait for the client (stall timeout)
            elif not chunk and not splitter.pending:
                client.write(encode_comment("keep-alive"))
            else:
                continue
            await client.deliver()
        if client.gone:
            return "client_gone"
        if exchange.aborted_reason == "shutdown":
            _end_with_error(client, exchange, GatewayBusy.of(Code.SHUTTING_DOWN))
            return "shutdown"
        if splitter.pending:
            client.write(splitter.pending)  # the upstream's last bytes, passed on as they are
            client.bytes_out += len(splitter.pending)
        return "done"

    def _end_bad_stream(self, client: ClientSide, exchange: Exchange, error: EventTooLarge) -> str:
        name = exchange.route.name
        self._metrics.count_upstream_error(name, "protocol")
        bad_stream = GatewayError.of(Code.UPSTREAM_BAD_STREAM, upstream=name, problem=error)
        _end_with_error(client, exchange, bad_stream)
        return "upstream_error"


class _DirectEvents:
    """A stream's events relayed from libcurl's write callback (Exchange.take_body) while the
    client keeps up. What it cannot finish there it hands back to `_pump_woken` by waking it: bytes
    the client's connection did not take (`behind`: the pump waits for them, bounded by the stall
    timeout, while the exchange queues and pauses), or an event over the size limit (`too_large`).
    Waking also stops it until the pump waits in `read()` again, so chunks keep their order."""

    __slots__ = ("_exchange", "_client", "_splitter", "_watch", "behind", "too_large")

    def __init__(
        self, exchange: Exchange, client: ClientSide, splitter: EventSplitter, watch: Watch | None
    ) -> None:
        self._exchange = exchange
        self._client = client
        self._splitter = splitter
        self._watch = watch
        self.behind = False
        self.too_large: EventTooLarge | None = None

    def take(self, chunk: bytes) -> bool:
        try:
            events = self._splitter.feed(chunk)
        except EventTooLarge as error:
            self.too_large = error.with_traceback(None)  # its frame refers to this object
            self._exchange.wake()
            return True
        if events:
            if self._watch is not None:
                self._watch.events(events)
            client = self._client
            client.bytes_out += len(events)
            if not client.send(events):
                self.behind = True
                self._exchange.wake()
        return True


def _end_with_error(client: ClientSide, exchange: Exchange, error: GatewayError) -> None:
    """End a stream that failed midway with an `event: error` carrying the gateway error JSON."""
    log.warning("a stream from the %s upstream ended early: %s", exchange.route.name, error.code)
    client.error_code = error.code
    client.write(encode_event(error.to_json().decode(), event="error"))
