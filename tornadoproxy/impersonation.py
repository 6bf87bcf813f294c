"""The curl_cffi engine: curl-impersonate's libcurl (BoringSSL) on tornado's asyncio loop.

Same contract as curl_client.py (transport.py): one engine per client profile, a pool of reused
easy handles on one multi handle, `start`, `cancel`, `resume`. curl_cffi's `AsyncCurl` already drives
a multi handle from the asyncio loop (libcurl's socket and timer callbacks); `_Multi` keeps that
and reports finished transfers to the engine instead of resolving futures.

Per transfer the handle gets the shared options, the trust store, then the profile: `impersonate()`
(or the JA3 / Akamai options) and, after it, only what is not TLS: HTTP/2 over TLS only (no h2c
Upgrade on http://), our header lines with HTTPHEADER_ORDER (curl-impersonate re-sorts them into its
own order otherwise), the stream weight, decoding, callbacks, cookies. curl_cffi's own traps:
`reset()` keeps the header list, so `clean_handles_and_buffers()` follows it; a NULL option is
`ffi.NULL`, never None; CAINFO is ours to set (curl_cffi would pick certifi's bundle).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from curl_cffi import Curl, CurlError, CurlOpt, CurlShare
from curl_cffi._wrapper import ffi, lib
from curl_cffi.aio import AsyncCurl
from curl_cffi.const import CurlHttpVersion, CurlLockData
from curl_cffi.curl import DEFAULT_CACERT

from tornadoproxy.curl_errors import failure_of
from tornadoproxy.fingerprint_options import profile_options
from tornadoproxy.profiles import ClientProfile
from tornadoproxy.transport import Sink, Transfer

log = logging.getLogger(__name__)

_CURLMSG_DONE = 1
_SOCKET_TIMEOUT = -1
_ABORTED = 42  # CURLE_ABORTED_BY_CALLBACK, as the pycurl engine reports a cancel
# curl_cffi polls the multi handle every 0.1 s in case libcurl's timer callback was missed; once a
# second is as safe and costs a tenth.
_SAFETY_POLL = 1.0


class _Multi(AsyncCurl):
    """curl_cffi's asyncio multi integration, reporting each finished transfer to `ended`."""

    def __init__(self, engine: ImpersonationClient) -> None:
        self._engine = engine
        self._queued = ffi.new("int *")
        super().__init__(loop=asyncio.get_running_loop())
        self._poll = self.loop.call_later(_SAFETY_POLL, self._safety_poll)

    async def _force_timeout(self) -> None:
        """Replaced by `_safety_poll` (a timer, so closing leaves no task behind)."""

    def _safety_poll(self) -> None:
        self.process_data(_SOCKET_TIMEOUT, 0)
        self._poll = self.loop.call_later(_SAFETY_POLL, self._safety_poll)

    def process_data(self, sockfd: int, ev_bitmask: int) -> None:
        """libcurl's socket or timer event: let libcurl work, then report what finished."""
        if not self._curlm:
            return
        self.socket_action(sockfd, ev_bitmask)
        while True:
            message = lib.curl_multi_info_read(self._curlm, self._queued)
            if message == ffi.NULL:
                return
            if message.msg == _CURLMSG_DONE:
                self._engine.finished(message.easy_handle, int(message.data.result))

    def add(self, curl: Curl) -> None:
        code = lib.curl_multi_add_handle(self._curlm, curl._curl)
        if code:
            raise CurlError(f"curl_multi_add_handle failed ({code})", code=code)

    def remove(self, curl: Curl) -> None:
        lib.curl_multi_remove_handle(self._curlm, curl._curl)

    def shut(self) -> None:
        self._poll.cancel()
        self._timeout_checker.cancel()
        if self._timer is not None:
            self._timer.cancel()
        for fd in self._sockfds:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        lib.curl_multi_cleanup(self._curlm)
        self._curlm = None


class ImpersonationClient:
    """The transport for one browser profile (transport.Transport)."""

    engine = "curl_cffi"

    def __init__(self, profile: ClientProfile, max_clients: int) -> None:
        self._profile = profile
        self._options = profile_options(profile)
        self._capacity = max_clients
        self._multi = _Multi(self)
        self._free: list[Curl] = []
        self._count = 0
        self._running: dict[Any, tuple[Curl, Sink]] = {}  # libcurl's easy handle -> ours, its sink
        self._queue: collections.deque[tuple[Transfer, Sink]] = collections.deque()

    @property
    def active(self) -> int:
        return len(self._running)

    def start(self, transfer: Transfer, sink: Sink) -> None:
        self._queue.append((transfer, sink))
        self._process_queue()

    def cancel(self, handle: object) -> None:
        assert isinstance(handle, Curl)
        if handle._curl not in self._running:
            return  # already ended
        self._multi.remove(handle)
        self._end(handle, _ABORTED, "aborted by the gateway")
        self._process_queue()

    def resume(self, handle: object) -> None:
        assert isinstance(handle, Curl)
        try:
            handle.pause(0)  # CURLPAUSE_CONT; may call on_write at once with what libcurl held
        except CurlError:
            pass  # the transfer failed while paused; finished() reports it

    def finished(self, easy: Any, errno: int) -> None:
        """The multi handle says a transfer is done (errno 0: completed)."""
        entry = self._running.get(easy)
        if entry is None:
            return
        curl = entry[0]
        message = ffi.string(curl._error_buffer).decode("utf-8", "replace") if errno else ""
        self._multi.remove(curl)
        self._end(
            curl, errno, message or (ffi.string(lib.curl_easy_strerror(errno)).decode() if errno else "")
        )
        self._process_queue()

    def close(self) -> None:
        for curl, _ in list(self._running.values()):
            self._multi.remove(curl)
        self._multi.shut()
        for curl in self._free + [curl for curl, _ in self._running.values()]:
            curl.close()
        self._running.clear()
        self._free.clear()

    def _process_queue(self) -> None:
        while self._queue and (self._free or self._count < self._capacity):
            if self._free:
                curl = self._free.pop()
            else:
                curl = Curl(cacert=DEFAULT_CACERT)
                self._count += 1
            transfer, sink = self._queue.popleft()
            try:
                self._set_up(curl, transfer, sink)
            except Exception as error:  # a value libcurl refused: the transfer fails, nothing is sent
                log.error("a transfer could not be set up: %s", type(error).__name__)
                self._recycle(curl)
                sink.on_ended(failure_of(-1, f"the transfer could not be set up ({type(error).__name__})"))
                continue
            self._running[curl._curl] = (curl, sink)
            sink.on_started(self, curl)
            self._multi.add(curl)

    def _set_up(self, curl: Curl, transfer: Transfer, sink: Sink) -> None:
        for option, value in transfer.options:
            curl.setopt(option, ffi.NULL if value is None else value)  # type: ignore[arg-type]
        # The trust store before impersonate(): nothing of ours that touches TLS may follow it.
        bundle = transfer.ca_file or DEFAULT_CACERT
        curl.setopt(CurlOpt.CAINFO, bundle)
        curl.setopt(CurlOpt.PROXY_CAINFO, bundle)
        curl.setopt(CurlOpt.CAPATH, ffi.NULL)
        curl.setopt(CurlOpt.PROXY_CAPATH, ffi.NULL)
        target = self._profile.target
        if target and curl.impersonate(target, default_headers=False):
            raise CurlError(f"curl-impersonate has no target {target}")
        for option, value in self._options:
            curl.setopt(option, value)  # type: ignore[arg-type]
        # A browser speaks HTTP/2 over TLS only; the targets' h2c Upgrade on http:// is no browser's.
        curl.setopt(CurlOpt.HTTP_VERSION, CurlHttpVersion.V2TLS)
        curl.setopt(CurlOpt.HTTPHEADER, transfer.header_lines)
        curl.setopt(CurlOpt.HTTPHEADER_ORDER, _header_order(transfer.header_lines))
        curl.setopt(CurlOpt.ACCEPT_ENCODING, "")  # decode every coding; our header says which
        curl.setopt(CurlOpt.HEADERFUNCTION, sink.on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, sink.on_write)
        if transfer.cookies is not None:
            share = transfer.cookies.share(self.engine, _cookie_share)
            assert isinstance(share, CurlShare)
            curl.setopt(CurlOpt.SHARE, share._curl_share)
            curl.setopt(CurlOpt.COOKIEFILE, "")

    def _end(self, curl: Curl, errno: int, message: str) -> None:
        _, sink = self._running.pop(curl._curl)
        getinfo: Any = curl.getinfo  # takes CURLINFO numbers as CurlInfo members
        failure = failure_of(errno, message, getinfo) if errno else None
        try:
            sink.on_ended(failure)
        except Exception:
            log.exception("a transfer's completion failed")
        finally:
            self._recycle(curl)

    def _recycle(self, curl: Curl) -> None:
        # A handle keeps its share over reset(), and curl_cffi (unlike pycurl) holds no reference
        # to it: once the login's jar is gone the handle would point at a freed share (a crash on
        # the next setopt, seen here). Detached as soon as the transfer ends, then.
        curl.setopt(CurlOpt.SHARE, ffi.NULL)
        curl.reset()
        curl.clean_handles_and_buffers()  # reset() keeps the header lists: the next request would repeat them
        self._free.append(curl)


def _header_order(lines: list[bytes]) -> str:
    """The names of the header lines that are sent ("Name:" lines only suppress one), in order."""
    return ",".join(
        line.split(b":", 1)[0].strip().lower().decode("latin-1") for line in lines if not line.endswith(b":")
    )


def _cookie_share() -> CurlShare:
    share = CurlShare(dns=False, ssl_session=False)
    share.share(CurlLockData.COOKIE)
    return share
