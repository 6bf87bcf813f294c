"""The gate, the fetcher and the exchange in-process: slots, failover of a refused connect, status and
headers before the body, and the engine seam with a transport of the test's own."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.harness import metric_value
from tests.inprocess.loopback import Side, Upstream, against_loopback, refused_origin, upstream_side
from tornadoproxy.config.schema import FetchConfig
from tornadoproxy.errors import Code, GatewayBusy, UpstreamError
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.upstream.curl_client import CurlClient
from tornadoproxy.upstream.curl_errors import CurlFailure
from tornadoproxy.upstream.fetcher import MAX_ATTEMPTS
from tornadoproxy.upstream.gate import Gate
from tornadoproxy.upstream.idle_handles import IDLE_RESERVE
from tornadoproxy.upstream.impersonation import ImpersonationClient
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.transport import Sink, Transfer, Transport


def test_the_gate_passes_a_freed_slot_to_the_first_waiter_and_refuses_when_it_may_not_wait() -> None:
    async def run() -> None:
        registry = CollectorRegistry()
        metrics = Metrics(registry, ("platform",))
        gate = Gate(1, 10.0, metrics)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)  # the waiter queues behind the held slot
        assert not waiter.done()
        gate.release()
        await asyncio.wait_for(waiter, 5)  # granted: the slot passed straight to it
        exposition = generate_latest(registry).decode()
        assert metric_value(exposition, "tornadoproxy_gate_in_flight") == 1
        gate.wait = 0  # as after a reload to fetch.queue_timeout 0: a full gate refuses at once
        with pytest.raises(GatewayBusy) as refused:
            await gate.acquire()
        assert refused.value.code is Code.GATEWAY_BUSY and refused.value.retry_after == 1
        gate.release()
        exposition = generate_latest(registry).decode()
        assert metric_value(exposition, "tornadoproxy_gate_in_flight") == 0
        assert metric_value(exposition, "tornadoproxy_gate_rejected_total") == 1

    asyncio.run(run())


def test_a_refused_connect_is_tried_again_then_reported_once_and_frees_its_slot() -> None:
    async def run() -> None:
        async with upstream_side(refused_origin()) as side:
            exchange = await side.fetcher.open(side.request("/json"))
            with pytest.raises(UpstreamError) as failed:
                await exchange.wait_headers()
            assert failed.value.code is Code.UPSTREAM_UNREACHABLE and failed.value.status == 502
            assert len(exchange.failed_attempts) == MAX_ATTEMPTS  # the first try and two retries
            assert side.fetcher.in_flight == 0
            exposition = side.exposition()
            assert metric_value(exposition, "tornadoproxy_upstream_errors_total", kind="unreachable") == 1
            assert metric_value(exposition, "tornadoproxy_gate_in_flight") == 0

    asyncio.run(run())


def test_an_exchange_has_its_status_and_headers_before_the_body_arrives() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            exchange = await side.fetcher.open(side.request("/json"))
            await exchange.wait_headers()  # the upstream still holds the rest of its body
            assert exchange.status == 200
            assert ("Content-Type", "application/json") in exchange.headers
            assert await exchange.read() == b'{"ok":true}'
            upstream.holds.release("json-body")
            rest = b""
            while (chunk := await exchange.read()) is not None:
                rest += chunk
            assert rest == b',"more":1' and exchange.finished and exchange.error is None
            exchange.abort("done")
            assert side.fetcher.in_flight == 0
            exposition = side.exposition()
            count = metric_value(exposition, "tornadoproxy_upstream_first_byte_seconds_count")
            assert count == 1

    asyncio.run(run())


class AnsweringTransport:
    """A transport of the test's own behind the engine seam: it answers every transfer at once
    through the sink, as libcurl would, and keeps the transfers it was given."""

    engine = "test"

    def __init__(self, profile: ClientProfile, capacity: int) -> None:
        self.profile, self.capacity = profile, capacity
        self.transfers: list[Transfer] = []

    def start(self, transfer: Transfer, sink: Sink) -> None:
        self.transfers.append(transfer)
        sink.on_started(self, len(self.transfers))
        for line in (b"HTTP/1.1 200 OK\r\n", b"Content-Type: application/json\r\n", b"\r\n"):
            sink.on_header(line)
        sink.on_write(b'{"from":"the test transport"}')
        sink.on_ended(None)

    def cancel(self, handle: object) -> None:
        pass

    def resume(self, handle: object) -> None:
        pass

    def release_body(self, handle: object, size: int) -> bool:
        return True

    def downloaded(self, handle: object) -> int:
        return 0

    @property
    def active(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_the_fetcher_sends_through_whatever_transport_the_engine_seam_hands_it() -> None:
    made: list[AnsweringTransport] = []

    def engine(profile: ClientProfile, capacity: int) -> Transport:
        made.append(AnsweringTransport(profile, capacity))
        return made[-1]

    async def run() -> None:
        fetch = FetchConfig(max_clients=3)
        async with upstream_side("http://127.0.0.1:9", fetch, engines={"pycurl": engine}) as side:
            answer = await side.relay.fetch(side.request("/v1/models", headers=[("Accept", "*/*")]))
            assert (answer.status, answer.body) == (200, b'{"from":"the test transport"}')
            again = await side.relay.fetch(side.request("/v1/models"))
            assert again.status == 200
        assert len(made) == 1  # one transport per profile, reused
        transport = made[0]
        assert transport.profile.name == "plain" and transport.capacity == 3 + 8
        first = transport.transfers[0]
        assert (10002, "http://127.0.0.1:9/v1/models") in first.options  # CURLOPT_URL
        assert any(line.lower().startswith(b"accept: */*") for line in first.header_lines)
        assert first.cookies is None

    asyncio.run(run())


def test_a_failure_the_transport_reports_is_translated_at_the_boundary() -> None:
    class Failing(AnsweringTransport):
        def start(self, transfer: Transfer, sink: Sink) -> None:
            sink.on_started(self, 1)
            sink.on_ended(CurlFailure(56, "Recv failure: Connection reset by peer"))

    async def run() -> None:
        async with upstream_side("http://127.0.0.1:9", engines={"pycurl": Failing}) as side:
            with pytest.raises(UpstreamError) as failed:
                await side.relay.fetch(side.request("/v1/models"))
            assert failed.value.kind == "reset" and failed.value.code is Code.UPSTREAM_UNREACHABLE
            assert metric_value(side.exposition(), "tornadoproxy_upstream_errors_total", kind="reset") == 1

    asyncio.run(run())


def test_the_handles_a_burst_made_are_closed_once_idle_beyond_a_reserve() -> None:
    asyncio.run(_sheds_a_bursts_handles("pycurl", "plain", CurlClient))


def test_the_curl_cffi_engine_closes_a_bursts_handles_once_idle_as_well() -> None:
    asyncio.run(_sheds_a_bursts_handles("curl_cffi", "chrome", ImpersonationClient))


async def _sheds_a_bursts_handles(
    name: str, profile: str, engine_class: type[CurlClient] | type[ImpersonationClient]
) -> None:
    made: list[CurlClient | ImpersonationClient] = []

    def engine(profile: ClientProfile, capacity: int) -> Transport:
        made.append(engine_class(profile, capacity))
        return made[-1]

    async def exchange_through(side: Side, count: int, upstream: Upstream) -> None:
        exchanges = [await side.fetcher.open(side.request("/json")) for _ in range(count)]
        for exchange in exchanges:
            await exchange.wait_headers()  # every one holds a handle at once
        upstream.holds.release("json-body")
        for exchange in exchanges:
            while await exchange.read() is not None:
                pass
            assert exchange.finished and exchange.error is None
            exchange.abort("done")

    upstream = Upstream()
    burst = IDLE_RESERVE + 8
    try:
        fetch = FetchConfig(max_clients=burst, buffer_size=1024)
        async with upstream_side(upstream.origin, fetch, engines={name: engine}, profile=profile) as side:
            await exchange_through(side, burst, upstream)
            transport = made[0]
            assert transport.handles == burst and transport.active == 0
            assert transport.shed_idle() == 0  # free since the burst, not yet for a whole round
            assert transport.shed_idle() == burst - IDLE_RESERVE
            assert transport.handles == IDLE_RESERVE
            await exchange_through(side, 1, upstream)  # the reserve still serves
            assert transport.shed_idle() == 0 and transport.handles == IDLE_RESERVE
    finally:
        await upstream.close()
