"""What the simulated login hosts remember: accounts set by the tests, Auth0 transactions, codes,
sessions and issued tokens; plus the strict form parser, the HTML pages and the JWTs they serve.

Everything here follows docs/logins.md; `AuthData` lives in `State.family_data["auth"]`
and is cleared by /__sim__/reset (the listeners' URLs stay).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

CHATGPT_CLIENT_ID = "TdJIcbe16WoTHtN95nyywh5E4yOo6ItG"
PLATFORM_CLIENT_ID = "DRivsnm2Mu42T3KOpqdtwB3NYviHYzwD"
_SIGNING_KEY = secrets.token_bytes(32)


@dataclass
class Account:
    email: str
    password: str
    mfa: bool = False
    deactivated: bool = False
    rate_limited: bool = False
    token_ttl: int = 10 * 24 * 3600  # the accessToken's lifetime (its JWT exp)
    # A broken login page that echoes what was posted in its alert (the raw form and as JSON), as
    # some error pages do: the gateway must mask it in every encoding before relaying the alert.
    echo_form: bool = False
    logins: int = 0  # completed logins: tokens handed out by the last step
    password_attempts: int = 0  # password forms received, right or wrong

    def counters(self) -> dict[str, int]:
        return {"logins": self.logins, "password_attempts": self.password_attempts}


@dataclass
class Transaction:
    """One Auth0 /authorize: its login `state`, the browser session (cookie) that owns it."""

    state: str
    session: str
    client_id: str
    redirect_uri: str
    app_state: str | None
    username: str | None = None
    authenticated: str | None = None  # the account's e-mail once the password was right


@dataclass
class Grant:
    email: str
    client_id: str
    redirect_uri: str


@dataclass
class AuthData:
    urls: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    transactions: dict[str, Transaction] = field(default_factory=dict)
    codes: dict[str, Grant] = field(default_factory=dict)
    csrf_tokens: set[str] = field(default_factory=set)
    sessions: dict[str, str] = field(default_factory=dict)  # chatgpt session-token -> e-mail
    counted_sessions: set[str] = field(default_factory=set)
    access_tokens: dict[str, str] = field(default_factory=dict)  # issued tokens -> e-mail
    challenges: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> {kind, times}
    holds: dict[str, str] = field(default_factory=dict)  # step -> gate that step waits for

    def reset(self) -> None:
        urls = self.urls
        self.__init__()  # type: ignore[misc]
        self.urls = urls

    def account(self, email: str | None) -> Account | None:
        return self.accounts.get((email or "").lower())

    def take_challenge(self, step: str) -> str | None:
        """The kind of page ("challenge" or "block") this step must answer with now, if any."""
        switch = self.challenges.get(step)
        if switch is None or switch["times"] == 0:
            return None
        if switch["times"] > 0:
            switch["times"] -= 1
        return str(switch["kind"])


class FormError(ValueError):
    pass


_FORM_PIECE = re.compile(r"[A-Za-z0-9*\-._~%+]*")


def parse_form(body: bytes, fields: set[str]) -> dict[str, str]:
    """application/x-www-form-urlencoded, strictly: every piece `name=value` with exactly one `=`,
    only characters a form encoder emits, valid escapes, UTF-8, no repeats, exactly `fields`.
    A raw `&`, `=`, `+` or `%` in a value therefore changes or breaks what is decoded."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FormError("form body is not ASCII") from None
    found: dict[str, str] = {}
    for piece in text.split("&") if text else []:
        if piece.count("=") != 1:
            raise FormError("form piece without exactly one '='")
        name, value = piece.split("=")
        for part in (name, value):
            if not _FORM_PIECE.fullmatch(part) or re.search(r"%(?![0-9A-Fa-f]{2})", part):
                raise FormError("character or escape a form encoder never emits")
        try:
            key, decoded = unquote_plus(name, errors="strict"), unquote_plus(value, errors="strict")
        except UnicodeDecodeError:
            raise FormError("escape that is not UTF-8") from None
        if key in found:
            raise FormError("repeated form field")
        found[key] = decoded
    if set(found) != fields:
        raise FormError("unexpected set of form fields")
    return found


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_access_token(account: Account) -> str:
    """A JWT like the real accessToken: header.payload.signature, base64url, with iat and exp."""
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "simulator"}
    payload = {
        "https://api.openai.com/profile": {"email": account.email, "email_verified": True},
        "https://api.openai.com/auth": {"user_id": "user-" + _user_id(account.email)},
        "iss": "https://auth0.openai.com/",
        "sub": "auth0|" + _user_id(account.email),
        "aud": ["https://api.openai.com/v1", "https://openai.openai.auth0app.com/userinfo"],
        "iat": now,
        "exp": now + account.token_ttl,
        "scope": "openid email profile model.read model.request organization.read offline_access",
        "jti": secrets.token_hex(8),
    }
    signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(payload).encode())
    signature = hmac.new(_SIGNING_KEY, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


def _user_id(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()[:24]


def session_json(account: Account, access_token: str) -> dict[str, Any]:
    expires = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 30 * 24 * 3600))
    return {
        "user": {
            "id": "user-" + _user_id(account.email),
            "name": account.email.split("@")[0],
            "email": account.email,
            "image": None,
            "picture": None,
            "idp": "auth0",
            "iat": int(time.time()),
            "mfa": False,
            "groups": [],
            "intercom_hash": secrets.token_hex(16),
        },
        "expires": expires,
        "accessToken": access_token,
        "authProvider": "auth0",
    }


def onboarding_json(account: Account, session_key: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "user": {
            "object": "user",
            "id": "user-" + _user_id(account.email),
            "email": account.email,
            "name": account.email.split("@")[0],
            "picture": None,
            "created": now - 86400,
            "session": {"sensitive_id": session_key, "object": "session", "created": now, "last_use": now},
            "orgs": {"object": "list", "data": [{"object": "organization", "id": "org-sim", "title": "Sim"}]},
        },
        "invites": [],
    }


def login_page(title: str, state: str, alert: str | None = None, username: str | None = None) -> str:
    alert_html = f'<div id="prompt-alert" class="c-alert"><p>{html.escape(alert)}</p></div>' if alert else ""
    user_html = f'<span class="ulp-authenticator">{html.escape(username)}</span>' if username else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)} | OpenAI</title></head><body><main><section>"
        f"<h1>{html.escape(title)}</h1>{alert_html}{user_html}"
        '<form method="POST" class="c-form">'
        f'<input type="hidden" name="state" value="{html.escape(state)}">'
        '<input class="input" name="username" type="text" autocomplete="username">'
        '<button type="submit" name="action" value="default">Continue</button>'
        "</form></section></main></body></html>"
    )


CHALLENGE_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
    '<meta http-equiv="Content-Type" content="text/html; charset=UTF-8"></head><body>'
    '<div class="main-wrapper" role="main"><div class="main-content"><noscript>Enable JavaScript and '
    "cookies to continue</noscript></div></div><script>(function(){window._cf_chl_opt={cvId: '3',"
    "cType: 'managed'};}());</script></body></html>"
)

BLOCK_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Attention Required! | Cloudflare</title></head>'
    '<body><div id="cf-wrapper"><div id="cf-error-details"><h1 data-translate="block_headline">Sorry, '
    'you have been blocked</h1><h2 class="cf-subheadline">You are unable to access openai.com</h2>'
    "</div><span>Cloudflare Ray ID: <strong>8f0c0ffee0000000</strong></span></div></body></html>"
)
