"""Scripted answers written byte by byte on the raw connection: chunks, gates, cuts and stalls.

A scripted stream is a list of steps: {"data": text} or {"b64": ...} sends bytes as one chunk (or
`"repeat": n` chunks),
{"gate": name} holds until the test releases the gate, {"close": true} closes the connection,
{"reset": true} resets it (RST), {"stall": true} sends nothing more until the peer goes away.
The peer closing the connection first is recorded in the journal entry (peer_closed_at).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import time
from http import HTTPStatus
from typing import Any

from tornado.iostream import IOStream, StreamClosedError

from tests.simulator.state import JournalEntry, State


def response_body(spec: dict[str, Any]) -> bytes:
    if "json" in spec:
        return json.dumps(spec["json"]).encode()
    if "body_b64" in spec:
        return base64.b64decode(spec["body_b64"])
    return str(spec.get("body", "")).encode()


def status_line(status: int, reason: str | None = None) -> bytes:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


class _Connection:
    """The detached connection, and whether its end came from the peer or from the script."""

    def __init__(self, stream: IOStream, entry: JournalEntry) -> None:
        self.stream = stream
        self.entry = entry
        self.peer_gone = asyncio.Event()
        self.closing = False
        self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        try:
            while True:  # nothing is expected from the peer after its request
                await self.stream.read_bytes(65536, partial=True)
        except StreamClosedError:
            if not self.closing and not self.entry.completed:
                self.entry.peer_closed_at = time.time()
            self.peer_gone.set()

    def close(self, reset: bool = False) -> None:
        self.closing = True
        if reset and self.stream.socket is not None:
            self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.stream.close()


async def play(stream: IOStream, spec: dict[str, Any], state: State, entry: JournalEntry) -> None:
    """Write the scripted response `spec` on the detached `stream`, then close it."""
    connection = _Connection(stream, entry)
    head = status_line(int(spec.get("status", 200)), spec.get("reason"))
    for name, value in spec.get("headers", []):
        head += f"{name}: {value}\r\n".encode("latin-1")
    steps = spec.get("chunks")
    try:
        if steps is None:
            body = response_body(spec)
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            await stream.write(head + body)
            entry.completed = True
        else:
            head += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            await stream.write(head)
            if await _play_steps(connection, steps, state):
                entry.completed = True
                await stream.write(b"0\r\n\r\n")
    except StreamClosedError:
        pass
    finally:
        if not stream.closed():
            connection.close()
        connection.watcher.cancel()


async def _play_steps(connection: _Connection, steps: list[dict[str, Any]], state: State) -> bool:
    """Run the steps; False if the script cut the connection or the peer went away."""
    for step in steps:
        if "data" in step or "b64" in step:
            data = base64.b64decode(step["b64"]) if "b64" in step else step["data"].encode()
            for _ in range(int(step.get("repeat", 1))):
                await connection.stream.write(b"%x\r\n%s\r\n" % (len(data), data))
        elif "gate" in step:
            gate = state.gate(step["gate"])
            gate.reached.set()
            await _first(gate.released.wait(), connection.peer_gone.wait())
            if connection.peer_gone.is_set():
                return False
        elif step.get("close") or step.get("reset"):
            connection.close(reset=bool(step.get("reset")))
            return False
        elif step.get("stall"):
            await connection.peer_gone.wait()
            return False
    return True


async def _first(*awaitables: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
