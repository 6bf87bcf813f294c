"""Relayed /chatgpt/... requests served by pool accounts (`pool.serve_chatgpt`, README "Relayed routes
served by the pool").

A conversation (`POST /conversation`) takes a slot of an account: it waits in the pool's queue, goes
out with the account's token, sticky egress, client profile and device id, and gives the slot back
when its answer ends, with the outcome the pool acts on (answer_outcome). Anything else borrows an
account without a slot. Where a request must go is decided, in this order, by the account the client
names (`X-Pool-Account`), the account that made the conversation it names (learned from the stream's
`conversation_id`) and the account a sentinel token it spends was issued to; else the pool chooses
(any free account for a conversation, the first usable one for anything else).

Upstream answers pass through as on every relayed route, and are never retried on another account:
the body is the client's, bound to one account by its `conversation_id` and sentinel headers, and
its client reads the upstream's own errors (a 429's `clears_in`). They only tell the pool how the
account fared.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tornadoproxy.errors import (
    AccountsUnavailable,
    BadRequest,
    Code,
    GatewayBusy,
    GatewayError,
    UpstreamError,
)
from tornadoproxy.formats.bodies import is_json_string, parse_json
from tornadoproxy.pool.affinity import AffinityMap
from tornadoproxy.pool.borrow import Borrowed
from tornadoproxy.pool.lease import Lease
from tornadoproxy.pool.outcome import Outcome
from tornadoproxy.pool.pool import AccountPool
from tornadoproxy.relay.client import ClientGone, ClientSide
from tornadoproxy.relay.service import Relay
from tornadoproxy.upstream.request import UpstreamRequest

T = TypeVar("T")

ACCOUNT_HEADER = "X-Pool-Account"  # names the account a request wants; the answer says which served
SENTINEL_HEADER = "openai-sentinel-chat-requirements-token"
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# /backend-api/conversation/<id>, its sub-resources, and gen_title/<id>.
_CONVERSATION_PATH = re.compile(rf"/backend-api/conversation/(?:gen_title/)?({_UUID})(?:[/?]|$)")
# A stream names its conversation in its first events (both framings). An id inside a JSON string
# would have its quotes escaped, so user text cannot fake one.
_STREAM_CONVERSATION = re.compile(rb'"conversation_id"\s*:\s*"(' + _UUID.encode() + rb')"')
_SENTINEL_PATH = "/backend-api/sentinel/chat-requirements"
# Where a conversation is posted (the catch-all route reaches them too): the web client's newer path.
_ANSWER_PATHS = ("/backend-api/conversation", "/backend-api/f/conversation")
_UNUSUAL = "unusual activity"
_SMALL_BODY = 64 * 1024  # bodies looked into for a conversation_id (a conversation's body is small)


class PooledClient(ClientSide, Protocol):
    """The client side of a pooled relay: a relay's client that also says which account served it and
    can wait for the pool without outliving a disconnect."""

    pool_account: str | None

    async def unless_gone(self, waiting: Awaitable[T]) -> T:
        """`waiting`, cancelled the moment the client leaves (then ClientGone)."""
        ...


@dataclass(frozen=True, slots=True)
class PooledCall:
    """One relayed request to serve from the pool: `headers` are the client's forwarded headers (its
    own Authorization is never sent: the account's replaces it), `account` the name it asked for."""

    method: str
    url: str
    path: str  # the upstream path, /backend-api/...
    headers: Sequence[tuple[str, str]]
    body: bytes | None
    answer: bool  # a conversation (also a POST to one of _ANSWER_PATHS): takes a slot
    account: str | None = None


@dataclass(frozen=True, slots=True)
class _Binding:
    account: str | None
    why: str  # "named", "conversation", "sentinel", or "" (the pool chooses)


_OWNERS = {
    "named": "the account named by the request",
    "conversation": "the account that made this conversation",
    "sentinel": "the account its sentinel token was issued to",
}


class PooledRelay:
    def __init__(self, pool: AccountPool, relay: Relay, draining: Callable[[], bool]) -> None:
        """`draining()` is true once the gateway drains (no new upstream request then)."""
        self._pool = pool
        self._relay = relay
        self._draining = draining

    async def relay(self, client: PooledClient, call: PooledCall) -> None:
        """Serve `call` as a pool account and relay the answer to `client` (errors as Relay.relay)."""
        fields = body_fields(call.body)
        answer = call.answer or (call.method == "POST" and call.path in _ANSWER_PATHS)
        binding = await self._binding(call, fields, answer)
        try:
            if answer:
                model = fields.get("model")
                await self._answer(client, call, binding, model if is_json_string(model) else None)
            else:
                await self._serve(client, call, binding, fields)
        except ClientGone:
            client.start(499, "Client Closed Request", ())  # nginx's code: the client left while waiting
            client.finish()

    # -- which account ----------------------------------------------------------------------------
    async def _binding(self, call: PooledCall, fields: dict[str, Any], answer: bool) -> _Binding:
        accounts, affinity = self._pool.accounts, self._pool.affinity
        if call.account is not None:
            if call.account not in accounts:
                raise BadRequest(f"the {ACCOUNT_HEADER} header names no account of the pool")
            return _Binding(call.account, "named")
        conversation = conversation_of(call.path, fields)
        if conversation is not None:
            found = await affinity.conversation_account(conversation)
            if found in accounts:
                return _Binding(found, "conversation")
        token = _header(call.headers, SENTINEL_HEADER)
        if answer and token:
            found = await affinity.sentinel_account(token)
            if found in accounts:
                return _Binding(found, "sentinel")
        return _Binding(None, "")

    def _check_bound(self, binding: _Binding, model: str | None) -> None:
        """Refuse at once a request bound to an account that cannot serve it (rather than queue it)."""
        if binding.account is None:
            return
        account = self._pool.accounts[binding.account]
        owner = _OWNERS[binding.why]
        if account.state() == "invalid":
            detail = account.detail(time.time())
            raise AccountsUnavailable(f"{owner} ({account.name}) cannot serve: {detail}", reason="invalid")
        if not account.serves(model):
            raise AccountsUnavailable(
                f"{owner} ({account.name}) may not serve the model {model!r} (accounts[].models)",
                reason="model",
            )

    # -- a conversation: a slot -------------------------------------------------------------------
    async def _answer(
        self, client: PooledClient, call: PooledCall, binding: _Binding, model: str | None
    ) -> None:
        self._check_bound(binding, model)
        exclude = [name for name in self._pool.accounts if name != binding.account] if binding.account else []
        lease = await client.unless_gone(self._pool.acquire(model, exclude))
        watch = AnswerWatch(self._pool.affinity, lease.account)
        error: GatewayError | None = None
        try:
            if self._draining():
                raise GatewayBusy.of(Code.SHUTTING_DOWN)
            client.pool_account = lease.account
            await self._relay.relay(_request(call, lease), client, watch=watch)
        except GatewayError as raised:
            error = raised
            raise
        finally:
            lease.release(
                answer_outcome(
                    client.upstream_status,
                    client.stream_end,
                    client.error_code,
                    error,
                    watch,
                    binding.why == "sentinel",
                )
            )

    # -- anything else: a borrowed account --------------------------------------------------------
    async def _serve(
        self, client: PooledClient, call: PooledCall, binding: _Binding, fields: dict[str, Any]
    ) -> None:
        self._check_bound(binding, None)
        borrowed = await client.unless_gone(self._pool.borrow(binding.account))
        client.pool_account = borrowed.account
        watch = _ReadWatch(self._pool.affinity, borrowed.account, call.path == _SENTINEL_PATH)
        error: GatewayError | None = None
        try:
            await self._relay.relay(_request(call, borrowed), client, watch=watch)
        except GatewayError as raised:
            error = raised
            raise
        finally:
            _report(borrowed, client.upstream_status, error)
        conversation = conversation_of(call.path, fields)
        status = client.upstream_status or 0
        if conversation is not None and 200 <= status < 300:
            # The account has it (found by the map, or by chance): keep it bound, for longer.
            self._pool.affinity.learn_conversation(conversation, borrowed.account)


def _request(call: PooledCall, account: Lease | Borrowed) -> UpstreamRequest:
    """The client's request as the account sends it: its token and device id, egress and profile."""
    own = ("authorization", "oai-device-id")
    headers = [(name, value) for name, value in call.headers if name.lower() not in own]
    headers += [("Authorization", account.authorization), ("Oai-Device-Id", account.device_id)]
    return UpstreamRequest(
        "chatgpt", call.method, call.url, headers, call.body, proxy=account.proxy, profile=account.profile
    )


class AnswerWatch:
    """Learns from a conversation's answer: its conversation id, and a refusal's reason."""

    __slots__ = ("_affinity", "_account", "learned", "clears_in", "unusual")

    def __init__(self, affinity: AffinityMap, account: str) -> None:
        self._affinity = affinity
        self._account = account
        self.learned = False
        self.clears_in: float | None = None
        self.unusual = False  # a 403 "Unusual activity" (the sentinel's refusal)

    def events(self, events: bytes) -> None:
        if self.learned:
            return
        found = _STREAM_CONVERSATION.search(events)
        if found is not None:
            self.learned = True
            # Before the client sees the id: it may read the conversation the moment it does.
            self._affinity.learn_conversation(found.group(1).decode().lower(), self._account)

    def body(self, status: int, body: bytes) -> None:
        if status not in (403, 429):
            return
        detail = _detail(body)
        if status == 429 and isinstance(detail, dict):
            clears_in = detail.get("clears_in")
            if isinstance(clears_in, (int, float)) and not isinstance(clears_in, bool) and clears_in > 0:
                self.clears_in = float(clears_in)
        elif status == 403:
            text = detail if isinstance(detail, str) else ""
            self.unusual = _UNUSUAL in text.lower()


class _ReadWatch:
    """Learns from a borrowed account's answer: a chat-requirements token's account."""

    __slots__ = ("_affinity", "_account", "_sentinel")

    def __init__(self, affinity: AffinityMap, account: str, sentinel: bool) -> None:
        self._affinity = affinity
        self._account = account
        self._sentinel = sentinel

    def events(self, events: bytes) -> None:
        return None

    def body(self, status: int, body: bytes) -> None:
        if not self._sentinel or status != 200:
            return
        try:
            token = json.loads(body).get("token")
        except (ValueError, AttributeError):
            return
        if isinstance(token, str) and token:
            self._affinity.learn_sentinel(token, self._account)


def answer_outcome(
    status: int | None,
    stream_end: str | None,
    error_code: str | None,
    error: GatewayError | None,
    watch: AnswerWatch,
    sentinel_bound: bool,
) -> Outcome:
    """How a conversation's answer ended, for the pool: what it does to the account (pool/outcome.py).

    A challenge or block page (diagnosed), a 429 (its `clears_in`), a 401 (one fresh login), a failed
    transfer or an upstream 5xx count against the account; a client that left, or the gateway's own
    refusal, counts as aborted (no effect). A sentinel refusal ("Unusual activity") counts as blocked
    only when the request spent a token issued through this same account: otherwise the client's own
    sentinel headers were missing or another account's, which says nothing about this one."""
    if error is not None:
        return _error_outcome(error)
    if status is None or stream_end in ("client_gone", "shutdown"):
        return Outcome.aborted()
    if stream_end in ("upstream_error", "idle_timeout"):
        return Outcome.transport(error_code or Code.UPSTREAM_UNREACHABLE)
    if status == 401:
        return Outcome.unauthorized("upstream_unauthorized")
    if status == 429:
        return Outcome.rate_limited(watch.clears_in)
    if status == 403 and watch.unusual and sentinel_bound:
        return Outcome.blocked()
    if status >= 500:
        return Outcome.transport("upstream_error")
    return Outcome.ok()


def _error_outcome(error: GatewayError) -> Outcome:
    if error.code is Code.UPSTREAM_CHALLENGE:
        return Outcome.challenge()
    if error.code is Code.UPSTREAM_BLOCKED:
        return Outcome.blocked()
    if isinstance(error, UpstreamError):
        return Outcome.transport(error.code)
    return Outcome.aborted()  # the gateway's own refusal (busy, draining): nothing about the account


def _report(borrowed: Borrowed, status: int | None, error: GatewayError | None) -> None:
    if error is not None and error.code in (Code.UPSTREAM_CHALLENGE, Code.UPSTREAM_BLOCKED):
        borrowed.report(_error_outcome(error))
    elif status == 401:
        borrowed.report(Outcome.unauthorized("upstream_unauthorized"))


def body_fields(body: bytes | None) -> dict[str, Any]:
    """The top-level fields of a small JSON object body ({} for anything else: the upstream judges it)."""
    if not body or len(body) > _SMALL_BODY or not body.lstrip().startswith(b"{"):
        return {}
    try:
        value = parse_json(body)
    except BadRequest:
        return {}
    return value if isinstance(value, dict) else {}


def conversation_of(path: str, fields: dict[str, Any]) -> str | None:
    """The conversation a request names: in its path, else as the body's `conversation_id`."""
    found = _CONVERSATION_PATH.search(path)
    if found is not None:
        return found.group(1).lower()
    named = fields.get("conversation_id")
    if is_json_string(named) and re.fullmatch(_UUID, named):
        return named.lower()
    return None


def _detail(body: bytes) -> object:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload.get("detail") if isinstance(payload, dict) else None


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
