"""The decisions of /imitate around the pure core: who pays (credentials), what a failed attempt
does to its account, device ids, and the imitate configuration's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tornadoproxy.config.options import ConfigError
from tornadoproxy.config.schema import load_config
from tornadoproxy.errors import Code, GatewayError, UpstreamError
from tornadoproxy.imitate.service.seats import PoolPayer, TokenPayer, outcome_for, own_device_id
from tornadoproxy.imitate.service.writer import is_web_id
from tornadoproxy.web.access import AccessPolicy, key_digest
from tornadoproxy.web.imitate_access import imitate_payer

KEY = "gw-unit-key-0123456789abcdef"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2ln"
OTHER_TOKEN_SAME_USER = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJleHAiOjF9.b3RoZXI"
KEYED = AccessPolicy.build((key_digest(KEY),), (), "X-Gateway-Key")
OPEN = AccessPolicy.build((), (), "X-Gateway-Key")


def payer(policy: AccessPolicy, bearer: str | None, key: str | None = None, tokens: bool = True) -> object:
    authorization = [[bearer] if bearer is not None else [], []]
    return imitate_payer(policy, "127.0.0.1", key, authorization, tokens)


def refusal(policy: AccessPolicy, bearer: str | None, key: str | None = None, tokens: bool = True) -> str:
    with pytest.raises(GatewayError) as raised:
        payer(policy, bearer, key, tokens)
    error = raised.value
    assert (error.status, error.code, error.type) == (401, Code.INVALID_API_KEY, "invalid_request_error")
    assert KEY not in error.message and TOKEN not in error.message
    return error.message


def test_a_client_key_as_bearer_or_in_the_key_header_is_served_by_the_pool() -> None:
    assert payer(KEYED, f"Bearer {KEY}") == PoolPayer()
    assert payer(KEYED, KEY) == PoolPayer()  # a bare token gets the scheme
    assert payer(KEYED, None, key=KEY) == PoolPayer()
    assert payer(KEYED, f"Bearer {KEY}", key=KEY) == PoolPayer()


def test_an_own_token_is_served_by_its_account() -> None:
    assert payer(OPEN, f"Bearer {TOKEN}") == TokenPayer(f"Bearer {TOKEN}")
    assert payer(KEYED, f"Bearer {TOKEN}", key=KEY) == TokenPayer(f"Bearer {TOKEN}")
    assert TOKEN not in repr(TokenPayer(f"Bearer {TOKEN}"))


def test_every_other_credential_is_invalid_api_key() -> None:
    assert "no client keys" in refusal(OPEN, f"Bearer {KEY}")
    assert "no client keys" in refusal(OPEN, None)
    assert "beside an accessToken" in refusal(KEYED, f"Bearer {TOKEN}")
    assert "not valid" in refusal(KEYED, "Bearer sk-wrong")
    assert "X-Gateway-Key header is not valid" in refusal(KEYED, f"Bearer {KEY}", key="wrong")
    assert "neither a client key" in refusal(KEYED, "Bearer sk-wrong", key=KEY)
    assert "needs a client key" in refusal(KEYED, None)
    assert "imitate.access_tokens" in refusal(OPEN, f"Bearer {TOKEN}", tokens=False)
    assert "imitate.access_tokens" in refusal(KEYED, f"Bearer {TOKEN}", key=KEY, tokens=False)
    assert refusal(OPEN, "Basic dXNlcjpwYXNz")  # another scheme: a credential refusal too
    assert refusal(OPEN, "Bearer")
    with pytest.raises(GatewayError) as raised:  # two credentials at once
        imitate_payer(OPEN, "127.0.0.1", None, [[f"Bearer {TOKEN}", f"Bearer {TOKEN}"], []], True)
    assert raised.value.code is Code.INVALID_API_KEY


def test_the_address_is_checked_first() -> None:
    policy = AccessPolicy.build((key_digest(KEY),), ("10.0.0.0/8",), "X-Gateway-Key")
    with pytest.raises(GatewayError) as raised:
        payer(policy, f"Bearer {KEY}")
    assert raised.value.code is Code.CLIENT_NOT_ALLOWED


@pytest.mark.parametrize(
    ("code", "kind", "clears_in"),
    [
        (Code.UPSTREAM_CHALLENGE, "challenge", None),
        (Code.UPSTREAM_VERIFICATION_REQUIRED, "challenge", None),
        (Code.UPSTREAM_BLOCKED, "blocked", None),
        (Code.UPSTREAM_PROOF_OF_WORK_FAILED, "blocked", None),
        (Code.RATE_LIMIT_EXCEEDED, "rate_limited", 42),
        (Code.UPSTREAM_UNAUTHORIZED, "unauthorized", None),
        (Code.INVALID_API_KEY, "unauthorized", None),
        (Code.UPSTREAM_TIMEOUT, "transport", None),
        (Code.UPSTREAM_UNREACHABLE, "transport", None),
        (Code.EGRESS_PROXY_ERROR, "transport", None),
        (Code.UPSTREAM_ERROR, "transport", None),
    ],
)
def test_what_a_failed_attempt_says_about_its_account(code: Code, kind: str, clears_in: int | None) -> None:
    outcome = outcome_for(UpstreamError("x", code=code, retry_after=clears_in))
    assert (outcome.kind, outcome.clears_in, outcome.error_code) == (kind, clears_in, code)


def test_an_own_token_has_a_stable_device_id_per_account() -> None:
    first = own_device_id(f"Bearer {TOKEN}")
    assert first == own_device_id(f"Bearer {OTHER_TOKEN_SAME_USER}")  # same `sub`
    assert first != own_device_id("Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTIifQ.c2ln")
    assert own_device_id("Bearer opaque") == own_device_id("Bearer opaque") != first


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("imitate:\n  models: {'*': gpt-4o}\n", "imitate.models.*"),
        ("imitate:\n  models: {'gpt*4': gpt-4o}\n", "imitate.models.gpt*4"),
        ("imitate:\n  models: {gpt-4o: 'two words'}\n", "imitate.models.gpt-4o"),
        ("imitate:\n  default_model: 'a b'\n", "imitate.default_model"),
        ("imitate:\n  proof_hardest_difficulty: 00001G\n", "imitate.proof_hardest_difficulty"),
        ("imitate:\n  conversation_path: backend-api/conversation\n", "imitate.conversation_path"),
        ("imitate:\n  sentinel_path: /backend-api/../x\n", "imitate.sentinel_path"),
        ("imitate:\n  hide_path: /backend-api/conversation\n", "imitate.hide_path"),
        ("imitate:\n  history: forget\n", "imitate.history"),
        ("imitate:\n  proof_workers: 0\n", "imitate.proof_workers"),
    ],
)
def test_bad_imitate_settings_stop_the_start_naming_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), {})
    assert str(raised.value).startswith(where + ":"), raised.value


def test_the_model_map_keeps_its_order(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("imitate:\n  models:\n    o3: o3\n    gpt-4*: gpt-4o\n    gpt-4-turbo: gpt-4\n")
    assert list(load_config(str(path), {}).imitate.models) == ["o3", "gpt-4*", "gpt-4-turbo"]


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ("6750a6a6-83c4-800c-9a0e-3f5b2c1d0e9f", True),
        ("conv_ABC-123", True),
        (None, False),
        ("", False),
        ("abc\r\nSet-Cookie: x=1", False),
        ("../conversations", False),
        ("a b", False),
        ("x" * 129, False),
    ],
)
def test_only_plain_web_ids_reach_a_header_or_a_hide_path(value: str | None, plain: bool) -> None:
    # The id comes from the upstream's stream; anything else than a token would be put in a response
    # header line or in the PATCH path that hides the conversation.
    assert is_web_id(value) is plain
