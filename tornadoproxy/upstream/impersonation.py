"""The curl_cffi engine: curl-impersonate's libcurl (BoringSSL) on tornado's asyncio loop.

Same contract as curl_client.py (transport.py): one engine per client profile, a pool of reused
easy handles on one multi handle (those a burst made closed once idle, idle_handles.py), `start`,
`cancel`, `resume`. curl_cffi's `AsyncCurl` already drives a multi handle from the asyncio loop
(libcurl's socket and timer callbacks); `_Multi` keeps that and reports finished transfers to the
engine instead of resolving futures.

Per transfer the handle gets the shared options, the trust store, then the profile: `impersonate()`
(or the JA3 / Akamai options) and, after it, only what is not TLS: HTTP/2 over TLS only (no h2c
Upgrade on http://), our header lines with HTTPHEADER_ORDER (curl-impersonate re-sorts them into its
own order otherwise), the stream weight, decoding, callbacks, cookies. curl_cffi's own traps
(docs/pitfalls.md):
`reset()` keeps the header list, so `clean_handles_and_buffers()` follows it; a NULL option is
`ffi.NULL`, never None; CAINFO is ours to set (curl_cffi would pick certifi's bundle).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from curl_cffi import Curl, CurlError, CurlInfo, CurlOpt, CurlShare
from curl_cffi._wrapper import ffi, lib
from curl_cffi.aio import AsyncCurl
from curl_cffi.const import CurlHttpVersion, CurlLockData
from curl_cffi.curl import DEFAULT_CACERT

from tornadoproxy.upstream.curl_errors import failure_of
from tornadoproxy.upstream.fingerprint_options import profile_options
from tornadoproxy.upstream.idle_handles import IdleHandles
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.transport import Sink, Transfer

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
        self.loop = _Loop(self.loop)  # type: ignore[assignment]
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


class _Loop:
    """The asyncio loop as curl_cffi's socket and timer callbacks use it, except that libcurl's
    timeout of -1 ("no timer needed") arms no timer: curl_cffi would run the multi handle at once
    for it, one needless socket_action per transfer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.add_reader = loop.add_reader
        self.add_writer = loop.add_writer
        self.remove_reader = loop.remove_reader
        self.remove_writer = loop.remove_writer
        self.create_task = loop.create_task

    def call_later(self, delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle | None:
        if delay < 0:
            return None
        return self._loop.call_later(delay, callback, *args)


class ImpersonationClient:
    """The transport for one browser profile (transport.Transport)."""

    engine = "curl_cffi"

    def __init__(self, profile: ClientProfile, max_clients: int) -> None:
        self._profile = profile
        self._options = profile_options(profile) + (
            # A browser speaks HTTP/2 over TLS only; the targets' h2c Upgrade on http:// is no browser's.
            (CurlOpt.HTTP_VERSION, CurlHttpVersion.V2TLS),
            (CurlOpt.ACCEPT_ENCODING, ""),  # decode every coding libcurl has; our header says which
        )
        self._capacity = max_clients
        self._multi = _Multi(self)
        self._free: list[Curl] = []
        self._count = 0
        self._idle = IdleHandles(self._free, self._close_idle)  # a burst's handles, once idle
        self._running: dict[Any, tuple[Curl, Sink]] = {}  # libcurl's easy handle -> ours, its sink
        self._queue: collections.deque[tuple[Transfer, Sink]] = collections.deque()
        self._converted: dict[tuple[int, Any], Any] = {}  # (option, value) -> its C value
        # libcurl writes Content-Length itself, last unless HTTPHEADER_ORDER names it: the
        # profile's "content-length" slot says where (Chromium sends it first).
        names = [name.lower().encode("latin-1") for name, _ in profile.headers]
        self._after_length = (
            frozenset(names[names.index(b"content-length") + 1 :]) if b"content-length" in names else None
        )

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def handles(self) -> int:
        """The easy handles this engine holds, in use or free."""
        return self._count

    def shed_idle(self) -> int:
        """Close the free handles the transfers since the last call left idle, beyond a reserve
        (idle_handles.py; run every round on its own); return how many were closed."""
        return self._idle.shed()

    def _close_idle(self, curl: Curl) -> None:
        self._count -= 1
        curl.close()

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

    def release_body(self, handle: object, size: int) -> bool:
        assert isinstance(handle, Curl)
        if int(handle.getinfo(CurlInfo.SIZE_UPLOAD_T)) < size:  # type: ignore[arg-type]
            return False
        handle.setopt(CurlOpt.POSTFIELDS, b"")  # curl_cffi holds the body it was given until then
        return True

    def downloaded(self, handle: object) -> int:
        assert isinstance(handle, Curl)
        return int(handle.getinfo(CurlInfo.SIZE_DOWNLOAD_T))  # type: ignore[arg-type]

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
        self._idle.stop()
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
                self._idle.taken()
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
        handle = curl._curl
        for option, value in transfer.setup.options + transfer.options:
            if option == CurlOpt.POSTFIELDS:
                curl.setopt(CurlOpt.POSTFIELDS, value)  # libcurl keeps the pointer: curl_cffi holds the bytes
            else:
                self._set(handle, option, value)
        # The trust store before impersonate(): nothing of ours that touches TLS may follow it.
        bundle = transfer.setup.ca_file or DEFAULT_CACERT
        for option, value in _trust(bundle):
            self._set(handle, option, value)
        target = self._profile.target
        if target and lib.curl_easy_impersonate(handle, target.encode(), 0):
            raise CurlError(f"curl-impersonate has no target {target}")
        for option, value in self._options:
            self._set(handle, option, value)
        curl.setopt(CurlOpt.HTTPHEADER, transfer.header_lines)  # kept by curl_cffi, freed on recycle
        order = _header_order(transfer.header_lines)
        if self._after_length is not None and any(o == CurlOpt.POSTFIELDS for o, _ in transfer.options):
            order = _with_length(order, self._after_length)
        self._set(handle, CurlOpt.HTTPHEADER_ORDER, b",".join(order))
        curl.setopt(CurlOpt.HEADERFUNCTION, sink.on_header)
        curl.setopt(CurlOpt.WRITEFUNCTION, sink.on_write)
        if transfer.cookies is not None:
            share = transfer.cookies.share(self.engine, _cookie_share)
            assert isinstance(share, CurlShare)
            curl.setopt(CurlOpt.SHARE, share._curl_share)
            curl.setopt(CurlOpt.COOKIEFILE, "")

    def _set(self, handle: Any, option: int, value: Any) -> None:
        """curl_easy_setopt with the value converted once and kept: curl_cffi's own setopt() builds
        its conversion tables on every call (1.3 µs a call against pycurl's 0.2, measured here),
        and a transfer sets some twenty options. libcurl copies strings and numbers, so a kept
        value may serve every transfer; per-request strings (the URL) are converted each time."""
        key = (option, value)
        converted = self._converted.get(key) if option not in _PER_REQUEST else None
        if converted is None:
            converted = _c_value(option, value)
            if option not in _PER_REQUEST and len(self._converted) < _MAX_CONVERTED:
                self._converted[key] = converted
        code = lib._curl_easy_setopt(handle, option, converted)
        if code:
            raise CurlError(f"libcurl refused option {option} ({code})", code=code)

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


def _header_order(lines: list[bytes]) -> list[bytes]:
    """The names of the header lines that are sent ("Name:" lines only suppress one), in order."""
    return [line.partition(b":")[0].lower() for line in lines if not line.endswith(b":")]


def _with_length(order: list[bytes], after: frozenset[bytes]) -> list[bytes]:
    """`order` with content-length before the first name the profile lists after its slot."""
    at = next((i for i, name in enumerate(order) if name in after), len(order))
    return [*order[:at], b"content-length", *order[at:]]


# Options whose value differs from request to request: never kept (the cache stays bounded).
_PER_REQUEST = frozenset({CurlOpt.URL, CurlOpt.POSTFIELDSIZE_LARGE, CurlOpt.HTTPHEADER_ORDER})
_MAX_CONVERTED = 512


def _c_value(option: int, value: Any) -> Any:
    """A Python option value as curl_cffi's C glue takes it (by libcurl's option number ranges)."""
    if value is None:
        return ffi.NULL
    kind = option // 10000 * 10000
    if kind == 0:
        return ffi.new("long *", value)
    if kind == 30000:
        return ffi.new("int64_t *", value)
    if isinstance(value, str):
        value = value.encode()
    return ffi.new("char[]", value) if isinstance(value, bytes) else value


def _trust(bundle: str) -> tuple[tuple[int, Any], ...]:
    return (
        (CurlOpt.CAINFO, bundle),
        (CurlOpt.PROXY_CAINFO, bundle),
        (CurlOpt.CAPATH, None),
        (CurlOpt.PROXY_CAPATH, None),
    )


def _cookie_share() -> CurlShare:
    share = CurlShare(dns=False, ssl_session=False)
    share.share(CurlLockData.COOKIE)
    return share
