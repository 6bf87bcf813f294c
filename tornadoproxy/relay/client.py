"""The client side of a relay: what the relay writes an upstream answer to, and what it records.

`BaseHandler` implements it for HTTP clients; anything else that relays (a test, a converter of the
answer) implements the same few calls. The relay never sees tornado: a client that left or stalled
past `server.client_stall_timeout` is `ClientGone`, whatever the server library calls it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tornadoproxy.upstream.exchange import Exchange


class ClientGone(Exception):
    """The client connection closed, or took nothing for `server.client_stall_timeout` seconds and
    was dropped: nothing more can be written to it."""


class ClientSide(Protocol):
    """One client request being answered from the upstream.

    The relay fills in the record fields (for the access log and metrics) as it goes, and calls, in
    this order: `attach` once, `start` once (status and headers, sent with the first `deliver`),
    `write`, `send` and `deliver` any number of times, then one of `finish`, `finish_stream` or
    `cut`."""

    gone: bool  # the client left (a disconnect seen by the server, or dropped for stalling)
    upstream_status: int | None
    bytes_out: int
    streamed: bool
    stream_end: str | None  # why a stream ended (metrics.STREAM_END_REASONS)
    error_code: str | None  # the code of the gateway error the answer ended with

    def attach(self, exchange: Exchange) -> None:
        """The exchange to abort (reason "client_gone") if the client leaves from now on."""
        ...

    def start(self, status: int, reason: str, headers: Sequence[tuple[str, str]]) -> None:
        """Set the status line and the response headers (replacing any set before)."""
        ...

    def write(self, chunk: bytes) -> None:
        """Queue bytes of the body; nothing is sent before `deliver`."""
        ...

    def send(self, chunk: bytes) -> bool:
        """Write `chunk` of the body now, without waiting (also from inside libcurl's callbacks):
        True when the connection took it all, False when some of it is still held (or the client
        is gone): then `deliver()` waits for it. Only after the first `deliver`."""
        ...

    async def deliver(self) -> None:
        """Send what was queued and wait until the client took it; raise ClientGone if it left or
        took nothing for `server.client_stall_timeout` seconds (it is then dropped)."""
        ...

    def finish(self, chunk: bytes | None = None) -> Awaitable[None]:
        """End the answer, with `chunk` as its last (or only) bytes. Not awaited by a buffered
        relay: the upstream's slot is freed while the kernel sends the body."""
        ...

    async def finish_stream(self) -> None:
        """End a streamed answer once its last bytes are out (a drain closes the connection only
        then); a client that left meanwhile is no error."""
        ...

    def cut(self) -> None:
        """Close the connection at once: the answer failed after its status was sent, and HTTP/1.1
        has no way left to say so."""
        ...
