"""HTTP/1.1 message framing as RFC 9112 has it, where tornado's parser is laxer or stricter.

`StrictHTTP1Connection` takes the place of tornado's HTTP1Connection for each request (listener.py):
- A bare LF in the header block is refused (400). Tornado takes it for a line end, so
  `OpenAI-Organization: a<LF>X-Injected: 1` became two headers where a proxy in front, reading one
  field with an invalid value, saw one: the RFC lets a recipient recognise a bare LF or refuse it.
- HTTP/1.0 with Transfer-Encoding is faulty framing (RFC 9112 6.1): refused (400), and the connection
  closed, so nothing pipelined after it is read as a request.
- Chunk extensions (`1a;name=value`) are allowed and ignored, and a trailer section is read and
  dropped (RFC 9112 7.1): tornado refused both. A chunk-size line is at most 1 KiB, a trailer section
  at most the header size limit.
Leading empty lines before a request line are skipped by the listener's stream (the header read).
The header block is split into fields here, with tornado's checks on each name and value, but without
its per-line regex (a header block free of bare LFs has its lines ended by CRLF).
"""

from __future__ import annotations

import asyncio
import re

from tornado import httputil
from tornado.http1connection import HTTP1Connection

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_MAX_CHUNK_LINE = 1024
# Yield to the event loop after this much body (a chunk header counting as 1 KiB): a body of tiny
# chunks already in the buffer would otherwise be parsed without a pause.
_YIELD_AFTER = 256 * 1024
_HEADER_COST = 1024


class StrictHTTP1Connection(HTTP1Connection):
    """tornado's server-side connection with the framing rules above (installed by a class swap)."""

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        block = data.lstrip(b"\r\n")
        # Every LF is part of a CRLF unless there are more of them: two scans in C, where a regex
        # with a look-behind took 2.8 us on a relayed request's header block.
        if block.count(b"\n") != block.count(b"\r\n"):
            raise httputil.HTTPInputError("bare LF in the header block")
        start_line, headers = _parse_block(block.decode("latin-1"))
        if start_line.endswith(" HTTP/1.0") and "Transfer-Encoding" in headers:
            raise httputil.HTTPInputError("HTTP/1.0 with Transfer-Encoding")
        return start_line, headers

    async def _read_chunked_body(self, delegate: httputil.HTTPMessageDelegate) -> None:
        """The chunks' data to `delegate` in pieces of up to chunk_size (small chunks joined)."""
        total = work = 0
        pending = bytearray()
        piece = self.params.chunk_size
        while True:
            size = _chunk_size(await self.stream.read_until(b"\r\n", max_bytes=_MAX_CHUNK_LINE))
            if size == 0:
                break
            total += size
            if total > self._max_body_size:
                raise httputil.HTTPInputError("chunked body too large")
            work += _HEADER_COST
            while size:
                data = await self.stream.read_bytes(min(size, piece), partial=True)
                size -= len(data)
                work += len(data)
                pending += data
                if len(pending) >= piece:
                    await self._deliver_body(delegate, bytes(pending))
                    pending.clear()
            if await self.stream.read_bytes(2) != b"\r\n":
                raise httputil.HTTPInputError("improperly terminated chunk")
            if work >= _YIELD_AFTER:
                work = 0
                await asyncio.sleep(0)
        await self._skip_trailers()
        if pending:
            await self._deliver_body(delegate, bytes(pending))

    async def _skip_trailers(self) -> None:
        """Read the trailer section up to its empty line; its fields are not relayed."""
        budget = self.params.max_header_size or 65536
        while True:
            if budget <= 2:
                raise httputil.HTTPInputError("trailer section too large")
            line = await self.stream.read_until(b"\r\n", max_bytes=budget)
            if line == b"\r\n":
                return
            budget -= len(line)
            # read up to its first CRLF: an LF before that is a bare one
            if b"\n" in line[:-2] or b":" not in line or line[:1] in (b" ", b"\t"):
                raise httputil.HTTPInputError("malformed trailer field")


def _parse_block(text: str) -> tuple[str, httputil.HTTPHeaders]:
    """The start line and fields of a header block free of bare LFs, as tornado parses them (its
    checks on each field's name and value included) but split on CRLF at once: tornado's parser
    looks for the line end of each field with a regex, 1 us a field."""
    eol = text.find("\n")
    start_line = text[:eol].rstrip("\r")
    headers = httputil.HTTPHeaders()
    for line in text[eol + 1 :].split("\r\n"):
        if not line:
            continue  # the block's final CRLF
        if line[0] in httputil.HTTP_WHITESPACE:
            raise httputil.HTTPInputError("header line cannot start with whitespace, folding not supported")
        name, colon, value = line.partition(":")
        if not colon:
            raise httputil.HTTPInputError("no colon in header line")
        headers.add(name, value.strip(httputil.HTTP_WHITESPACE))
    return start_line, headers


def _chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (`1a`, `1a;name=value`, with its CRLF)."""
    match = _CHUNK_SIZE.fullmatch(line[:-2])
    if match is None:
        raise httputil.HTTPInputError("invalid chunk size")
    return int(match.group(1), 16)
