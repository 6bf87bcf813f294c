"""One attempt of a completion as one account, up to the answer's first assistant text.

The sentinel's chat requirements (a requirements token made on the loop: a few hashes), the proof
of work in the worker processes when one is required, then the conversation, read until it yields
text: only then may the client's status line go out (docs/imitate.md, "Errors and failover"), so
everything that fails before it is an `UpstreamError` the caller may try on another account. A
challenge, block or HTML page is diagnosed as on the relayed routes; JSON refusals (401, "unusual
activity", 429) are read by imitate/refusals.py. The sentinel and proof tokens are credentials:
they go into request headers only, never into a log line or an error.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from tornadoproxy.config.imitate import ImitateConfig
from tornadoproxy.errors import Code, GatewayBusy, UpstreamError
from tornadoproxy.imitate.browser import BrowserTelemetry, browser_telemetry
from tornadoproxy.imitate.conversation import conversation_body
from tornadoproxy.imitate.proofofwork import ProofOfWorkFailed, ProofOfWorkLimits, prove, requirements_token
from tornadoproxy.imitate.proofworkers import ProofWorkers
from tornadoproxy.imitate.reader import WebAnswerReader, WebStreamFailure
from tornadoproxy.imitate.refusals import refusal
from tornadoproxy.imitate.request import ChatRequest
from tornadoproxy.imitate.sentinel import (
    ChatRequirements,
    conversation_headers,
    read_requirements,
    requirements_body,
)
from tornadoproxy.imitate.service.seats import Seat
from tornadoproxy.observability.imitatemetrics import ImitateMetrics
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.relay.client import ClientGone, ClientSide
from tornadoproxy.relay.forwarding import is_event_stream
from tornadoproxy.relay.service import Relay
from tornadoproxy.upstream.diagnosis import HEAD_BYTES, diagnose
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.exchange import Exchange
from tornadoproxy.upstream.fetcher import Fetcher
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.request import UpstreamRequest

log = logging.getLogger(__name__)

UPSTREAM = "chatgpt"
# A per-process part of each account's page session id (the web client keeps one per open page).
_PAGE = uuid.uuid4().hex


@dataclass(slots=True)
class OpenAnswer:
    """A conversation whose answer has begun: its exchange (still streaming), the reader holding
    its state, and the first text."""

    exchange: Exchange
    reader: WebAnswerReader
    first: str


@dataclass(slots=True)
class AttemptRecord:
    """What the access log says about the attempts of one completion."""

    attempts: int = 0
    proof_ms: float = 0.0


class Attempts:
    """Built once per process by the completions service; `reconfigure()` on reload."""

    def __init__(
        self, relay: Relay, fetcher: Fetcher, proofs: ProofWorkers, metrics: Metrics, counts: ImitateMetrics
    ) -> None:
        self._relay = relay
        self._fetcher = fetcher
        self._proofs = proofs
        self._metrics = metrics
        self._counts = counts

    def reconfigure(self, config: ImitateConfig, base: str, profile: ClientProfile) -> None:
        """The paths and limits of `config`, the chatgpt upstream's `base` URL and route profile."""
        self._config = config
        self._limits = ProofOfWorkLimits(config.proof_max_attempts, config.proof_hardest_difficulty)
        self._sentinel_url = base + config.sentinel_path
        self._conversation_url = base + config.conversation_path
        self._hide_url = base + config.hide_path
        self._profile = profile

    async def open(
        self, seat: Seat, chat: ChatRequest, slug: str, client: ClientSide, record: AttemptRecord
    ) -> OpenAnswer:
        """Run one attempt until the first assistant text; UpstreamError when it failed first
        (GatewayBusy when the gateway itself is full or shutting down: not the account's doing)."""
        record.attempts += 1
        self._proofs.start()  # the first spawn, if any, runs beside the sentinel's round trip
        telemetry = self._telemetry(seat)
        needs = await self._requirements(seat, telemetry)
        proof = await self._proof(needs, telemetry, record) if needs.proof_required else None
        body = conversation_body(chat, slug, history_and_training_disabled=self._config.history == "disabled")
        headers = conversation_headers(needs, proof, seat.device_id) + [("Accept", "text/event-stream")]
        request = self.request(seat, "POST", self._conversation_url, json.dumps(body).encode(), headers)
        exchange = await self._fetcher.open(request)
        client.attach(exchange)
        try:
            await exchange.wait_headers()
            client.upstream_status = exchange.status
            if exchange.status != 200 or not is_event_stream(exchange.headers):
                answer = await _bounded_body(exchange)
                raise await self._refused(seat, exchange.status, exchange.headers, answer, exchange.proxy)
            return await self._first_text(seat, exchange)
        except BaseException:
            exchange.abort("client_gone" if client.gone else "done")
            raise

    def hide_url(self, conversation_id: str) -> str:
        return self._hide_url.replace("{id}", conversation_id)

    # -- the steps ---------------------------------------------------------------------------------
    def _telemetry(self, seat: Seat) -> BrowserTelemetry:
        profile = seat.profile or self._profile
        return browser_telemetry(
            profile.user_agent,
            session_id=str(uuid.uuid5(uuid.UUID(seat.device_id), _PAGE)),
            now=datetime.datetime.now(datetime.UTC),
            rng=random.Random(),
        )

    async def _requirements(self, seat: Seat, telemetry: BrowserTelemetry) -> ChatRequirements:
        token = requirements_token(telemetry, str(random.random()))
        request = self.request(
            seat, "POST", self._sentinel_url, requirements_body(token), [("Accept", "*/*")]
        )
        answer = await self._relay.fetch(request)
        if answer.status != 200:
            raise await self._refused(seat, answer.status, answer.headers, answer.body, answer.proxy)
        try:
            return read_requirements(answer.body)
        except UpstreamError as error:
            self._metrics.count_upstream_error(UPSTREAM, error.kind)
            raise

    async def _proof(
        self, needs: ChatRequirements, telemetry: BrowserTelemetry, record: AttemptRecord
    ) -> str:
        assert needs.proof_seed is not None and needs.proof_difficulty is not None
        started = time.monotonic()
        seed, difficulty = needs.proof_seed, needs.proof_difficulty
        try:
            try:
                token, attempts = await prove(
                    self._proofs.executor, seed, difficulty, telemetry, self._limits
                )
            except BrokenProcessPool:
                # A worker died (killed, out of memory): no account is at fault; start new ones.
                log.error("a proof-of-work worker process died; starting new ones")
                self._proofs.replace_broken()
                token, attempts = await prove(
                    self._proofs.executor, seed, difficulty, telemetry, self._limits
                )
        except ProofOfWorkFailed as error:
            self._counts.count_proof_failure(error.reason)
            self._metrics.count_upstream_error(UPSTREAM, error.kind)
            raise
        seconds = time.monotonic() - started
        record.proof_ms += seconds * 1000
        self._counts.observe_proof(seconds, attempts)
        return token

    async def _solve(self, seed: str, difficulty: str, telemetry: BrowserTelemetry) -> tuple[str, int]:
        return await prove(self._proofs.executor, seed, difficulty, telemetry, self._limits)

    async def _first_text(self, seat: Seat, exchange: Exchange) -> OpenAnswer:
        reader = WebAnswerReader()
        try:
            while True:
                chunk = await exchange.read()
                if chunk is None:
                    _check_not_ended_by_us(exchange)
                    reader.end()  # no text yet: raises empty_answer or cut
                    raise WebStreamFailure("the ChatGPT upstream's answer had no text", "empty_answer")
                pieces = reader.feed(chunk) if chunk else []
                if pieces:
                    return OpenAnswer(exchange, reader, "".join(pieces))
        except WebStreamFailure as failure:
            self._metrics.count_upstream_error(UPSTREAM, failure.kind)
            raise

    async def _refused(
        self,
        seat: Seat,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        proxy: EgressProxy,
    ) -> UpstreamError:
        """The gateway error an upstream answer other than the expected one amounts to, counted."""
        problem = diagnose(UPSTREAM, status, headers, body)
        if problem is not None:
            if seat.pooled:
                # The pool counts a challenge or block against the account's proxy on release.
                self._metrics.count_upstream_error(UPSTREAM, problem.kind)
            else:
                self._relay.unusable(UPSTREAM, proxy, problem.kind)
            return problem
        error = refusal(status, body, own_token=not seat.pooled) or _unexpected(status, headers, body)
        self._metrics.count_upstream_error(UPSTREAM, error.kind)
        if status == 401 and not seat.pooled:
            await self._relay.refused_credential(seat.authorization)
        return error

    def request(
        self, seat: Seat, method: str, url: str, body: bytes, headers: list[tuple[str, str]]
    ) -> UpstreamRequest:
        sent = [
            ("Authorization", seat.authorization),
            ("Content-Type", "application/json"),
            ("Oai-Device-Id", seat.device_id),
            ("Oai-Language", "en-US"),
        ]
        given = {name.lower() for name, _ in headers}
        sent = [header for header in sent if header[0].lower() not in given] + headers
        return UpstreamRequest(UPSTREAM, method, url, sent, body, proxy=seat.proxy, profile=seat.profile)


def _check_not_ended_by_us(exchange: Exchange) -> None:
    """An exchange the gateway ended (shutdown, a client that left) is no failure of the account."""
    if exchange.aborted_reason == "shutdown":
        raise GatewayBusy(Code.SHUTTING_DOWN.message, retry_after=1)
    if exchange.aborted_reason == "client_gone":
        raise ClientGone()


async def _bounded_body(exchange: Exchange) -> bytes:
    """The first HEAD_BYTES of an answer that is not the stream (enough to diagnose it)."""
    parts: list[bytes] = []
    size = 0
    while size < HEAD_BYTES and (chunk := await exchange.read()) is not None:
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _unexpected(status: int, headers: list[tuple[str, str]], body: bytes) -> UpstreamError:
    """An answer nothing else explains: its status and the upstream's own `detail`, if short."""
    detail = _detail(body)
    said = f": {detail}" if detail else ""
    if status == 200:
        kind = next((v for n, v in headers if n.lower() == "content-type"), "no content type")
        return UpstreamError(
            f"the ChatGPT upstream answered the conversation with {kind[:60]} instead of an event stream",
            code=Code.UPSTREAM_ERROR,
        )
    hint = " (check imitate.sentinel_path and imitate.conversation_path)" if status in (404, 405) else ""
    return UpstreamError(f"the ChatGPT upstream answered {status}{said}{hint}", code=Code.UPSTREAM_ERROR)


def _detail(body: bytes) -> str:
    try:
        value: Any = json.loads(body)
    except ValueError:
        return ""
    detail = value.get("detail") if isinstance(value, dict) else None
    if isinstance(detail, dict):
        detail = detail.get("message")
    if not isinstance(detail, str):
        return ""
    return detail if len(detail) <= 200 else detail[:200] + "..."
