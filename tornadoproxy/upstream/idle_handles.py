"""Closing the easy handles a burst made once they stayed idle: one piece both engines run.

An engine keeps its free handles in a list it takes from the top and gives back to the top, so the
handles at its bottom are the ones no transfer needed lately. Every IDLE_SHED_INTERVAL seconds the
free handles beyond IDLE_RESERVE that stayed free for the whole interval (none of the transfers
since the last round reached them: the fewest free since then, `taken()` keeps count) are closed
by the engine's own `close`. Each keeps some 22 KB of libcurl's state (buffers, connection cache
entries, TLS state), and 1,000 of them kept the heap 22 MB larger for good; closing many at once
leaves holes all through the heap, so glibc is then asked to give its free pages back.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable
from typing import Generic, TypeVar

# Free handles kept whatever their idleness, and how often the idle ones beyond them are closed.
IDLE_RESERVE = 16
IDLE_SHED_INTERVAL = 30.0
# Closing this many handles at once leaves holes in the heap worth giving back (malloc_trim).
_TRIM_AFTER = 64

Handle = TypeVar("Handle")


class IdleHandles(Generic[Handle]):
    """The shedding of one engine's free list `free` (the engine's own list, shared): `close`
    ends a handle for good (and forgets it in the engine's bookkeeping)."""

    __slots__ = ("_free", "_close", "_low", "_loop", "_timer")

    def __init__(self, free: list[Handle], close: Callable[[Handle], None]) -> None:
        self._free = free
        self._close = close
        self._low = 0  # fewest free handles since the last round: those at the bottom stayed idle
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(IDLE_SHED_INTERVAL, self._in_time)

    def taken(self) -> None:
        """The engine took a handle from the top of its free list."""
        if len(self._free) < self._low:
            self._low = len(self._free)

    def shed(self) -> int:
        """Close the free handles beyond IDLE_RESERVE that none of the transfers since the last call
        needed; return how many were closed."""
        free = self._free
        count = min(self._low, len(free) - IDLE_RESERVE)
        if count > 0:
            idle = free[:count]
            del free[:count]
            for handle in idle:
                self._close(handle)
            if count >= _TRIM_AFTER:
                _give_back_free_heap()
        self._low = len(free)
        return max(count, 0)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _in_time(self) -> None:
        self.shed()
        self._timer = self._loop.call_later(IDLE_SHED_INTERVAL, self._in_time)


def _give_back_free_heap() -> None:
    """Return the heap's free pages to the system: glibc's free() shrinks the heap only from its top,
    and closed handles leave holes all through it (nothing without glibc)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
