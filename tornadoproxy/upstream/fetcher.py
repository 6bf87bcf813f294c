"""The one upstream HTTP client: libcurl through the engine of each route's profile, behind a bounded gate.

`Fetcher.open()` starts a request and returns an `Exchange` (exchange.py) whose status and headers
arrive before its body; reading it is the relay's (relay/service.py). The request becomes an
engine-neutral `Transfer` (transport.py): every option the gateway owns besides the profile's, on
every request, because handles are reused; the profile's transport (engines.py, injected by the
composition root) adds its own. This is the only module that turns curl failures into
`UpstreamError`s (with the table in curl_errors.py). A request that failed before it could reach
the upstream (an egress proxy failure, a refused or timed-out connect) is sent again, at most
twice, after a short random delay, through the next egress proxy that is up: the upstream never
saw it, so the client never notices; except when the request pins its proxy (an account of the
pool): then it fails, and the account cools down instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence

import pycurl
from tornado.ioloop import IOLoop

from tornadoproxy.config.schema import FetchConfig
from tornadoproxy.errors import Code, UpstreamError, egress_proxy_error, upstream_timeout
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.upstream.curl_errors import CurlFailure, before_upstream, classify_failure
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.egress_pool import EgressPools
from tornadoproxy.upstream.engines import Transports
from tornadoproxy.upstream.exchange import Exchange
from tornadoproxy.upstream.gate import Gate
from tornadoproxy.upstream.request import UpstreamRequest, UpstreamRoute
from tornadoproxy.upstream.transport import CurlOption, Setup, Transfer

log = logging.getLogger(__name__)

# One request is sent at most this many times (the first try and two retries).
MAX_ATTEMPTS = 3
# A retry waits a random delay in this range (seconds) times the attempt number, so that requests
# that failed together do not all come back at the same moment.
_RETRY_JITTER = (0.02, 0.1)
_HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
# libcurl's send buffer (its minimum is 16 KiB), allocated by the first transfer that sends a body
# and kept with the handle: the request is written into its first page. Just above the allocator's
# mmap threshold (process/server.py), so that the pages it does not use are never paged in.
_SEND_BUFFER = 20 * 1024
# Curl handles beyond the gate's capacity, for the gateway's own requests (readiness probes): they
# never take a client's slot, and a full gate does not blind the probes.
RESERVED_HANDLES = 8


def transports_for(config: FetchConfig) -> Transports:
    """The transports a fetcher of `config` sends through: room for every gate slot, plus the
    handles reserved for the gateway's own requests."""
    return Transports(config.max_clients + RESERVED_HANDLES)


class Fetcher:
    """The process's upstream client; built once at start-up by the composition root, around the
    transports (one per client profile, upstream/engines.py) it is handed."""

    def __init__(
        self,
        config: FetchConfig,
        routes: Mapping[str, UpstreamRoute],
        metrics: Metrics,
        egress: EgressPools,
        transports: Transports,
    ) -> None:
        self.metrics = metrics
        self.egress = egress
        self._proxy_options = {
            proxy: proxy.curl_options() for route in routes.values() for proxy in route.proxies
        }
        self._transports = transports
        self._setups: dict[EgressProxy, Setup] = {}  # per proxy, for the current settings
        self.reconfigure(config, routes)
        self._gate = Gate(config.max_clients, config.queue_timeout, metrics)
        self._open: set[Exchange] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the running loop, kept (see open())
        self._keepalive_tick = 1.0  # lowered by keep_alive() for consumers that want short intervals
        self._idle_watch = IOLoop.current().call_later(self._sweep_interval(), self._sweep)

    def reconfigure(self, config: FetchConfig, routes: Mapping[str, UpstreamRoute]) -> None:
        """New timeouts, gate wait, profiles and trust for requests started from now on. The curl
        clients' size and the egress proxies (their health is tracked) are fixed at start-up."""
        self.config = config
        self._routes = dict(routes)
        self._setups = {}  # timeouts or trust may have changed
        self._transports.retire(route.profile for route in routes.values())
        if hasattr(self, "_gate"):
            self._gate.wait = config.queue_timeout

    @property
    def in_flight(self) -> int:
        return len(self._open)

    async def open(self, request: UpstreamRequest, gated: bool = True) -> Exchange:
        """Take a gate slot (or raise GatewayBusy) and start the request. Only the gateway's own
        bounded background requests may pass `gated=False`."""
        route = self._routes[request.upstream]
        if gated:
            await self._gate.acquire()
        proxy = request.proxy or self.egress.choose(route.name)
        assert proxy is not None  # a first attempt always gets a proxy
        loop = self._loop
        if loop is None or not loop.is_running():  # first request, or a new loop (tests): ask once
            loop = self._loop = asyncio.get_running_loop()
        exchange = Exchange(self, request, route, proxy, gated, self.config.max_decoded_size, loop)
        self._open.add(exchange)
        self._start(exchange)
        return exchange

    def _start(self, exchange: Exchange) -> None:
        """Hand the exchange's request to its profile's engine through its current proxy."""
        request, route = exchange.request, exchange.route
        profile = request.profile or route.profile  # an account of the pool may have its own
        setup = self._setups.get(exchange.proxy) or self._setup(exchange.proxy)
        transfer = Transfer(
            options=_request_options(request),
            header_lines=profile.header_lines(request.headers, route.origin),
            setup=setup,
            method=(request.method, request.body is not None),
            cookies=request.cookies,
        )
        self._transports.get(profile).start(transfer, exchange)

    def _setup(self, proxy: EgressProxy) -> Setup:
        """The options every request through `proxy` shares, for the current settings."""
        proxy_options = self._proxy_options.get(proxy)
        if proxy_options is None:  # a pinned proxy outside every route's list: an account's own
            proxy_options = self._proxy_options[proxy] = proxy.curl_options()
        options = proxy_options + _shared_options(int(self.config.connect_timeout * 1000))
        setup = self._setups[proxy] = Setup(options, self.config.ca_file)
        return setup

    def transfer_ended(self, exchange: Exchange, failure: CurlFailure | None) -> bool:
        """libcurl is done with the exchange's current attempt: classify a failure, retry when safe
        (True: the exchange goes on), else record the error and release the exchange's gate slot."""
        if failure is not None:
            error = self.classify(exchange, failure)
            if self.retry(exchange, error, failure):
                return True
            exchange.error = self.give_up(exchange, error)
        self.release(exchange)
        return False

    def release(self, exchange: Exchange) -> None:
        if exchange in self._open:
            self._open.discard(exchange)
            if exchange.gated:
                self._gate.release()

    def keep_alive(self, exchange: Exchange, interval: float) -> None:
        """Have the sweep wake `exchange`'s consumer after `interval` s of upstream silence."""
        exchange.keepalive = interval
        if interval / 4 < self._keepalive_tick:
            self._keepalive_tick = interval / 4
            IOLoop.current().remove_timeout(self._idle_watch)
            self._idle_watch = IOLoop.current().call_later(self._sweep_interval(), self._sweep)

    def _sweep_interval(self) -> float:
        return min(self._keepalive_tick, self.config.idle_timeout / 20)

    def _sweep(self) -> None:
        """Fail every exchange whose upstream sent nothing for fetch.idle_timeout seconds, and
        wake the stream consumers that are due a keep-alive.

        One sweep over the open exchanges every twentieth of the timeout (at most every second)
        rather than a timer per request or per read: at thousands of requests or events a second
        the timers cost more than the sweep, and a timer per request would stay in the IOLoop's
        heap for the whole timeout after its request ended. (libcurl's own LOW_SPEED_TIME fires
        about seven seconds late: it averages over the last five seconds.)"""
        idle = self.config.idle_timeout
        now = time.monotonic()
        for exchange in list(self._open):
            if exchange.aborted_reason is not None:
                continue
            if exchange.idle_for(now) >= idle:
                self.metrics.count_upstream_error(exchange.route.name, "timeout")
                message = (
                    f"the {exchange.route.name} upstream sent nothing for {idle:g} s (fetch.idle_timeout)"
                )
                exchange.abort("idle_timeout", upstream_timeout(message))
            elif exchange.keepalive_due(now):
                exchange.nudge(now)
        self._idle_watch = IOLoop.current().call_later(self._sweep_interval(), self._sweep)

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
        if error.code is Code.EGRESS_PROXY_ERROR:
            self.egress.mark_failed(name, proxy, error.kind)
            log.warning("egress proxy %s failed for the %s upstream (%s)", proxy.label, name, error.kind)
        return error

    def retry(self, exchange: Exchange, error: UpstreamError, failure: CurlFailure) -> bool:
        """Send the request again if it failed before it could reach the upstream (an egress proxy
        failure, or a refused or timed-out connect): through the next proxy that is up, or the same
        direct route, after a short random delay. True if a retry is on its way."""
        proxied = error.code is Code.EGRESS_PROXY_ERROR
        connect_failed = exchange.proxy.is_direct and before_upstream(failure, exchange.headers_complete)
        if not (proxied or connect_failed) or not exchange.received_nothing:
            return False
        if proxied and exchange.request.proxy is not None:
            return False  # a pinned proxy is the account's session: no other proxy may carry it
        exchange.failed_attempts.append((exchange.proxy, error))
        if len(exchange.failed_attempts) >= MAX_ATTEMPTS:
            return False
        if proxied:
            tried = [proxy for proxy, _ in exchange.failed_attempts]
            proxy = self.egress.choose(exchange.route.name, tried)
            if proxy is None:
                return False
        else:
            proxy = exchange.proxy
        delay = random.uniform(*_RETRY_JITTER) * len(exchange.failed_attempts)
        log.info(
            "retrying a %s request through %s in %.0f ms", exchange.route.name, proxy.label, delay * 1000
        )
        exchange.next_attempt(proxy)
        IOLoop.current().call_later(delay, self._start_retry, exchange)
        return True

    def _start_retry(self, exchange: Exchange) -> None:
        if exchange.aborted_reason is not None:  # the client left during the delay
            self.release(exchange)
            exchange.close_unsent()
            return
        self._start(exchange)

    def give_up(self, exchange: Exchange, error: UpstreamError) -> UpstreamError:
        """The error the client sees once no attempt is left; counted and logged once."""
        name = exchange.route.name
        proxies_failed = [attempt for attempt in exchange.failed_attempts if not attempt[0].is_direct]
        if proxies_failed and error.code is Code.EGRESS_PROXY_ERROR:
            error = _all_proxies_failed(
                name,
                exchange.failed_attempts,
                self.egress.cooling_report(name, skip=[proxy for proxy, _ in exchange.failed_attempts]),
            )
        self.metrics.count_upstream_error(name, error.kind)
        log.warning("upstream %s failed: %s (%s)", name, error.code, error.kind)
        return error

    def close(self) -> None:
        IOLoop.current().remove_timeout(self._idle_watch)
        self._transports.close()


def _request_options(request: UpstreamRequest) -> tuple[CurlOption, ...]:
    """The options of one request that are the same on every engine: URL, method and body."""
    method, body = request.method, request.body
    if method == "HEAD":
        sending: tuple[CurlOption, ...] = ((pycurl.NOBODY, 1),)
    elif body is None or method == "GET":
        sending = ((pycurl.HTTPGET, 1),)
    else:  # a body is sent as given, whatever the method
        sending = ((pycurl.POSTFIELDSIZE_LARGE, len(body)), (pycurl.POSTFIELDS, body))
    if method not in ("GET", "HEAD", "POST"):
        sending += ((pycurl.CUSTOMREQUEST, method),)
    return ((pycurl.URL, request.url), *sending)


def _shared_options(connect_ms: int) -> tuple[CurlOption, ...]:
    """The options every request has, the same on every engine: protocols, timeouts, buffers."""
    return (
        (pycurl.PROTOCOLS, _HTTP_ONLY),
        (pycurl.CONNECTTIMEOUT_MS, connect_ms),
        # libcurl keeps its send buffer (64 KiB by default) until the transfer ends: for a
        # stream that is 64 KiB per open stream for a request of a few hundred bytes.
        (pycurl.UPLOAD_BUFFERSIZE, _SEND_BUFFER),
        (pycurl.NOSIGNAL, 1),
        (pycurl.TCP_NODELAY, 1),
        (pycurl.TCP_KEEPALIVE, 1),
    )


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
