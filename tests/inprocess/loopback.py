"""A loopback upstream in the test's own event loop, the upstream side built as the gateway builds it,
and a client side that records what the relay writes.

The upstream's answers are held on asyncio events the test releases, so a test can say "event 2 only
after the client took event 1" without sleeping.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from tornadoproxy.config.schema import FetchConfig, StreamsConfig
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.relay.client import ClientGone
from tornadoproxy.relay.service import ForgetToken, Relay
from tornadoproxy.upstream.egress import DIRECT
from tornadoproxy.upstream.egress_pool import EgressPools
from tornadoproxy.upstream.engines import ENGINES, Engine, Transports
from tornadoproxy.upstream.exchange import Exchange
from tornadoproxy.upstream.fetcher import Fetcher
from tornadoproxy.upstream.request import UpstreamRequest, UpstreamRoute
from tornadoproxy.upstream.shipped_profiles import profile_registry

CHALLENGE_PAGE = b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body></body></html>"


@dataclass
class Holds:
    """Gates the upstream handlers wait on; `released` names the gates the test has opened."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)  # the request bodies the upstream received

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()


class _Held(RequestHandler):
    def initialize(self, holds: Holds) -> None:
        self.holds = holds


class Json(_Held):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(b'{"ok":true}')
        await self.flush()  # status and headers go out before the body is released
        await self.holds.gate("json-body").wait()
        self.finish(b',"more":1')


class Events(_Held):
    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "private")
        self.write(b"data: one\n\n")
        await self.flush()
        await self.holds.gate("event-2").wait()
        self.finish(b"data: two\n\n")

    async def post(self) -> None:
        self.holds.bodies.append(self.request.body)
        await self.get()


class Challenge(_Held):
    def get(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/html")
        self.finish(CHALLENGE_PAGE)


class Unauthorized(_Held):
    def get(self) -> None:
        self.set_status(401)
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"error":{"code":"invalid_api_key"}}')


class Large(_Held):
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(bytes(range(256)) * 64)  # 16 KiB: past the smallest fetch.buffer_size


class Upstream:
    """The loopback upstream; `origin` is its base URL."""

    def __init__(self) -> None:
        self.holds = Holds()
        app = Application(
            [
                (path, handler, {"holds": self.holds})
                for path, handler in (
                    ("/json", Json),
                    ("/events", Events),
                    ("/challenge", Challenge),
                    ("/unauthorized", Unauthorized),
                    ("/large", Large),
                )
            ]
        )
        self._sockets = bind_sockets(0, "127.0.0.1")
        self._server = HTTPServer(app)
        self._server.add_sockets(self._sockets)
        self.origin = f"http://127.0.0.1:{self._sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self._server.stop()
        await self._server.close_all_connections()


def refused_origin() -> str:
    """An origin on loopback where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@dataclass
class Side:
    """The upstream side of one test: metrics, fetcher and relay on one route named `platform`."""

    registry: CollectorRegistry
    metrics: Metrics
    fetcher: Fetcher
    relay: Relay
    origin: str

    def request(
        self, path: str, method: str = "GET", headers: Sequence[tuple[str, str]] = ()
    ) -> UpstreamRequest:
        return UpstreamRequest("platform", method, self.origin + path, list(headers))

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()


@asynccontextmanager
async def upstream_side(
    origin: str,
    fetch: FetchConfig | None = None,
    engines: dict[str, Engine] | None = None,
    forget_token: ForgetToken | None = None,
    profile: str = "plain",
) -> AsyncIterator[Side]:
    """The fetcher and relay as the composition root builds them, with one route to `origin`
    through the client profile named `profile`."""
    fetch = fetch or FetchConfig(max_clients=4, buffer_size=1024)
    route = UpstreamRoute("platform", origin, (DIRECT,), profile_registry()[profile])
    registry = CollectorRegistry()
    metrics = Metrics(registry, ("platform",))
    egress = EgressPools({"platform": route.proxies}, 30.0, metrics)
    transports = Transports(fetch.max_clients + 8, engines or ENGINES)
    fetcher = Fetcher(fetch, {"platform": route}, metrics, egress, transports)
    relay = Relay(fetcher, metrics, fetch, StreamsConfig(keepalive_interval=0), forget_token)
    try:
        yield Side(registry, metrics, fetcher, relay, origin)
    finally:
        fetcher.close()


@asynccontextmanager
async def against_loopback(forget_token: ForgetToken | None = None) -> AsyncIterator[tuple[Upstream, Side]]:
    """A loopback upstream and the upstream side with its one route pointed at it."""
    upstream = Upstream()
    try:
        async with upstream_side(upstream.origin, forget_token=forget_token) as side:
            yield upstream, side
    finally:
        await upstream.close()


class RecordingClient:
    """A client side (relay/client.py) that records what the relay writes. `deliver()` records the
    bytes written since the last one and sets `delivered`, so a test can release the upstream's next
    piece only once the previous one reached the client."""

    def __init__(self) -> None:
        self.gone = False
        self.upstream_status: int | None = None
        self.bytes_out = 0
        self.streamed = False
        self.stream_end: str | None = None
        self.error_code: str | None = None
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.deliveries: list[bytes] = []
        self.finished: bytes | None = None
        self.cut_off = False
        self.delivered = asyncio.Event()
        self._pending: list[bytes] = []
        self.exchange: Exchange | None = None

    def attach(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def start(self, status: int, reason: str, headers: Sequence[tuple[str, str]]) -> None:
        self.status, self.headers = status, list(headers)

    def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)

    def send(self, chunk: bytes) -> bool:
        self._pending.append(chunk)
        return False  # recorded by the next deliver()

    async def deliver(self) -> None:
        if self.gone:
            raise ClientGone()
        self.deliveries.append(b"".join(self._pending))
        self._pending = []
        self.delivered.set()

    def finish(self, chunk: bytes | None = None) -> Any:
        self.finished = b"".join(self._pending) + (chunk or b"")
        self._pending = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def finish_stream(self) -> None:
        self.finish()

    def cut(self) -> None:
        self.cut_off = True
