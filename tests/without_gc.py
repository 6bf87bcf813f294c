"""Run a gateway with the cyclic garbage collector off, and count what it still holds on SIGUSR1.

Used as a `Gateway` wrapper: `python -m tests.without_gc CENSUS_FILE <python> -m tornadoproxy ...`
runs the gateway in this same process (same PID) with `gc.disable()` done first. With the collector
off, an object lives exactly as long as something refers to it: a request whose handler, exchange or
body is still alive after it ended is held by a reference cycle (or a leak), which in production would
last until the next full collection. On SIGUSR1 the process writes to CENSUS_FILE (atomically) how
many request handlers, exchanges, HTTP requests and large bytes objects are alive.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import signal
import sys
from types import FrameType
from typing import Any

LARGE = 1024 * 1024  # bytes objects at least this big are counted (request and response bodies)


def census() -> dict[str, int]:
    """Live objects of the kinds one request creates, found among the collector's tracked objects
    (bytes are not tracked: they are found through the containers that hold them)."""
    from tornado.httputil import HTTPServerRequest
    from tornado.web import RequestHandler

    from tornadoproxy.upstream.exchange import Exchange

    counts = {"handlers": 0, "exchanges": 0, "requests": 0, "large_bytes": 0, "large_bytes_total": 0}
    seen: set[int] = set()
    for obj in gc.get_objects():
        if isinstance(obj, RequestHandler):
            counts["handlers"] += 1
        elif isinstance(obj, Exchange):
            counts["exchanges"] += 1
        elif isinstance(obj, HTTPServerRequest):
            counts["requests"] += 1
        for referent in gc.get_referents(obj):
            if isinstance(referent, bytes) and len(referent) >= LARGE and id(referent) not in seen:
                seen.add(id(referent))
                counts["large_bytes"] += 1
                counts["large_bytes_total"] += len(referent)
    return counts


def _write_census(path: str) -> None:
    partial = path + ".partial"
    with open(partial, "w") as stream:
        json.dump(census(), stream)
    os.replace(partial, path)


def main(argv: list[str]) -> None:
    census_file, _python, *gateway_args = argv
    assert gateway_args[:2] == ["-m", "tornadoproxy"], gateway_args
    gc.disable()

    def on_signal(_signum: int, _frame: FrameType | None) -> Any:
        _write_census(census_file)

    signal.signal(signal.SIGUSR1, on_signal)
    sys.argv = ["tornadoproxy", *gateway_args[2:]]
    runpy.run_module("tornadoproxy", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
