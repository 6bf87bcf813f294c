"""Deterministically mutated SSE answers, for fuzzing the gateway's stream relay.

`mutated(seed)` turns a well-formed chat completion stream into a scripted answer (see streams.py)
that may be truncated, reset, stalled, byte-flipped, re-framed, oversized or not valid UTF-8.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

_NASTY = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff",
    b"\xc3",
    b":",
    b"data:",
    b"event:",
    b"\n\n",
    b"\r\r",
    b"id:\0",
]


def _base_stream(rng: random.Random) -> bytes:
    events = []
    for index in range(rng.randint(1, 12)):
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": f"w{index}"}}],
        }
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    body = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        position = rng.randint(0, len(body))
        if choice < 0.3 and body:
            body[rng.randrange(len(body))] = rng.randint(0, 255)  # flip a byte
        elif choice < 0.6:
            body[position:position] = rng.choice(_NASTY)  # insert framing noise
        elif choice < 0.75:
            body = bytearray(bytes(body).replace(b"\n\n", b"\n", rng.randint(1, 3)))  # lose event ends
        elif choice < 0.85:
            body[position:position] = b"data: " + b"z" * rng.randint(70_000, 120_000)  # an oversized line
        else:
            body[position:position] = bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 8)))
    return bytes(body)


def mutated(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    data = _mutate(rng, _base_stream(rng))
    cuts = sorted(rng.sample(range(1, max(2, len(data))), k=min(rng.randint(0, 6), max(0, len(data) - 2))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if data[a:b]]
    steps: list[dict[str, Any]] = [{"b64": base64.b64encode(piece).decode()} for piece in pieces]
    ending = rng.random()
    if ending < 0.1:
        steps = steps[: rng.randint(0, len(steps))] + [{"close": True}]
    elif ending < 0.2:
        steps = steps[: rng.randint(0, len(steps))] + [{"reset": True}]
    elif ending < 0.22:
        steps = steps[: rng.randint(0, len(steps))] + [{"stall": True}]
    return {"status": 200, "headers": [["Content-Type", "text/event-stream"]], "chunks": steps}
