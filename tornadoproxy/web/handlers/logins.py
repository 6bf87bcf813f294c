"""POST /chatgpt/login and POST /platform/login: username + password -> the upstream login answer.

The body is the seed's `{"username": "...", "password": "..."}`. The answer is the upstream JSON of
the flow's last step (docs/logins.md), served from the token cache when it can be
(tokens.py); errors are the gateway's JSON and never echo the username or the password.
"""

from __future__ import annotations

from functools import partial

from tornadoproxy.errors import BadRequest, GatewayBusy
from tornadoproxy.formats.bodies import is_json_string, parse_json
from tornadoproxy.web.handlers.base import BaseHandler
from tornadoproxy.web.handlers.routing import Route

_MAX_USERNAME = 320  # the longest e-mail address RFC 5321 allows
_MAX_PASSWORD = 1024


class LoginHandler(BaseHandler):
    """Both login routes; the family is the route's first segment (chatgpt or platform)."""

    async def post(self) -> None:
        self.check_request()
        if self.services.lifecycle.draining:
            raise GatewayBusy("the gateway is shutting down", retry_after=1)
        family = self.route.split("/")[1]
        username, password = parse_login_body(self.body)
        logins, tokens = self.services.logins, self.services.tokens
        body = await tokens.obtain(
            family, username, password, self.client_address, partial(logins.login, family, username, password)
        )
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.bytes_out = len(body)
        self.finish(body)


def parse_login_body(body: bytes) -> tuple[str, str]:
    """(username, password) from the JSON body, or BadRequest saying what is wrong (never the values).
    Parsed strictly (bodies.parse_json: nesting, UTF-8, duplicate keys), and both must be text that
    UTF-8 can carry: a lone surrogate such as "\\ud800" is valid JSON but not a password."""
    data = parse_json(body, "the login body")
    if not isinstance(data, dict):
        raise BadRequest('the login body must be a JSON object: {"username": "...", "password": "..."}')
    username, password = data.get("username"), data.get("password")
    if not is_json_string(username) or not username.strip():
        raise BadRequest("the login body needs a non-empty string username")
    if not is_json_string(password) or not password:
        raise BadRequest("the login body needs a non-empty string password")
    if not _encodable(username) or not _encodable(password):
        raise BadRequest("username and password must be valid Unicode text (no lone surrogates)")
    if len(username) > _MAX_USERNAME or len(password) > _MAX_PASSWORD:
        raise BadRequest(
            f"username or password too long (at most {_MAX_USERNAME} and {_MAX_PASSWORD} characters)"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username + password):
        raise BadRequest("username and password must not contain control characters")
    return username.strip(), password


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


ROUTES: list[Route] = [
    Route("/chatgpt/login", LoginHandler),
    Route("/platform/login", LoginHandler),
]
