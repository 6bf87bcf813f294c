"""Writing a begun web answer to the client as OpenAI output (docs/imitate.md, "From the web stream
to an OpenAI answer").

`write_stream` sends `chat.completion.chunk` events as the web events arrive: one content chunk per
upstream read that brought text, each handed to the client before the next read (with
`ClientSide.send`, at once, when the socket takes it all; else waited for with `deliver`, so a client
that stalls holds the next read back), keep-alive comments while the upstream is silent, and after a
failure one `data: {"error": ...}` event and `[DONE]`.
`read_whole` reads the rest of the answer for a non-streamed completion. Neither counts tokens: the
caller passes `usage_of`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeGuard

from tornadoproxy.errors import Code, GatewayBusy, GatewayError, UpstreamError
from tornadoproxy.formats.sse import encode_comment
from tornadoproxy.imitate.output import ChunkStream, Usage, stream_error
from tornadoproxy.imitate.reader import AnswerEnd
from tornadoproxy.imitate.service.attempt import OpenAnswer
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.relay.client import ClientGone, ClientSide
from tornadoproxy.upstream.fetcher import Fetcher

log = logging.getLogger(__name__)

_WEB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
STREAM_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)

UsageOf = Callable[[str], Awaitable[Usage]]


@dataclass(slots=True)
class Ending:
    """How a written answer ended: its text so far, the finish (None after a failure), the error it
    ended with, and why the stream ended (observability.metrics.STREAM_END_REASONS)."""

    text: str
    finish: AnswerEnd | None = None
    usage: Usage | None = None
    error: GatewayError | None = None
    reason: str = "done"


def answer_headers(answer: OpenAnswer) -> list[tuple[str, str]]:
    """The web conversation and message ids, for whoever wants them (never the OpenAI `id`); an id
    that is not a plain token (UUIDs are) is left out rather than put in a header line."""
    reader = answer.reader
    headers = []
    if is_web_id(reader.conversation_id):
        headers.append(("X-Conversation-Id", reader.conversation_id))
    if is_web_id(reader.message_id):
        headers.append(("X-Message-Id", reader.message_id))
    return headers


def is_web_id(value: str | None) -> TypeGuard[str]:
    """A conversation or message id as the web backend makes them, safe in a header or a path."""
    return value is not None and _WEB_ID.fullmatch(value) is not None


async def write_stream(
    answer: OpenAnswer,
    client: ClientSide,
    chunks: ChunkStream,
    usage_of: UsageOf,
    fetcher: Fetcher,
    metrics: Metrics,
    keepalive: float,
) -> Ending:
    """Send the answer from its first text to its end (or failure); never raises ClientGone."""
    client.start(200, "OK", [*STREAM_HEADERS, *answer_headers(answer)])
    client.streamed = True
    metrics.streams_active.inc()
    ending = Ending("", reason="client_gone")  # unless the pump returns (it is cancelled, or raises)
    try:
        ending = await _pump(answer, client, chunks, usage_of, fetcher, keepalive)
    except ClientGone:
        pass
    finally:
        metrics.streams_active.dec()
        metrics.count_stream_end(ending.reason)
        client.stream_end = ending.reason
    await client.finish_stream()
    return ending


async def _pump(
    answer: OpenAnswer,
    client: ClientSide,
    chunks: ChunkStream,
    usage_of: UsageOf,
    fetcher: Fetcher,
    keepalive: float,
) -> Ending:
    exchange, reader = answer.exchange, answer.reader
    parts = [answer.first]
    _send(client, chunks.role() + chunks.content(answer.first))
    if keepalive:
        fetcher.keep_alive(exchange, keepalive)
    await client.deliver()
    try:
        while (chunk := await exchange.read()) is not None:
            if not chunk:
                data = encode_comment("keep-alive")
            elif pieces := reader.feed(chunk):
                text = "".join(pieces)
                parts.append(text)
                data = chunks.content(text)
            else:
                continue
            client.bytes_out += len(data)
            if not client.send(data):  # not all taken at once: wait for the client as before
                await client.deliver()
        if client.gone:
            return Ending("".join(parts), reason="client_gone")
        _check_not_shut_down(exchange.aborted_reason)
        finish = reader.end()
    except (UpstreamError, GatewayBusy) as error:
        return await _end_with_error(client, "".join(parts), error)
    text = "".join(parts)
    usage = await usage_of(text)
    _send(client, chunks.finish(finish.finish_reason, usage))
    await client.deliver()
    return Ending(text, finish, usage)


def _send(client: ClientSide, data: bytes) -> None:
    client.write(data)
    client.bytes_out += len(data)


async def _end_with_error(client: ClientSide, text: str, error: GatewayError) -> Ending:
    """One error event and `[DONE]`: OpenAI clients read only data lines."""
    kind = error.kind if isinstance(error, UpstreamError) else "gateway"
    log.warning("an /imitate answer failed midway: %s (%s)", error.code, kind)
    client.error_code = error.code
    _send(client, stream_error(error))
    reason = "upstream_error"
    if error.code is Code.UPSTREAM_TIMEOUT:
        reason = "idle_timeout"
    elif error.code is Code.SHUTTING_DOWN:
        reason = "shutdown"
    await client.deliver()
    return Ending(text, error=error, reason=reason)


async def read_whole(answer: OpenAnswer, client: ClientSide) -> tuple[str, AnswerEnd]:
    """The rest of the answer, for a completion sent whole; raises what ended it otherwise
    (UpstreamError, GatewayBusy at shutdown, ClientGone)."""
    exchange, reader = answer.exchange, answer.reader
    parts = [answer.first]
    while (chunk := await exchange.read()) is not None:
        if chunk:
            parts.extend(reader.feed(chunk))
    if client.gone:
        raise ClientGone()
    _check_not_shut_down(exchange.aborted_reason)
    return "".join(parts), reader.end()


def _check_not_shut_down(aborted: str | None) -> None:
    if aborted == "shutdown":
        raise GatewayBusy.of(Code.SHUTTING_DOWN)
