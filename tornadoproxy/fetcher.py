"""The one upstream HTTP client: pycurl through tornado.curl_httpclient, behind a bounded gate.

`Fetcher.open()` starts a request and returns an `Exchange` whose status and headers arrive before
its body, which is then read chunk by chunk as libcurl receives it, so streams are never buffered.
This is the only module that calls `setopt` and the only one that knows curl error numbers; it
turns them into `UpstreamError`s (with the table in curl_errors.py). Every option the gateway owns is set
on every request, because tornado reuses curl handles (shared/PITFALLS.md). A request whose egress
proxy fails before the tunnel to the upstream is open is sent again through the next proxy of its
upstream (egress_pool.py): the upstream never saw it, so the client never notices.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import HTTPRequest, HTTPResponse
from tornado.ioloop import IOLoop

from tornadoproxy.config import FetchConfig
from tornadoproxy.curl_errors import CurlFailure, classify_failure
from tornadoproxy.egress import EgressProxy
from tornadoproxy.egress_pool import EgressPools
from tornadoproxy.errors import GatewayBusy, UpstreamError, egress_proxy_error, upstream_timeout
from tornadoproxy.metrics import Metrics
from tornadoproxy.profiles import ClientProfile

log = logging.getLogger(__name__)

CURLE_ABORTED_BY_CALLBACK = 42
# Pause the transfer when this much body waits for a slow client; resume below the low mark.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Buffered fetches (logins, probes) never hold more than this.
_MAX_BUFFERED = 16 * 1024 * 1024
# One request goes through at most this many egress proxies (the first try and two failovers).
MAX_ATTEMPTS = 3
# Curl handles beyond the gate's capacity, for the gateway's own requests (readiness probes): they
# never take a client's slot, and a full gate does not blind the probes.
_RESERVED_HANDLES = 8


@dataclass(frozen=True, slots=True)
class UpstreamRoute:
    """How requests to one upstream leave the host: its origin, egress proxies (tried in order;
    `(DIRECT,)` for none) and client profile."""

    name: str
    origin: str
    proxies: tuple[EgressProxy, ...]
    profile: ClientProfile


class CookieJar:
    """One login's cookies, kept by libcurl's own cookie engine in a share of the cookie data.

    libcurl treats loopback as a secure context (RFC 6265bis), so `Secure` and `__Host-` cookies work
    against the plain-http simulator as against the real https hosts; Python's http.cookiejar does
    not. A jar is never shared between logins and never attached to relayed requests."""

    __slots__ = ("_share",)

    def __init__(self) -> None:
        self._share = pycurl.CurlShare()
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_COOKIE)

    def attach(self, curl: pycurl.Curl) -> None:
        curl.setopt(pycurl.SHARE, self._share)
        curl.setopt(pycurl.COOKIEFILE, "")  # "" turns the cookie engine on without reading a file


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to send; `headers` are the client's headers to merge into the profile.
    `cookies` is the login's jar (None for every relayed request: no cookie engine at all)."""

    upstream: str
    method: str
    url: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    cookies: CookieJar | None = None


class Gate:
    """At most `capacity` upstream requests at once; a request waits at most `wait` seconds."""

    def __init__(self, capacity: int, wait: float, metrics: Metrics) -> None:
        self._free = capacity
        self.wait = wait
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._metrics = metrics
        metrics.gate_capacity.set(capacity)

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._metrics.gate_in_flight.inc()
            return
        if self.wait <= 0:
            self._reject()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # granted just as the wait ran out: keep the slot
            waiter.cancel()
            self._reject()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            waiter.cancel()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the waiter
                return
        self._free += 1
        self._metrics.gate_in_flight.dec()

    def _reject(self) -> None:
        self._metrics.gate_rejected.inc()
        raise GatewayBusy(
            "the gateway is handling as many upstream requests as it is configured for "
            "(fetch.max_clients); retry shortly",
            retry_after=1,
        )


class Exchange:
    """One upstream request in flight: status and headers first, then the body as it arrives."""

    def __init__(
        self,
        fetcher: Fetcher,
        request: UpstreamRequest,
        route: UpstreamRoute,
        proxy: EgressProxy,
        gated: bool,
    ) -> None:
        self.request = request
        self.route = route
        self.gated = gated
        self.proxy = proxy  # the egress proxy of the current attempt
        self.failed_attempts: list[tuple[EgressProxy, UpstreamError]] = []
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.headers_complete = False
        self.finished = False
        self.error: UpstreamError | None = None
        self.aborted_reason: str | None = None
        self.started_at = time.monotonic()
        self._last_activity = self.started_at
        self._fetcher = fetcher
        self._curl: pycurl.Curl | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- the consumer side (handlers) -----------------------------------------------------------
    async def wait_headers(self) -> None:
        """Return once the final status and headers are in; raise UpstreamError if none will come."""
        while not self.headers_complete:
            if self.finished or self.aborted_reason is not None:
                raise self.error or UpstreamError(
                    f"the {self.route.name} upstream closed the connection without a response"
                )
            await self._wait()

    async def read(self, timeout: float | None = None) -> bytes | None:
        """The body bytes received so far (waiting for some), b"" if `timeout` passed without
        any, None at the end or once aborted. Raises UpstreamError if the transfer failed midway."""
        if not self._chunks and not self.finished and self.aborted_reason is None:
            await self._wait(timeout)
        if self.aborted_reason is not None:
            if self.error is not None:
                raise self.error
            return None
        if self._chunks:
            data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
            self._chunks.clear()
            self._buffered = 0
            if self._paused:
                self._resume()
            return data
        if self.finished:
            if self.error is not None:
                raise self.error
            return None
        return b""

    def abort(self, reason: str, error: UpstreamError | None = None) -> None:
        """Stop the transfer (client gone, shutdown, idle); libcurl notices within about a second.
        With `error`, the consumer sees that error instead of the end of the body."""
        if not self.finished and self.aborted_reason is None:
            self.aborted_reason = reason
            self.error = error
            if self._paused:
                self._resume()  # a paused transfer only sees the abort once it runs again
            self._wake()

    async def _wait(self, timeout: float | None = None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        if timeout is None:
            await waiter
            return
        handle = IOLoop.current().call_later(timeout, self._wake)
        try:
            await waiter
        finally:
            IOLoop.current().remove_timeout(handle)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arm_idle_timer(self, idle: float) -> None:
        """Fail the exchange after `idle` seconds without a byte from the upstream.

        libcurl's own LOW_SPEED_TIME fires about seven seconds late (its speed is an average over
        the last five seconds), so the idle timeout is ours: one timer per exchange, re-armed
        only when it fires, and a timestamp per chunk."""

        def check() -> None:
            if self.finished or self.aborted_reason is not None:
                return
            silent = time.monotonic() - self._last_activity
            if silent < idle:
                IOLoop.current().call_later(idle - silent, check)
                return
            self._fetcher.metrics.count_upstream_error(self.route.name, "timeout")
            message = f"the {self.route.name} upstream sent nothing for {idle:g} s (fetch.idle_timeout)"
            self.abort("idle_timeout", upstream_timeout(message))

        IOLoop.current().call_later(idle, check)

    # -- the producer side: libcurl's own callbacks (see Fetcher.open) --------------------------
    def on_curl_ready(self, curl: pycurl.Curl) -> None:
        self._curl = curl

    def on_progress(self, _dltotal: int, _dlnow: int, _ultotal: int, _ulnow: int) -> int:
        return 1 if self.aborted_reason is not None else 0

    def on_header(self, raw: bytes) -> None:
        """HEADERFUNCTION: one header line, called by libcurl as it parses them."""
        self._last_activity = time.monotonic()
        line = raw.decode("latin-1")
        if line.startswith("HTTP/"):
            # A new status line starts a new header block (1xx, redirect).
            parts = line.split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.reason = parts[2].strip() if len(parts) > 2 else ""
            self.headers = []
        elif line == "\r\n" or line == "\n":
            if self.status >= 200 and not self.headers_complete:
                self.headers_complete = True
                self._fetcher.egress.mark_ok(self.route.name, self.proxy)
                self._fetcher.metrics.observe_first_byte(self.route.name, time.monotonic() - self.started_at)
                self._wake()
        else:
            name, _, value = line.partition(":")
            if name and not name[0].isspace():
                self.headers.append((name.strip(), value.strip()))

    def on_write(self, chunk: bytes) -> int | None:
        """WRITEFUNCTION: body bytes as libcurl receives them.

        Over the high-water mark the chunk is refused with WRITEFUNC_PAUSE: libcurl keeps it, stops
        reading the socket, and hands it over again once `read()` resumes the transfer. A slow
        client thereby slows its upstream instead of growing our memory. An abort makes the write
        fail at once (a silent upstream is covered by the progress callback)."""
        if self.aborted_reason is not None:
            return 0
        if self._buffered >= _HIGH_WATER:
            self._paused = True
            return pycurl.WRITEFUNC_PAUSE
        self._last_activity = time.monotonic()
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()
        return None

    def _resume(self) -> None:
        self._paused = False
        if self._curl is not None:
            try:
                # May call on_write() at once with the chunk libcurl held back.
                self._curl.pause(pycurl.PAUSE_CONT)
            except pycurl.error:
                pass  # the transfer failed while paused; on_finished reports it

    def on_finished(self, response: HTTPResponse) -> None:
        # A non-2xx answer is data: only a CurlError (code 599) is a transport failure.
        failed = isinstance(response.error, CurlError)
        failure = _failure_of(response.error, self._curl) if failed else None
        self._curl = None  # tornado resets and reuses the handle from now on
        self._paused = False
        if failure is not None and self.aborted_reason is None:
            error = self._fetcher.classify(self, failure)
            if self._fetcher.retry(self, error):
                return  # the same request is on its way through the next proxy
            self.error = self._fetcher.give_up(self, error)
        self.finished = True
        self._fetcher.release(self)
        self._wake()

    def next_attempt(self, proxy: EgressProxy) -> None:
        """Forget the failed attempt (it sent nothing to the upstream) and go through `proxy`."""
        self.proxy = proxy
        self.status = 0
        self.reason = ""
        self.headers = []
        self._last_activity = time.monotonic()

    @property
    def received_nothing(self) -> bool:
        return not self.headers_complete and not self._chunks


def _failure_of(error: BaseException | None, curl: pycurl.Curl | None) -> CurlFailure:
    """What libcurl said about a failed transfer, read before tornado resets the handle."""
    errno = error.errno if isinstance(error, CurlError) else 0
    message = str(error.message if isinstance(error, CurlError) else error)
    connect_code = proxy_code = 0
    if curl is not None:
        try:
            connect_code = int(curl.getinfo(pycurl.HTTP_CONNECTCODE))
            proxy_code = int(curl.getinfo(pycurl.PROXY_ERROR))
        except pycurl.error:
            pass
    return CurlFailure(errno, message or "", connect_code, proxy_code)


class Fetcher:
    """The process's upstream client; built once at start-up by the composition root."""

    def __init__(
        self,
        config: FetchConfig,
        routes: Mapping[str, UpstreamRoute],
        metrics: Metrics,
        egress: EgressPools,
    ) -> None:
        self.metrics = metrics
        self.egress = egress
        self._proxy_options = {
            proxy: proxy.curl_options() for route in routes.values() for proxy in route.proxies
        }
        self.reconfigure(config, routes)
        # force_instance: never the shared per-IOLoop singleton, whose max_clients is fixed at 10.
        self._client = CurlAsyncHTTPClient(
            force_instance=True, max_clients=config.max_clients + _RESERVED_HANDLES, max_body_size=1 << 62
        )
        self._gate = Gate(config.max_clients, config.queue_timeout, metrics)
        self._open: set[Exchange] = set()

    def reconfigure(self, config: FetchConfig, routes: Mapping[str, UpstreamRoute]) -> None:
        """New timeouts, gate wait, profiles and trust for requests started from now on. The curl
        client's size and the egress proxies (their health is tracked) are fixed at start-up."""
        self.config = config
        self._routes = dict(routes)
        self._profile_options = {name: route.profile.curl_options() for name, route in routes.items()}
        self._trust_options = _trust_options(config.ca_file)
        if hasattr(self, "_gate"):
            self._gate.wait = config.queue_timeout

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def route(self, upstream: str) -> UpstreamRoute:
        return self._routes[upstream]

    async def open(self, request: UpstreamRequest, gated: bool = True) -> Exchange:
        """Take a gate slot (or raise GatewayBusy) and start the request. Only the gateway's own
        bounded background requests may pass `gated=False`."""
        route = self._routes[request.upstream]
        if gated:
            await self._gate.acquire()
        proxy = self.egress.choose(route.name)
        assert proxy is not None  # a first attempt always gets a proxy
        exchange = Exchange(self, request, route, proxy, gated)
        self._open.add(exchange)
        self._start(exchange)
        exchange.arm_idle_timer(self.config.idle_timeout)
        return exchange

    def _start(self, exchange: Exchange) -> None:
        """Hand the exchange's request to libcurl through its current proxy."""
        request, route = exchange.request, exchange.route
        options = (
            self._proxy_options[exchange.proxy] + self._profile_options[route.name] + self._trust_options
        )
        header_lines = route.profile.header_lines(request.headers, route.origin)
        idle = self.config.idle_timeout
        cookies = request.cookies

        def prepare(curl: pycurl.Curl) -> None:
            for option, value in options:
                curl.setopt(option, value)
            curl.setopt(pycurl.HTTPHEADER, header_lines)
            curl.setopt(pycurl.NOSIGNAL, 1)
            curl.setopt(pycurl.TCP_NODELAY, 1)
            curl.setopt(pycurl.TCP_KEEPALIVE, 1)
            curl.setopt(pycurl.NOPROGRESS, 0)
            curl.setopt(pycurl.XFERINFOFUNCTION, exchange.on_progress)
            # LOW_SPEED_* arm a one-second timer in libcurl that lets the progress callback see an
            # abort even while the upstream is silent; they are also a backstop for our idle timer.
            curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
            curl.setopt(pycurl.LOW_SPEED_TIME, idle)
            # Our own header and body callbacks replace tornado's: tornado queues every header line
            # and body chunk as an IOLoop callback and can deliver the last body bytes before the
            # headers; ours run in libcurl's order, cost no callback, and pause the transfer when
            # the client falls behind. They only record data and wake the reader: nothing in them
            # re-enters the client or raises.
            curl.setopt(pycurl.HEADERFUNCTION, exchange.on_header)
            curl.setopt(pycurl.WRITEFUNCTION, exchange.on_write)
            # curl_easy_reset keeps a handle's shares and cookies: a handle that served a login would
            # send that login's cookies with the next request it serves. Detaching the share also
            # drops the handle's cookie engine (checked against libcurl 8.23, tests/e2e/test_logins.py).
            curl.setopt(pycurl.SHARE, None)
            if cookies is not None:
                cookies.attach(curl)
            exchange.on_curl_ready(curl)

        body = request.body if request.method not in ("GET", "HEAD") else None
        http_request = HTTPRequest(
            request.url,
            method=request.method,
            body=body,
            connect_timeout=self.config.connect_timeout,
            request_timeout=0,  # never a total timeout: streams last as long as the answer
            follow_redirects=False,
            max_redirects=0,
            decompress_response=False,
            allow_nonstandard_methods=True,
            validate_cert=True,
            proxy_password="",
            prepare_curl_callback=prepare,
        )
        # fetch_impl is the client's documented implementation hook; calling it directly gives us
        # the raw HTTPResponse (with curl's errno) and spares a Future per request.
        self._client.fetch_impl(http_request, exchange.on_finished)

    async def fetch(self, request: UpstreamRequest, gated: bool = True) -> tuple[Exchange, bytes]:
        """Send `request` and read its whole (bounded) body: for logins and probes, not relays."""
        exchange = await self.open(request, gated)
        try:
            await exchange.wait_headers()
            parts = []
            size = 0
            while (chunk := await exchange.read()) is not None:
                parts.append(chunk)
                size += len(chunk)
                if size > _MAX_BUFFERED:
                    raise UpstreamError(
                        f"the {request.upstream} upstream sent a body over {_MAX_BUFFERED} bytes",
                        kind="protocol",
                    )
            return exchange, b"".join(parts)
        finally:
            exchange.abort("done")

    def release(self, exchange: Exchange) -> None:
        if exchange in self._open:
            self._open.discard(exchange)
            if exchange.gated:
                self._gate.release()

    def abort_all(self, reason: str) -> None:
        for exchange in list(self._open):
            exchange.abort(reason)

    def classify(self, exchange: Exchange, failure: CurlFailure) -> UpstreamError:
        """Translate a transport failure into a gateway error; an egress proxy failure takes the
        proxy out of rotation for its cool-down."""
        name, proxy = exchange.route.name, exchange.proxy
        error = classify_failure(
            failure,
            upstream=name,
            url=exchange.request.url,
            proxy=proxy,
            headers_complete=exchange.headers_complete,
            connect_timeout=self.config.connect_timeout,
            idle_timeout=self.config.idle_timeout,
        )
        if error.code == "egress_proxy_error":
            self.egress.mark_failed(name, proxy, error.kind)
            log.warning("egress proxy %s failed for the %s upstream (%s)", proxy.label, name, error.kind)
        return error

    def retry(self, exchange: Exchange, error: UpstreamError) -> bool:
        """Send the request again through the next proxy that is up, if the failure happened before
        the tunnel to the upstream opened (so the upstream never saw it); True if it was sent."""
        if error.code != "egress_proxy_error" or not exchange.received_nothing:
            return False
        exchange.failed_attempts.append((exchange.proxy, error))
        if len(exchange.failed_attempts) >= MAX_ATTEMPTS:
            return False
        tried = [proxy for proxy, _ in exchange.failed_attempts]
        proxy = self.egress.choose(exchange.route.name, tried)
        if proxy is None:
            return False
        log.info("retrying a %s request through the egress proxy %s", exchange.route.name, proxy.label)
        exchange.next_attempt(proxy)
        self._start(exchange)
        return True

    def give_up(self, exchange: Exchange, error: UpstreamError) -> UpstreamError:
        """The error the client sees once no attempt is left; counted and logged once."""
        name = exchange.route.name
        if exchange.failed_attempts and error.code == "egress_proxy_error":
            error = _all_proxies_failed(
                name,
                exchange.failed_attempts,
                self.egress.cooling_report(name, skip=[proxy for proxy, _ in exchange.failed_attempts]),
            )
        self.metrics.count_upstream_error(name, error.kind)
        log.warning("upstream %s failed: %s (%s)", name, error.code, error.kind)
        return error

    def close(self) -> None:
        self._client.close()


def _all_proxies_failed(
    upstream: str, attempts: Sequence[tuple[EgressProxy, UpstreamError]], cooling: Sequence[str]
) -> UpstreamError:
    """One error naming every proxy tried for this request (and those cooling down) and how each failed."""
    if len(attempts) == 1 and not cooling:
        return attempts[0][1]
    phrases = [f"{proxy.label}: {error.detail} ({error.kind})" for proxy, error in attempts]
    return egress_proxy_error(
        f"every egress proxy for the {upstream} upstream failed: " + "; ".join(phrases + list(cooling)),
        attempts[-1][1].kind,
    )


def _trust_options(ca_file: str) -> tuple[tuple[int, Any], ...]:
    """With fetch.ca_file, trust exactly its CAs (upstreams and https:// proxies); without, keep the
    bundle pycurl set on the handle (it finds the system one at import and re-applies it on reset)."""
    if not ca_file:
        return ()
    return (
        (pycurl.CAINFO, ca_file),
        (pycurl.CAPATH, None),
        (pycurl.PROXY_CAINFO, ca_file),
        (pycurl.PROXY_CAPATH, None),
    )


def tls_settings_problem(options: Sequence[tuple[int, Any]]) -> str | None:
    """What libcurl (with its own OpenSSL) refuses in a profile's TLS options, or None.

    The handle is given one end of a socket pair whose other end is closed, marked as already
    connected: libcurl builds its TLS context (refusing a bad cipher, curve or signature algorithm
    list at once, errno 59) and then fails to send the ClientHello. No name lookup, no network."""
    ours, theirs = socket.socketpair()
    theirs.close()
    curl = pycurl.Curl()
    try:
        curl.setopt(pycurl.URL, "https://127.0.0.1:9/")
        curl.setopt(pycurl.OPENSOCKETFUNCTION, lambda _purpose, _address: ours)
        curl.setopt(pycurl.SOCKOPTFUNCTION, lambda _fd, _purpose: pycurl.SOCKOPT_ALREADY_CONNECTED)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.TIMEOUT_MS, 5000)
        for option, value in options:
            curl.setopt(option, value)
        curl.perform()
    except pycurl.error as error:
        errno, message = error.args
        return str(message) if errno == 59 else None
    finally:
        curl.close()
        ours.close()
    return None
