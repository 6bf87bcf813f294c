"""The /imitate completions service: one chat completion from request to its last byte.

Validated request and payer in; then, per attempt, an account (seats.py), the sentinel, proof of
work and conversation up to the first text (attempt.py), with failover before that first text to
another pool account, never one already tried, at most `pool.attempts` of them (a client's own
token gets one attempt); then the answer written out (writer.py), the account released with the
outcome, tokens counted, and with `imitate.history: hide` the conversation hidden in the
background. Built once per process by the composition root; `reconfigure()` on reload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from tornadoproxy.config.schema import Config
from tornadoproxy.errors import Code, GatewayBusy, GatewayError, UpstreamError
from tornadoproxy.imitate.models import ModelMap, resolve_model
from tornadoproxy.imitate.output import ChunkStream, Usage, completion
from tornadoproxy.imitate.proofworkers import ProofWorkers
from tornadoproxy.imitate.request import ChatRequest
from tornadoproxy.imitate.service.attempt import AttemptRecord, Attempts, OpenAnswer
from tornadoproxy.imitate.service.seats import Payer, Seat, TokenPayer, outcome_for, take_seat
from tornadoproxy.imitate.service.writer import Ending, answer_headers, is_web_id, read_whole, write_stream
from tornadoproxy.imitate.tokens import TokenCounting
from tornadoproxy.observability.imitatemetrics import ImitateMetrics
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.relay.client import ClientGone, ClientSide
from tornadoproxy.relay.service import Relay
from tornadoproxy.upstream.fetcher import Fetcher
from tornadoproxy.upstream.request import UpstreamRoute

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CompletionRecord(AttemptRecord):
    """What the access log says about one completion (filled in as it goes, whatever the end)."""

    account: str | None = None
    model: str | None = None  # the web slug (configured, so bounded: never the client's string)
    first_token_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def fields(self) -> dict[str, object]:
        found = {
            "account": self.account,
            "model": self.model,
            "attempts": self.attempts,
            "proof_ms": round(self.proof_ms, 1) if self.proof_ms else None,
            "first_token_ms": self.first_token_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        return {key: value for key, value in found.items() if value is not None}


class ImitateService:
    def __init__(
        self,
        config: Config,
        routes: Mapping[str, UpstreamRoute],
        relay: Relay,
        fetcher: Fetcher,
        pool: AccountPool | None,
        proofs: ProofWorkers,
        metrics: Metrics,
        counts: ImitateMetrics,
    ) -> None:
        self._relay = relay
        self._fetcher = fetcher
        self.pool = pool
        self._metrics = metrics
        self._counts = counts
        self._attempts = Attempts(relay, fetcher, proofs, metrics, counts)
        self._tokens = TokenCounting(config.imitate.token_count)
        self._background: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Future[Seat]] = set()
        self._stopping = False
        self.active = 0  # completions under way (the drain waits for them)
        self.reconfigure(config, routes)

    def reconfigure(self, config: Config, routes: Mapping[str, UpstreamRoute]) -> None:
        """Model map, history policy, paths, limits and counting method for completions from now on."""
        imitate = config.imitate
        self.models = ModelMap.build(imitate.models, imitate.default_model)
        self.access_tokens = imitate.access_tokens
        self._history = imitate.history
        self._tokens.method = imitate.token_count
        self._max_attempts = config.pool.attempts
        self._keepalive = config.streams.keepalive_interval
        self._attempts.reconfigure(imitate, config.upstreams.chatgpt, routes["chatgpt"].profile)

    def slug_for(self, name: str) -> str:
        """The web slug for an OpenAI model name, or the OpenAI-shaped 404 model_not_found."""
        return resolve_model(self.models, name)

    async def complete(
        self, chat: ChatRequest, payer: Payer, client: ClientSide, record: CompletionRecord
    ) -> None:
        """Answer `chat` to `client`. A GatewayError raised here means nothing was sent yet; once
        the answer has begun, failures end it in the answer itself. Cancelling the caller (the
        client left) ends the web request and gives the account back at once."""
        started = time.monotonic()
        slug = self.slug_for(chat.model)
        record.model = slug
        payer_label = "token" if isinstance(payer, TokenPayer) else "pool"
        self._tokens.prepare()
        self.active += 1
        result = "error"
        try:
            answer, seat = await self._first_text(chat, slug, payer, client, record)
            seconds = time.monotonic() - started
            record.first_token_ms = round(seconds * 1000, 1)
            self._counts.observe_first_token(payer_label, seconds)
            ending = await self._answer(chat, answer, seat, client, record)
            self._finished(ending)
            result = "ok" if ending.error is None and ending.reason == "done" else "error"
            if ending.reason == "client_gone":
                result = "client_gone"
        except (ClientGone, asyncio.CancelledError):
            result = "client_gone"
            raise
        finally:
            self.active -= 1
            self._counts.count_completion(chat.stream, payer_label, result)

    async def _first_text(
        self, chat: ChatRequest, slug: str, payer: Payer, client: ClientSide, record: CompletionRecord
    ) -> tuple[OpenAnswer, Seat]:
        """Attempts until one yields text: accounts that fail first are released with what the
        failure says about them and another is tried; the last failure is the client's answer."""
        tried: list[str] = []
        last: GatewayError | None = None
        limit = 1 if isinstance(payer, TokenPayer) else self._max_attempts
        for _ in range(limit):
            seat = await self._seat(payer, slug, tried, last)
            record.account = seat.name
            try:
                answer = await self._attempts.open(seat, chat, slug, client, record)
            except UpstreamError as error:
                seat.release(outcome_for(error))
                self._counts.count_error(error.code)
                log.info("an /imitate attempt as %s failed before any text: %s", seat.name, error.code)
                tried.append(seat.name)
                last = error
                continue
            except BaseException as error:  # the client left, the gateway is full or stopping
                if isinstance(error, GatewayBusy):
                    self._counts.count_error(error.code)
                seat.release(Outcome.aborted())
                raise
            return answer, seat
        assert last is not None
        raise last

    async def _seat(self, payer: Payer, slug: str, tried: list[str], last: GatewayError | None) -> Seat:
        """The next seat; waiting in the pool's queue ends with 503 shutting_down once the drain
        has begun (stop_waiting)."""
        waiting = asyncio.ensure_future(take_seat(payer, self.pool, slug, tried, last))
        self._waiting.add(waiting)
        try:
            return await waiting
        except asyncio.CancelledError:
            if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
                waiting.result().release(Outcome.aborted())  # granted just as the caller was cancelled
            current = asyncio.current_task()
            if self._stopping and (current is None or not current.cancelling()):
                raise GatewayBusy(Code.SHUTTING_DOWN.message, retry_after=1) from None
            raise
        finally:
            self._waiting.discard(waiting)

    def stop_waiting(self) -> None:
        """The drain has begun: completions still waiting for an account are answered 503."""
        self._stopping = True
        for waiting in list(self._waiting):
            waiting.cancel()

    async def _answer(
        self, chat: ChatRequest, answer: OpenAnswer, seat: Seat, client: ClientSide, record: CompletionRecord
    ) -> Ending:
        """Write the answer; release the seat with how it ended (a client gone says nothing)."""
        try:
            if chat.stream:
                chunks = ChunkStream(chat.model, include_usage=chat.include_usage)
                usage_of = partial(self._usage, chat, record)
                ending = await write_stream(
                    answer, client, chunks, usage_of, self._fetcher, self._metrics, self._keepalive
                )
            else:
                ending = await self._whole(chat, answer, client, record)
        except UpstreamError as error:  # a whole answer that failed midway: nothing was sent yet
            self._counts.count_error(error.code)
            seat.release(outcome_for(error))
            raise
        except BaseException:
            seat.release(Outcome.aborted())
            raise
        finally:
            answer.exchange.abort("client_gone" if client.gone else "done")
            conversation = answer.reader.conversation_id
            if self._history == "hide" and is_web_id(conversation):
                self._spawn(self._hide(seat, conversation))
        if isinstance(ending.error, UpstreamError):
            self._counts.count_error(ending.error.code)
            seat.release(outcome_for(ending.error))
        elif ending.error is not None or ending.reason == "client_gone":
            seat.release(Outcome.aborted())  # shutting down, or the client left: not the account's doing
        else:
            seat.release(Outcome.ok())
        return ending

    async def _whole(
        self, chat: ChatRequest, answer: OpenAnswer, client: ClientSide, record: CompletionRecord
    ) -> Ending:
        text, finish = await read_whole(answer, client)
        usage = await self._usage(chat, record, text)
        body = completion(chat.model, text, finish.finish_reason, usage)
        headers = [("Content-Type", "application/json"), *answer_headers(answer)]
        client.start(200, "OK", headers)
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        client.bytes_out = len(data)
        client.finish(data)
        return Ending(text, finish, usage)

    async def _usage(self, chat: ChatRequest, record: CompletionRecord, text: str) -> Usage:
        """The answer's usage, counted and recorded before the answer's last bytes go out."""
        usage = await self._tokens.usage(chat.messages, text)
        record.prompt_tokens = usage.prompt_tokens
        record.completion_tokens = usage.completion_tokens
        self._counts.count_tokens(usage.prompt_tokens, usage.completion_tokens)
        return usage

    def _finished(self, ending: Ending) -> None:
        if ending.finish is not None and not ending.finish.expected:
            log.info(
                "an /imitate answer ended without a known finish (%s); reported as %s",
                ending.finish.upstream_finish or "no end_turn",
                ending.finish.finish_reason,
            )

    # -- hiding conversations (imitate.history: hide) ---------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _hide(self, seat: Seat, conversation: str) -> None:
        url = self._attempts.hide_url(conversation)
        request = self._attempts.request(seat, "PATCH", url, b'{"is_visible":false}', [])
        try:
            answer = await self._relay.fetch(request)
            ok = answer.status == 200
        except GatewayError as error:
            ok = False
            log.warning("could not hide an /imitate conversation of %s: %s", seat.name, error.code)
        else:
            if not ok:
                log.warning("hiding an /imitate conversation of %s answered %d", seat.name, answer.status)
        self._counts.count_hidden(ok)

    async def close(self) -> None:
        """Wait (briefly) for the conversations being hidden; cancel what is left."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=2)
        for task in list(self._background):
            task.cancel()
