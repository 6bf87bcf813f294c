"""The token cache's pure parts: cache keys, sealing, expiry, limits, page diagnosis, login bodies."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat
from pathlib import Path

import pytest

from tornadoproxy.auth.limits import AttemptLimiter, LoginLimits
from tornadoproxy.auth.logins import _Page, iso_time, jwt_expiry, login_page_kind, token_expiry
from tornadoproxy.auth.pages import element_text, hidden_inputs, upstream_text
from tornadoproxy.auth.sealing import (
    SealedRecord,
    derive_key,
    fingerprint,
    normalise_username,
    seal,
    token_id,
    unseal,
    user_key,
)
from tornadoproxy.auth.tokens import cache_deadline
from tornadoproxy.auth.tokenstore import secret_from_config, write_atomically
from tornadoproxy.config.options import ConfigError, build
from tornadoproxy.config.schema import Config as GatewayConfig
from tornadoproxy.errors import BadRequest, Code, LoginError
from tornadoproxy.process.wiring import check_tokens, config_secrets
from tornadoproxy.upstream.diagnosis import page_kind
from tornadoproxy.web.handlers.logins import parse_login_body

SECRET = b"s" * 32


def jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return part({"alg": "RS256"}) + "." + part(claims) + ".c2ln"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- keys ---------------------------------------------------------------------------------------------
def test_usernames_are_normalised_but_keep_every_character() -> None:
    assert normalise_username("  Alice+Tag@Example.COM ") == "alice+tag@example.com"
    assert normalise_username("ＡＢ@x.io") == "ab@x.io"  # NFKC folds full-width letters
    assert user_key(SECRET, "chatgpt", "A+b@x.io") == user_key(SECRET, "chatgpt", " a+B@X.io")
    assert user_key(SECRET, "chatgpt", "a+b@x.io") != user_key(SECRET, "chatgpt", "ab@x.io")


def test_keys_depend_on_family_and_secret_and_hide_the_username() -> None:
    key = user_key(SECRET, "chatgpt", "a@x.io")
    assert key != user_key(SECRET, "platform", "a@x.io")
    assert key != user_key(b"t" * 32, "chatgpt", "a@x.io")
    assert len(key) == 64 and "a@x.io" not in key
    assert token_id(SECRET, "tok") != token_id(b"t" * 32, "tok")


def test_fingerprints_tell_passwords_apart() -> None:
    process_key = os.urandom(32)
    assert fingerprint(process_key, "k", "pw") == fingerprint(process_key, "k", "pw")
    assert fingerprint(process_key, "k", "pw") != fingerprint(process_key, "k", "pw ")
    assert fingerprint(process_key, "k", "pw") != fingerprint(process_key, "k2", "pw")
    # The separator keeps (key, password) pairs from running into each other.
    assert fingerprint(process_key, "ab", "c") != fingerprint(process_key, "a", "bc")


def test_configured_secrets_become_fixed_length_keys() -> None:
    assert secret_from_config("") is None
    assert secret_from_config("x") == secret_from_config("x")
    assert len(secret_from_config("x") or b"") == 32 and secret_from_config("x") != secret_from_config("y")


# -- sealing ------------------------------------------------------------------------------------------
def sealed(password: str = "S3cr&t%41=", body: bytes = b'{"accessToken":"eyJ.x.y"}') -> SealedRecord:
    salt = os.urandom(16)
    return seal(derive_key(password, salt, 10), salt, 10, "k" * 64, "chatgpt", 2_000_000_000, "t" * 64, body)


def test_a_record_opens_only_with_its_password() -> None:
    record = sealed()
    assert unseal(record, derive_key("S3cr&t%41=", record.salt, record.cost)) == b'{"accessToken":"eyJ.x.y"}'
    assert unseal(record, derive_key("S3cr&t%41", record.salt, record.cost)) is None
    assert b"accessToken" not in record.ciphertext


def test_a_record_cannot_be_moved_or_prolonged() -> None:
    record = sealed()
    derived = derive_key("S3cr&t%41=", record.salt, record.cost)
    for change in ({"expires_at": record.expires_at + 86400}, {"key": "j" * 64}, {"family": "platform"}):
        altered = SealedRecord(**{**record.to_json(), **change, "salt": record.salt, "nonce": record.nonce,
                                  "ciphertext": record.ciphertext})  # fmt: skip
        assert unseal(altered, derived) is None


def test_records_round_trip_through_json_and_refuse_garbage() -> None:
    record = sealed()
    assert SealedRecord.from_json(json.loads(json.dumps(record.to_json()))) == record
    bad: object
    for bad in (None, [], {}, {**record.to_json(), "nonce": "!!"}, {**record.to_json(), "cost": 40}):
        with pytest.raises(ValueError):
            SealedRecord.from_json(bad)


def test_each_seal_uses_a_fresh_nonce() -> None:
    salt = os.urandom(16)
    derived = derive_key("pw", salt, 10)
    one = seal(derived, salt, 10, "k", "chatgpt", 1, "t", b"same")
    two = seal(derived, salt, 10, "k", "chatgpt", 1, "t", b"same")
    assert one.nonce != two.nonce and one.ciphertext != two.ciphertext


# -- expiry -------------------------------------------------------------------------------------------
def test_token_expiry_is_the_earlier_of_jwt_exp_and_session_expires() -> None:
    assert jwt_expiry(jwt({"exp": 2_000_000_000})) == 2_000_000_000
    assert iso_time("2033-05-18T03:33:20.000Z") == 2_000_000_000
    session = {"accessToken": jwt({"exp": 2_000_000_000}), "expires": "2033-05-18T03:33:30Z"}
    assert token_expiry(session) == 2_000_000_000
    session = {"accessToken": jwt({"exp": 2_000_000_100}), "expires": "2033-05-18T03:33:20Z"}
    assert token_expiry(session) == 2_000_000_000
    assert token_expiry({"accessToken": jwt({}), "expires": "2033-05-18T03:33:20Z"}) == 2_000_000_000
    assert token_expiry({"accessToken": jwt({"exp": 2_000_000_000})}) == 2_000_000_000


@pytest.mark.parametrize(
    "token", [None, 5, "", "a.b", "a.b.c.d", "x.!!!.y", "x." + base64.b64encode(b"[1]").decode() + ".y"]
)
def test_unreadable_tokens_have_no_expiry(token: object) -> None:
    assert jwt_expiry(token) is None


@pytest.mark.parametrize("claims", [{"exp": "soon"}, {"exp": True}, {"exp": -5}, {"nbf": 1}])
def test_bad_exp_claims_are_ignored(claims: dict[str, object]) -> None:
    assert jwt_expiry(jwt(claims)) is None


def test_naive_or_malformed_times_are_ignored() -> None:
    assert iso_time("2033-05-18T03:33:20") is None  # no zone: ambiguous
    assert iso_time("tomorrow") is None and iso_time(None) is None


def test_cache_deadlines() -> None:
    now = 1_000_000.0
    assert cache_deadline("chatgpt", now + 10 * 86400, now, 3600, 86400) == int(now + 10 * 86400 - 3600)
    assert cache_deadline("chatgpt", now + 3000, now, 3600, 86400) is None  # inside the margin
    assert cache_deadline("chatgpt", now + 3600, now, 3600, 86400) is None
    assert cache_deadline("chatgpt", None, now, 3600, 86400) is None  # unknown: not cached
    assert cache_deadline("platform", None, now, 3600, 86400) == int(now + 86400)


# -- limits -------------------------------------------------------------------------------------------
def test_a_limiter_opens_again_as_failures_leave_the_window() -> None:
    clock = FakeClock()
    limiter = AttemptLimiter(3, 60, clock)
    for step in range(3):
        assert limiter.retry_after("u") is None
        limiter.record("u")
        clock.now += 10 * (step < 2)
    assert limiter.retry_after("u") == 40  # the first failure (t=1000) leaves at t=1060; now t=1020
    clock.now = 1059.5
    assert limiter.retry_after("u") == 1
    clock.now = 1060.0
    assert limiter.retry_after("u") is None
    assert limiter.retry_after("other") is None


def test_attempts_in_flight_count_until_they_end() -> None:
    clock = FakeClock()
    limiter = AttemptLimiter(2, 60, clock)
    limiter.begin("u")
    limiter.begin("u")
    assert limiter.retry_after("u") == 1
    limiter.end("u", failed=False)
    assert limiter.retry_after("u") is None
    limiter.end("u", failed=True)
    limiter.record("u")
    assert limiter.retry_after("u") == 60


def test_zero_means_no_limit_and_clear_forgets() -> None:
    clock = FakeClock()
    unlimited = AttemptLimiter(0, 60, clock)
    for _ in range(100):
        unlimited.record("u")
    assert unlimited.retry_after("u") is None
    limiter = AttemptLimiter(1, 60, clock)
    limiter.record("u")
    assert limiter.retry_after("u") == 60
    limiter.clear("u")
    assert limiter.retry_after("u") is None


def test_login_limits_combine_username_and_address() -> None:
    clock = FakeClock()
    limits = LoginLimits((2, 900), (3, 60), clock)
    limits.record_failure("alice", "10.0.0.1")
    limits.begin("alice", "10.0.0.1")
    limits.end("alice", "10.0.0.1", "failed")
    assert limits.retry_after("alice", "10.0.0.2") == 900
    assert limits.retry_after("bob", "10.0.0.1") is None
    limits.record_failure("bob", "10.0.0.1")
    assert limits.retry_after("carol", "10.0.0.1") == 60
    limits.begin("alice", "10.0.0.3")
    limits.end("alice", "10.0.0.3", "ok")  # a success clears the username, not the address
    assert limits.retry_after("alice", "10.0.0.3") is None
    assert limits.retry_after("dave", "10.0.0.1") == 60


# -- flows: what is read from pages and what is relayed -----------------------------------------------
HTML = [("Content-Type", "text/html; charset=UTF-8")]


def test_page_diagnosis() -> None:
    assert page_kind([("cf-mitigated", "challenge")], b"") == "challenge"
    assert page_kind(HTML, b"<html><title>Just a moment...</title></html>") == "challenge"
    assert page_kind(HTML, b"<h1>Sorry, you have been blocked</h1>") == "blocked"
    assert page_kind(HTML, b"<h1>Forbidden</h1>") is None
    assert login_page_kind(_Page("csrf", "u", 403, HTML, b"<h1>Forbidden</h1>")) == "blocked"
    assert login_page_kind(_Page("password", "u", 403, HTML, b"<h1>Forbidden</h1>")) is None
    alert = b'<div id="prompt-alert">Wrong email or password</div>'
    assert login_page_kind(_Page("password", "u", 400, HTML, alert)) is None
    json_denied = [("Content-Type", "application/json")]
    assert login_page_kind(_Page("csrf", "u", 403, json_denied, b'{"detail":"access denied"}')) is None


def test_hidden_inputs_and_element_text() -> None:
    page = (
        b'<form><input value="s&amp;1" type="HIDDEN" name="state">'
        b'<input type="hidden" name="state" value="x"><input name="username"></form>'
        b'<div class="c" id="prompt-alert"><input type="hidden" name="n" value="">'
        b"<p>Wrong <b>email</b></p> or password</div><p>after</p>"
    )
    assert hidden_inputs(page) == {"state": "s&1", "n": ""}
    assert element_text(page, "prompt-alert") == "Wrong email or password"
    assert element_text(page, "missing") == ""


def test_upstream_text_masks_what_the_user_sent() -> None:
    inputs = ("Bob+x@Example.com", "S3cr&t%41=")
    text = upstream_text("<p>User bob+x@example.com: password S3cr&amp;t%41= refused</p>", inputs)
    assert text == "User [redacted]: password [redacted] refused"
    assert upstream_text("Wrong email or password", ("p",)) == "Wrong email or password"
    assert upstream_text("code p is wrong", ("p",)) == "code [redacted] is wrong"
    # Cut after masking: no prefix of a secret survives at the 200-character edge.
    assert "S3cr" not in upstream_text("x" * 195 + "S3cr&t%41=", inputs)


def test_upstream_text_masks_every_encoding_the_gateway_sent() -> None:
    username, password = "bob+x@example.com", 'p&=q% "é\\'
    echoes = [
        "username=bob%2Bx%40example.com&password=p%26%3Dq%25+%22%C3%A9%5C",  # form, as sent
        "username=bob%2bx%40example.com&password=p%26%3dq%25%20%22%c3%a9%5c",  # lower case, %20
        '{"username": "bob+x@example.com", "password": "p&=q% \\"\\u00e9\\\\"}',  # JSON, ASCII
        '{"password": "p&=q% \\"é\\\\"}',  # JSON, UTF-8
    ]
    for echo in echoes:
        text = upstream_text(f"<p>Wrong email or password ({echo})</p>", (username, password))
        assert "bob" not in text and "p&=q" not in text and "p%26" not in text.lower(), text
        assert "[redacted]" in text


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"username": " a+b@x.io ", "password": "p&%="}', ("a+b@x.io", "p&%=")),
        (b'{"username": "a@x.io", "password": " spaced "}', ("a@x.io", " spaced ")),
    ],
)
def test_login_bodies(body: bytes, expected: tuple[str, str]) -> None:
    assert parse_login_body(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'"x"', b'{"username": "a"}', b'{"username": 1, "password": "p"}', b'{"username": "a",'
     b' "password": ""}', ('{"username": "a", "password": "' + "p" * 1025 + '"}').encode(),
     b'{"username": "a\\n", "password": "p"}'],
)  # fmt: skip
def test_bad_login_bodies(body: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_login_body(body)
    assert "p" * 20 not in caught.value.message


def test_login_errors_copy_with_their_fields() -> None:
    error = LoginError("m", outcome="limited", code=Code.LOGIN_RATE_LIMITED, retry_after=7)
    again = copy.copy(error)
    assert (again.message, again.outcome, again.status, again.code, again.retry_after) == (
        "m",
        "limited",
        429,
        "login_rate_limited",
        7,
    )
    assert again.headers() == [("Retry-After", "7")]


def test_files_are_written_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_atomically(str(path), b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ({"store": "file"}, "tokens.file: must name the persistence file"),
        (
            {"store": "file", "file": "/nonexistent-dir/tokens.json"},
            "tokens.file: its directory does not exist",
        ),
        ({"store": "redis"}, "tokens.redis_url: must be set"),
        ({"store": "redis", "redis_url": "http://x"}, "tokens.redis_url: must be a redis://"),
        ({"store": "disk"}, "tokens.store: must be one of memory, file, redis"),
        ({"kdf_cost": 9}, "tokens.kdf_cost: must be between 10 and 20"),
    ],
)
def test_token_store_settings_are_checked_at_start(tokens: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_tokens(build(GatewayConfig, {"tokens": tokens}, ""))
    assert str(caught.value).startswith(problem)


def test_token_secrets_are_masked_in_logs(tmp_path: Path) -> None:
    config = build(
        GatewayConfig,
        {"tokens": {"secret": "s3cret-value", "redis_url": "redis://:p%40ss@127.0.0.1:6379/0"}},
        "",
    )
    assert {"s3cret-value", "p@ss"} <= config_secrets(config)
    check_tokens(build(GatewayConfig, {"tokens": {"store": "file", "file": str(tmp_path / "t.json")}}, ""))
