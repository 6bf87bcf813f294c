"""The relay in-process, against the loopback upstream: a stream relayed event by event in lockstep
(from libcurl's callback to a client that keeps up), a challenge page replaced by its error before
anything is written, a 401 that evicts the credential, and a body too large to buffer passed on as
it arrives."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.harness import metric_value
from tests.inprocess.loopback import RecordingClient, against_loopback
from tornadoproxy.errors import Code, UpstreamError
from tornadoproxy.upstream.request import UpstreamRequest


def test_a_stream_is_relayed_event_by_event_before_the_upstream_sends_the_next() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            client = RecordingClient()
            relay = asyncio.create_task(side.relay.relay(side.request("/events"), client))
            # Event 1 must reach the client while the upstream still holds event 2.
            while not any(b"data: one" in piece for piece in client.deliveries):
                client.delivered.clear()
                await asyncio.wait_for(client.delivered.wait(), 10)
            assert not relay.done() and side.relay.active == 1
            assert metric_value(side.exposition(), "tornadoproxy_streams_active") == 1
            upstream.holds.release("event-2")
            await asyncio.wait_for(relay, 10)
            body = b"".join(client.deliveries) + (client.finished or b"")
            assert body == b"data: one\n\ndata: two\n\n"
            assert client.status == 200 and client.streamed and client.stream_end == "done"
            # The gateway's own Cache-Control replaces the upstream's; lengths are never relayed.
            assert ("Cache-Control", "no-cache") in client.headers
            assert ("Cache-Control", "private") not in client.headers
            assert ("X-Accel-Buffering", "no") in client.headers
            assert not any(name.lower() == "content-length" for name, _ in client.headers)
            assert client.bytes_out == len(body) and side.relay.active == 0
            exposition = side.exposition()
            assert metric_value(exposition, "tornadoproxy_streams_active") == 0
            assert metric_value(exposition, "tornadoproxy_streams_ended_total", reason="done") == 1
            assert side.fetcher.in_flight == 0

    asyncio.run(run())


def test_a_streams_request_body_is_let_go_once_the_upstream_answered() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            client = RecordingClient()
            body = b'{"messages":"' + b"x" * 20000 + b'"}'
            request = UpstreamRequest("platform", "POST", side.origin + "/events", [], body)
            relay = asyncio.create_task(side.relay.relay(request, client))
            del request
            while not any(b"data: one" in piece for piece in client.deliveries):
                client.delivered.clear()
                await asyncio.wait_for(client.delivered.wait(), 10)
            assert upstream.holds.bodies == [body]
            assert client.exchange is not None and client.exchange.request.body is None
            assert client.exchange.headers == []  # passed on to the client, not kept for the stream's life
            assert ("Cache-Control", "no-cache") in client.headers
            # Nothing else holds it while the stream goes on: not libcurl's handle, not a frame.
            assert sys.getrefcount(body) == 2  # this function's name and getrefcount's argument
            upstream.holds.release("event-2")
            await asyncio.wait_for(relay, 10)
            assert b"".join(client.deliveries) + (client.finished or b"") == b"data: one\n\ndata: two\n\n"

    asyncio.run(run())


class KeepingUpClient(RecordingClient):
    """A client whose connection takes every byte at once. `sent` records each chunk, and whether it
    was written from outside the relay's task (from libcurl's callback: no task runs there)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[bytes, bool]] = []
        self.took = asyncio.Event()

    def send(self, chunk: bytes) -> bool:
        self.sent.append((chunk, asyncio.current_task() is None))
        self.took.set()
        return True


def test_a_client_that_keeps_up_gets_the_events_from_libcurls_callback() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            client = KeepingUpClient()
            relay = asyncio.create_task(side.relay.relay(side.request("/events"), client))
            await asyncio.wait_for(client.took.wait(), 10)  # event 1, while event 2 is held
            assert [chunk for chunk, _ in client.sent] == [b"data: one\n\n"] and not relay.done()
            upstream.holds.release("event-2")
            await asyncio.wait_for(relay, 10)
            # Event 1 may have come with the headers, before the relay waited for the body.
            assert client.sent[1] == (b"data: two\n\n", True) and len(client.sent) == 2
            assert client.deliveries == [b""] and client.finished == b""  # the headers' delivery only
            assert client.stream_end == "done" and client.bytes_out == len(b"data: one\n\ndata: two\n\n")
            assert side.fetcher.in_flight == 0 and side.relay.active == 0

    asyncio.run(run())


def test_a_challenge_page_becomes_its_error_before_anything_is_written() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            client = RecordingClient()
            with pytest.raises(UpstreamError) as refused:
                await side.relay.relay(side.request("/challenge"), client)
            assert refused.value.code is Code.UPSTREAM_CHALLENGE and refused.value.status == 403
            assert client.status is None and client.deliveries == [] and client.finished is None
            assert client.upstream_status == 403  # for the access log
            exposition = side.exposition()
            assert metric_value(exposition, "tornadoproxy_upstream_errors_total", kind="challenge") == 1
            assert side.fetcher.in_flight == 0 and side.relay.active == 0

    asyncio.run(run())


def test_a_401_is_relayed_and_makes_the_token_cache_forget_the_credential() -> None:
    forgotten: list[str] = []

    async def forget(authorization: str) -> None:
        forgotten.append(authorization)

    async def run() -> None:
        async with against_loopback(forget_token=forget) as (upstream, side):
            client = RecordingClient()
            request = side.request("/unauthorized", headers=[("Authorization", "Bearer sess-x")])
            await side.relay.relay(request, client, "Bearer sess-x")
            assert client.status == 401
            assert client.finished == b'{"error":{"code":"invalid_api_key"}}'  # upstream errors are data
            assert forgotten == ["Bearer sess-x"]

    asyncio.run(run())


def test_a_body_over_the_buffer_size_is_passed_on_as_it_arrives() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            client = RecordingClient()
            await side.relay.relay(side.request("/large"), client)
            body = b"".join(client.deliveries) + (client.finished or b"")
            assert body == bytes(range(256)) * 64 and client.bytes_out == len(body)
            assert client.deliveries, "written as it arrived, not held whole"
            assert client.status == 200 and not client.streamed and not client.cut_off

    asyncio.run(run())


class Watching:
    """A relay Watch that notes what it saw and what its client had been given by then."""

    def __init__(self, client: RecordingClient) -> None:
        self.client = client
        self.seen: list[tuple[str, bytes, int]] = []

    def events(self, events: bytes) -> None:
        self.seen.append(("events", events, len(b"".join(self.client.deliveries))))

    def body(self, status: int, body: bytes) -> None:
        self.seen.append((f"body {status}", body, len(self.client.finished or b"")))


def test_a_watch_sees_each_answer_before_its_client_does() -> None:
    async def run() -> None:
        async with against_loopback() as (upstream, side):
            client = RecordingClient()
            watch = Watching(client)
            relay = asyncio.create_task(side.relay.relay(side.request("/events"), client, watch=watch))
            while not any(b"data: one" in piece for piece in client.deliveries):
                client.delivered.clear()
                await asyncio.wait_for(client.delivered.wait(), 10)
            upstream.holds.release("event-2")
            await asyncio.wait_for(relay, 10)
            # Each batch seen while the client had only what came before it.
            assert [(kind, given) for kind, _, given in watch.seen] == [("events", 0), ("events", 11)]
            assert b"".join(events for _, events, _ in watch.seen) == b"data: one\n\ndata: two\n\n"
            buffered = RecordingClient()
            watch = Watching(buffered)
            await side.relay.relay(side.request("/unauthorized"), buffered, watch=watch)
            assert watch.seen == [("body 401", b'{"error":{"code":"invalid_api_key"}}', 0)]
            challenged = RecordingClient()
            watch = Watching(challenged)
            with pytest.raises(UpstreamError):  # a page replaced by its error is not an answer relayed
                await side.relay.relay(side.request("/challenge"), challenged, watch=watch)
            assert watch.seen == []

    asyncio.run(run())
