"""Whether the event loop's current pass is busy: the one test behind the hot path's "now or batched"
choices (the curl engine's libcurl call, the lean handler's inline request method).

At one connection one or two callbacks wait in asyncio's ready queue while a request is handled (the
upstream socket's event, the listener's); under load many do. In a busy pass, work done at once ahead
of the pass's other callbacks cost more CPU natively although fewer instructions (issue 18's fifth
round: running every request method inline, 1.26x CPU per request at 64 connections), while one
libcurl call queued behind them for every transfer the pass started paid (sixth round: 2,343 -> 2,854
req/s at 64 connections). On a loop whose ready queue is not asyncio's, no pass counts as busy.
"""

from __future__ import annotations

import asyncio

# More callbacks than this waiting in the loop's ready queue make its pass busy.
QUEUED_AT_MOST = 2


def busy(loop: asyncio.AbstractEventLoop) -> bool:
    return len(getattr(loop, "_ready", ())) > QUEUED_AT_MOST
