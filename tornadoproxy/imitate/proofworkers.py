"""The processes that solve proofs of work: a ProcessPoolExecutor of spawned, niced workers.

SHA3 over inputs this small keeps the GIL, so solving in a thread stalls the event loop (measured:
7-8 ms lag at p50 with two threads, against 0.1 ms with worker processes; bench/README.md). The
workers are spawned, not forked, so they share nothing with the gateway (sockets, libcurl handles,
the event loop), and niced, so that on a small machine the answers being relayed keep the CPU. A
solve that has started cannot be cancelled (it is bounded by `imitate.proof_max_attempts`); at exit
the workers are ended at once, and on Linux a gateway process that dies without exiting (SIGKILL,
the OOM killer) takes its workers with it: each asks the kernel for SIGTERM when its parent dies.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
from concurrent.futures import Executor, ProcessPoolExecutor

log = logging.getLogger(__name__)

NICENESS = 10
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _worker_started(parent: int) -> None:
    """The workers' initializer (it runs in each worker): lower priority, and die with `parent`.

    A worker waits for work on a pipe whose write end it holds itself, so it never sees its parent
    go: without this, the workers of a killed gateway process would live on, orphaned, forever."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned worker then lives until it is stopped
    if os.getppid() != parent:
        os._exit(0)  # the parent died before the worker could ask to be told
    os.nice(NICENESS)


class ProofWorkers:
    """Built once by the composition root; `start()` has the workers spawned in the background."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._executor = self._spawn()
        self._retired: list[ProcessPoolExecutor] = []

    def _spawn(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_started,
            initargs=(os.getpid(),),
        )

    def replace_broken(self) -> None:
        """A worker died and the executor refuses work (BrokenProcessPool): use new workers."""
        self._retired.append(self._executor)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._spawn()

    @property
    def executor(self) -> Executor:
        return self._executor

    def start(self) -> None:
        """Spawn the workers now rather than at the first proof: a spawn takes a few milliseconds
        here and the worker's start-up (about 0.1 s) runs beside the gateway's; nothing waits."""
        self._executor.submit(os.getpid)

    def close(self) -> None:
        """Cancel the solves not started, and end the workers without waiting for a running one."""
        for executor in [*self._retired, self._executor]:
            executor.shutdown(wait=False, cancel_futures=True)
            # ProcessPoolExecutor has no public way to stop a running task before Python 3.14's
            # terminate_workers(); its process table is the one handle on them.
            processes = list((getattr(executor, "_processes", None) or {}).values())
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(2)
