"""The processes that solve proofs of work: a ProcessPoolExecutor of spawned, niced workers.

SHA3 over inputs this small keeps the GIL, so solving in a thread stalls the event loop (measured:
7-8 ms lag at p50 with two threads, against 0.1 ms with worker processes; bench/README.md). The
workers are spawned, not forked, so they share nothing with the gateway (sockets, libcurl handles,
the event loop), and niced, so that on a small machine the answers being relayed keep the CPU. A
solve that has started cannot be cancelled (it is bounded by `imitate.proof_max_attempts`); at exit
the workers are ended at once.

Nothing is spawned until `start()` or the first proof: a worker and the resource tracker beside it
cost about 28 MB of RSS (measured: 15.7 + 13.1 MB), which a gateway that never answers /imitate
should not pay. The composition root starts them at start-up when accounts are configured, and each
/imitate attempt starts them (a no-op once they run) before asking the sentinel, so that the first
spawn runs beside that round trip.

The workers end with the process that owns them even when it is killed (SIGKILL, out of memory): each
asks the kernel for a SIGKILL when its parent dies. multiprocessing's resource tracker, a process it
starts beside the first worker, then exits too: it lives while any process holds its pipe, and only
the owner and the workers do. A tracker that outlives a killed owner unlinks the owner's semaphores
and warns that they leaked (once per kill; true: the owner could not unlink them). A clean stop
leaves it nothing to do: `close()` ends the workers and waits for the executor's own thread, which
lets go of the executor's queues, whose semaphores are then unlinked at once (the gateway's worker
processes leave with `os._exit`, which skips multiprocessing's exit hooks: nothing later would).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from concurrent.futures import Executor, ProcessPoolExecutor

from tornadoproxy.parentdeath import die_with_parent

log = logging.getLogger(__name__)

NICENESS = 10


def _prepare_worker(owner: int) -> None:
    """The workers' initializer (it runs in each worker): die with the owner, then lower priority.
    The executor spawns from the owner's main thread (`submit`), the thread the kernel watches."""
    if not die_with_parent(owner, signal.SIGKILL):
        os._exit(0)  # the owner died before we asked: nobody will send work or stop us
    os.nice(NICENESS)


class ProofWorkers:
    """Built once by the composition root; `start()` (or the first proof) has the workers spawned."""

    def __init__(self, workers: int) -> None:
        self._workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def _spawn(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_prepare_worker,
            initargs=(os.getpid(),),
        )

    def replace_broken(self) -> None:
        """A worker died and the executor refuses work (BrokenProcessPool): use new workers. The
        broken executor has already ended its workers; waiting for its thread takes milliseconds."""
        if self._executor is not None:
            _end(self._executor)
        self._executor = self._spawn()

    @property
    def executor(self) -> Executor:
        """The executor, made at the first use; its workers spawn with the first task submitted."""
        if self._executor is None:
            self._executor = self._spawn()
        return self._executor

    def start(self) -> None:
        """Spawn the workers now, unless they were already: a spawn takes a few milliseconds here and
        the worker's start-up (about 0.1 s) runs beside whatever the caller does next; nothing waits.
        Call it from the main thread (the event loop's), the one the workers' parent-death signal watches."""
        if self._executor is None:
            self.executor.submit(os.getpid)

    def close(self) -> None:
        """Cancel the solves not started, and end the workers without waiting for a running one."""
        if self._executor is not None:
            _end(self._executor)
            self._executor = None


def _end(executor: ProcessPoolExecutor) -> None:
    """End `executor`'s workers at once, wait for its thread and release its semaphores."""
    # ProcessPoolExecutor has no public way to stop a running task before Python 3.14's
    # terminate_workers(); its process table is the one handle on them, and shutdown() drops it.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        # SIGKILL, not SIGTERM: a worker holds nothing to clean up, and a worker spawned by a thread
        # that had SIGTERM blocked would inherit the mask and never end (the join below would hang).
        process.kill()  # a no-op for one that has exited
    # The executor's thread sees the workers go, fails what was pending and joins them: with the
    # workers gone, waiting for it cannot wait for a solve.
    executor.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join()
