"""Accept-Encoding: the upstream's gzip or br body reaches the client decoded, without
Content-Encoding, with the right length, and a compressed stream is decoded event by event; what an
answer may decode to is bounded (fetch.max_decoded_size, and 100 times its size past 16 MiB)."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import random
import zlib
from collections.abc import Callable

import brotli
import pytest

from tests.harness import Gateway, Simulator, metric_value, request, streaming
from tests.secrets_used import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
MIB = 1024 * 1024
_SSE = [["Content-Type", "text/event-stream"]]
EVENTS = [f'data: {{"n":{n},"text":"{"abc" * 40}"}}\n\n'.encode() for n in range(3)] + [b"data: [DONE]\n\n"]


def compress_whole(coding: str, data: bytes) -> bytes:
    return gzip.compress(data) if coding == "gzip" else brotli.compress(data)


def compress_stream(coding: str, pieces: list[bytes]) -> list[bytes]:
    """Each piece compressed and flushed on its own, as a server that streams compressed SSE does."""
    if coding == "gzip":
        encoder = zlib.compressobj(wbits=31)
        out = [encoder.compress(p) + encoder.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
        return out[:-1] + [out[-1] + encoder.flush()]
    stream = brotli.Compressor()
    out = [stream.process(p) + stream.flush() for p in pieces]
    return out[:-1] + [out[-1] + stream.finish()]


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_compressed_body_reaches_the_client_decoded(gateway: Gateway, sim: Simulator, coding: str) -> None:
    payload = json.dumps({"object": "list", "data": [{"id": f"model-{n}"} for n in range(200)]}).encode()
    sim.script(
        "platform",
        "/v1/models",
        {
            "status": 200,
            "headers": [["Content-Type", "application/json"], ["Content-Encoding", coding]],
            "body_b64": base64.b64encode(compress_whole(coding, payload)).decode(),
        },
    )
    answer = request("GET", gateway.url + "/platform/v1/models", headers=AUTH)
    assert answer.status == 200
    assert answer.body == payload
    assert answer.header("Content-Encoding") is None
    assert answer.header("Content-Length") == str(len(payload))
    (entry,) = sim.journal(family="platform")
    sent = {name.lower(): value for name, value in entry["headers"]}
    assert sent["accept-encoding"] == "gzip, deflate, br"  # the plain profile, codings libcurl decodes


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_compressed_stream_is_decoded_event_by_event(gateway: Gateway, sim: Simulator, coding: str) -> None:
    pieces = compress_stream(coding, EVENTS)
    steps: list[dict[str, object]] = []
    for index, piece in enumerate(pieces):
        steps.append({"b64": base64.b64encode(piece).decode()})
        if index == 0:
            steps.append({"gate": f"after-first-{coding}"})
    sim.script(
        "platform",
        "/v1/chat/completions",
        {
            "status": 200,
            "headers": [["Content-Type", "text/event-stream"], ["Content-Encoding", coding]],
            "chunks": steps,
        },
    )
    body = json.dumps({"model": "m", "stream": True, "messages": []})
    url = gateway.url + "/platform/v1/chat/completions"
    with streaming(url, headers=AUTH, body=body) as response:
        assert response.status == 200
        assert response.getheader("Content-Encoding") is None
        seen = bytearray()
        while EVENTS[0] not in seen:
            chunk = response.read1(65536)
            assert chunk, bytes(seen)
            seen += chunk
        assert bytes(seen) == EVENTS[0]  # decoded while the simulator still holds the rest
        sim.release(f"after-first-{coding}")
        seen += response.read()
    assert bytes(seen) == b"".join(EVENTS)


def _gzip_bomb(size: int) -> bytes:
    """`size` zero bytes gzip-compressed: about a thousand times smaller."""
    return gzip.compress(b"\0" * size, compresslevel=9)


# The bound holds on both engines: pycurl (plain) and curl_cffi (a browser profile).
ENGINES = pytest.mark.parametrize("profile", ["plain", "chrome"])


@ENGINES
def test_a_decompression_bomb_is_answered_502_before_the_status_goes_out(
    make_gateway: Callable[..., Gateway], sim: Simulator, profile: str
) -> None:
    # The whole answer is held before sending.
    gw = make_gateway({"fetch": {"buffer_size": 64 * MIB}, "profiles": {"platform": profile}})
    bomb = _gzip_bomb(48 * MIB)
    sim.script("platform", "/v1/models", _compressed(bomb))
    answer = request("GET", gw.url + "/platform/v1/models", headers=AUTH)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "upstream_too_large" and "expands more than 100 times" in error["message"]
    errors = metric_value(
        gw.metrics(), "tornadoproxy_upstream_errors_total", upstream="platform", kind="protocol"
    )
    assert errors == 1


@ENGINES
def test_a_bomb_relayed_as_it_arrives_is_cut(
    make_gateway: Callable[..., Gateway], sim: Simulator, profile: str
) -> None:
    gateway = make_gateway({"profiles": {"platform": profile}})
    sim.script("platform", "/v1/models", _compressed(_gzip_bomb(256 * MIB)))
    with streaming(gateway.url + "/platform/v1/models", "GET", headers=AUTH) as response:
        assert response.status == 200  # past fetch.buffer_size the status went out
        received = 0
        with pytest.raises(http.client.IncompleteRead):
            while chunk := response.read1(1 << 20):
                received += len(chunk)
            response.read()  # the chunked body never ends properly
    assert 1 * MIB < received < 24 * MIB  # cut soon after 16 MiB, not at 256


def test_a_compressed_stream_that_expands_too_much_ends_with_an_error_event(
    gateway: Gateway, sim: Simulator
) -> None:
    encoder = zlib.compressobj(wbits=31)
    event = b"data: " + b"a" * (MIB - 8) + b"\n\n"
    pieces = [encoder.compress(event) + encoder.flush(zlib.Z_SYNC_FLUSH) for _ in range(64)]
    steps = [{"b64": base64.b64encode(piece).decode()} for piece in [*pieces, encoder.flush()]]
    sim.script(
        "platform",
        "/v1/chat/completions",
        {"status": 200, "headers": [*_SSE, ["Content-Encoding", "gzip"]], "chunks": steps},
    )
    answer = request("POST", gateway.url + "/platform/v1/chat/completions", headers=AUTH, body="{}")
    assert answer.status == 200
    events = answer.body.split(b"\n\n")
    assert 8 < len(events) < 30  # events relayed until past 16 MiB
    assert b"event: error" in answer.body and b'"code":"upstream_too_large"' in answer.body


@ENGINES
def test_the_decoded_size_has_a_ceiling_whatever_the_ratio(
    make_gateway: Callable[..., Gateway], sim: Simulator, profile: str
) -> None:
    fetch = {"max_decoded_size": 2 * MIB, "buffer_size": 4 * MIB}
    gw = make_gateway({"fetch": fetch, "profiles": {"platform": profile}})
    text = base64.b64encode(random.Random(7).randbytes(3 * MIB))  # compresses only about 1.3 times
    sim.script("platform", "/v1/models", _compressed(gzip.compress(text)))
    answer = request("GET", gw.url + "/platform/v1/models", headers=AUTH)
    assert answer.status == 502 and "(fetch.max_decoded_size)" in answer.json()["error"]["message"]
    sim.script("platform", "/v1/models", _compressed(gzip.compress(text[: MIB + 1])))
    answer = request("GET", gw.url + "/platform/v1/models", headers=AUTH)
    assert answer.status == 200 and answer.body == text[: MIB + 1]


def test_a_large_answer_of_ordinary_ratio_passes(gateway: Gateway, sim: Simulator) -> None:
    text = base64.b64encode(random.Random(8).randbytes(15 * MIB))  # 20 MiB decoded, ratio about 1.3
    sim.script("platform", "/v1/models", _compressed(gzip.compress(text, compresslevel=1)))
    answer = request("GET", gateway.url + "/platform/v1/models", headers=AUTH)
    assert answer.status == 200 and answer.body == text


def _compressed(body: bytes) -> dict[str, object]:
    return {
        "status": 200,
        "headers": [["Content-Type", "application/json"], ["Content-Encoding", "gzip"]],
        "body_b64": base64.b64encode(body).decode(),
    }
