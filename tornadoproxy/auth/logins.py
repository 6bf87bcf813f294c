"""The two login flows of docs/logins.md, step by step through the relay (`Relay.fetch`).

Each login has a fresh cookie jar (libcurl's engine, `fetcher.CookieJar`) and follows redirects itself:
a Location is resolved against the URL that answered and followed only to a configured upstream host.
Every step is driven by what the previous one returned. Any other answer ends the login with a
`LoginError` or `UpstreamError` naming the step and the upstream status; no message echoes what the
client sent (upstream texts are relayed with the username and password masked).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

from tornadoproxy.auth.families import FLOW_NAMES
from tornadoproxy.auth.pages import element_text, hidden_inputs, upstream_text
from tornadoproxy.config.schema import LoginsConfig, UpstreamsConfig
from tornadoproxy.errors import Code, LoginError, UpstreamError
from tornadoproxy.observability.metrics import Metrics
from tornadoproxy.relay.service import Answer, Relay
from tornadoproxy.upstream.diagnosis import page_kind
from tornadoproxy.upstream.egress import EgressProxy
from tornadoproxy.upstream.profiles import ClientProfile
from tornadoproxy.upstream.request import CookieJar, UpstreamRequest

_FORM = ("Content-Type", "application/x-www-form-urlencoded")
_JSON = ("Content-Type", "application/json")
_RATE_LIMIT_DEFAULT = 60  # seconds, when an upstream 429 names no Retry-After


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A completed login: the upstream JSON of the last step (what the client gets), the token in it,
    and the token's own expiry (epoch seconds; None for a sessionKey, which carries none)."""

    family: str
    body: bytes
    token: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class _Page:
    step: str
    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def is_html(self) -> bool:
        return "html" in (self.header("Content-Type") or "").lower()

    @property
    def is_redirect(self) -> bool:
        return self.status in (301, 302, 303, 307, 308)

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class Logins:
    """Runs login flows; built once by the composition root."""

    def __init__(
        self, config: LoginsConfig, upstreams: UpstreamsConfig, relay: Relay, metrics: Metrics
    ) -> None:
        self.relay = relay
        self._metrics = metrics
        self.reconfigure(config, upstreams)

    def reconfigure(self, config: LoginsConfig, upstreams: UpstreamsConfig) -> None:
        """Settings and hosts for logins started from now on."""
        self.config = config
        self.upstreams = upstreams
        # Later names win for equal origins; the login flows only ever need one name per origin.
        self._origins = {
            _origin(url): name
            for name, url in (
                ("platform", upstreams.platform),
                ("platform_web", upstreams.platform_web),
                ("chatgpt", upstreams.chatgpt),
                ("auth", upstreams.auth),
            )
        }

    def upstream_of(self, url: str) -> str | None:
        """The configured upstream that `url` belongs to, or None (never followed)."""
        return self._origins.get(_origin(url))

    async def login(
        self,
        family: str,
        username: str,
        password: str,
        proxy: EgressProxy | None = None,
        profile: ClientProfile | None = None,
    ) -> LoginResult:
        """Log in afresh upstream; raises LoginError, UpstreamError or GatewayBusy. With `proxy` and
        `profile` (an account of the pool), every step leaves through that proxy, as that client."""
        browser = _Browser(self, FLOW_NAMES[family], (username, password), (proxy, profile))
        started = time.monotonic()
        if family == "chatgpt":
            flow = self._chatgpt(browser, username, password)
        else:
            flow = self._platform(browser, username, password)
        try:
            # Not asyncio.wait_for: its extra task keeps a failed login's error, which the traceback
            # of its own frame refers back to, a reference cycle holding this request until a full
            # garbage collection. asyncio.timeout() runs the flow in this task.
            async with asyncio.timeout(self.config.timeout):
                return await flow
        except TimeoutError:
            raise UpstreamError(
                f"the {browser.flow} did not complete within {self.config.timeout:g} s (logins.timeout); "
                f"it was at the '{browser.step}' step",
                code=Code.UPSTREAM_TIMEOUT,
            ) from None
        finally:
            self._metrics.observe_login(family, time.monotonic() - started)

    async def _chatgpt(self, b: _Browser, username: str, password: str) -> LoginResult:
        chat = self.upstreams.chatgpt
        page = await b.send("csrf", "GET", chat + "/api/auth/csrf")
        csrf = b.json_field(page, "csrfToken")
        form = [("callbackUrl", "/"), ("csrfToken", csrf), ("json", "true")]
        page = await b.send("signin", "POST", chat + "/api/auth/signin/auth0?prompt=login", form=form)
        authorize_url = b.resolve(page, b.json_field(page, "url"))
        if b.upstream_of(authorize_url) != "auth":
            raise b.unexpected(page, "the sign-in did not lead to the auth host (CSRF check refused?)")
        page = await b.get_following("authorize", authorize_url, landing="identifier_page")
        answer = await self._credentials(b, page, username, password)
        page = await self._resume(b, answer, "chatgpt")
        if not page.is_redirect:
            raise b.unexpected(page, "the callback did not redirect")
        target = b.location(page)  # error_description (deactivated account) is reported here
        if urlsplit(target).path.startswith("/api/auth/error"):
            error = parse_qs(urlsplit(target).query).get("error", ["unknown"])[0]
            raise b.unexpected(page, f"the callback refused the login (error {b.upstream_text(error)})")
        page = await b.send("session", "GET", chat + "/api/auth/session")
        session = page.json() if page.status == 200 else None
        token = session.get("accessToken") if isinstance(session, dict) else None
        if not isinstance(token, str) or not token:
            raise b.unexpected(page, "the session has no accessToken")
        assert isinstance(session, dict)
        return LoginResult("chatgpt", page.body, token, token_expiry(session))

    async def _platform(self, b: _Browser, username: str, password: str) -> LoginResult:
        auth, web = self.upstreams.auth, self.upstreams.platform_web
        client_id = self.config.platform_client_id
        logout = {"returnTo": web + "/loggedout", "client_id": client_id}
        await b.send("logout", "GET", auth + "/v2/logout?" + urlencode(logout), tolerate=True)
        redirect_uri = web + "/auth/callback"
        query = {
            "client_id": client_id,
            "audience": self.upstreams.platform + "/v1",
            "redirect_uri": redirect_uri,
            "scope": "openid profile email offline_access",
            "response_type": "code",
        }
        page = await b.get_following("authorize", auth + "/authorize?" + urlencode(query), "identifier_page")
        answer = await self._credentials(b, page, username, password)
        page = await self._resume(b, answer, "platform_web")
        if page.status != 200:
            raise b.unexpected(page, "the callback page did not load")
        code = parse_qs(urlsplit(page.url).query).get("code", [""])[0]
        if not code:
            raise b.unexpected(page, "the callback carries no authorization code")
        grant = {"client_id": client_id, "grant_type": "authorization_code", "code": code}
        grant["redirect_uri"] = redirect_uri
        page = await b.send("token", "POST", auth + "/oauth/token", payload=grant)
        access_token = b.json_field(page, "access_token")
        url = self.upstreams.platform + "/dashboard/onboarding/login"
        bearer = ("Authorization", "Bearer " + access_token)
        page = await b.send("onboarding", "POST", url, payload={}, headers=[bearer])
        data = page.json() if page.status == 200 else None
        key = _dig(data, "user", "session", "sensitive_id")
        if not isinstance(key, str) or not key.startswith("sess-"):
            raise b.unexpected(page, "the answer has no sessionKey (user.session.sensitive_id)")
        return LoginResult("platform", page.body, key, None)

    async def _credentials(self, b: _Browser, page: _Page, username: str, password: str) -> _Page:
        """The identifier and password steps; returns the password form's answer (a redirect)."""
        state = b.hidden_state(page)
        form = [
            ("state", state),
            ("username", username),
            ("js-available", "true"),
            ("webauthn-available", "true"),
            ("is-brave", "false"),
            ("webauthn-platform-available", "false"),
            ("action", "default"),
        ]
        answer = await b.send("identifier", "POST", page.url, form=form)
        if answer.status == 400 and answer.is_html:
            raise b.refused(answer, "the upstream refused the e-mail address")
        if not answer.is_redirect:
            raise b.unexpected(answer, "the e-mail address was not accepted")
        page = await b.get_following("password_page", b.location(answer), "password_page")
        state = b.hidden_state(page)
        form = [("state", state), ("username", username), ("password", password), ("action", "default")]
        answer = await b.send("password", "POST", page.url, form=form)
        if answer.status == 400 and answer.is_html:
            raise b.refused(answer, "wrong e-mail or password")
        if not answer.is_redirect:
            raise b.unexpected(answer, "the password was not accepted")
        return answer

    async def _resume(self, b: _Browser, answer: _Page, callback_host: str) -> _Page:
        """Follow the password answer through /authorize/resume to the callback on `callback_host`."""
        page = answer
        for _ in range(self.config.max_redirects):
            url = b.location(page)  # MFA and error_description are reported here
            if b.upstream_of(url) == callback_host:
                return await b.send("callback", "GET", url)
            page = await b.send("resume", "GET", url)
            if not page.is_redirect:
                raise b.unexpected(page, "the authorization did not redirect to the callback")
        raise b.unexpected(page, "too many redirects (logins.max_redirects)")


class _Browser:
    """One login's browser: its cookie jar, the step it is at, and how it reads answers."""

    def __init__(
        self,
        logins: Logins,
        flow: str,
        user_inputs: tuple[str, str],
        pins: tuple[EgressProxy | None, ClientProfile | None],
    ) -> None:
        self._logins = logins
        self.flow = flow
        self.step = "start"
        self._jar = CookieJar()
        self._user_inputs = tuple(s for s in user_inputs if s)
        self._proxy, self._profile = pins

    def upstream_of(self, url: str) -> str | None:
        return self._logins.upstream_of(url)

    async def send(
        self,
        step: str,
        method: str,
        url: str,
        *,
        form: Sequence[tuple[str, str]] | None = None,
        payload: Any = None,
        headers: Sequence[tuple[str, str]] = (),
        tolerate: bool = False,
    ) -> _Page:
        """One request of the flow; challenge and block pages and 429s end the login here.
        With `tolerate`, transport errors and statuses are ignored (the page may be a dummy)."""
        self.step = step
        upstream = self.upstream_of(url)
        if upstream is None:
            raise self._outside(step)
        body, extra = None, list(headers)
        if form is not None:
            body, extra = urlencode(form).encode(), extra + [_FORM]
        elif payload is not None:
            body, extra = json.dumps(payload).encode(), extra + [_JSON]
        request = UpstreamRequest(
            upstream, method, url, extra, body, cookies=self._jar, proxy=self._proxy, profile=self._profile
        )
        try:
            answer = await self._logins.relay.fetch(request)
        except UpstreamError as error:
            if tolerate:
                return _Page(step, url, 0, [], b"")
            raise UpstreamError(
                self._where(step) + error.message,
                kind=error.kind,
                status=error.status,
                code=error.code,
                retry_after=error.retry_after,
            ) from None
        page = _Page(step, url, answer.status, answer.headers, answer.body)
        self._diagnose(page, answer)
        if page.status == 429 and not tolerate:
            raise self._rate_limited(page)
        return page

    async def get_following(self, step: str, url: str, landing: str) -> _Page:
        """GET `url` and follow redirects (each one named `landing`) to the page they end at."""
        page = await self.send(step, "GET", url)
        for _ in range(self._logins.config.max_redirects):
            if not page.is_redirect:
                if page.status != 200:
                    raise self.unexpected(page, "the page did not load")
                return page
            page = await self.send(landing, "GET", self.location(page))
        raise self.unexpected(page, "too many redirects (logins.max_redirects)")

    def resolve(self, page: _Page, target: str) -> str:
        url = urljoin(page.url, target)
        if urlsplit(url).scheme not in ("http", "https") or self.upstream_of(url) is None:
            raise self._outside(page.step)
        return url

    def location(self, page: _Page) -> str:
        """Where a redirect points, resolved and checked; MFA and refused accounts end the login."""
        target = page.header("Location")
        if not page.is_redirect or not target:
            raise self.unexpected(page, "expected a redirect")
        url = self.resolve(page, target)
        parts = urlsplit(url)
        description = parse_qs(parts.query).get("error_description")
        if description:
            raise LoginError(
                self._where(page.step) + "the upstream refused the account: "
                f"{self.upstream_text(description[0])}",
                code=Code.LOGIN_ACCOUNT_BLOCKED,
            )
        if "/mfa" in parts.path:
            raise LoginError(
                self._where(page.step) + "the account uses two-factor authentication, which the gateway "
                "cannot complete; log in with a browser and send the accessToken or sessionKey instead",
                code=Code.LOGIN_MFA_UNSUPPORTED,
            )
        return url

    def json_field(self, page: _Page, name: str) -> str:
        data = page.json() if page.status == 200 else None
        value = data.get(name) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise self.unexpected(page, f"the answer has no {name}")
        return value

    def hidden_state(self, page: _Page) -> str:
        state = hidden_inputs(page.body).get("state")
        if not state:
            raise self.unexpected(page, "the login page has no state")
        return state

    def refused(self, page: _Page, what: str) -> LoginError:
        alert = element_text(page.body, "prompt-alert")
        detail = f' (the upstream says "{self.upstream_text(alert)}")' if alert else ""
        return LoginError(self._where(page.step) + what + detail)

    def unexpected(self, page: _Page, what: str) -> LoginError:
        return _upstream_error(
            self._where(page.step) + f"{what} (upstream status {page.status}); the upstream flow may "
            "have changed"
        )

    def _outside(self, step: str) -> LoginError:
        # Never followed: the gateway only talks to the configured upstream hosts.
        return _upstream_error(self._where(step) + "a redirect led outside the configured upstream hosts")

    def upstream_text(self, text: str) -> str:
        return upstream_text(text, self._user_inputs)

    def _where(self, step: str) -> str:
        # "at the 'password' step:" rather than "at step 'password':", which the log redaction
        # filter reads as a password=value pair.
        return f"the {self.flow} stopped at the '{step}' step: "

    def _diagnose(self, page: _Page, answer: Answer) -> None:
        kind = login_page_kind(page)
        if kind is None:
            return
        upstream = answer.upstream
        # Counted; the next login (or relay) to this host leaves through another egress proxy.
        self._logins.relay.unusable(upstream, answer.proxy, kind)
        what = "a Cloudflare challenge page" if kind == "challenge" else "a block page"
        raise UpstreamError(
            self._where(page.step) + f"the {upstream} upstream answered {page.status} with {what}; use "
            "another egress IP (egress.proxy) or another client profile (profiles.auth, "
            "profiles.chatgpt)",
            kind=kind,
            code=Code.UPSTREAM_CHALLENGE if kind == "challenge" else Code.UPSTREAM_BLOCKED,
        )

    def _rate_limited(self, page: _Page) -> LoginError:
        value = page.header("Retry-After") or ""
        retry_after = int(value) if value.isdigit() else _RATE_LIMIT_DEFAULT
        return LoginError(
            self._where(page.step) + "the upstream is limiting logins for this account or address "
            f"(status 429); retry after {retry_after} s",
            code=Code.LOGIN_RATE_LIMITED,
            retry_after=retry_after,
        )


def token_expiry(session: dict[str, Any]) -> float | None:
    """When a ChatGPT session's accessToken stops working: the earlier of its JWT `exp` and the
    session's `expires` (ISO 8601), as epoch seconds; None when neither can be read."""
    found = [t for t in (jwt_expiry(session.get("accessToken")), iso_time(session.get("expires"))) if t]
    return min(found) if found else None


def jwt_expiry(token: Any) -> float | None:
    """The `exp` claim of a JWT (header.payload.signature, base64url), unverified; None if absent."""
    if not isinstance(token, str) or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or exp <= 0:
        return None
    return float(exp)


def iso_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _upstream_error(message: str) -> LoginError:
    return LoginError(message, code=Code.LOGIN_UPSTREAM_ERROR)


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def login_page_kind(page: _Page) -> str | None:
    """ "challenge" or "blocked" when a login step answered with such a page, else None. Login pages
    are HTML by nature, so only Cloudflare's own pages count; at the first step (csrf), where the
    upstream answers JSON, an HTML 403 means the egress IP is blocked (docs/logins.md)."""
    html = "html" in (page.header("Content-Type") or "").lower()
    kind = page_kind(page.headers, page.body) if html else page_kind(page.headers, b"")
    if kind == "region":
        return "blocked"
    if kind is None and html and page.step == "csrf" and page.status == 403:
        return "blocked"
    return kind
