"""A fault-injection TCP proxy for the tests (asyncio, in a thread of its own).

Placed between the gateway and the simulator (or an egress proxy), it forwards bytes in both
directions and can add latency, stall, reset or close after N bytes from the server, drip the
server's bytes at one per second, or swallow everything (black hole). The mode can change while it
runs: it applies at once to open connections too (the gateway reuses them), counting bytes from the
change; a black hole applies to connections accepted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fault:
    """What the proxy does to each new connection."""

    kind: str = "pass"  # pass, latency, stall, reset, close, drip, black_hole
    after_bytes: int = 0  # for stall, reset and close: server bytes forwarded first
    delay: float = 0.0  # for latency: seconds added before each forwarded chunk


@dataclass
class Connection:
    accepted_at: float
    server_bytes: int = 0
    client_closed_at: float | None = None


@dataclass
class FaultProxy:
    target: tuple[str, int]
    fault: Fault = field(default_factory=Fault)

    def __post_init__(self) -> None:
        self.connections: list[Connection] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, fault: Fault) -> None:
        for connection in self.connections:
            connection.server_bytes = 0
        self.fault = fault

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # let the transports finish closing their sockets

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        fault = self.fault
        record = Connection(time.time())
        self.connections.append(record)
        if fault.kind == "black_hole":
            try:
                await _drain_until_closed(client_reader)
                record.client_closed_at = time.time()
            finally:
                client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        upward = asyncio.ensure_future(_pipe(client_reader, server_writer, self, None))
        downward = asyncio.ensure_future(_pipe(server_reader, client_writer, self, record))
        try:
            await asyncio.wait([upward, downward], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if upward.done() and record.client_closed_at is None:
                record.client_closed_at = time.time()
            for task in (upward, downward):
                task.cancel()
            await asyncio.gather(upward, downward, return_exceptions=True)
            for writer in (server_writer, client_writer):
                writer.close()
            for writer in (server_writer, client_writer):
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: FaultProxy, record: Connection | None
) -> None:
    """Forward reader -> writer; `record` is set for the server-to-client direction, where faults apply."""
    while True:
        data = await reader.read(65536)
        if not data:
            return
        fault = proxy.fault
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if record is None or fault.kind in ("pass", "latency"):
            writer.write(data)
            await writer.drain()
            continue
        if fault.kind == "drip":
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1.0)
            continue
        allowed = max(0, fault.after_bytes - record.server_bytes)
        writer.write(data[:allowed])
        await writer.drain()
        record.server_bytes += min(len(data), allowed)
        if len(data) > allowed:
            await _break(writer, fault.kind)
            return


async def _break(writer: asyncio.StreamWriter, kind: str) -> None:
    if kind == "stall":
        await asyncio.Event().wait()  # hold the connection open, send nothing more
    sock = writer.get_extra_info("socket")
    if kind == "reset" and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _drain_until_closed(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass
