"""A child process that ends when its parent does: Linux's PR_SET_PDEATHSIG, and the check that
covers the moment before it was asked for.

The kernel sends the signal when the parent *thread* that created the child exits, so this suits
children started from a thread that lives as long as the process (the main thread here). Elsewhere
than Linux there is no such request: an orphaned child then lives until it is stopped.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, signum: signal.Signals) -> bool:
    """Ask for `signum` when the parent dies; False if it already has (the kernel will not tell:
    the child was reparented before it asked, so `os.getppid()` is no longer `parent`)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        pass  # not Linux
    return os.getppid() == parent
