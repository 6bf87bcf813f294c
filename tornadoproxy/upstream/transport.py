"""What the fetcher asks of a libcurl engine, and what an engine asks of an exchange.

Two engines run transfers: pycurl (curl_client.py, stock libcurl on OpenSSL, the `plain` and
`okhttp` profiles) and curl_cffi (impersonation.py, curl-impersonate on BoringSSL, the browser
profiles). One engine instance serves exactly one client profile, so connections and TLS sessions
(kept per libcurl multi handle) are never shared between two profiles. The fetcher builds an
engine-neutral `Transfer`; each engine turns it, with its profile, into options on a reused handle.

Both engines are the same libcurl underneath, so a callback answers in libcurl's own terms, which
both bindings pass through unchanged: a write or header callback returns the number of bytes it
took, `WRITE_PAUSE` to pause the transfer, or `WRITE_ERROR` to fail it (curl_cffi only warns when
a callback returns 0 or None, so neither may be used to abort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tornadoproxy.upstream.curl_errors import CurlFailure

if TYPE_CHECKING:
    from tornadoproxy.upstream.request import CookieJar

# libcurl's CURL_WRITEFUNC_PAUSE and CURL_WRITEFUNC_ERROR (curl.h).
WRITE_PAUSE = 0x10000001
WRITE_ERROR = 0xFFFFFFFF

# libcurl options that both bindings take by number: (CURLOPT_*, value); None means "libcurl's
# default" (pycurl unsets the option, the curl_cffi engine passes NULL).
CurlOption = tuple[int, Any]


@dataclass(frozen=True, slots=True, eq=False)
class Setup:
    """The options every request of one route through one egress proxy shares (timeouts, buffer
    sizes, the proxy, the trust store), built once by the fetcher and handed, the same object, to
    every such transfer: an engine whose handle last ran the same setup (`is`) need not set them
    again."""

    options: tuple[CurlOption, ...]
    ca_file: str  # fetch.ca_file, "" for the system bundle


@dataclass(frozen=True, slots=True)
class Transfer:
    """One attempt of a request, engine-neutral: the request's own options (URL, method and
    body), which every engine sets the same way, the shared `setup`, and the header lines, which
    come from the profile. `method` names how the request is sent (its method, and whether it has
    a body): a handle that last sent the same way needs only the request's options again."""

    options: tuple[CurlOption, ...]
    header_lines: list[bytes]
    setup: Setup
    method: tuple[str, bool]
    cookies: CookieJar | None


class Sink(Protocol):
    """What receives a transfer's events (the Exchange), called on the IOLoop thread in libcurl's
    order. None of these may raise or re-enter the engine."""

    def on_started(self, transport: Transport, handle: object) -> None: ...

    def on_header(self, raw: bytes) -> int: ...

    # The pycurl engine appends header lines here instead of calling on_header, and calls
    # take_header_lines() after libcurl returns (True: the final head is in).
    header_lines: list[bytes]

    def take_header_lines(self) -> bool: ...

    def on_write(self, chunk: bytes) -> int: ...

    def on_ended(self, failure: CurlFailure | None) -> None: ...


class Transport(Protocol):
    """One libcurl multi handle on the IOLoop, with its pool of reusable easy handles, for one
    client profile. `handle` values are the engine's own, opaque to everyone else."""

    engine: str  # "pycurl" or "curl_cffi", for logs

    def start(self, transfer: Transfer, sink: Sink) -> None:
        """Queue the transfer; it starts as soon as a handle is free (at once, normally). The sink
        hears `on_started` when its handle is set up, then headers, body, and `on_ended` once."""
        ...

    def cancel(self, handle: object) -> None:
        """Stop a transfer now (its connection is closed); the sink hears on_ended at once.
        Never called from inside a libcurl callback."""
        ...

    def resume(self, handle: object) -> None:
        """Resume a transfer paused by WRITE_PAUSE (may call on_write at once)."""
        ...

    def release_body(self, handle: object, size: int) -> bool:
        """Let go of the request body of a transfer whose answer has begun, if libcurl has sent
        all `size` bytes of it (True); never called from inside a libcurl callback."""
        ...

    def downloaded(self, handle: object) -> int:
        """Bytes received so far as they came over the wire (before libcurl decoded them); never
        called from inside a libcurl callback (pycurl refuses getinfo there)."""
        ...

    @property
    def active(self) -> int:
        """Transfers started and not yet ended."""
        ...

    def close(self) -> None: ...
