"""SSE load client: open C streaming chat completions (burst or ramp), hold them, count what arrives.

Raw asyncio sockets (HTTP/1.1, chunked decoding, event counting) so that one process on one core can
hold 10,000 streams. A stream is "ok" when it got HTTP 200, the N data events the model name asks
for (or `--events`; -1: any number) and `data: [DONE]`, then the end of the chunked body. `--body`
and `--header` send another request than the default chat completion (a web conversation, an
/imitate completion with a client key). Prints one line `SSEJSON {...}` with the
counts, failures by kind, time to headers / first event / end (ms percentiles), the events
received, and this client's own CPU time and event-loop lag (to show it was not the bottleneck).
Bounded: an idle timeout per stream and a hard deadline for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import re
import resource
import time
from collections import Counter
from urllib.parse import urlsplit

_MODEL_EVENTS = re.compile(r"^fake-n(\d+)-d(\d+)$")


def expected_events(model: str) -> int:
    """How many data events (before [DONE]) the bench upstream sends for this model name."""
    match = _MODEL_EVENTS.match(model)
    return max(1, min(int(match.group(1)), 10000)) if match else 20


class Stream(asyncio.Protocol):
    """One streaming request; parses the status line, the chunked framing and the SSE events."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.started = time.monotonic()
        self.last_activity = self.started
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers_at = 0.0
        self.first_event_at = 0.0
        self.ended_at = 0.0
        self.events = 0
        self.done_event = False
        self.finished = False  # the whole body arrived
        self.failure: str | None = None
        self._head = b""
        self._chunked = False
        self._raw = bytearray()  # body bytes still framed by chunked encoding
        self._need = -1  # bytes left in the current chunk (+2 for its CRLF); -1: reading a size line
        self._text = b""  # event text not yet terminated by a blank line

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.run.request_bytes)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if not self.headers_at:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(self._head[:end].decode("latin-1"))
            data = self._head[end + 4 :]
            self._head = b""
            if self.status != 200:
                self._fail(f"http_{self.status}")
                return
        if data:
            if self._chunked:
                self._raw += data
                self._dechunk()
            else:
                self._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished and self.failure is None:
            if exc is not None:
                self.failure = _error_kind(exc, "midstream" if self.headers_at else "before_headers")
            else:
                self.failure = "eof_midstream" if self.headers_at else "eof_before_headers"
        self.ended_at = self.ended_at or time.monotonic()
        self.run.stream_ended(self)

    # -- parsing --------------------------------------------------------------------------------
    def _parse_head(self, head: str) -> None:
        self.headers_at = time.monotonic()
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                self._chunked = True

    def _dechunk(self) -> None:
        raw = self._raw
        while raw:
            if self._need < 0:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(raw[:end]).split(b";")[0] or b"0", 16)
                del raw[: end + 2]
                if size == 0:
                    self._complete()
                    return
                self._need = size + 2
            take = min(self._need, len(raw))
            payload = bytes(raw[:take])
            del raw[:take]
            self._need -= take
            if self._need < 2:  # part of the trailing CRLF was taken with the payload
                payload = payload[: len(payload) - (2 - self._need)]
            if self._need == 0:
                self._need = -1
            self._feed(payload)

    def _feed(self, payload: bytes) -> None:
        if not payload:
            return
        if not self.first_event_at:
            self.first_event_at = time.monotonic()
        text = self._text + payload
        *events, self._text = text.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            if event.startswith(b"data: [DONE]"):
                self.done_event = True
            elif event.startswith(b"data:"):
                self.events += 1

    def _complete(self) -> None:
        self.finished = True
        self.ended_at = time.monotonic()
        if not self.done_event:
            self.failure = "no_done"
        elif self.run.expected >= 0 and self.events != self.run.expected:
            self.failure = "wrong_event_count"
        if self.transport is not None:
            self.transport.close()

    def _fail(self, kind: str) -> None:
        self.failure = self.failure or kind
        if self.transport is not None:
            self.transport.abort()


def _error_kind(exc: BaseException, when: str) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, str(exc.errno))}_{when}"
    return f"{type(exc).__name__}_{when}"


class Run:
    """C streams against one URL; collects the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        url = urlsplit(args.url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 80
        self.args = args
        self.expected = expected_events(args.model) if args.events is None else args.events
        body = (args.body or "").encode() or json.dumps(
            {"model": args.model, "stream": True, "messages": [{"role": "user", "content": "Stream."}]}
        ).encode()
        extra = "".join(f"{header}\r\n" for header in args.header)
        self.request_bytes = (
            f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {args.api_key}\r\nContent-Type: application/json\r\n{extra}"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.open: set[Stream] = set()
        self.ended: list[Stream] = []
        self.failures: Counter[str] = Counter()
        self.peak_open = 0
        self.lags: list[float] = []
        self.all_ended = asyncio.Event()

    async def open_one(self) -> None:
        stream = Stream(self)
        self.open.add(stream)
        self.peak_open = max(self.peak_open, len(self.open))
        try:
            await asyncio.get_running_loop().create_connection(lambda: stream, self.host, self.port)
        except OSError as exc:
            stream.failure = _error_kind(exc, "connect")
            stream.ended_at = time.monotonic()
            self.stream_ended(stream)

    def stream_ended(self, stream: Stream) -> None:
        if stream not in self.open:
            return
        self.open.discard(stream)
        self.ended.append(stream)
        if stream.failure:
            self.failures[stream.failure] += 1
        if len(self.ended) == self.args.c:
            self.all_ended.set()

    async def start_all(self) -> None:
        """Open the C connections at once (burst) or spread evenly over --ramp seconds."""
        started = time.monotonic()
        tasks = []
        for index in range(self.args.c):
            if self.args.ramp > 0:
                due = started + self.args.ramp * index / self.args.c
                delay = due - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.open_one()))
        await asyncio.gather(*tasks)

    async def watch(self) -> None:
        """Once a second: cut streams idle for --timeout seconds; measure this loop's lag."""
        while not self.all_ended.is_set():
            tick = time.monotonic()
            await asyncio.sleep(0.1)
            self.lags.append(time.monotonic() - tick - 0.1)
            if len(self.lags) % 10:
                continue
            limit = time.monotonic() - self.args.timeout
            for stream in [s for s in self.open if s.last_activity < limit]:
                stream._fail("idle_timeout")

    def abort_open(self, kind: str) -> None:
        for stream in list(self.open):
            stream._fail(kind)
            if stream.transport is None:  # still connecting: nothing will call connection_lost
                stream.ended_at = time.monotonic()
                self.stream_ended(stream)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(ordered[-1] * 1000, 2)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    run = Run(args)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    watcher = asyncio.create_task(run.watch())
    opener = asyncio.create_task(run.start_all())
    try:
        await asyncio.wait_for(run.all_ended.wait(), args.deadline)
    except TimeoutError:
        opener.cancel()
        run.abort_open("deadline")
        await asyncio.sleep(0.5)  # let aborted transports report connection_lost
        run.abort_open("deadline")
    watcher.cancel()
    wall = time.monotonic() - began
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    ok = [s for s in run.ended if s.failure is None]
    with_head = [s for s in run.ended if s.headers_at]
    with_event = [s for s in run.ended if s.first_event_at]
    return {
        "url": args.url,
        "model": args.model,
        "c": args.c,
        "ramp_s": args.ramp,
        "ok": len(ok),
        "failed": args.c - len(ok),
        "failures": dict(run.failures),
        "expected_events": run.expected,
        "events": sum(s.events for s in run.ended),
        "peak_open": run.peak_open,
        "headers_ms": _percentiles([s.headers_at - s.started for s in with_head]),
        "ttfb_ms": _percentiles([s.first_event_at - s.started for s in with_event]),
        "total_ms": _percentiles([s.ended_at - s.started for s in ok]),
        "wall_s": round(wall, 3),
        "client_cpu_s": round(
            cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 3
        ),
        "client_loop_lag_ms": _percentiles(run.lags),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/.../chat/completions")
    parser.add_argument("--c", type=int, default=100, help="streams to open (at most 10,000)")
    parser.add_argument("--model", default="fake", help="fake-n<N>-d<D>: N events D ms apart")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which to open them (0: burst)")
    parser.add_argument("--timeout", type=float, default=30.0, help="idle timeout per stream, seconds")
    parser.add_argument("--deadline", type=float, default=120.0, help="hard limit for the run, seconds")
    parser.add_argument("--api-key", default="sk-bench-not-a-real-key")
    parser.add_argument(
        "--body", default="", help="the request body (JSON text) instead of a chat completion"
    )
    parser.add_argument("--header", action="append", default=[], help="another request header, 'Name: value'")
    parser.add_argument("--events", type=int, default=None, help="data events expected (-1: any number)")
    args = parser.parse_args()
    if not 1 <= args.c <= 10000:
        parser.error("--c must be between 1 and 10000")
    args.deadline = min(args.deadline, 900.0)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print("SSEJSON " + json.dumps(asyncio.run(main(arguments))), flush=True)
