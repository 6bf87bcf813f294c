"""The two login flows of docs/logins.md: the ChatGPT host's /api/auth routes, the Auth0
tenant and the platform web app, with accounts, states and cookies checked between steps.

Every endpoint is a named step (`STEPS` below); /__sim__/challenges turns any step into a Cloudflare
challenge or block page. Cookies carry their real names and `Secure`/`HttpOnly`; a missing or wrong
cookie, state or code fails the step the way the real host would. Form bodies are parsed strictly
(accounts.parse_form), so a badly encoded `+`, `&`, `%` or `=` changes what the simulator reads.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from tests.simulator.accounts import (
    BLOCK_PAGE,
    CHALLENGE_PAGE,
    CHATGPT_CLIENT_ID,
    PLATFORM_CLIENT_ID,
    Account,
    AuthData,
    FormError,
    Grant,
    Transaction,
    login_page,
    make_access_token,
    onboarding_json,
    parse_form,
    session_json,
)
from tests.simulator.base import SimHandler
from tests.simulator.control import ControlHandler
from tests.simulator.state import State

CSRF_COOKIE = "__Host-next-auth.csrf-token"
CALLBACK_COOKIE = "__Secure-next-auth.callback-url"
STATE_COOKIE = "__Secure-next-auth.state"
SESSION_COOKIE = "__Secure-next-auth.session-token"
AUTH0_COOKIE = "auth0"
DID_COOKIE = "did"
IDENTIFIER_FIELDS = {
    "state",
    "username",
    "js-available",
    "webauthn-available",
    "is-brave",
    "webauthn-platform-available",
    "action",
}


def auth_data(state: State) -> AuthData:
    return state.family_data.setdefault("auth", AuthData())


class LoginHost(SimHandler):
    """One endpoint of the login hosts; `steps` names the step per method (the challenge switch key)."""

    steps: dict[str, str] = {}

    @property
    def data(self) -> AuthData:
        return auth_data(self.state)

    async def prepare(self) -> None:
        await super().prepare()
        if self._finished:
            return
        step = self.steps.get(self.request.method or "", "")
        if step in self.data.holds:
            gate = self.state.gate(self.data.holds[step])
            gate.reached.set()
            await gate.released.wait()
        kind = self.data.take_challenge(step)
        if kind is not None:
            self.set_status(403)
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.set_header("Cache-Control", "private, no-store")
            if kind == "challenge":
                self.set_header("cf-mitigated", "challenge")
            self.finish(CHALLENGE_PAGE if kind == "challenge" else BLOCK_PAGE)

    def url(self, family: str, path: str, query: dict[str, str] | None = None) -> str:
        return self.data.urls[family] + path + ("?" + urlencode(query) if query else "")

    def cookie(self, name: str, value: str, max_age: int | None = None) -> None:
        self.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Lax", max_age=max_age)

    def redirect_to(self, location: str, status: int = 302) -> None:
        self.set_status(status)
        self.set_header("Location", location)
        self.finish()

    def page(self, status: int, text: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(text)

    def form(self, fields: set[str]) -> dict[str, str] | None:
        """The strictly parsed form, or None after answering 400 as a real form endpoint would."""
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if content_type != "application/x-www-form-urlencoded":
                raise FormError("not a form")
            return parse_form(self.request.body, fields)
        except FormError as error:
            self.page(400, f"<html><body><h1>Bad Request</h1><p>{error}</p></body></html>")
            return None


# -- ChatGPT host: NextAuth under /api/auth ----------------------------------------------------------
class CsrfHandler(LoginHost):
    steps = {"GET": "csrf"}

    def get(self) -> None:
        token = secrets.token_hex(32)
        self.data.csrf_tokens.add(token)
        self.cookie(CSRF_COOKIE, token + "%7C" + secrets.token_hex(32))
        self.cookie(CALLBACK_COOKIE, quote(self.data.urls["chatgpt"], safe=""))
        self.send_json(200, {"csrfToken": token})


class SigninHandler(LoginHost):
    steps = {"POST": "signin"}

    def post(self) -> None:
        fields = self.form({"callbackUrl", "csrfToken", "json"})
        if fields is None:
            return
        cookie = (self.get_cookie(CSRF_COOKIE) or "").split("%7C")[0]
        token = fields["csrfToken"]
        if not token or token != cookie or token not in self.data.csrf_tokens or fields["json"] != "true":
            # NextAuth's answer to a failed CSRF check: back to its own sign-in page.
            self.send_json(200, {"url": self.url("chatgpt", "/api/auth/signin", {"csrf": "true"})})
            return
        app_state = secrets.token_urlsafe(32)
        self.cookie(STATE_COOKIE, app_state, max_age=900)
        query = {
            "client_id": CHATGPT_CLIENT_ID,
            "scope": "openid email profile offline_access model.request model.read organization.read",
            "response_type": "code",
            "redirect_uri": self.url("chatgpt", "/api/auth/callback/auth0"),
            "audience": "https://api.openai.com/v1",
            "prompt": self.get_query_argument("prompt", "login"),
            "state": app_state,
        }
        self.send_json(200, {"url": self.url("auth", "/authorize", query)})


class ChatgptCallbackHandler(LoginHost):
    steps = {"GET": "callback"}

    def get(self) -> None:
        code = self.get_query_argument("code", "")
        grant = self.data.codes.pop(code, None)
        expected_state = self.get_cookie(STATE_COOKIE)
        if (
            grant is None
            or grant.client_id != CHATGPT_CLIENT_ID
            or not expected_state
            or self.get_query_argument("state", "") != expected_state
        ):
            self.redirect_to("/api/auth/error?error=OAuthCallback")
            return
        account = self.data.account(grant.email)
        assert account is not None
        self.cookie(STATE_COOKIE, "", max_age=0)
        if account.deactivated:
            query = {"error": "AccessDenied", "error_description": "This user account has been deactivated."}
            self.redirect_to(self.url("chatgpt", "/auth/error", query), status=307)
            return
        token = secrets.token_urlsafe(48)
        self.data.sessions[token] = account.email
        self.cookie(SESSION_COOKIE, token, max_age=30 * 24 * 3600)
        self.redirect_to(self.url("chatgpt", "/"))


class SessionHandler(LoginHost):
    steps = {"GET": "session"}

    def get(self) -> None:
        token = self.get_cookie(SESSION_COOKIE) or ""
        account = self.data.account(self.data.sessions.get(token))
        if account is None:
            self.send_json(200, {})  # NextAuth: no session
            return
        if account.rate_limited:
            self.send_json(429, {"detail": "Too many requests, please slow down"})
            return
        access_token = make_access_token(account)
        self.data.access_tokens[access_token] = account.email
        if token not in self.data.counted_sessions:
            self.data.counted_sessions.add(token)
            account.logins += 1
        self.send_json(200, session_json(account, access_token))


# -- the Auth0 tenant ---------------------------------------------------------------------------------
class AuthorizeHandler(LoginHost):
    steps = {"GET": "authorize"}

    def get(self) -> None:
        client_id = self.get_query_argument("client_id", "")
        redirect_uri = self.get_query_argument("redirect_uri", "")
        registered = {
            CHATGPT_CLIENT_ID: self.url("chatgpt", "/api/auth/callback/auth0"),
            PLATFORM_CLIENT_ID: self.url("platform_web", "/auth/callback"),
        }
        scope = self.get_query_argument("scope", "").split(" ")
        if (
            registered.get(client_id) != redirect_uri
            or self.get_query_argument("response_type", "") != "code"
            or "openid" not in scope
        ):
            self.page(400, "<html><body><h1>Oops!, something went wrong</h1></body></html>")
            return
        session = self.get_cookie(AUTH0_COOKIE) or secrets.token_urlsafe(24)
        self.set_cookie(AUTH0_COOKIE, session, path="/", secure=True, httponly=True, samesite="None")
        self.set_cookie(DID_COOKIE, "s%3A" + secrets.token_hex(16), path="/", secure=True, httponly=True)
        state = "hKFo2SB" + secrets.token_urlsafe(30)
        self.data.transactions[state] = Transaction(
            state, session, client_id, redirect_uri, self.get_query_argument("state", None)
        )
        self.redirect_to("/u/login/identifier?" + urlencode({"state": state}))


class LoginStepHandler(LoginHost):
    """The Universal Login pages: the state must be the query's, the form's and the cookie's."""

    def transaction(self, form_state: str | None = None) -> Transaction | None:
        state = self.get_query_argument("state", "")
        txn = self.data.transactions.get(state)
        if (
            txn is None
            or txn.session != self.get_cookie(AUTH0_COOKIE)
            or (form_state is not None and form_state != state)
        ):
            self.page(400, "<html><body><h1>Invalid state</h1></body></html>")
            return None
        return txn


class IdentifierHandler(LoginStepHandler):
    steps = {"GET": "identifier_page", "POST": "identifier"}

    def get(self) -> None:
        if (txn := self.transaction()) is not None:
            self.page(200, login_page("Welcome back", txn.state))

    def post(self) -> None:
        fields = self.form(IDENTIFIER_FIELDS)
        if fields is None or (txn := self.transaction(fields["state"])) is None:
            return
        username = fields["username"]
        if "@" not in username.strip("@") or " " in username:
            self.page(400, login_page("Welcome back", txn.state, alert="Email is not valid."))
            return
        txn.username = username
        self.redirect_to("/u/login/password?" + urlencode({"state": txn.state}))


class PasswordHandler(LoginStepHandler):
    steps = {"GET": "password_page", "POST": "password"}

    def get(self) -> None:
        if (txn := self.transaction()) is not None and txn.username is not None:
            self.page(200, login_page("Enter your password", txn.state, username=txn.username))

    def post(self) -> None:
        fields = self.form({"state", "username", "password", "action"})
        if fields is None or (txn := self.transaction(fields["state"])) is None:
            return
        account = self.data.account(fields["username"])
        if account is not None:
            account.password_attempts += 1
        if (
            account is None
            or fields["username"] != txn.username
            or fields["password"] != account.password
            or fields["action"] != "default"
        ):
            alert = "Wrong email or password"
            if account is not None and account.echo_form:
                echoed = json.dumps({"username": fields["username"], "password": fields["password"]})
                alert += f" (received {self.request.body.decode()} {echoed})"
            self.page(400, login_page("Enter your password", txn.state, alert=alert))
            return
        txn.authenticated = account.email
        self.redirect_to("/authorize/resume?" + urlencode({"state": txn.state}))


class ResumeHandler(LoginStepHandler):
    steps = {"GET": "resume"}

    def get(self) -> None:
        txn = self.transaction()
        if txn is None:
            return
        account = self.data.account(txn.authenticated)
        if account is None:
            self.page(400, "<html><body><h1>Invalid state</h1></body></html>")
            return
        del self.data.transactions[txn.state]
        if account.mfa:
            self.redirect_to("/u/mfa-otp-challenge?" + urlencode({"state": txn.state}))
            return
        back: dict[str, str] = {}
        if account.deactivated and txn.client_id == PLATFORM_CLIENT_ID:
            back["error"] = "access_denied"
            back["error_description"] = "Your account has been deactivated."
        else:
            code = secrets.token_urlsafe(24)
            self.data.codes[code] = Grant(account.email, txn.client_id, txn.redirect_uri)
            back["code"] = code
        if txn.app_state is not None:
            back["state"] = txn.app_state
        self.redirect_to(txn.redirect_uri + "?" + urlencode(back))


class MfaHandler(LoginHost):
    steps = {"GET": "mfa"}

    def get(self) -> None:
        self.page(200, "<html><body><h1>Verify your identity</h1></body></html>")


class LogoutHandler(LoginHost):
    steps = {"GET": "logout"}

    def get(self) -> None:
        self.set_cookie(AUTH0_COOKIE, "", path="/", secure=True, httponly=True, max_age=0)
        return_to = self.get_query_argument("returnTo", "")
        if urlsplit(return_to).netloc != urlsplit(self.data.urls["platform_web"]).netloc:
            self.page(400, "<html><body><h1>Invalid returnTo</h1></body></html>")
            return
        self.redirect_to(return_to)


class TokenHandler(LoginHost):
    steps = {"POST": "token"}

    def post(self) -> None:
        body = self.json_body()
        expected = {"client_id", "grant_type", "code", "redirect_uri"}
        if not isinstance(body, dict) or set(body) != expected or body["grant_type"] != "authorization_code":
            self.send_json(400, {"error": "invalid_request", "error_description": "Malformed request"})
            return
        grant = self.data.codes.pop(str(body["code"]), None)
        if (
            grant is None
            or grant.client_id != body["client_id"]
            or grant.redirect_uri != body["redirect_uri"]
        ):
            self.send_json(403, {"error": "invalid_grant", "error_description": "Invalid authorization code"})
            return
        access_token = "at-" + secrets.token_urlsafe(40)
        self.data.access_tokens[access_token] = grant.email
        self.send_json(
            200,
            {
                "access_token": access_token,
                "refresh_token": "rt-" + secrets.token_urlsafe(30),
                "id_token": "it-" + secrets.token_urlsafe(30),
                "scope": "openid profile email offline_access",
                "expires_in": 86400,
                "token_type": "Bearer",
            },
        )


# -- platform web app and the Platform API's onboarding login -------------------------------------------
class PlatformCallbackHandler(LoginHost):
    steps = {"GET": "callback"}

    def get(self) -> None:
        self.page(200, "<!DOCTYPE html><html><head><title>OpenAI Platform</title></head><body></body></html>")


class LoggedOutHandler(LoginHost):
    steps = {"GET": "loggedout"}

    def get(self) -> None:
        self.page(200, "<!DOCTYPE html><html><head><title>Logged out</title></head><body></body></html>")


class OnboardingHandler(LoginHost):
    steps = {"POST": "onboarding"}

    def post(self) -> None:
        email = self.data.access_tokens.get(self.bearer())
        account = self.data.account(email)
        if account is None or self.json_body() != {}:
            message = "Invalid authorization header" if account is None else "Invalid body"
            self.send_json(401, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        if account.rate_limited:
            error = {"message": "Rate limit reached for logins", "type": "requests", "code": "rate_limited"}
            self.send_json(429, {"error": error}, {"Retry-After": "20"})
            return
        account.logins += 1
        self.send_json(200, onboarding_json(account, "sess-" + secrets.token_urlsafe(30)))


# -- the tests' side door --------------------------------------------------------------------------------
class AccountsHandler(ControlHandler):
    def get(self) -> None:
        self.reply({a.email: a.counters() for a in auth_data(self.state).accounts.values()})

    def post(self) -> None:
        spec: dict[str, Any] = json.loads(self.request.body)
        account = Account(**spec)
        auth_data(self.state).accounts[account.email.lower()] = account
        self.reply({"ok": True})


class TokensHandler(ControlHandler):
    """The accessTokens the login hosts issued (the secrets tests grep output for them)."""

    def get(self) -> None:
        self.reply(sorted(auth_data(self.state).access_tokens))


class ChallengesHandler(ControlHandler):
    def post(self) -> None:
        spec = json.loads(self.request.body)
        assert spec.get("kind", "challenge") in ("challenge", "block")
        auth_data(self.state).challenges[spec["step"]] = {
            "kind": spec.get("kind", "challenge"),
            "times": int(spec.get("times", -1)),
        }
        self.reply({"ok": True})


class HoldsHandler(ControlHandler):
    """{"step": name, "gate": name}: that step waits until the test releases the gate."""

    def post(self) -> None:
        spec = json.loads(self.request.body)
        auth_data(self.state).holds[spec["step"]] = spec["gate"]
        self.reply({"ok": True})


def configure(state: State, urls: dict[str, str]) -> None:
    """Tell the login hosts where each listener is (they redirect between hosts)."""
    auth_data(state).urls = dict(urls)


CHATGPT_ROUTES: list[tuple[str, Any]] = [
    (r"/api/auth/csrf", CsrfHandler),
    (r"/api/auth/signin/auth0", SigninHandler),
    (r"/api/auth/callback/auth0", ChatgptCallbackHandler),
    (r"/api/auth/session", SessionHandler),
]
AUTH_ROUTES: list[tuple[str, Any]] = [
    (r"/authorize", AuthorizeHandler),
    (r"/u/login/identifier", IdentifierHandler),
    (r"/u/login/password", PasswordHandler),
    (r"/authorize/resume", ResumeHandler),
    (r"/u/mfa-otp-challenge", MfaHandler),
    (r"/v2/logout", LogoutHandler),
    (r"/oauth/token", TokenHandler),
]
PLATFORM_WEB_ROUTES: list[tuple[str, Any]] = [
    (r"/auth/callback", PlatformCallbackHandler),
    (r"/loggedout", LoggedOutHandler),
]
PLATFORM_ROUTES: list[tuple[str, Any]] = [(r"/dashboard/onboarding/login", OnboardingHandler)]
CONTROL_ROUTES: list[tuple[str, Any]] = [
    (r"/__sim__/accounts", AccountsHandler),
    (r"/__sim__/challenges", ChallengesHandler),
    (r"/__sim__/holds", HoldsHandler),
    (r"/__sim__/tokens", TokensHandler),
]
