"""Several worker processes on one port, kept running by their parent.

The parent binds the sockets (server.py: a set per worker with SO_REUSEPORT, so that the kernel
spreads connections over the workers) and forks `server.workers` children; each builds its own
event loop, HTTP client, caches and metrics. The parent then only waits for signals, taken
synchronously (blocked, then `sigtimedwait`), so that no code runs inside a signal handler:
- SIGTERM or SIGINT: the parent closes its copy of the listening sockets (so new connections are
  refused, as with one process) and sends SIGTERM to every worker, which drains (server.drain_timeout)
  and exits; a worker still running DRAIN_GRACE seconds after the drain deadline is killed.
- SIGHUP: the parent re-reads the configuration (the one it starts workers with from then on) and
  sends SIGHUP to every worker, which reloads on its own.
- a worker that dies is restarted at once with the same worker number. If workers die more than
  MAX_RESTARTS times within RESTART_WINDOW seconds, the parent stops the others and exits 1, so that
  systemd or Docker restarts the whole service and the operator sees why.
Workers ask the kernel for a SIGTERM when the parent dies (PR_SET_PDEATHSIG): a parent killed with
SIGKILL leaves no worker behind.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

from tornadoproxy.config.schema import Config, ConfigError
from tornadoproxy.observability.logs import configure_logging
from tornadoproxy.observability.sharedmetrics import SupervisorMetrics, forget_worker
from tornadoproxy.parentdeath import die_with_parent
from tornadoproxy.upstream.fetcher import UpstreamRoute

log = logging.getLogger(__name__)

Loaded = tuple[Config, dict[str, UpstreamRoute], frozenset[str]]
# Runs worker `number` with a loaded configuration in the forked child; returns its exit status.
StartWorker = Callable[[int, Loaded], int]

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# Beyond server.drain_timeout: the drain's own abort wait (3 s), closing connections, the token
# file's last write. The systemd unit's TimeoutStopSec must exceed drain_timeout + DRAIN_GRACE.
DRAIN_GRACE = 10.0
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class RestartBudget:
    """At most `limit` restarts within any `window` seconds."""

    def __init__(self, limit: int = MAX_RESTARTS, window: float = RESTART_WINDOW) -> None:
        self._limit = limit
        self._window = window
        self._times: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return False
        self._times.append(now)
        return True


class Supervisor:
    """The parent process: starts the workers, restarts them, passes signals on, stops them."""

    def __init__(
        self,
        loaded: Loaded,
        reload: Callable[[], Loaded],
        start: StartWorker,
        shared_dir: str,
        metrics: SupervisorMetrics,
        sockets: Sequence[socket.socket],
    ) -> None:
        self._loaded = loaded
        self._reload = reload
        self._start = start
        self._shared_dir = shared_dir
        self._metrics = metrics
        self._sockets = sockets
        self._children: dict[int, int] = {}  # pid -> worker number
        self._budget = RestartBudget()
        self._parent = os.getpid()
        self._stopping = False
        self._deadline: float | None = None  # while stopping: when the remaining workers get SIGKILL
        self._status = 0

    def run(self) -> int:
        """Run the workers until they are all gone; return the parent's exit status."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for signum in _SIGNALS:
            # An inherited SIG_IGN (nohup, some process managers) would discard SIGHUP, or reap the
            # workers behind our back for SIGCHLD; the workers inherit these dispositions too.
            signal.signal(signum, signal.SIG_DFL)
        count = self._loaded[0].server.workers
        for number in range(count):
            self._spawn(number)
        log.info("started %d worker processes", count)
        while self._children:
            info = self._next_signal()
            if info is None:
                self._kill_stragglers()
            elif info.si_signo == signal.SIGCHLD:
                self._reap()
            elif info.si_signo == signal.SIGHUP:
                self._reload_all()
            else:
                self._stop(signal.Signals(info.si_signo).name)
        log.info("every worker has exited")
        return self._status

    def _next_signal(self) -> signal.struct_siginfo | None:
        if self._deadline is None:
            return signal.sigwaitinfo(_SIGNALS)
        return signal.sigtimedwait(_SIGNALS, max(0.0, self._deadline - time.monotonic()))

    def _spawn(self, number: int) -> None:
        pid = os.fork()
        if pid == 0:
            self._become_worker(number)  # never returns
        self._children[pid] = number

    def _become_worker(self, number: int) -> None:
        status = 1
        try:
            if die_with_parent(self._parent, signal.SIGTERM):
                # SIGTERM, SIGINT and SIGHUP stay blocked (pending, not lost) until the worker's event
                # loop has its handlers for them: their default action would kill a starting worker.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                status = self._start(number, self._loaded)
            else:
                status = 0  # the parent died before the worker could ask to be told
        except BaseException:
            log.exception("worker %d failed", number)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)  # never unwind into the parent's stack (its clean-up is the parent's)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            number = self._children.pop(pid, None)
            if number is None:
                continue
            forget_worker(pid, self._shared_dir)
            how = _describe(os.waitstatus_to_exitcode(wait_status))
            if self._stopping:
                log.info("worker %d (pid %d) %s", number, pid, how)
            else:
                self._restart(number, pid, how)

    def _restart(self, number: int, pid: int, how: str) -> None:
        if not self._budget.allow(time.monotonic()):
            log.error(
                "worker %d (pid %d) %s; workers died %d times within %g s: stopping the gateway",
                number,
                pid,
                how,
                MAX_RESTARTS,
                RESTART_WINDOW,
            )
            self._status = 1
            self._stop("too many worker restarts")
            return
        log.error("worker %d (pid %d) %s; starting it again", number, pid, how)
        self._metrics.worker_restarts.inc()
        self._spawn(number)

    def _stop(self, why: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        drain = self._loaded[0].server.drain_timeout
        self._deadline = time.monotonic() + drain + DRAIN_GRACE
        log.info("stopping (%s): draining %d workers", why, len(self._children))
        for sock in self._sockets:
            sock.close()  # the workers close theirs as they drain: new connections are refused
        self._signal_all(signal.SIGTERM)

    def _kill_stragglers(self) -> None:
        log.error("%d workers still running after the drain deadline: killing them", len(self._children))
        self._status = 1
        self._signal_all(signal.SIGKILL)
        self._deadline = None  # wait for them without a deadline: SIGKILL cannot be refused

    def _reload_all(self) -> None:
        try:
            loaded = self._reload()
        except ConfigError as error:
            log.error("configuration reload failed; new workers keep the last valid one: %s", error)
        else:
            self._loaded = loaded
            configure_logging(loaded[0].logging, loaded[2])
        self._signal_all(signal.SIGHUP)

    def _signal_all(self, signum: signal.Signals) -> None:
        for pid in list(self._children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                # Not even a zombie: someone else reaped it, so no SIGCHLD will tell us.
                self._children.pop(pid, None)
                forget_worker(pid, self._shared_dir)


def _describe(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
