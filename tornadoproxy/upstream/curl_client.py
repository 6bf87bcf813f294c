"""The pycurl engine: tornado's libcurl client, keeping its multi-socket integration and replacing
its per-request work.

`CurlAsyncHTTPClient` drives libcurl's multi interface from the IOLoop (sockets, timers, a pool of
reusable handles); that part is kept as it is. Around each transfer it also does generic work the
gateway pays for on every request and never uses: an HTTPRequest and an HTTPResponse, a header
dict, a BytesIO, thirty option calls that the gateway overrides anyway, eight getinfo calls for
timing. This client instead runs transport.Transfer values (transport.py) for one client profile:
`start()` sets every option the transfer needs on a reused handle (tornado resets handles after
each transfer, and a reset keeps nothing of ours but the share, detached here every time), and
reports the end to the sink while the handle is still valid. `cancel()` stops a transfer at once
by taking its handle out of the multi handle (tornado's client has no way to: a cancelled future
leaves the transfer running). `tls_settings_problem` checks a profile's TLS knobs at start-up.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Sequence
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient

from tornadoproxy.upstream.curl_errors import failure_of
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.transport import Sink, Transfer

log = logging.getLogger(__name__)


class CurlClient(CurlAsyncHTTPClient):
    """The transport for one pycurl profile (transport.Transport). Use `start()`; `fetch()` of the
    base class is not supported on this client."""

    engine = "pycurl"

    def initialize(  # type: ignore[override]
        self, profile: ClientProfile, max_clients: int = 10, **kwargs: Any
    ) -> None:
        # tornado creates every handle up front (20,000 handles are ~100 MB before the first
        # request); they are created here as transfers need them, up to max_clients.
        self._loop = asyncio.get_running_loop()  # before super(): it already triggers the timer
        super().initialize(max_clients=1, **kwargs)
        self._capacity = max_clients
        self._profile_options = profile.pycurl_options()
        self._transfers: collections.deque[tuple[Transfer, Sink]] = collections.deque()

    @property
    def active(self) -> int:
        return len(self._curls) - len(self._free_list)

    def start(self, transfer: Transfer, sink: Sink) -> None:
        """Queue a transfer; it starts as soon as a handle is free (immediately, normally)."""
        self._transfers.append((transfer, sink))
        self._process_queue()  # adding a handle makes libcurl ask for a timeout of 0 itself

    def cancel(self, handle: object) -> None:
        """Stop a transfer now: libcurl closes its connection, the sink hears errno 42 (aborted)."""
        assert isinstance(handle, pycurl.Curl)
        if handle.info is None:
            return  # already ended
        self._finish(handle, pycurl.E_ABORTED_BY_CALLBACK, "aborted by the gateway")
        self._process_queue()  # the freed handle may serve a queued transfer

    def resume(self, handle: object) -> None:
        assert isinstance(handle, pycurl.Curl)
        try:
            handle.pause(pycurl.PAUSE_CONT)  # may call on_write() at once with what libcurl held
        except pycurl.error:
            pass  # the transfer failed while paused; _finish reports it

    def downloaded(self, handle: object) -> int:
        assert isinstance(handle, pycurl.Curl)
        return int(handle.getinfo(pycurl.SIZE_DOWNLOAD_T))

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
            transfer, sink = self._transfers.popleft()
            curl.info = sink
            try:
                self._set_up(curl, transfer, sink)
            except Exception as error:  # a value libcurl refused: the transfer fails, nothing is sent
                log.error("a transfer could not be set up: %s", type(error).__name__)
                curl.info = None
                try:
                    sink.on_ended(
                        failure_of(-1, f"the transfer could not be set up ({type(error).__name__})")
                    )
                finally:
                    curl.reset()
                    self._free_list.append(curl)
            else:
                sink.on_started(self, curl)
                self._multi.add_handle(curl)

    def _set_up(self, curl: pycurl.Curl, transfer: Transfer, sink: Sink) -> None:
        for option, value in transfer.options:
            curl.setopt(option, value)
        for option, value in self._profile_options:
            curl.setopt(option, value)
        if transfer.ca_file:  # else the bundle pycurl found at import (re-applied on reset)
            curl.setopt(pycurl.CAINFO, transfer.ca_file)
            curl.setopt(pycurl.CAPATH, None)
            curl.setopt(pycurl.PROXY_CAINFO, transfer.ca_file)
            curl.setopt(pycurl.PROXY_CAPATH, None)
        curl.setopt(pycurl.HTTPHEADER, transfer.header_lines)
        # The exchange's own header and body callbacks: they run in libcurl's order, cost no
        # IOLoop callback, and pause the transfer when the client falls behind.
        curl.setopt(pycurl.HEADERFUNCTION, sink.on_header)
        curl.setopt(pycurl.WRITEFUNCTION, sink.on_write)
        # curl_easy_reset keeps a handle's shares and cookies: a handle that served a login would
        # send that login's cookies with the next request it serves. Detaching the share also
        # drops the handle's cookie engine (checked against libcurl 8.23, tests/e2e/test_logins.py).
        curl.setopt(pycurl.SHARE, None)
        if transfer.cookies is not None:
            curl.setopt(pycurl.SHARE, transfer.cookies.share(self.engine, _cookie_share))
            curl.setopt(pycurl.COOKIEFILE, "")  # "" turns the cookie engine on without reading a file

    def _finish(
        self, curl: pycurl.Curl, curl_error: int | None = None, curl_message: str | None = None
    ) -> None:
        sink: Sink = curl.info
        curl.info = None
        self._multi.remove_handle(curl)
        try:
            failure = failure_of(curl_error, curl_message or "", curl.getinfo) if curl_error else None
            sink.on_ended(failure)
        except Exception:
            log.exception("a transfer's completion failed")
        finally:
            curl.reset()
            self._free_list.append(curl)


def libcurl_version() -> str:
    """The version of the stock libcurl the pycurl engine runs on (for the build info metric)."""
    return str(pycurl.version_info()[1])


def _cookie_share() -> pycurl.CurlShare:
    share = pycurl.CurlShare()
    share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_COOKIE)
    return share


def tls_settings_problem(options: Sequence[tuple[int, Any]]) -> str | None:
    """What libcurl (with its own OpenSSL) refuses in a profile's TLS options, or None.

    The handle is given one end of a socket pair whose other end is closed, marked as already
    connected: libcurl builds its TLS context (refusing a bad cipher, curve or signature algorithm
    list at once, errno 59) and then fails to send the ClientHello. No name lookup, no network.
    (curl_cffi has no socket callbacks; its profiles are checked by fingerprint_options.)"""
    ours, theirs = socket.socketpair()
    theirs.close()
    curl = pycurl.Curl()
    try:
        curl.setopt(pycurl.URL, "https://127.0.0.1:9/")
        curl.setopt(pycurl.OPENSOCKETFUNCTION, lambda _purpose, _address: ours)
        curl.setopt(pycurl.SOCKOPTFUNCTION, lambda _fd, _purpose: pycurl.SOCKOPT_ALREADY_CONNECTED)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.TIMEOUT_MS, 5000)
        for option, value in options:
            curl.setopt(option, value)
        curl.perform()
    except pycurl.error as error:
        errno, message = error.args
        return str(message) if errno == 59 else None
    finally:
        curl.close()
        ours.close()
    return None
