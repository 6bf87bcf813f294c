"""POST /chatgpt/login and /platform/login against the simulated login hosts: both flows, every
failure the spec names, the cookie jars, single-flight, limits and the token cache in memory."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import pytest

from tests.conftest import base_config
from tests.harness import (
    Gateway,
    Response,
    Simulator,
    deep_merge,
    free_port,
    metric_value,
    request,
    stop_process,
    wait_for,
)
from tests.secrets_used import LOGIN_PASSWORD, OTHER_PASSWORD, PROXY_PASSWORD, WRONG_PASSWORD

FAST = {"tokens": {"kdf_cost": 10}, "logins": {"max_failures_per_address": 1000}}
SEEN_TOKENS: list[str] = []  # every token a gateway handed out here; none may appear in its log


def new_email(tag: str = "user") -> str:
    """A fresh account address with a '+' in it (the form encoding must keep it)."""
    return f"{tag}+{uuid.uuid4().hex[:10]}@example.com"


def login(gw: Gateway, family: str, username: str, password: str) -> Response:
    answer = request("POST", f"{gw.url}/{family}/login", body={"username": username, "password": password})
    if answer.status == 200:
        data = answer.json()
        SEEN_TOKENS.append(
            data["accessToken"] if family == "chatgpt" else data["user"]["session"]["sensitive_id"]
        )
    else:
        assert_no_credentials(answer, username, password)
    return answer


def assert_no_credentials(answer: Response, *secrets: str) -> None:
    text = answer.body.decode()
    for secret in secrets:
        assert secret not in text and secret.lower() not in text.lower(), "an error echoed a credential"


def error_of(answer: Response) -> dict[str, Any]:
    data = answer.json()
    assert data["errorMessage"] == data["error"]["message"]
    return dict(data["error"])


@pytest.fixture(scope="module")
def login_gw(simulator: Simulator, log_dir: Path) -> Iterator[Gateway]:
    gw = Gateway(deep_merge(base_config(simulator), FAST), log_dir)
    gw.wait_ready()
    simulator.clear_journal()  # the start-up probes are not part of any test
    yield gw
    gw.stop()
    log = gw.log_path.read_text()
    assert not [t[:12] for t in SEEN_TOKENS if t in log], "a token reached the gateway log"


@pytest.fixture
def account(sim: Simulator) -> tuple[str, str]:
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    return email, LOGIN_PASSWORD


def form_of(entry: dict[str, Any]) -> str:
    return base64.b64decode(entry["body_b64"]).decode()


def cookies_of(entry: dict[str, Any]) -> str:
    return "; ".join(v for k, v in entry["headers"] if k.lower() == "cookie")


# -- the two flows ------------------------------------------------------------------------------------
def test_chatgpt_login_answers_the_session_json(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str]
) -> None:
    email, password = account
    answer = login(login_gw, "chatgpt", email, password)
    assert answer.status == 200, answer.body
    session = answer.json()
    header, payload, signature = session["accessToken"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["exp"] > claims["iat"] and signature
    assert session["user"]["email"] == email and session["expires"]
    assert answer.header("Cache-Control") == "no-store"
    assert sim.account_counters(email) == {"logins": 1, "password_attempts": 1}
    steps = [(e["family"], e["method"], e["path"]) for e in sim.journal() if e["family"] != "platform"]
    assert steps == [
        ("chatgpt", "GET", "/api/auth/csrf"),
        ("chatgpt", "POST", "/api/auth/signin/auth0"),
        ("auth", "GET", "/authorize"),
        ("auth", "GET", "/u/login/identifier"),
        ("auth", "POST", "/u/login/identifier"),
        ("auth", "GET", "/u/login/password"),
        ("auth", "POST", "/u/login/password"),
        ("auth", "GET", "/authorize/resume"),
        ("chatgpt", "GET", "/api/auth/callback/auth0"),
        ("chatgpt", "GET", "/api/auth/session"),
    ]
    # '+' in the e-mail and '&', '%', '=', '+', ' ' in the password were encoded, not sent raw.
    password_form = form_of(sim.journal("auth", "/u/login/password")[-1])
    assert "username=" + email.replace("+", "%2B").replace("@", "%40") in password_form
    assert unquote(password_form.split("password=")[1].split("&")[0].replace("+", " ")) == password


def test_platform_login_answers_the_onboarding_json(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str]
) -> None:
    email, password = account
    answer = login(login_gw, "platform", email, password)
    assert answer.status == 200, answer.body
    data = answer.json()
    assert data["user"]["session"]["sensitive_id"].startswith("sess-")
    assert data["user"]["email"] == email and data["invites"] == []
    assert sim.account_counters(email) == {"logins": 1, "password_attempts": 1}
    steps = [(e["family"], e["method"], e["path"]) for e in sim.journal()]
    assert steps == [
        ("auth", "GET", "/v2/logout"),
        ("auth", "GET", "/authorize"),
        ("auth", "GET", "/u/login/identifier"),
        ("auth", "POST", "/u/login/identifier"),
        ("auth", "GET", "/u/login/password"),
        ("auth", "POST", "/u/login/password"),
        ("auth", "GET", "/authorize/resume"),
        ("platform_web", "GET", "/auth/callback"),
        ("auth", "POST", "/oauth/token"),
        ("platform", "POST", "/dashboard/onboarding/login"),
    ]
    # The session key works on the Platform relay.
    relayed = request(
        "GET",
        login_gw.url + "/platform/dashboard/billing/credit_grants",
        headers={"Authorization": data["user"]["session"]["sensitive_id"]},
    )
    assert relayed.status == 200


def test_each_login_has_its_own_cookie_jar_and_relays_have_none(
    make_gateway: Any, sim: Simulator, account: tuple[str, str]
) -> None:
    # One curl handle for everything: a login's cookies must not ride along on the next request.
    gw = make_gateway(deep_merge(FAST, {"fetch": {"max_clients": 1}}))
    email, password = account
    other = new_email()
    sim.add_account(other, password)
    assert login(gw, "chatgpt", email, password).status == 200
    assert "__Secure-next-auth.session-token=" in cookies_of(sim.journal("chatgpt", "/api/auth/session")[-1])
    assert "auth0=" in cookies_of(sim.journal("auth", "/u/login/password")[-1])
    for _ in range(2):  # the platform simulator sets a cookie on every answer
        assert (
            request("GET", gw.url + "/platform/v1/models", headers={"Authorization": "sk-test-x"}).status
            == 200
        )
    assert login(gw, "platform", other, password).status == 200
    assert login(gw, "chatgpt", other, password).status == 200
    for entry in sim.journal("platform", "/v1/models"):
        assert cookies_of(entry) == "", "a relayed request carried cookies"
    for entry in sim.journal("chatgpt", "/api/auth/csrf") + sim.journal("auth", "/v2/logout"):
        assert cookies_of(entry) == "", "a login started with someone else's cookies"


def test_login_hosts_with_separate_cookie_jars(log_dir: Path, tmp_path: Path) -> None:
    # chatgpt on 127.0.0.1, auth on localhost, platform_web on ::1: three cookie hosts, as in reality.
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    own = Simulator(tmp_path, hosts={"auth": "localhost", "platform_web": "::1"})
    try:
        email = new_email()
        own.add_account(email, LOGIN_PASSWORD)
        gw = Gateway(deep_merge(base_config(own), FAST), log_dir)
        try:
            for family in ("chatgpt", "platform"):
                assert login(gw, family, email, LOGIN_PASSWORD).status == 200
        finally:
            gw.stop()
        chatgpt_cookies = cookies_of(own.journal("chatgpt", "/api/auth/session")[-1])
        assert "auth0=" not in chatgpt_cookies and "next-auth.session-token" in chatgpt_cookies
        assert "next-auth" not in cookies_of(own.journal("auth", "/authorize/resume")[-1])
    finally:
        own.stop()


# -- failures -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["chatgpt", "platform"])
def test_wrong_password_is_login_failed_with_the_upstream_message(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str], family: str
) -> None:
    email, _ = account
    answer = login(login_gw, family, email, WRONG_PASSWORD)
    assert answer.status == 401
    error = error_of(answer)
    assert error["code"] == "login_failed" and error["type"] == "login_error"
    assert "the 'password' step" in error["message"] and "Wrong email or password" in error["message"]
    assert sim.account_counters(email)["logins"] == 0


@pytest.mark.parametrize("family", ["chatgpt", "platform"])
def test_a_login_form_echoed_by_the_upstream_is_masked_in_every_encoding(
    login_gw: Gateway, sim: Simulator, family: str
) -> None:
    email = new_email("echo")
    sim.add_account(email, LOGIN_PASSWORD, echo_form=True)
    answer = login(login_gw, family, email, WRONG_PASSWORD)
    assert answer.status == 401
    message = error_of(answer)["message"]
    assert "(received " in message and "[redacted]" in message  # the echo reached the gateway
    log = login_gw.log_text().lower()
    for value in (email, WRONG_PASSWORD):
        for form in (value, quote_plus(value), quote(value, safe=""), json.dumps(value)[1:-1]):
            assert form.lower() not in message.lower() and form.lower() not in log, form


def test_refused_email_is_login_failed_at_the_identifier_step(login_gw: Gateway, sim: Simulator) -> None:
    answer = login(login_gw, "chatgpt", "not-an-address", WRONG_PASSWORD)
    assert answer.status == 401
    assert "the 'identifier' step" in error_of(answer)["message"]
    assert "Email is not valid" in error_of(answer)["message"]


@pytest.mark.parametrize("family", ["chatgpt", "platform"])
@pytest.mark.parametrize(
    ("flag", "status", "code", "text"),
    [
        ("mfa", 400, "login_mfa_unsupported", "two-factor"),
        ("deactivated", 403, "login_account_blocked", "deactivated"),
        ("rate_limited", 429, "login_rate_limited", "retry after"),
    ],
)
def test_account_states(
    login_gw: Gateway, sim: Simulator, family: str, flag: str, status: int, code: str, text: str
) -> None:
    email = new_email(flag)
    sim.add_account(email, LOGIN_PASSWORD, **{flag: True})
    answer = login(login_gw, family, email, LOGIN_PASSWORD)
    assert answer.status == status, answer.body
    error = error_of(answer)
    assert error["code"] == code and text in error["message"]
    if flag == "rate_limited":
        assert answer.header("Retry-After") == ("60" if family == "chatgpt" else "20")
    assert sim.account_counters(email)["logins"] == 0


CHATGPT_STEPS = ["csrf", "signin", "authorize", "identifier_page", "identifier", "password_page", "password"]
CHATGPT_STEPS += ["resume", "callback", "session"]
PLATFORM_STEPS = ["logout", "authorize", "identifier_page", "identifier", "password_page", "password"]
PLATFORM_STEPS += ["resume", "callback", "token", "onboarding"]


@pytest.mark.parametrize(
    ("family", "step"), [("chatgpt", s) for s in CHATGPT_STEPS] + [("platform", s) for s in PLATFORM_STEPS]
)
def test_a_challenge_page_at_any_step_is_upstream_challenge(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str], family: str, step: str
) -> None:
    sim.challenge(step)
    answer = login(login_gw, family, *account)
    assert answer.status == 403, answer.body
    error = error_of(answer)
    assert error["code"] == "upstream_challenge" and f"the '{step}' step" in error["message"]
    assert "egress.proxy" in error["message"] and "403" in error["message"]


@pytest.mark.parametrize(("family", "step"), [("chatgpt", "csrf"), ("platform", "authorize")])
def test_a_block_page_is_upstream_blocked(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str], family: str, step: str
) -> None:
    sim.challenge(step, kind="block")
    answer = login(login_gw, family, *account)
    assert answer.status == 403
    error = error_of(answer)
    assert error["code"] == "upstream_blocked" and f"the '{step}' step" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"username": "a@b.c"}',
        b'{"username": "", "password": "x"}',
        b'{"username": "a@b.c", "password": 5}',
        b'{"username": "a@b.c", "password": "a\\u0000b"}',
        b'{"username": 12345, "password": "x"}',
        b"[" * 100_000,  # deeper than Python's recursion limit
        b'{"username": "a@b.c", "password": "\\ud800x"}',  # a lone surrogate
        b'{"username": "a\\udfff@b.c", "password": "x"}',
        b'{"username": "a@b.c", "password": "x", "password": "y"}',
    ],
)
@pytest.mark.parametrize("family", ["chatgpt", "platform"])
def test_bad_login_bodies_are_400_and_reach_nobody(
    login_gw: Gateway, sim: Simulator, body: bytes, family: str
) -> None:
    answer = request(
        "POST", f"{login_gw.url}/{family}/login", body=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status == 400 and error_of(answer)["code"] == "bad_request"
    assert "a@b.c" not in answer.body.decode()
    assert sim.journal() == []
    assert "Traceback" not in login_gw.log_text()


# -- the cache ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["chatgpt", "platform"])
def test_a_cached_login_costs_no_upstream_request(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str], family: str
) -> None:
    email, password = account
    first = login(login_gw, family, email, password)
    assert first.status == 200
    seen = len(sim.journal())
    again = login(login_gw, family, email.upper(), password)  # e-mail addresses are case-insensitive
    assert again.status == 200 and again.body == first.body
    assert len(sim.journal()) == seen
    assert sim.account_counters(email) == {"logins": 1, "password_attempts": 1}


@pytest.mark.parametrize("family", ["chatgpt", "platform"])
def test_wrong_password_after_a_cached_login_fails_without_upstream(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str], family: str
) -> None:
    email, password = account
    assert login(login_gw, family, email, password).status == 200
    seen = len(sim.journal())
    for wrong in (WRONG_PASSWORD, password + "x", password.upper()):
        answer = login(login_gw, family, email, wrong)
        assert answer.status == 401 and error_of(answer)["code"] == "login_failed"
        assert "nothing was sent upstream" in error_of(answer)["message"]
        assert answer.json().get("accessToken") is None and b"sess-" not in answer.body
    assert len(sim.journal()) == seen
    assert sim.account_counters(email) == {"logins": 1, "password_attempts": 1}
    assert login(login_gw, family, email, password).status == 200  # the right one still works


def test_an_access_token_near_its_expiry_is_not_cached(login_gw: Gateway, sim: Simulator) -> None:
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD, token_ttl=600)  # below tokens.expiry_margin (3600 s)
    assert login(login_gw, "chatgpt", email, LOGIN_PASSWORD).status == 200
    assert login(login_gw, "chatgpt", email, LOGIN_PASSWORD).status == 200
    assert sim.account_counters(email)["logins"] == 2


@pytest.mark.parametrize("family", ["chatgpt", "platform"])
def test_fifty_identical_concurrent_logins_make_one_upstream_login(
    make_gateway: Any, sim: Simulator, account: tuple[str, str], family: str
) -> None:
    gw = make_gateway(FAST)
    email, password = account
    last_step = "session" if family == "chatgpt" else "onboarding"
    sim.hold(last_step, "login-held")
    with ThreadPoolExecutor(50) as pool:
        answers = [pool.submit(login, gw, family, email, password) for _ in range(50)]
        try:
            sim.wait_reached("login-held")
            # Every other request has joined the login in flight before it is let go.
            wait_for(lambda: joined(gw, family) == 49, what="49 joined logins")
        finally:
            sim.release("login-held")
        bodies = {future.result().body for future in answers}
    assert len(bodies) == 1 and json.loads(bodies.pop())
    assert sim.account_counters(email) == {"logins": 1, "password_attempts": 1}
    exposition = gw.metrics()
    assert metric_value(exposition, "tornadoproxy_logins_total", family=family, outcome="ok") == 1
    assert metric_value(exposition, "tornadoproxy_token_cache_entries") == 1


def joined(gw: Gateway, family: str) -> float:
    return metric_value(gw.metrics(), "tornadoproxy_logins_total", family=family, outcome="joined")


def test_a_retried_wrong_password_is_answered_from_memory(login_gw: Gateway, sim: Simulator) -> None:
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    first = login(login_gw, "chatgpt", email, WRONG_PASSWORD)
    again = login(login_gw, "chatgpt", email, WRONG_PASSWORD)
    assert first.status == again.status == 401 and first.body == again.body
    assert sim.account_counters(email)["password_attempts"] == 1


def test_failed_logins_per_username_are_limited(make_gateway: Any, sim: Simulator) -> None:
    gw = make_gateway(deep_merge(FAST, {"logins": {"max_failures_per_username": 2, "failure_memory": 0}}))
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    assert login(gw, "platform", email, WRONG_PASSWORD).status == 401
    assert login(gw, "platform", email, OTHER_PASSWORD).status == 401
    limited = login(gw, "platform", email, LOGIN_PASSWORD)
    assert limited.status == 429 and error_of(limited)["code"] == "login_rate_limited"
    assert 800 < int(limited.header("Retry-After") or 0) <= 900
    assert sim.account_counters(email)["password_attempts"] == 2  # the limit spared the account
    # Another username is not affected; the other family is another username.
    assert login(gw, "chatgpt", email, LOGIN_PASSWORD).status == 200


def test_cache_hits_are_never_limited(make_gateway: Any, sim: Simulator) -> None:
    gw = make_gateway(deep_merge(FAST, {"logins": {"max_failures_per_username": 2}}))
    email = new_email()
    sim.add_account(email, LOGIN_PASSWORD)
    assert login(gw, "chatgpt", email, LOGIN_PASSWORD).status == 200
    assert login(gw, "chatgpt", email, WRONG_PASSWORD).status == 401
    assert login(gw, "chatgpt", email, OTHER_PASSWORD).status == 401
    assert login(gw, "chatgpt", email, OTHER_PASSWORD + "!").status == 429  # guesses are limited
    assert login(gw, "chatgpt", email, LOGIN_PASSWORD).status == 200  # the owner is not
    assert sim.account_counters(email)["password_attempts"] == 1


def test_failed_logins_per_address_are_limited(make_gateway: Any, sim: Simulator) -> None:
    gw = make_gateway(deep_merge(FAST, {"logins": {"max_failures_per_address": 3, "address_window": 60}}))
    for _ in range(3):
        email = new_email()
        sim.add_account(email, LOGIN_PASSWORD)
        assert login(gw, "chatgpt", email, WRONG_PASSWORD).status == 401
    limited = login(gw, "chatgpt", new_email(), WRONG_PASSWORD)
    assert limited.status == 429 and 1 <= int(limited.header("Retry-After") or 0) <= 60
    assert metric_value(gw.metrics(), "tornadoproxy_logins_total", family="chatgpt", outcome="limited") == 1


def test_an_upstream_401_evicts_the_cached_login(
    login_gw: Gateway, sim: Simulator, account: tuple[str, str]
) -> None:
    email, password = account
    key = login(login_gw, "platform", email, password).json()["user"]["session"]["sensitive_id"]
    sim.script(
        "platform", "/dashboard/billing/credit_grants", {"status": 401, "json": {"error": {"message": "x"}}}
    )
    before = metric_value(
        login_gw.metrics(), "tornadoproxy_token_cache_evictions_total", reason="unauthorized"
    )
    refused = request(
        "GET", login_gw.url + "/platform/dashboard/billing/credit_grants", headers={"Authorization": key}
    )
    assert refused.status == 401
    after = metric_value(
        login_gw.metrics(), "tornadoproxy_token_cache_evictions_total", reason="unauthorized"
    )
    assert after == before + 1
    fresh = login(login_gw, "platform", email, password)
    assert fresh.status == 200 and fresh.json()["user"]["session"]["sensitive_id"] != key
    assert sim.account_counters(email)["logins"] == 2


def test_login_metrics_and_secrets(login_gw: Gateway, sim: Simulator, account: tuple[str, str]) -> None:
    email, password = account
    assert login(login_gw, "chatgpt", email, password).status == 200
    assert login(login_gw, "chatgpt", email, password).status == 200
    exposition = login_gw.metrics()
    assert metric_value(exposition, "tornadoproxy_logins_total", family="chatgpt", outcome="cached") >= 1
    assert (
        metric_value(exposition, "tornadoproxy_token_cache_lookups_total", family="chatgpt", result="hit")
        >= 1
    )
    assert metric_value(exposition, "tornadoproxy_login_duration_seconds_count", family="chatgpt") >= 1
    for secret in [password, WRONG_PASSWORD, email, *SEEN_TOKENS]:
        assert secret not in exposition
    log = login_gw.log_text()
    assert not [s[:8] for s in [password, WRONG_PASSWORD, *SEEN_TOKENS] if s in log]


@pytest.mark.parametrize(
    ("family", "path", "response"),
    [
        ("chatgpt", "/api/auth/signin/auth0", {"json": {"url": "http://127.0.0.9:1/authorize?state=x"}}),
        (
            "auth",
            "/authorize",
            {"status": 302, "headers": [["Location", "http://127.0.0.9:1/u/login/identifier"]]},
        ),
    ],
)
def test_redirects_outside_the_configured_hosts_are_never_followed(
    login_gw: Gateway,
    sim: Simulator,
    account: tuple[str, str],
    family: str,
    path: str,
    response: dict[str, Any],
) -> None:
    sim.script(family, path, response)
    answer = login(login_gw, "chatgpt", *account)
    assert answer.status == 502
    error = error_of(answer)
    assert (
        error["code"] == "login_upstream_error"
        and "outside the configured upstream hosts" in error["message"]
    )
    assert "127.0.0.9" not in error["message"]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_every_login_step_goes_through_the_egress_proxy(
    make_gateway: Any, sim: Simulator, account: tuple[str, str], tmp_path: Path
) -> None:
    # microsocks binds its outgoing connections to 127.0.0.5: the journal shows which requests it carried.
    port = free_port()
    args = [
        "microsocks",
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-b",
        "127.0.0.5",
        "-u",
        "gw",
        "-P",
        PROXY_PASSWORD,
    ]
    proxy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: accepts(port), what="microsocks")
        url = f"socks5h://gw:{urllib.parse.quote(PROXY_PASSWORD, safe='')}@127.0.0.1:{port}"
        gw = make_gateway(deep_merge(FAST, {"egress": {"proxy": url}}))
        for family in ("chatgpt", "platform"):
            assert login(gw, family, *account).status == 200
    finally:
        stop_process(proxy)
    journal = sim.journal()
    assert len(journal) == 20 and {entry["remote_ip"] for entry in journal} == {"127.0.0.5"}
