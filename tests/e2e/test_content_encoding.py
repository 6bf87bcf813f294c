"""Accept-Encoding: the upstream's gzip or br body reaches the client decoded, without
Content-Encoding, with the right length, and a compressed stream is decoded event by event."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import brotli
import pytest

from tests.harness import Gateway, Simulator, request, streaming
from tests.secrets_used import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
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
