"""tornado's libcurl client, keeping its multi-socket integration and replacing its per-request work.

`CurlAsyncHTTPClient` drives libcurl's multi interface from the IOLoop (sockets, timers, a pool of
reusable handles); that part is kept as it is. Around each transfer it also does generic work the
gateway pays for on every request and never uses: an HTTPRequest and an HTTPResponse, a header
dict, a BytesIO, thirty option calls that the gateway overrides anyway, eight getinfo calls for
timing. `CurlClient.start()` instead takes a `setup` callable that sets every option the transfer
needs, and reports the end of the transfer to `ended(curl, errno, message)` while the handle is
still valid (errno 0: the transfer completed). The handle is reset after every transfer, as tornado
does, and must be fully set up by `setup` every time (shared/PITFALLS.md). `cancel()` stops a transfer
at once by taking its handle out of the multi handle (tornado's client has no way to: a cancelled
future leaves the transfer running).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient

log = logging.getLogger(__name__)

Setup = Callable[[pycurl.Curl], None]
Ended = Callable[[pycurl.Curl, int, str], None]


class CurlClient(CurlAsyncHTTPClient):
    """Use `start()`; `fetch()` of the base class is not supported on this client."""

    def initialize(self, max_clients: int = 10, **kwargs: Any) -> None:  # type: ignore[override]
        # tornado creates every handle up front (20,000 handles are ~100 MB before the first
        # request); they are created here as transfers need them, up to max_clients.
        self._loop = asyncio.get_running_loop()  # before super(): it already triggers the timer
        super().initialize(max_clients=1, **kwargs)
        self._capacity = max_clients
        self._transfers: collections.deque[tuple[Setup, Ended]] = collections.deque()

    def start(self, setup: Setup, ended: Ended) -> None:
        """Queue a transfer; it starts as soon as a handle is free (immediately, normally)."""
        self._transfers.append((setup, ended))
        self._process_queue()  # adding a handle makes libcurl ask for a timeout of 0 itself

    def cancel(self, curl: pycurl.Curl) -> None:
        """Stop a transfer now: libcurl closes its connection, `ended` hears errno 42 (aborted).
        Never called from inside a libcurl callback (the handlers, timers and drain call it)."""
        if curl.info is None:
            return  # already ended
        self._finish(curl, pycurl.E_ABORTED_BY_CALLBACK, "aborted by the gateway")
        self._process_queue()  # the freed handle may serve a queued transfer

    def _set_timeout(self, msecs: int) -> None:
        """libcurl's TIMERFUNCTION: one timer, on the asyncio loop directly. -1 means "no timer"
        (tornado would run it at once); libcurl calls this for every transfer it starts."""
        if self._timeout is not None:
            self._timeout.cancel()  # type: ignore[attr-defined]
            self._timeout = None
        if msecs >= 0:
            self._timeout = self._loop.call_later(msecs / 1000.0, self._handle_timeout)

    def fetch_impl(self, request: Any, callback: Any) -> None:
        raise NotImplementedError("CurlClient runs transfers through start()")

    def _process_queue(self) -> None:
        while self._transfers and (self._free_list or len(self._curls) < self._capacity):
            if not self._free_list:
                curl = self._curl_create()
                self._curls.append(curl)
            else:
                curl = self._free_list.pop()
            setup, ended = self._transfers.popleft()
            curl.info = ended
            try:
                setup(curl)
            except Exception as error:  # a value libcurl refused: the transfer fails, nothing is sent
                log.error("a transfer could not be set up: %s", type(error).__name__)
                curl.info = None
                try:
                    ended(curl, -1, f"the transfer could not be set up ({type(error).__name__})")
                finally:
                    curl.reset()
                    self._free_list.append(curl)
            else:
                self._multi.add_handle(curl)

    def _finish(
        self, curl: pycurl.Curl, curl_error: int | None = None, curl_message: str | None = None
    ) -> None:
        ended: Ended = curl.info
        curl.info = None
        self._multi.remove_handle(curl)
        try:
            ended(curl, curl_error or 0, curl_message or "")
        except Exception:
            log.exception("a transfer's completion failed")
        finally:
            curl.reset()
            self._free_list.append(curl)
