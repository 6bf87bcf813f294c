"""The pycurl engine: libcurl's multi interface driven from the asyncio loop, one engine per profile.

A transfer is a transport.Transfer run on a reused easy handle (created as transfers need them, up
to the engine's capacity): `start()` gives the handle the transfer's options (how a handle is
prepared, kept and released between transfers: curl_handles.py), adds it to the multi handle and
lets libcurl send at once; the sink hears libcurl's header and body callbacks as they come and
`on_ended` while the handle is still valid. `cancel()` stops a transfer at once by taking
its handle out of the multi handle. `tls_settings_problem` checks a profile's TLS knobs at start-up.
Handles a burst made are closed once they have sat free for a whole round, beyond a reserve of
them (`shed_idle`, idle_handles.py, as in the curl_cffi engine). The free list is used from its
top, so the handles at its bottom are the ones that stayed idle.

How libcurl's sockets are watched: libcurl says which sockets it wants to hear about and for what
(its socket callback), and when to call it back regardless (its timer callback). Its sockets are
registered in an epoll set of the engine's own, and only that set's descriptor in the asyncio loop.
libcurl drops a connection's socket from its interest when a transfer ends and takes it again when
the next transfer reuses the connection; in the loop's own selector that would be two epoll_ctl
calls and two selector updates per request. In the engine's set the socket simply stays registered
while the connection is idle: one epoll_ctl per transfer, none of the loop's bookkeeping, and a
closed socket never lingers in the loop's selector, where a later descriptor with the same number
(a client connection, say) would find it. A socket that reports readiness while libcurl does not
want it (an idle connection the upstream closed) is dropped from the set then.
libcurl asks for "now" each time a transfer is added: `start()` runs libcurl at once instead of
through the loop, so the request leaves in the same pass as the client's — unless the pass is
busy (other callbacks wait): then one call queued behind them sends every transfer started,
one `socket_action` for many instead of one each. Any other timeout keeps
one loop timer, re-armed only when libcurl wants to be called earlier than it is set for: when it
fires, libcurl is asked for its next timeout (firing early is harmless). For the same reason the
timer stays armed when libcurl says it needs none (it says so at the end of every transfer, and
the next one asks again): a cancelled timer and a new one per request cost more than one early call.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import select
import socket
from collections.abc import Sequence
from typing import Any

import pycurl

from tornadoproxy.upstream import loop_pass
from tornadoproxy.upstream.curl_errors import failure_of
from tornadoproxy.upstream.curl_handles import HandleState, cookie_share, prepare, release
from tornadoproxy.upstream.idle_handles import IdleHandles
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.transport import Sink, Transfer

log = logging.getLogger(__name__)

# libcurl's socket interest -> epoll events (POLL_NONE: registered, no events wanted)
_EPOLL_EVENTS = {
    pycurl.POLL_NONE: 0,
    pycurl.POLL_IN: select.EPOLLIN,
    pycurl.POLL_OUT: select.EPOLLOUT,
    pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT,
}
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
_WRITABLE = select.EPOLLOUT | select.EPOLLERR


class CurlClient:
    """The transport for one pycurl profile (transport.Transport)."""

    engine = "pycurl"

    def __init__(self, profile: ClientProfile, max_clients: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._capacity = max_clients
        self._profile_options = profile.pycurl_options()
        self._multi = pycurl.CurlMulti()
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._poller = select.epoll()
        self._loop.add_reader(self._poller.fileno(), self._on_ready)
        self._wanted: dict[int, int] = {}  # socket -> the epoll events libcurl wants for it now
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._soon: asyncio.Handle | None = None  # a "call libcurl now" not yet run
        self._starting = False  # inside start()'s add_handle, which runs libcurl itself right after
        self._acting = False  # inside libcurl (socket_action): no multi call may be made
        self._closed = False  # closing: libcurl's last callbacks are ignored
        self._curls: dict[pycurl.Curl, HandleState] = {}
        self._free: list[pycurl.Curl] = []
        self._transfers: collections.deque[tuple[Transfer, Sink]] = collections.deque()
        self._heading: dict[Sink, None] = {}  # transfers whose final head has not been read yet
        self._idle = IdleHandles(self._free, self._close_idle)

    @property
    def active(self) -> int:
        return len(self._curls) - len(self._free)

    @property
    def handles(self) -> int:
        """The easy handles this engine holds, in use or free."""
        return len(self._curls)

    def shed_idle(self) -> int:
        """Close the free handles the transfers since the last call left idle, beyond a reserve
        (idle_handles.py; run every round on its own); return how many were closed."""
        return self._idle.shed()

    def _close_idle(self, curl: pycurl.Curl) -> None:
        del self._curls[curl]
        curl.close()

    # -- transport.Transport ----------------------------------------------------------------------
    def start(self, transfer: Transfer, sink: Sink) -> None:
        """Queue a transfer; it starts as soon as a handle is free (at once, normally)."""
        self._transfers.append((transfer, sink))
        if self._acting:  # called back from libcurl: start it once libcurl has returned
            self._call_soon()
        else:
            self._process_queue()

    def cancel(self, handle: object) -> None:
        """Stop a transfer now: libcurl closes its connection, the sink hears errno 42 (aborted)."""
        assert isinstance(handle, pycurl.Curl)
        state = self._curls.get(handle)
        if state is None or state.sink is None:
            return  # already ended (or the engine closed)
        self._multi.remove_handle(handle)
        self._finish(handle, pycurl.E_ABORTED_BY_CALLBACK, "aborted by the gateway")
        self._process_queue()  # the freed handle may serve a queued transfer

    def resume(self, handle: object) -> None:
        assert isinstance(handle, pycurl.Curl)
        try:
            handle.pause(pycurl.PAUSE_CONT)  # may call on_write() at once with what libcurl held
        except pycurl.error:
            pass  # the transfer failed while paused; _finish reports it

    def release_body(self, handle: object, size: int) -> bool:
        assert isinstance(handle, pycurl.Curl)
        if handle.getinfo(pycurl.SIZE_UPLOAD_T) < size:
            return False
        handle.setopt(pycurl.POSTFIELDS, b"")  # pycurl holds the body it was given until then
        return True

    def downloaded(self, handle: object) -> int:
        assert isinstance(handle, pycurl.Curl)
        return int(handle.getinfo(pycurl.SIZE_DOWNLOAD_T))

    def close(self) -> None:
        for curl, state in self._curls.items():
            if state.sink is not None:
                self._multi.remove_handle(curl)
                state.sink = None
            curl.close()
        self._curls.clear()
        self._free.clear()
        self._heading.clear()
        self._idle.stop()
        for handle in (self._timer, self._soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._soon = None
        # Closing the multi handle shuts its idle connections down, and libcurl may still ask to
        # watch their sockets or be called back meanwhile: nothing is registered or armed any more.
        self._closed = True
        self._multi.close()
        self._loop.remove_reader(self._poller.fileno())
        self._poller.close()

    # -- libcurl's callbacks ----------------------------------------------------------------------
    def _on_socket(self, what: int, fd: int, _multi: object, _data: object) -> None:
        """M_SOCKETFUNCTION: the events libcurl wants on `fd` from now on."""
        if self._closed:
            return
        if what == pycurl.POLL_REMOVE:
            self._wanted.pop(fd, None)  # stays in the epoll set while its connection is idle
            return
        events = _EPOLL_EVENTS[what]
        before = self._wanted.get(fd)
        self._wanted[fd] = events
        if before == events:
            return
        try:
            # Also for a socket libcurl had dropped: it may be a new one under the same number,
            # which the kernel registers afresh (a closed socket leaves the set on its own).
            self._poller.modify(fd, events)
        except FileNotFoundError:
            self._poller.register(fd, events)

    def _on_timer(self, msecs: int) -> None:
        """M_TIMERFUNCTION: call libcurl back in `msecs` ms (0: now; -1: no timeout needed)."""
        if self._closed:
            return
        if msecs < 0:
            return  # an armed timer fires early, harmlessly (see the module docstring)
        if msecs == 0:
            if not self._starting:
                self._call_soon()
            return  # start() runs libcurl as soon as add_handle returns
        deadline = self._loop.time() + msecs / 1000.0
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # set for earlier: libcurl is asked for its next timeout then
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._timed_out)
        self._timer_at = deadline

    # -- driving libcurl --------------------------------------------------------------------------
    def _on_ready(self) -> None:
        """The epoll set has events: hand each wanted socket's to libcurl."""
        for fd, events in self._poller.poll(0):
            if fd not in self._wanted:
                # An idle connection's socket became readable (the upstream closed it): libcurl will
                # find out when it next looks; the set stops reporting it meanwhile.
                try:
                    self._poller.unregister(fd)
                except OSError:
                    pass  # closed since the poll
                continue
            action = 0
            if events & _READABLE:
                action |= pycurl.CSELECT_IN
            if events & _WRITABLE:
                action |= pycurl.CSELECT_OUT
            self._act(fd, action)
        self._collect()

    def _call_soon(self) -> None:
        if self._soon is None:
            self._soon = self._loop.call_soon(self._now)

    def _now(self) -> None:
        self._soon = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)
        self._collect()

    def _timed_out(self) -> None:
        self._timer = None
        self._act(pycurl.SOCKET_TIMEOUT, 0)
        self._collect()
        if self._timer is None:
            later = self._multi.timeout()  # the timer may have fired before libcurl's deadline
            if later >= 0:
                self._on_timer(later)

    def _act(self, fd: int, action: int) -> None:
        self._acting = True
        try:
            self._multi.socket_action(fd, action)
        except pycurl.error as error:
            log.error("libcurl's socket_action failed: %s", error.args[-1])
        finally:
            self._acting = False

    def _collect(self) -> None:
        """Have the header lines libcurl gathered read, report every transfer libcurl has
        completed, then start queued ones."""
        if self._heading:
            self._read_heads()
        while True:
            queued, completed, failed = self._multi.info_read()
            for curl in completed:
                self._multi.remove_handle(curl)
                self._finish(curl)
            for curl, errno, message in failed:
                self._multi.remove_handle(curl)
                self._finish(curl, errno, message)
            if not queued:
                break
        if self._transfers:
            self._process_queue()

    def _read_heads(self) -> None:
        """Each transfer reads the header lines libcurl appended to its list (HEADERFUNCTION): so
        a head that came without body reaches its consumer in the pass it arrived in."""
        for sink in list(self._heading):
            if sink.take_header_lines():
                del self._heading[sink]

    def _process_queue(self) -> None:
        kick = False
        while self._transfers and (self._free or len(self._curls) < self._capacity):
            if self._free:
                curl = self._free.pop()
                state = self._curls[curl]
                self._idle.taken()
            else:
                curl = pycurl.Curl()
                state = self._curls[curl] = HandleState()  # fresh: nothing to reset before preparing
            transfer, sink = self._transfers.popleft()
            state.sink = sink
            try:
                self._set_up(curl, state, transfer, sink)
            except Exception as error:  # a value libcurl refused: the transfer fails, nothing is sent
                log.error("a transfer could not be set up: %s", type(error).__name__)
                state.sink = None
                try:
                    sink.on_ended(
                        failure_of(-1, f"the transfer could not be set up ({type(error).__name__})")
                    )
                finally:
                    release(curl, state, failed=True)
                    self._free.append(curl)
                continue
            sink.on_started(self, curl)
            self._heading[sink] = None
            self._starting = True
            try:
                self._multi.add_handle(curl)
            finally:
                self._starting = False
            kick = True
        if kick:
            if loop_pass.busy(self._loop):
                # A busy pass: more requests are about to start; one libcurl call sends them all.
                self._call_soon()
                return
            if self._soon is not None:
                self._soon.cancel()
                self._soon = None
            self._now()  # libcurl sends the requests now

    def _set_up(self, curl: pycurl.Curl, state: HandleState, transfer: Transfer, sink: Sink) -> None:
        prepared = state.setup is transfer.setup and state.method == transfer.method
        if not prepared or transfer.cookies is not None:
            prepare(curl, state, transfer, self._profile_options)
        for option, value in transfer.options:
            curl.setopt(option, value)
        curl.setopt(pycurl.HTTPHEADER, transfer.header_lines)
        # The exchange's own header list and body callback: they run in libcurl's order, cost no
        # IOLoop callback, and pause the transfer when the client falls behind. A header line is
        # appended to the list by C code, read by the exchange once libcurl returns (_collect) or
        # before the body's first bytes.
        curl.setopt(pycurl.HEADERFUNCTION, sink.header_lines.append)
        curl.setopt(pycurl.WRITEFUNCTION, sink.on_write)
        if transfer.cookies is not None:
            curl.setopt(pycurl.SHARE, transfer.cookies.share(self.engine, cookie_share))
            curl.setopt(pycurl.COOKIEFILE, "")  # "" turns the cookie engine on without reading a file

    def _finish(
        self, curl: pycurl.Curl, curl_error: int | None = None, curl_message: str | None = None
    ) -> None:
        """The transfer on `curl` is over (its handle is out of the multi handle): tell its sink."""
        state = self._curls[curl]
        sink = state.sink
        assert sink is not None
        state.sink = None
        self._heading.pop(sink, None)
        try:
            failure = failure_of(curl_error, curl_message or "", curl.getinfo) if curl_error else None
            sink.on_ended(failure)
        except Exception:
            log.exception("a transfer's completion failed")
        finally:
            release(curl, state, failed=curl_error is not None)
            self._free.append(curl)


def libcurl_version() -> str:
    """The version of the stock libcurl the pycurl engine runs on (for the build info metric)."""
    return str(pycurl.version_info()[1])


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
